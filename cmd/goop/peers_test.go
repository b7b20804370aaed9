package main

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/cmd/goop/node"
)

// TestPeersCommand: `goop peers` prints the running node's peer table, and
// --json its API answer.
func TestPeersCommand(t *testing.T) {
	tag := testMDNSTag()
	startLAN := func(label string) *node.Running {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		r, err := node.Start(ctx, t.TempDir(), node.Options{ListenIP: "127.0.0.1", Init: node.InitOptions{
			Label: label,
			Configure: func(c *app.Config) {
				c.Viewer.HTTPAddr = "127.0.0.1:0"
				c.P2P.MDNSTag = tag
			}}})
		require.NoError(t, err)
		t.Cleanup(func() { _ = r.Close() })
		return r
	}
	a := startLAN("alice")
	code, out, errOut := runGoop(t, "peers", "--api", a.ViewerURL)
	require.Equal(t, 0, code, errOut)
	assert.Equal(t, "no peers yet\n", out)

	bob := startLAN("bob")
	require.Eventually(t, func() bool {
		resp, err := http.Get(a.ViewerURL + "api/peers")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var ps []peerRow
		return json.NewDecoder(resp.Body).Decode(&ps) == nil && len(ps) == 1 && ps[0].Online
	}, waitFor, 20*time.Millisecond, "alice sees bob")

	code, out, errOut = runGoop(t, "peers", "--api", a.ViewerURL)
	require.Equal(t, 0, code, errOut)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 2, out)
	assert.Regexp(t, `^PEER ID\s+LABEL\s+STATUS\s+SOURCE\s+VERIFIED\s+LAST SEEN\s+ADDRS$`, lines[0])
	f := strings.Fields(lines[1])
	require.GreaterOrEqual(t, len(f), 7, lines[1])
	assert.Equal(t, []string{bob.PeerID.String(), "bob", "online", "lan", "yes"}, f[:5])
	assert.Contains(t, lines[1], "/ip4/127.0.0.1/")

	code, out, errOut = runGoop(t, "peers", "--json", "--api", a.ViewerURL)
	require.Equal(t, 0, code, errOut)
	var ps []peerRow
	require.NoError(t, json.Unmarshal([]byte(out), &ps), out)
	require.Len(t, ps, 1)
	assert.Equal(t, bob.PeerID.String(), ps[0].PeerID)
	assert.Equal(t, "online", ps[0].Status)

	code, _, errOut = runGoop(t, "peers", "extra")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, "usage: goop peers")
}
