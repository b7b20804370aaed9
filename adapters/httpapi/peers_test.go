package httpapi

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/adapters/system"
	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/domain/presence"
	"github.com/goop-p2p/goop/ports/memory"
)

// startPresenceNode runs a node that announces itself on the presence LAN.
func startPresenceNode(t *testing.T, net *memory.Network, lan *memory.DiscoveryNet, id mq.PeerID, label string) *testNode {
	t.Helper()
	tr := net.Join(id)
	disc := lan.Join(id)
	node := app.NewNode(id, app.State{}, system.Rand{}, app.NodeOptions{Label: label,
		Presence: presence.Config{Announce: true, Heartbeat: time.Second, TTL: 3 * time.Second},
		Profile:  presence.Profile{Addrs: []string{"/ip4/127.0.0.1/tcp/4001"}}})
	rt := app.NewRuntime(node, tr, memory.NewStore(), system.Clock{}, nil)
	rt.SetDiscovery(disc)
	ctx, cancel := context.WithCancel(context.Background())
	n := &testNode{id: id, rt: rt, cancel: cancel, done: make(chan error, 1)}
	go func() { n.done <- rt.Run(ctx) }()
	t.Cleanup(func() {
		n.stop(t)
		_ = disc.Close()
		_ = tr.Close()
	})
	return n
}

func getPeers(t *testing.T, url string) []PeerJSON {
	t.Helper()
	resp, err := http.Get(url + "/api/peers")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	var out []PeerJSON
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	return out
}

// TestPeersAPIAndEvents: GET /api/peers lists the table (an empty array
// for none), and /api/peers/events streams its changes, online then
// offline when the peer stops.
func TestPeersAPIAndEvents(t *testing.T) {
	net, lan := memory.NewNetwork(), memory.NewDiscoveryNet()
	a := startPresenceNode(t, net, lan, newPeerID(t), "alice")
	srv := httptest.NewServer(New(Deps{Runtime: a.rt, Label: "alice"}))
	t.Cleanup(srv.Close)

	resp, err := http.Get(srv.URL + "/api/peers")
	require.NoError(t, err)
	raw, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	assert.Equal(t, "[]", strings.TrimSpace(string(raw)), "no peers: an empty array, not null")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, _ := openSSEPath(t, ctx, srv.URL+"/api/peers/events")
	require.Equal(t, "connected", nextSSE(t, events).event)

	b := startPresenceNode(t, net, lan, newPeerID(t), "bob")
	ev := nextSSE(t, events)
	require.Equal(t, presence.EvOnline, ev.event)
	var pe PeerEventJSON
	require.NoError(t, json.Unmarshal([]byte(ev.data), &pe))
	assert.Equal(t, presence.EvOnline, pe.Type)
	assert.Equal(t, string(b.id), pe.Peer.PeerID)
	assert.Equal(t, "bob", pe.Peer.Label)
	assert.Equal(t, "online", pe.Peer.Status)
	assert.Equal(t, "lan", pe.Peer.Source)
	assert.True(t, pe.Peer.Verified)

	peers := getPeers(t, srv.URL)
	require.Len(t, peers, 1)
	p := peers[0]
	assert.Equal(t, string(b.id), p.PeerID)
	assert.Equal(t, "bob", p.Label)
	assert.True(t, p.Online)
	assert.Equal(t, []string{"/ip4/127.0.0.1/tcp/4001"}, p.Addrs)
	assert.InDelta(t, time.Now().UnixMilli(), p.LastSeen, float64(waitFor.Milliseconds()))
	assert.Zero(t, p.OfflineSince)

	b.stop(t)
	for {
		ev = nextSSE(t, events)
		if ev.event == presence.EvOffline {
			break
		}
		require.Equal(t, presence.EvUpdated, ev.event, "only updates before the offline")
	}
	require.NoError(t, json.Unmarshal([]byte(ev.data), &pe))
	assert.Equal(t, "offline", pe.Peer.Status)
	assert.NotZero(t, pe.Peer.OfflineSince)
	assert.False(t, getPeers(t, srv.URL)[0].Online)
}

// TestPeersPage: the Peers page is served with the viewer's headers, and
// the other pages link to it.
func TestPeersPage(t *testing.T) {
	f := newFixture(t, nil)
	for path, want := range map[string]string{
		"/peers":        `src="/ui/peers.js"`,
		"/ui/peers.js":  "/api/peers/events",
		"/":             `href="/peers"`,
		"/groups":       `href="/peers"`,
		"/ui/goop.css":  ".badge.online",
		"/peers?x=1":    "<title>Peers",
		"/ui/peers.js?": "Visit",
	} {
		r := f.do(t, http.MethodGet, path, "", nil)
		require.Equal(t, http.StatusOK, r.status, path)
		assert.Contains(t, r.body["text"], want, path)
		assert.NotEmpty(t, r.header.Get("Content-Security-Policy"), path)
	}
}
