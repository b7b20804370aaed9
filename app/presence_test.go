package app_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/adapters/system"
	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/domain/presence"
	"github.com/goop-p2p/goop/ports"
	"github.com/goop-p2p/goop/ports/memory"
)

var t0 = time.UnixMilli(1_700_000_000_000).UTC()

func announcing(label string) app.NodeOptions {
	return app.NodeOptions{Label: label, Presence: presence.Config{Announce: true, Heartbeat: 5 * time.Second, TTL: 20 * time.Second},
		Profile: presence.Profile{Addrs: []string{"/ip4/127.0.0.1/tcp/4001"}}}
}

// TestNodePresenceStep drives a Node by hand: presence outputs come out of
// Ready like every other output.
func TestNodePresenceStep(t *testing.T) {
	n := app.NewNode("A", app.State{}, memory.NewRand(1), announcing("alice"))
	n.Tick(t0)
	rd := n.Ready()
	require.Len(t, rd.Publish, 1, "online at start")
	assert.Equal(t, presence.Msg{Type: presence.TypeOnline, PeerID: "A", Content: "alice",
		Addrs: []string{"/ip4/127.0.0.1/tcp/4001"}, TS: t0.UnixMilli()}, rd.Publish[0])
	wake, ok := n.NextWake()
	require.True(t, ok)
	assert.False(t, wake.After(t0.Add(5*time.Second)), "the heartbeat is in NextWake")

	msg := presence.Msg{Type: presence.TypeOnline, PeerID: "B", Content: "bob", Addrs: []string{"/ip4/10.0.0.2/tcp/1"}, TS: 1}
	require.NoError(t, n.HandlePresence(t0, presence.SourceLAN, "B", false, msg))
	assert.ErrorIs(t, n.HandlePresence(t0, presence.SourceLAN, "C", false, msg), presence.ErrForged)
	rd = n.Ready()
	require.Len(t, rd.Batch.Peers, 1, "the new peer is persisted")
	assert.Equal(t, []presence.DialHint{{Peer: "B", Addrs: msg.Addrs, Source: presence.SourceLAN}}, rd.Dial)
	require.Len(t, rd.Events, 1)
	assert.Equal(t, app.EventPeer, rd.Events[0].Kind)
	assert.Equal(t, mq.PeerID("B"), rd.Events[0].Peer)
	assert.Equal(t, presence.EvOnline, rd.Events[0].Presence.Type)
	assert.Len(t, n.Peers(), 1)

	require.NoError(t, n.HandleDiscovery(t0, ports.DiscoveryEvent{Kind: ports.AddrsChanged, Addrs: []string{"/ip4/10.0.0.1/tcp/1"}}))
	rd = n.Ready()
	require.Len(t, rd.Publish, 1, "new addresses are announced at once")
	assert.Equal(t, presence.TypeUpdate, rd.Publish[0].Type)

	n.StopPresence(t0.Add(time.Second))
	rd = n.Ready()
	require.Len(t, rd.Publish, 1)
	assert.Equal(t, presence.TypeOffline, rd.Publish[0].Type)
}

// TestNodeWithoutPresenceConfigIsQuiet: a node built without presence
// options (simnet today) publishes nothing and has no presence timer.
func TestNodeWithoutPresenceConfigIsQuiet(t *testing.T) {
	n := app.NewNode("A", app.State{}, memory.NewRand(1), app.NodeOptions{})
	n.Tick(t0)
	rd := n.Ready()
	assert.Empty(t, rd.Publish)
	assert.Empty(t, rd.Dial)
	assert.Empty(t, rd.Batch.Peers)
	_, ok := n.NextWake()
	assert.False(t, ok)
}

type presenceNode struct {
	rt    *app.Runtime
	disc  *memory.Discovery
	sub   *app.Subscription
	store *memory.Store
	stop  func()
}

