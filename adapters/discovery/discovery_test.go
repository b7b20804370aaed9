package discovery

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/adapters/internal/nettest"
	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/domain/presence"
	"github.com/goop-p2p/goop/ports"
)

const waitFor = 15 * time.Second

func newHost(t *testing.T) host.Host {
	t.Helper()
	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	return hostWithKey(t, priv)
}

// hostWithKey starts a host of identity priv on 127.0.0.1 (TCP only),
// closed at cleanup.
func hostWithKey(t *testing.T, priv crypto.PrivKey) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.Identity(priv), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
		libp2p.DisableMetrics())
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// uniqueTag keeps concurrent test runs on this machine (and its LAN) apart.
func uniqueTag(t *testing.T) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "goop-test-" + hex.EncodeToString(b[:])
}

func start(t *testing.T, h host.Host, tag string) *Adapter {
	t.Helper()
	a, err := New(context.Background(), h, Config{MDNSTag: tag})
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.Close() })
	return a
}

func idOf(h host.Host) mq.PeerID { return mq.PeerID(h.ID().String()) }

func online(h host.Host, label string) presence.Msg {
	return presence.Msg{Type: presence.TypeOnline, PeerID: idOf(h), Content: label, TS: time.Now().UnixMilli()}
}

// collector reads an adapter's events on a goroutine (as the runtime does)
// and hands them to the test.
type collector struct{ ch chan ports.DiscoveryEvent }

func collect(a *Adapter) *collector {
	c := &collector{ch: make(chan ports.DiscoveryEvent, 1024)}
	go func() {
		for ev := range a.Events() {
			c.ch <- ev
		}
		close(c.ch)
	}()
	return c
}

