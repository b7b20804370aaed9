package node

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/app"
)

// lanTag returns an mDNS tag of its own for a test, so that concurrent test
// runs on this machine (and its LAN) do not find each other's nodes.
func lanTag(t *testing.T) string {
	t.Helper()
	return lanTagUnique()
}

func lanTagUnique() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "goop-test-" + hex.EncodeToString(b[:])
}

type peerJSON struct {
	PeerID   string   `json:"peer_id"`
	Label    string   `json:"label"`
	Addrs    []string `json:"addrs"`
	Online   bool     `json:"online"`
	Status   string   `json:"status"`
	LastSeen int64    `json:"last_seen"`
	Verified bool     `json:"verified"`
	Source   string   `json:"source"`
}

func peersOf(t *testing.T, r *Running) map[string]peerJSON {
	t.Helper()
	var list []peerJSON
	require.Equal(t, 200, getJSON(t, r.ViewerURL+"api/peers", &list))
	out := map[string]peerJSON{}
	for _, p := range list {
		out[p.PeerID] = p
	}
	return out
}

// waitPeerEvent reads a node's peer event stream until event typ about id.
func waitPeerEvent(t *testing.T, ch <-chan [2]string, typ, id string) map[string]any {
	t.Helper()
	for {
		ev, data := nextSSE(t, ch)
		if ev != typ {
			continue
		}
		if p, _ := data["peer"].(map[string]any); p != nil && p["peer_id"] == id {
			return p
		}
	}
}

// TestTwoNodesFindEachOtherOnTheLAN: two nodes started with no
// configuration but a shared mDNS tag see each other in GET /api/peers
// within seconds (mDNS, then presence over GossipSub); a node that stops is
// seen offline at once (its offline presence), and a restarted node starts
// with the peers it knew (data.db).
func TestTwoNodesFindEachOtherOnTheLAN(t *testing.T) {
	tag := lanTag(t)
	lan := func(c *app.Config) { c.P2P.MDNSTag = tag }
	dirA := t.TempDir()
	a := startPeer(t, dirA, func(c *app.Config) { lan(c); c.Profile.Label = "alice" })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	aEvents := sseReader(t, ctx, a.ViewerURL+"api/peers/events")
	ev, _ := nextSSE(t, aEvents)
	require.Equal(t, "connected", ev)

	began := time.Now()
	b := startPeer(t, t.TempDir(), func(c *app.Config) { lan(c); c.Profile.Label = "bob" })
	bEvents := sseReader(t, ctx, b.ViewerURL+"api/peers/events")
	ev, _ = nextSSE(t, bEvents)
	require.Equal(t, "connected", ev)

	pb := waitPeerEvent(t, aEvents, "peer_online", b.PeerID.String())
	assert.Equal(t, "bob", pb["label"])
	waitPeerEvent(t, bEvents, "peer_online", a.PeerID.String())
	t.Logf("two nodes saw each other %v after the second started", time.Since(began).Round(time.Millisecond))

	seenB := peersOf(t, a)[b.PeerID.String()]
	assert.Equal(t, "bob", seenB.Label)
	assert.True(t, seenB.Online)
	assert.Equal(t, "online", seenB.Status)
	assert.True(t, seenB.Verified, "a signed GossipSub presence proves the peer id")
	assert.Equal(t, "lan", seenB.Source)
	assert.NotEmpty(t, seenB.Addrs)
	seenA := peersOf(t, b)[a.PeerID.String()]
	assert.Equal(t, "alice", seenA.Label)
	assert.True(t, seenA.Online)

	// B stops: A sees it offline from its offline message, well before the
	// TTL (20 s) would.
	stopped := time.Now()
	require.NoError(t, b.Close())
	waitPeerEvent(t, aEvents, "peer_offline", b.PeerID.String())
	t.Logf("offline seen %v after Close began", time.Since(stopped).Round(time.Millisecond))
	assert.Less(t, time.Since(stopped), 10*time.Second)
	assert.False(t, peersOf(t, a)[b.PeerID.String()].Online)

	// A restarts: B is in its table from the start (offline, from data.db).
	cancel()
	require.NoError(t, a.Close())
	a2 := startPeer(t, dirA, nil)
	p, ok := peersOf(t, a2)[b.PeerID.String()]
	require.True(t, ok, "a restarted node starts with the peers it knew")
	assert.Equal(t, "bob", p.Label)
	assert.False(t, p.Online)
}
