package p2p

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/ports"
)

// dropGate is a connection gater that closes the first `refuse` inbound
// connections right after their handshake — from the dialer's side just
// like go-libp2p's QUIC listener dropping a connection with "queue full".
type dropGate struct {
	refuse   atomic.Int32
	secured  atomic.Int32
	onRefuse func()
}

func (g *dropGate) InterceptPeerDial(peer.ID) bool               { return true }
func (g *dropGate) InterceptAddrDial(peer.ID, ma.Multiaddr) bool { return true }
func (g *dropGate) InterceptAccept(network.ConnMultiaddrs) bool  { return true }
func (g *dropGate) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) {
	return true, 0
}
func (g *dropGate) InterceptSecured(d network.Direction, _ peer.ID, _ network.ConnMultiaddrs) bool {
	if d != network.DirInbound {
		return true
	}
	g.secured.Add(1)
	if g.refuse.Add(-1) < 0 {
		return true
	}
	if g.onRefuse != nil {
		g.onRefuse()
	}
	return false
}

// newPlainQUICHost is a QUIC-only libp2p host on 127.0.0.1 built with
// libp2p's defaults plus opts (a gater, a resource manager), unlike NewHost.
func newPlainQUICHost(t *testing.T, opts ...libp2p.Option) host.Host {
	t.Helper()
	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	h, err := libp2p.New(append([]libp2p.Option{libp2p.Identity(priv),
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/udp/0/quic-v1"), libp2p.Transport(libp2pquic.NewTransport)}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// newGatedQUICHost is a QUIC-only host on 127.0.0.1 behind gate.
func newGatedQUICHost(t *testing.T, gate *dropGate) host.Host {
	return newPlainQUICHost(t, libp2p.ConnectionGater(gate))
}

func newQUICHost(t *testing.T) host.Host {
	t.Helper()
	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	h, err := NewHost(context.Background(), HostConfig{PrivKey: priv, ListenAddrs: []string{"/ip4/127.0.0.1/udp/0/quic-v1"}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.Close() })
	return h
}

func fullAddrs(h host.Host) []string {
	var out []string
	for _, a := range h.Addrs() {
		out = append(out, a.String()+"/p2p/"+h.ID().String())
	}
	return out
}

func TestConnectRedialsDroppedConnection(t *testing.T) {
	gate := &dropGate{}
	gate.refuse.Store(3)
	hub := newGatedQUICHost(t, gate)
	c := newQUICHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()

	// The premise: libp2p's Connect reports success for a connection the
	// peer closed right after its handshake.
	sub, err := c.EventBus().Subscribe(new(event.EvtPeerConnectednessChanged))
	require.NoError(t, err)
	defer sub.Close()
	require.NoError(t, c.Connect(ctx, peer.AddrInfo{ID: hub.ID(), Addrs: hub.Addrs()}))
	for gone := false; !gone; {
		select {
		case e := <-sub.Out():
			ev := e.(event.EvtPeerConnectednessChanged)
			gone = ev.Peer == hub.ID() && ev.Connectedness == network.NotConnected
		case <-ctx.Done():
			t.Fatal("the dropped connection was never reported gone")
		}
	}
	require.EqualValues(t, 1, gate.secured.Load())

	// ConnectPeers (through Connect) dials again until one stays.
	require.NoError(t, ConnectPeers(ctx, c, fullAddrs(hub)))
	require.Equal(t, network.Connected, c.Network().Connectedness(hub.ID()))
	require.EqualValues(t, 4, gate.secured.Load(), "two more drops, then the connection that stayed")
}

func TestConnectGivesUpOnAlwaysDropped(t *testing.T) {
	gate := &dropGate{}
	gate.refuse.Store(1 << 20)
	hub := newGatedQUICHost(t, gate)
	c := newQUICHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	err := Connect(ctx, c, peer.AddrInfo{ID: hub.ID(), Addrs: hub.Addrs()})
	require.ErrorIs(t, err, ErrDroppedAfterAccept)
	require.ErrorContains(t, err, hub.ID().String())
	require.EqualValues(t, connectTries, gate.secured.Load())
	require.Equal(t, network.NotConnected, c.Network().Connectedness(hub.ID()))
}

// The peer's close can reach the dialer before its own side of the dial
// has finished: the dial then fails with the close's error instead of
// returning a connection that is already gone. Connect counts it as the
// same drop (TestConnectGivesUpOnAlwaysDropped hit this 4 times in 200
// runs with both cores busy).
func TestClosedAfterHandshake(t *testing.T) {
	gated := &quic.ApplicationError{Remote: true, ErrorCode: quic.ApplicationErrorCode(network.ConnGated), ErrorMessage: "connection gated"}
	full := &quic.ApplicationError{Remote: true, ErrorCode: quicQueueFull, ErrorMessage: "queue full"}
	wrap := func(err error) error {
		return fmt.Errorf("failed to dial: all dials failed: %w", errors.Join(err, net.ErrClosed))
	}
	require.True(t, closedAfterHandshake(wrap(gated)))
	require.True(t, closedAfterHandshake(wrap(full)))

	local := *gated
	local.Remote = false
	other := &quic.ApplicationError{Remote: true, ErrorCode: 0x1008, ErrorMessage: "other"}
	for _, err := range []error{wrap(&local), wrap(other), io.EOF, errors.New("connection gated"),
		&quic.TransportError{Remote: true, ErrorCode: quic.ConnectionRefused}} {
		require.False(t, closedAfterHandshake(err), "err = %v", err)
	}
}

// refusingRM is a resource manager that refuses the first `refuse` inbound
// connections before their handshake: quic-go then answers
// CONNECTION_REFUSED, as it does when too many handshakes are under way.
type refusingRM struct {
	network.ResourceManager
	refuse atomic.Int32
	opens  atomic.Int32
}

func (r *refusingRM) OpenConnection(dir network.Direction, useFD bool, a ma.Multiaddr) (network.ConnManagementScope, error) {
	if dir == network.DirInbound {
		r.opens.Add(1)
		if r.refuse.Add(-1) >= 0 {
			return nil, network.ErrResourceLimitExceeded
		}
	}
	return r.ResourceManager.OpenConnection(dir, useFD, a)
}

func TestConnectRedialsRefusedHandshake(t *testing.T) {
	rm := &refusingRM{ResourceManager: &network.NullResourceManager{}}
	rm.refuse.Store(2)
	hub := newPlainQUICHost(t, libp2p.ResourceManager(rm))
	c := newQUICHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, Connect(ctx, c, peer.AddrInfo{ID: hub.ID(), Addrs: hub.Addrs()}))
	require.Equal(t, network.Connected, c.Network().Connectedness(hub.ID()))
	// Two refused handshakes, then the one accepted (libp2p may make more
	// than one attempt per dial).
	require.GreaterOrEqual(t, rm.opens.Load(), int32(3))

	// Refused every time: the last refusal is returned, naming the peer.
	rm.refuse.Store(1 << 20)
	rm.opens.Store(0)
	d := newQUICHost(t)
	err := Connect(ctx, d, peer.AddrInfo{ID: hub.ID(), Addrs: hub.Addrs()})
	require.True(t, refusedHandshake(err), "err = %v", err)
	require.ErrorContains(t, err, hub.ID().String())
	require.GreaterOrEqual(t, rm.opens.Load(), int32(refusedTries))
}

// Over TCP, a refused handshake is a connection closed before the security
// handshake (EOF on the dialer's side): Connect dials again too.
func TestConnectRedialsRefusedTCPHandshake(t *testing.T) {
	rm := &refusingRM{ResourceManager: &network.NullResourceManager{}}
	rm.refuse.Store(2)
	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	hub, err := libp2p.New(libp2p.Identity(priv), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
		libp2p.Transport(tcp.NewTCPTransport), libp2p.ResourceManager(rm))
	require.NoError(t, err)
	t.Cleanup(func() { _ = hub.Close() })
	c := newTestHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, Connect(ctx, c, peer.AddrInfo{ID: hub.ID(), Addrs: hub.Addrs()}))
	require.Equal(t, network.Connected, c.Network().Connectedness(hub.ID()))
	require.EqualValues(t, 3, rm.opens.Load(), "two refused, then the one accepted")
}

func TestConnectStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gate := &dropGate{onRefuse: cancel}
	gate.refuse.Store(1 << 20)
	hub := newGatedQUICHost(t, gate)
	c := newQUICHost(t)
	err := Connect(ctx, c, peer.AddrInfo{ID: hub.ID(), Addrs: hub.Addrs()})
	require.ErrorIs(t, err, context.Canceled)
	require.EqualValues(t, 1, gate.secured.Load(), "no dial after ctx ended")
}

// A msg sent to a peer we are not connected to reaches it even when the peer
// drops the first connections right after accepting them (a host re-joined by
// all its members at once): the transport's writer dials through Connect,
// and the lost connections do not tear the peer down while it dials.
func TestMQSendRedialsDroppedConnection(t *testing.T) {
	gate := &dropGate{}
	gate.refuse.Store(2)
	hb := newGatedQUICHost(t, gate)
	ha := newQUICHost(t)
	ha.Peerstore().AddAddrs(hb.ID(), hb.Addrs(), peerstore.PermanentAddrTTL)
	ta := newTransport(t, ha, MQOptions{})
	tb := newTransport(t, hb, MQOptions{})
	ackAll(ta, nil) // keeps a's connection events flowing

	f := testMsg("m-redial", 1)
	require.NoError(t, ta.Send(pidOf(hb), f))
	ev := nextEvent(t, tb, isFrame)
	require.Equal(t, f.ID, ev.Frame.ID)
	require.EqualValues(t, 3, gate.secured.Load(), "two dropped connections, then the one that stayed")
}

// The bus's peers keep their connections when the connection manager trims:
// the peers it only happens to be connected to are closed instead, and the
// protection ends with the peer's state.
func TestMQPeersSurviveConnectionTrim(t *testing.T) {
	cm, err := connmgr.NewConnManager(1, 2, connmgr.WithGracePeriod(0))
	require.NoError(t, err)
	ha := newPlainQUICHost(t, libp2p.ConnectionManager(cm))
	ta := newTransport(t, ha, MQOptions{})
	hb := newQUICHost(t)
	tb := newTransport(t, hb, MQOptions{})
	others := []host.Host{newQUICHost(t), newQUICHost(t), newQUICHost(t)}
	connect(t, ha, hb)
	for _, o := range others {
		connect(t, ha, o)
		// Worth more than b to the connection manager: without its
		// protection b would be the first to go.
		cm.TagPeer(o.ID(), "test", 100)
	}

	f := testMsg("m-trim", 1)
	require.NoError(t, ta.Send(pidOf(hb), f))
	require.Equal(t, f.ID, nextEvent(t, tb, isFrame).Frame.ID)
	require.True(t, cm.IsProtected(hb.ID(), ""))

	cm.TrimOpenConns(context.Background())
	require.Equal(t, network.Connected, ha.Network().Connectedness(hb.ID()), "the bus's peer stays")
	trimmed := 0
	for _, o := range others {
		if ha.Network().Connectedness(o.ID()) != network.Connected {
			trimmed++
		}
	}
	require.NotZero(t, trimmed, "the connection manager trimmed the others")

	// b goes away: its state is torn down and the protection lifted.
	require.NoError(t, ha.Network().ClosePeer(hb.ID()))
	nextEvent(t, ta, func(ev ports.TransportEvent) bool {
		return ev.Kind == ports.PeerDisconnected && ev.From == pidOf(hb)
	})
	require.False(t, cm.IsProtected(hb.ID(), ""))
}
