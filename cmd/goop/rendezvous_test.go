package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/adapters/rendezvous"
	"github.com/goop-p2p/goop/app"
)

// startRendezvous runs `goop rendezvous args...` in-process and returns its
// output lines up to and including the ready line, the server URL, and a
// stop function that cancels it (as SIGINT does) and returns its exit code.
func startRendezvous(t *testing.T, args ...string) (lines []string, url string, stop func() int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	outR, outW := io.Pipe()
	var errb syncBuffer
	codeC := make(chan int, 1)
	go func() {
		code := run(ctx, append([]string{"goop", "rendezvous"}, args...), outW, &errb)
		outW.Close()
		codeC <- code
	}()
	lineC := make(chan string, 16)
	go func() {
		defer close(lineC)
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			lineC <- sc.Text()
		}
	}()
	stopped := false
	stop = func() int {
		if stopped {
			return -1
		}
		stopped = true
		cancel()
		select {
		case code := <-codeC:
			return code
		case <-time.After(waitFor):
			t.Fatal("rendezvous did not stop")
			return -1
		}
	}
	t.Cleanup(func() { stop() })
	for {
		select {
		case line, ok := <-lineC:
			require.True(t, ok, "no ready line; stderr: %s", errb.String())
			lines = append(lines, line)
			if rest, ok := strings.CutPrefix(line, "ready "); ok {
				for _, f := range strings.Fields(rest) {
					if v, ok := strings.CutPrefix(f, "rendezvous="); ok {
						url = v
					}
				}
				require.NotEmpty(t, url, line)
				return lines, url, stop
			}
		case <-time.After(waitFor):
			t.Fatalf("no ready line; stderr: %s", errb.String())
		}
	}
}

// TestRendezvousCommand: `goop rendezvous DIR` creates a rendezvous-only
// config, serves /healthz, /publish and the public page, stops cleanly on
// cancellation, and runs again from the config it wrote.
func TestRendezvousCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "peers", "server")
	lines, url, stop := startRendezvous(t, "--port", "0", dir)
	assert.Contains(t, lines[0], "created "+filepath.Join(dir, "goop.json"))
	assert.Contains(t, lines[len(lines)-1], "connect=")

	cfg, err := app.LoadConfig(filepath.Join(dir, "goop.json"))
	require.NoError(t, err)
	assert.True(t, cfg.Presence.RendezvousOnly)
	assert.True(t, cfg.Presence.RendezvousHost)
	assert.Equal(t, "server", cfg.Profile.Label)

	for _, path := range []string{"/healthz", "/"} {
		resp, err := http.Get(url + path)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusOK, resp.StatusCode, path)
	}
	resp, err := http.Post(url+"/publish", "application/json", strings.NewReader(`{"type":"online"}`))
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
	assert.Equal(t, 0, stop())

	lines, url, stop = startRendezvous(t, "--port", "0", dir)
	assert.Len(t, lines, 1, "an existing folder is used as it is")
	resp, err = http.Get(url + "/healthz")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, 0, stop())
	http.DefaultClient.CloseIdleConnections()
}

func TestRendezvousCommandErrors(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	_, port, _ := net.SplitHostPort(busy.Addr().String())

	code, _, errOut := runGoop(t, "rendezvous", "--port", port, t.TempDir())
	assert.Equal(t, exitError, code)
	assert.Contains(t, errOut, "goop: presence.rendezvous_port: 127.0.0.1:"+port+" is in use")

	code, _, errOut = runGoop(t, "rendezvous")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, "usage: goop rendezvous DIR")

	code, _, errOut = runGoop(t, "rendezvous", "--bind", "not-an-ip", t.TempDir())
	assert.Equal(t, exitError, code)
	assert.Contains(t, errOut, "presence.rendezvous_bind")

	code, out, _ := runGoop(t, "rendezvous", "--help")
	assert.Equal(t, 0, code)
	assert.Contains(t, out, "goop rendezvous [command options] DIR")
}

// TestRendezvousCommandKeepsSignedPeers: the server of `goop rendezvous DIR`
// keeps which peer ids publish signed in DIR/data/rendezvous-signed.json
// (mode 0600), so that after a restart unsigned presence for such a peer
// id, or a replay of its last publish, is still refused.
func TestRendezvousCommandKeepsSignedPeers(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "server")
	_, url, stop := startRendezvous(t, "--port", "0", dir)
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	m := rendezvous.PresenceMsg{Type: rendezvous.TypeOnline, Content: "alice", TS: time.Now().UnixMilli()}
	require.NoError(t, rendezvous.Sign(&m, key))
	publish := func(m rendezvous.PresenceMsg) int {
		b, err := json.Marshal(m)
		require.NoError(t, err)
		resp, err := http.Post(url+"/publish", "application/json", bytes.NewReader(b))
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	require.Equal(t, http.StatusNoContent, publish(m))
	require.Equal(t, 0, stop())

	fi, err := os.Stat(filepath.Join(dir, "data", "rendezvous-signed.json"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	_, url, stop = startRendezvous(t, "--port", "0", dir)
	assert.Equal(t, http.StatusForbidden, publish(rendezvous.PresenceMsg{Type: rendezvous.TypeOnline, PeerID: m.PeerID, Content: "mallory"}))
	assert.Equal(t, http.StatusForbidden, publish(m), "replay")
	assert.Equal(t, 0, stop())
	http.DefaultClient.CloseIdleConnections()
}