// waitFor waits for an event matching ok, handing every event to seen.
func (c *collector) wait(t *testing.T, what string, ok func(ports.DiscoveryEvent) bool, seen func(ports.DiscoveryEvent)) ports.DiscoveryEvent {
	t.Helper()
	timeout := time.After(waitFor)
	for {
		select {
		case ev, open := <-c.ch:
			require.True(t, open, "events closed while waiting for %s", what)
			if seen != nil {
				seen(ev)
			}
			if ok(ev) {
				return ev
			}
		case <-timeout:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// presenceFrom matches a presence message of type typ from h.
func presenceFrom(h host.Host, typ string) func(ports.DiscoveryEvent) bool {
	return func(ev ports.DiscoveryEvent) bool {
		return ev.Kind == ports.PresenceReceived && ev.Msg.PeerID == idOf(h) && ev.Msg.Type == typ
	}
}

// TestMDNSFindsPeersAndPresenceFlows: two hosts with the same tag find each
// other by mDNS, connect, and exchange presence; a third host with another
// tag is never found by them nor finds them. An offline published just
// before Close reaches the other peer.
func TestMDNSFindsPeersAndPresenceFlows(t *testing.T) {
	tag, other := uniqueTag(t), uniqueTag(t)
	ha, hb, hc := newHost(t), newHost(t), newHost(t)
	a, b, c := start(t, ha, tag), start(t, hb, tag), start(t, hc, other)
	ca, cb, cc := collect(a), collect(b), collect(c)
	began := time.Now()

	// Each publishes its online every time it hears of a peer (like a
	// heartbeat), until the other's presence arrived.
	noC := func(ev ports.DiscoveryEvent) {
		assert.False(t, ev.Peer == idOf(hc) || ev.Msg.PeerID == idOf(hc), "a peer with another tag was seen: %+v", ev)
	}
	// Alice hears of bob twice: found by mDNS, and joined to the presence
	// topic once connected. Either may come first (bob may find alice and
	// dial her before alice's own mDNS answer arrives).
	var foundB, joinedB bool
	ca.wait(t, "bob found by mDNS and joined to the presence topic", func(ev ports.DiscoveryEvent) bool {
		foundB = foundB || ev.Kind == ports.PeerFound && ev.Peer == idOf(hb)
		joinedB = joinedB || ev.Kind == ports.PeerJoined && ev.Peer == idOf(hb)
		return foundB && joinedB
	}, noC)
	cb.wait(t, "alice found by mDNS", func(ev ports.DiscoveryEvent) bool {
		return ev.Kind == ports.PeerFound && ev.Peer == idOf(ha)
	}, noC)
	assert.Equal(t, network.Connected, ha.Network().Connectedness(hb.ID()), "the peers found by mDNS are dialed")

	// Flood publishing: a message published before the mesh forms still
	// arrives; publish until it does (the first may precede the peer's
	// subscription).
	got := func(col *collector, from host.Host, pub *Adapter, label string) ports.DiscoveryEvent {
		deadline := time.After(waitFor)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		require.NoError(t, pub.Publish(online(from, label)))
		for {
			select {
			case ev, open := <-col.ch:
				require.True(t, open)
				noC(ev)
				if presenceFrom(from, presence.TypeOnline)(ev) {
					return ev
				}
			case <-tick.C:
				require.NoError(t, pub.Publish(online(from, label)))
			case <-deadline:
				t.Fatalf("no presence from %s", label)
			}
		}
	}
	evB := got(ca, hb, b, "bob")
	evA := got(cb, ha, a, "alice")
	t.Logf("found and exchanged presence in %v", time.Since(began).Round(time.Millisecond))
	assert.Equal(t, idOf(hb), evB.From, "the GossipSub signer is reported as the sender")
	assert.Equal(t, presence.SourceLAN, evB.Source)
	assert.Equal(t, "bob", evB.Msg.Content)
	assert.Equal(t, "alice", evA.Msg.Content)

	// Offline at shutdown: published, then Close lingers so it goes out.
	require.NoError(t, b.Publish(presence.Msg{Type: presence.TypeOffline, PeerID: idOf(hb), TS: time.Now().UnixMilli()}))
	require.NoError(t, b.Close())
	ca.wait(t, "bob's offline", presenceFrom(hb, presence.TypeOffline), noC)
	assert.ErrorIs(t, b.Publish(online(hb, "late")), ports.ErrClosed)

	// Host C saw neither.
	assert.NotEqual(t, network.Connected, hc.Network().Connectedness(ha.ID()))
	assert.NotEqual(t, network.Connected, hc.Network().Connectedness(hb.ID()))
	for {
		select {
		case ev := <-cc.ch:
			assert.NotEqual(t, ports.PeerFound, ev.Kind, "host C found a peer with another tag: %+v", ev)
			assert.NotEqual(t, ports.PresenceReceived, ev.Kind, "host C got presence: %+v", ev)
			continue
		default:
		}
		break
	}
	assert.Zero(t, c.Stats().Found)
}

// rawPublisher is a host speaking GossipSub on the presence topic without
// the adapter's checks: it can send anything.
func rawPublisher(t *testing.T, h host.Host) *pubsub.Topic {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ps, err := pubsub.NewGossipSub(ctx, h, pubsub.WithFloodPublish(true))
	require.NoError(t, err)
	top, err := ps.Join(presence.Topic)
	require.NoError(t, err)
	return top
}

func connect(t *testing.T, from, to host.Host) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, from.Connect(ctx, peer.AddrInfo{ID: to.ID(), Addrs: to.Addrs()}))
}

// TestInboundPresenceIsValidatedAndRateLimited: forged, malformed and
// oversize presence is refused (not delivered), a flood from one author is
// cut to its burst, and an honest peer is served throughout.
func TestInboundPresenceIsValidatedAndRateLimited(t *testing.T) {
	ha, hm, hh := newHost(t), newHost(t), newHost(t)
	// A refill rate so low that no token comes back during the test, however
	// slow the machine.
	a, err := New(context.Background(), ha, Config{PeerBurst: 5, PeerRate: 0.01})
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.Close() })
	honest := start(t, hh, "")
	ca := collect(a)
	bad := rawPublisher(t, hm)
	connect(t, hm, ha)
	connect(t, hh, ha)

	// Wait for the mesh: the honest peer's presence arrives.
	pub := func(m presence.Msg) { require.NoError(t, bad.Publish(context.Background(), m.Encode())) }
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	require.NoError(t, honest.Publish(online(hh, "honest")))
	ready := false
	for deadline := time.After(waitFor); !ready; {
		select {
		case ev := <-ca.ch:
			ready = presenceFrom(hh, presence.TypeOnline)(ev)
		case <-tick.C:
			require.NoError(t, honest.Publish(online(hh, "honest")))
		case <-deadline:
			t.Fatal("no presence from the honest peer")
		}
	}
	// And the raw publisher's topic peers include A.
	require.Eventually(t, func() bool { return len(bad.ListPeers()) > 0 }, waitFor, 10*time.Millisecond)

	forged := online(hm, "forged")
	forged.PeerID = idOf(hh) // claims to be the honest peer
	oversize := online(hm, strings.Repeat("x", presence.MaxContentBytes+1))
	pub(forged)
	require.NoError(t, bad.Publish(context.Background(), []byte(`{"type":"online","peerId":`)))
	pub(oversize)
	require.NoError(t, bad.Publish(context.Background(), make([]byte, presence.MaxMsgBytes+1)))
	require.Eventually(t, func() bool { return a.Stats().Invalid >= 4 }, waitFor, 10*time.Millisecond)

	// A flood of 20 valid messages from one author (fewer than GossipSub's
	// own per-peer queue of 32, so none is lost before our limiter): what is
	// left of its burst gets through (the refused messages above took tokens
	// too).
	for i := 0; i < 20; i++ {
		m := online(hm, "flood")
		m.TS += int64(i)
		pub(m)
	}
	require.Eventually(t, func() bool {
		s := a.Stats()
		return s.RateLimited >= 20-5
	}, waitFor, 10*time.Millisecond)
	// The honest peer is still heard.
	require.NoError(t, honest.Publish(presence.Msg{Type: presence.TypeUpdate, PeerID: idOf(hh), Content: "still here", TS: time.Now().UnixMilli()}))
	var flood int
	ca.wait(t, "the honest update", func(ev ports.DiscoveryEvent) bool {
		return ev.Msg.PeerID == idOf(hh) && ev.Msg.Content == "still here"
	}, func(ev ports.DiscoveryEvent) {
		if ev.Kind != ports.PresenceReceived {
			return
		}
		assert.NotEqual(t, "forged", ev.Msg.Content, "a forged presence was delivered")
		assert.Less(t, len(ev.Msg.Content), presence.MaxContentBytes+1, "an oversize presence was delivered")
		assert.Equal(t, ev.From, ev.Msg.PeerID, "sender and peer id always match")
		if ev.Msg.Content == "flood" {
			flood++
		}
	})
	assert.LessOrEqual(t, flood, 5, "the flood is cut to the author's burst")
	assert.GreaterOrEqual(t, flood, 1)
}