// startPresenceNode runs a node with a memory transport and a member of
// the presence LAN; store may hold a previous run's state.
func startPresenceNode(t *testing.T, net *memory.Network, lan *memory.DiscoveryNet, id mq.PeerID, store *memory.Store, opts app.NodeOptions) *presenceNode {
	t.Helper()
	ctx := context.Background()
	snap, err := store.LoadBus(ctx)
	require.NoError(t, err)
	peers, err := store.LoadPeers(ctx)
	require.NoError(t, err)
	node := app.NewNode(id, app.State{Bus: snap, Peers: peers}, memory.NewRand(seedOf(id)), opts)
	tr := net.Join(id)
	rt := app.NewRuntime(node, tr, store, system.Clock{}, nil)
	disc := lan.Join(id)
	rt.SetDiscovery(disc)
	pn := &presenceNode{rt: rt, disc: disc, sub: rt.Subscribe(256), store: store}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = rt.Run(runCtx) }()
	var stopped bool
	pn.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("runtime did not stop")
		}
		_ = disc.Close()
		_ = tr.Close()
	}
	t.Cleanup(pn.stop)
	return pn
}

// waitPeerEvent waits for the peer table event typ about peer.
func waitPeerEvent(t *testing.T, sub *app.Subscription, typ string, peer mq.PeerID) presence.Peer {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case ev, ok := <-sub.C:
			require.True(t, ok, "subscription closed")
			if ev.Kind == app.EventPeer && ev.Presence.Type == typ && ev.Peer == peer {
				return ev.Presence.Peer
			}
		case <-timeout:
			t.Fatalf("no %s event about %s", typ, peer)
		}
	}
}

// TestRuntimeCarriesPresence: two runtimes on a presence LAN see each other
// online, then offline when one stops, and a restarted node starts with the
// peers it knew (from its store) and dials them.
func TestRuntimeCarriesPresence(t *testing.T) {
	net, lan := memory.NewNetwork(), memory.NewDiscoveryNet()
	storeA := memory.NewStore()
	a := startPresenceNode(t, net, lan, "A", storeA, announcing("alice"))
	b := startPresenceNode(t, net, lan, "B", memory.NewStore(), announcing("bob"))

	// B joined after A's online went out: A sees B's online at once (B
	// would see A at A's next heartbeat).
	pb := waitPeerEvent(t, a.sub, presence.EvOnline, "B")
	assert.Equal(t, "bob", pb.Label)
	assert.True(t, pb.Verified)

	// A learnt of B through the LAN: the peer found and the online it got
	// made A dial B.
	require.Eventually(t, func() bool { return len(a.disc.Dialed()) > 0 }, 5*time.Second, 5*time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	peers, err := a.rt.Peers(ctx)
	require.NoError(t, err)
	require.Len(t, peers, 1)
	assert.Equal(t, mq.PeerID("B"), peers[0].ID)
	assert.True(t, peers[0].Online)

	// B stops: its offline reaches A at once (no TTL wait).
	b.stop()
	waitPeerEvent(t, a.sub, presence.EvOffline, "B")
	pub := b.disc.Published()
	require.NotEmpty(t, pub)
	assert.Equal(t, presence.TypeOffline, pub[len(pub)-1].Type, "offline is the last thing B published")

	// A restarts from its store: B is in its table at once (offline) and dialed.
	a.stop()
	stored, err := storeA.LoadPeers(context.Background())
	require.NoError(t, err)
	require.Len(t, stored, 1)
	a2 := startPresenceNode(t, net, memory.NewDiscoveryNet(), "A", storeA, announcing("alice"))
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	peers, err = a2.rt.Peers(ctx2)
	require.NoError(t, err)
	require.Len(t, peers, 1)
	assert.Equal(t, mq.PeerID("B"), peers[0].ID)
	assert.False(t, peers[0].Online)
	assert.Equal(t, "bob", peers[0].Label)
	require.Eventually(t, func() bool {
		for _, h := range a2.disc.Dialed() {
			if h.Peer == "B" {
				return true
			}
		}
		return false
	}, 5*time.Second, 5*time.Millisecond, "a restarted node dials the peers it knew")
}
