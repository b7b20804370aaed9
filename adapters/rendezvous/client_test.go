package rendezvous

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/domain/presence"
)

// runClient starts a client for key against url; its presences arrive on the
// returned channel. It stops at the end of the test.
func runClient(t *testing.T, url string, key crypto.PrivKey, label string, tune func(*ClientConfig)) (*Client, <-chan PresenceMsg, context.CancelFunc) {
	t.Helper()
	got := make(chan PresenceMsg, 1024)
	cfg := ClientConfig{
		URL:        url,
		Key:        key,
		Presence:   func() PresenceMsg { return PresenceMsg{Content: label, Addrs: []string{"/ip4/127.0.0.1/tcp/4001"}} },
		OnPresence: func(m PresenceMsg) { got <- m },
		MinBackoff: 10 * time.Millisecond,
		MaxBackoff: 100 * time.Millisecond,
	}
	if tune != nil {
		tune(&cfg)
	}
	c, err := NewClient(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		assert.NoError(t, c.Run(ctx))
	}()
	stop := func() {
		cancel()
		<-done
	}
	t.Cleanup(stop)
	return c, got, stop
}

// TestThreeClientsSeeEachOther: three peers that know only the server's URL
// all learn of each other, signatures checked by each client.
func TestThreeClientsSeeEachOther(t *testing.T) {
	srv := startServer(t, ServerConfig{})
	keys := []crypto.PrivKey{newKey(t), newKey(t), newKey(t)}
	chans := make([]<-chan PresenceMsg, len(keys))
	for i, k := range keys {
		_, chans[i], _ = runClient(t, srv.URL, k, fmt.Sprint("peer", i), nil)
	}
	for i, c := range chans {
		want := map[presence.PeerID]bool{}
		for j, k := range keys {
			if j != i {
				want[idOf(t, k)] = true
			}
		}
		seen := map[presence.PeerID]bool{}
		for len(seen) < len(want) {
			m := recv(t, c, fmt.Sprintf("peer%d to see the others", i))
			require.NotEqual(t, idOf(t, keys[i]), m.PeerID, "a client does not report itself")
			require.True(t, want[m.PeerID], m.PeerID)
			assert.True(t, m.Verified)
			assert.Equal(t, []string{"/ip4/127.0.0.1/tcp/4001"}, m.Addrs)
			seen[m.PeerID] = true
		}
	}
	assert.Equal(t, 3, srv.Stats().VerifiedPeers)
}

// TestClientSurvivesServerRestart: the server goes away and a new one comes
// up on the same port; the client subscribes and publishes again.
func TestClientSurvivesServerRestart(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	pubs1 := make(chan PresenceMsg, 16)
	srv1 := NewServer(ServerConfig{hooks: &hooks{published: func(m PresenceMsg) { pubs1 <- m }}})
	done1 := make(chan error, 1)
	go func() { done1 <- srv1.Serve(ln) }()

	key := newKey(t)
	// A long heartbeat: only a re-subscription makes the client publish again in time.
	_, got, _ := runClient(t, "http://"+addr, key, "survivor", func(c *ClientConfig) { c.Heartbeat = time.Hour })
	recv(t, pubs1, "the first publish")
	require.NoError(t, srv1.Close())
	require.NoError(t, <-done1)

	ln2, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	srv2 := startServerOn(t, ln2, ServerConfig{})
	// A publish the client had under way as the first server went may reach
	// the new one first (an update: the client took it for the old server);
	// the new stream's announcement follows.
	m := recv(t, srv2.pubs, "the client to publish to the new server")
	if m.Type == TypeUpdate {
		m = recv(t, srv2.pubs, "the client to announce itself to the new server")
	}
	assert.Equal(t, idOf(t, key), m.PeerID)
	assert.Equal(t, TypeOnline, m.Type)
	assert.True(t, m.Verified)
	recv(t, srv2.add, "the client to subscribe to the new server")

	other := newKey(t)
	require.Equal(t, http.StatusNoContent, publish(t, srv2.URL, signed(t, other, TypeOnline, "newcomer", time.Now()), ""))
	for {
		p := recv(t, got, "the newcomer through the new stream")
		if p.PeerID == idOf(t, other) {
			break
		}
	}
}

