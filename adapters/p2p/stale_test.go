package p2p

import (
	"context"
	"crypto/rand"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/adapters/internal/nettest"
)

// twinHosts starts two hosts of one identity on 127.0.0.1: to us, two
// connections of one peer (as two dials crossing each other leave, or a peer
// that came back while its old connection lingers).
func twinHosts(t *testing.T) (host.Host, host.Host) {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	twin := func() host.Host {
		h, err := NewHost(context.Background(), HostConfig{PrivKey: key, ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}})
		require.NoError(t, err)
		t.Cleanup(func() { _ = h.Close() })
		return h
	}
	return twin(), twin()
}

// TestLiveOlderConnectionIsKept: a peer with two live connections to us
// (here two hosts of one identity, as two dials crossing each other leave)
// answers the probe of the older one, and both stay.
func TestLiveOlderConnectionIsKept(t *testing.T) {
	hr := newTestHost(t)
	h1, h2 := twinHosts(t)
	connect(t, h1, hr)
	connect(t, h2, hr)
	r := hr.(*reapingHost)
	require.Eventually(t, func() bool { return r.rounds.Load() == 1 }, waitFor, time.Millisecond, "the older connection is probed")
	require.Len(t, hr.Network().ConnsToPeer(h1.ID()), 2, "a live connection is not closed")
}

// TestDeadSiblingConnectionIsClosed: when one of a peer's connections
// closes (a crashed peer's TCP connection gets a RST) while another stays
// open but dead (its QUIC one hears nothing; here a frozen proxy), the dead
// one is found by its ping and closed at once, not when a keep-alive gives
// up.
func TestDeadSiblingConnectionIsClosed(t *testing.T) {
	hr := newTestHost(t)
	h1, h2 := twinHosts(t)
	to, err := manet.ToNetAddr(h1.Addrs()[0])
	require.NoError(t, err)
	fz := nettest.NewFreezer(t, to.String())
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, hr.Connect(ctx, peer.AddrInfo{ID: h1.ID(), Addrs: []ma.Multiaddr{fz.Addr(t)}}))
	conns := hr.Network().ConnsToPeer(h1.ID())
	require.Len(t, conns, 1)
	viaProxy := conns[0]
	connect(t, h2, hr)
	r := hr.(*reapingHost)
	require.Eventually(t, func() bool { return r.rounds.Load() == 1 }, waitFor, time.Millisecond, "the older connection is probed")
	require.False(t, viaProxy.IsClosed(), "it answered")

	fz.Freeze()
	require.NoError(t, h2.Close())
	require.Eventually(t, viaProxy.IsClosed, waitFor, 10*time.Millisecond, "the dead connection is closed")
}