// TestDialConnectsAndSkips: a dial hint connects; bad hints are ignored.
func TestDialConnectsAndSkips(t *testing.T) {
	ha, hb := newHost(t), newHost(t)
	a := start(t, ha, "")
	var addrs []string
	for _, m := range hb.Addrs() {
		addrs = append(addrs, m.String()+"/p2p/"+hb.ID().String())
	}
	a.Dial(context.Background(), "not a peer id", addrs)
	a.Dial(context.Background(), idOf(ha), addrs)                       // ourselves
	a.Dial(context.Background(), idOf(hb), []string{"garbage", "/ip4"}) // no usable address
	assert.Zero(t, a.Stats().Dials)
	a.Dial(context.Background(), idOf(hb), addrs)
	require.Eventually(t, func() bool { return ha.Network().Connectedness(hb.ID()) == network.Connected },
		waitFor, 10*time.Millisecond)
	a.Dial(context.Background(), idOf(hb), addrs) // already connected
	assert.Equal(t, uint64(1), a.Stats().Dials)
}

// TestSimultaneousDialsConnect: two peers that dial each other at the same
// moment (as two peers answering each other's mDNS query do) end up
// connected. Without the tie-break, libp2p's TCP transport (dialing from its
// listening port) turns the two dials into one TCP simultaneous open where
// both sides play TLS client, and both dials fail.
func TestSimultaneousDialsConnect(t *testing.T) {
	for i := range 10 {
		ha, hb := newHost(t), newHost(t)
		a, b := start(t, ha, ""), start(t, hb, "")
		sub, err := ha.EventBus().Subscribe(new(event.EvtPeerConnectednessChanged))
		require.NoError(t, err)
		hint := func(h host.Host) []string {
			var out []string
			for _, m := range h.Addrs() {
				out = append(out, m.String())
			}
			return out
		}
		go a.Dial(context.Background(), idOf(hb), hint(hb))
		go b.Dial(context.Background(), idOf(ha), hint(ha))
		timeout := time.After(waitFor)
	wait:
		for {
			select {
			case e := <-sub.Out():
				ev := e.(event.EvtPeerConnectednessChanged)
				if ev.Peer == hb.ID() && ev.Connectedness == network.Connected {
					break wait
				}
			case <-timeout:
				t.Fatalf("pair %d: not connected (dials: %d and %d)", i, a.Stats().Dials, b.Stats().Dials)
			}
		}
		_ = sub.Close()
		// Only the peer with the lower id dialed right away; the other
		// found the connection made when its pause ended.
		assert.LessOrEqual(t, a.Stats().Dials+b.Stats().Dials, uint64(1), "pair %d", i)
	}
}