// TestClientPublishesOfflineOnStop: stopping the client publishes an offline.
func TestClientPublishesOfflineOnStop(t *testing.T) {
	srv := startServer(t, ServerConfig{})
	key := newKey(t)
	_, _, stop := runClient(t, srv.URL, key, "leaver", nil)
	assert.Equal(t, TypeOnline, recv(t, srv.pubs, "online").Type)
	stop()
	for {
		m := recv(t, srv.pubs, "offline")
		if m.Type == TypeOffline {
			assert.Equal(t, idOf(t, key), m.PeerID)
			break
		}
	}
	assert.Equal(t, 0, srv.Stats().Peers)
}

// TestClientValidatesEvents: what a (malicious or broken) server streams is
// checked: forged signatures, unsigned presence for a peer seen signed, older
// signed presence, malformed or invalid presence and our own are dropped.
func TestClientValidatesEvents(t *testing.T) {
	self, alice, bob := newKey(t), newKey(t), newKey(t)
	now := time.Now()
	good := signed(t, alice, TypeOnline, "alice", now)
	forged := signed(t, bob, TypeOnline, "bob", now)
	forged.Content = "not bob"
	takeover := PresenceMsg{Type: TypeUpdate, PeerID: good.PeerID, Content: "mallory", TS: now.UnixMilli()}
	older := signed(t, alice, TypeUpdate, "alice old", now.Add(-time.Second))
	mine := signed(t, self, TypeOnline, "me", now)
	compat := PresenceMsg{Type: TypeOnline, PeerID: idOf(t, newKey(t)), Content: "goop2", TS: now.UnixMilli()}
	offline := PresenceMsg{Type: TypeOffline, PeerID: good.PeerID, TS: now.UnixMilli()}
	last := signed(t, bob, TypeOnline, "bob", now)

	var frames []string
	for _, m := range []PresenceMsg{good, forged, takeover, older, mine, compat} {
		frames = append(frames, "data: "+string(mustJSON(t, m))+"\n\n")
	}
	frames = append(frames, "data: {not json\n\n", `data: {"type":"online","peerId":"x"}`+"\n\n", ": keep-alive\n\n",
		"event: presence\ndata: "+string(mustJSON(t, offline))+"\n\n", "data: "+string(mustJSON(t, last))+"\n\n")

	var once sync.Once
	served := make(chan struct{})
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for _, f := range frames {
			_, _ = io.WriteString(w, f)
		}
		w.(http.Flusher).Flush()
		once.Do(func() { close(served) })
		<-r.Context().Done()
	}))
	defer hs.Close()
	_, got, stop := runClient(t, hs.URL, self, "me", nil)
	var seen []PresenceMsg
	for {
		m := recv(t, got, "events")
		seen = append(seen, m)
		if m.PeerID == last.PeerID {
			break
		}
	}
	stop()
	require.Len(t, seen, 4, "%+v", seen)
	assert.Equal(t, "alice", seen[0].Content)
	assert.True(t, seen[0].Verified)
	assert.Equal(t, compat.PeerID, seen[1].PeerID)
	assert.False(t, seen[1].Verified)
	assert.Equal(t, TypeOffline, seen[2].Type, "an unsigned offline (the server's sweep) is believed")
	assert.Equal(t, good.PeerID, seen[2].PeerID)
	assert.True(t, seen[3].Verified)
}

func TestNewClientChecksConfig(t *testing.T) {
	key := newKey(t)
	p := func() PresenceMsg { return PresenceMsg{} }
	cases := []struct {
		name string
		cfg  ClientConfig
		want string
	}{
		{"no url", ClientConfig{Key: key, Presence: p}, "is not an http"},
		{"bad scheme", ClientConfig{URL: "ftp://x", Key: key, Presence: p}, "is not an http"},
		{"no key", ClientConfig{URL: "http://x", Presence: p}, "no key"},
		{"no presence", ClientConfig{URL: "http://x", Key: key}, "no Presence"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewClient(tc.cfg)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}