// TestFailedDialIsRetried: a dial to a peer that is not listening yet fails;
// the adapter retries it (past libp2p's dial backoff) and connects once the
// peer is up.
func TestFailedDialIsRetried(t *testing.T) {
	ha := newHost(t)
	a, err := New(context.Background(), ha, Config{TieBreak: 20 * time.Millisecond, DialRetries: 10})
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.Close() })
	// B's identity and address are known before it listens. The lower id
	// dials at once: B gets a higher one, so that A's first dial surely
	// happens before B listens.
	var priv crypto.PrivKey
	var bid peer.ID
	for bid <= ha.ID() {
		priv, _, err = crypto.GenerateEd25519Key(rand.Reader)
		require.NoError(t, err)
		bid, err = peer.IDFromPrivateKey(priv)
		require.NoError(t, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	baddr := fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", ln.Addr().(*net.TCPAddr).Port)
	require.NoError(t, ln.Close())
	sub, err := ha.EventBus().Subscribe(new(event.EvtPeerConnectednessChanged))
	require.NoError(t, err)
	defer sub.Close()
	a.Dial(context.Background(), mq.PeerID(bid.String()), []string{baddr})
	// Wait until the first dial has failed, not merely started: a dial
	// still running when B starts listening may connect (it did once under
	// load), and then no retry is needed.
	require.Eventually(t, func() bool { return a.Stats().DialsFailed >= 1 }, waitFor, time.Millisecond, "the first dial failed")
	hb, err := libp2p.New(libp2p.Identity(priv), libp2p.ListenAddrStrings(baddr), libp2p.DisableMetrics())
	require.NoError(t, err)
	t.Cleanup(func() { _ = hb.Close() })
	timeout := time.After(waitFor)
	for {
		select {
		case e := <-sub.Out():
			if ev := e.(event.EvtPeerConnectednessChanged); ev.Peer == bid && ev.Connectedness == network.Connected {
				assert.GreaterOrEqual(t, a.Stats().Dials, uint64(2), "connected by a retry")
				return
			}
		case <-timeout:
			t.Fatalf("not connected after %d dials", a.Stats().Dials)
		}
	}
}

func TestLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := newLimiter(1, 3, 100, 4)
	p1, p2 := peer.ID("p1"), peer.ID("p2")
	for i := 0; i < 3; i++ {
		assert.True(t, l.allow(p1, now), "burst %d", i)
	}
	assert.False(t, l.allow(p1, now), "burst spent")
	assert.True(t, l.allow(p2, now), "another author has its own bucket")
	assert.False(t, l.allow(p2, now), "but the global burst (4) is spent")
	now = now.Add(time.Second)
	assert.True(t, l.allow(p1, now), "one token a second")
	assert.False(t, l.allow(p1, now))

	// The author table is bounded: idle authors are forgotten, and when
	// every tracked author is busy new ones are refused.
	l = newLimiter(1, 1, 1e9, 1e9)
	for i := 0; i < maxTracked; i++ {
		require.True(t, l.allow(peer.ID("a"+strings.Repeat("x", i%7)+string(rune(i))), now))
	}
	assert.False(t, l.allow("newcomer", now), "table full of busy authors")
	assert.True(t, l.allow("newcomer", now.Add(2*time.Second)), "idle authors are swept")
	assert.LessOrEqual(t, len(l.peers), maxTracked)
}

// TestDialHintWithNewAddrsJoinsARunningDial: a peer that restarted on new
// ports is dialed at its old addresses (from the peer table) when mDNS
// reports its new ones, once. The old ones here lead to a listener that
// accepts and never answers, as a QUIC port nobody serves never refuses:
// the dial of the new addresses must not wait behind it.
func TestDialHintWithNewAddrsJoinsARunningDial(t *testing.T) {
	silent := nettest.NewSilent(t)
	ha, hb := newHost(t), newHost(t)
	a, err := New(context.Background(), ha, Config{DialTimeout: time.Hour})
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.Close() })
	old := silent.Addr(t)

	a.Dial(context.Background(), idOf(hb), []string{old.String()})
	silent.WaitDialed(t, waitFor)                                  // the dial of the old address is under way
	a.Dial(context.Background(), idOf(hb), []string{old.String()}) // the same: nothing new
	var addrs []string
	for _, m := range hb.Addrs() {
		addrs = append(addrs, m.String())
	}
	a.Dial(context.Background(), idOf(hb), addrs)
	require.Eventually(t, func() bool { return ha.Network().Connectedness(hb.ID()) == network.Connected },
		waitFor, 10*time.Millisecond)
	assert.Equal(t, uint64(2), a.Stats().Dials, "one dial of the old address, one of the new")
}
