package p2p

import (
	"context"
	"crypto/rand"
	"net"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLANDialRankerOrder(t *testing.T) {
	mas := func(ss ...string) []ma.Multiaddr {
		out := make([]ma.Multiaddr, len(ss))
		for i, s := range ss {
			out[i] = ma.StringCast(s)
		}
		return out
	}
	type ranked struct {
		addr  string
		delay time.Duration
	}
	rank := func(addrs []ma.Multiaddr) []ranked {
		var out []ranked
		for _, ad := range LANDialRanker(addrs) {
			out = append(out, ranked{ad.Addr.String(), ad.Delay})
		}
		return out
	}
	t.Run("local TCP before local QUIC", func(t *testing.T) {
		got := rank(mas("/ip4/127.0.0.1/udp/4001/quic-v1", "/ip4/127.0.0.1/tcp/4001"))
		assert.Equal(t, []ranked{{"/ip4/127.0.0.1/tcp/4001", 0}, {"/ip4/127.0.0.1/udp/4001/quic-v1", 250 * time.Millisecond}}, got)
	})
	t.Run("lowest local TCP port first, other local addresses after", func(t *testing.T) {
		got := rank(mas("/ip4/192.168.1.20/tcp/5001", "/ip4/192.168.1.20/udp/4001/quic-v1",
			"/ip4/192.168.1.20/tcp/4001/p2p/12D3KooWQpF4hqpN3Nr9Y9QbjTiZGSM614b79Awpo78nhyvB1Qj6", "/ip4/10.0.0.3/tcp/4001/ws"))
		require.Len(t, got, 4)
		assert.Equal(t, ranked{"/ip4/192.168.1.20/tcp/4001/p2p/12D3KooWQpF4hqpN3Nr9Y9QbjTiZGSM614b79Awpo78nhyvB1Qj6", 0}, got[0])
		assert.Equal(t, ranked{"/ip4/192.168.1.20/tcp/5001", swarm.PrivateTCPDelay}, got[1])
		assert.Equal(t, ranked{"/ip4/192.168.1.20/udp/4001/quic-v1", LANFallbackDelay}, got[2], "then libp2p's order, later: local QUIC first")
		assert.Equal(t, "/ip4/10.0.0.3/tcp/4001/ws", got[3].addr)
		assert.Greater(t, got[3].delay, LANFallbackDelay)
	})
	t.Run("public and relay addresses keep libp2p's schedule", func(t *testing.T) {
		public := []string{"/ip4/203.0.113.7/udp/4001/quic-v1", "/ip4/203.0.113.7/tcp/4001",
			"/ip4/192.168.1.9/tcp/4001/p2p/12D3KooWQpF4hqpN3Nr9Y9QbjTiZGSM614b79Awpo78nhyvB1Qj6/p2p-circuit"}
		var want []ranked
		for _, ad := range swarm.DefaultDialRanker(mas(public...)) {
			want = append(want, ranked{ad.Addr.String(), ad.Delay})
		}
		got := rank(mas(append([]string{"/ip4/192.168.1.20/tcp/4001", "/ip4/192.168.1.20/udp/4001/quic-v1"}, public...)...))
		require.Len(t, got, 5)
		assert.Equal(t, []ranked{{"/ip4/192.168.1.20/tcp/4001", 0}, {"/ip4/192.168.1.20/udp/4001/quic-v1", LANFallbackDelay}}, got[:2])
		assert.Equal(t, want, got[2:], "dialed alongside the local ones, not after them")
		assert.Equal(t, ranked{"/ip4/203.0.113.7/udp/4001/quic-v1", 0}, want[0])
	})
	t.Run("no local TCP: libp2p's order", func(t *testing.T) {
		addrs := mas("/ip4/203.0.113.7/tcp/4001", "/ip4/203.0.113.7/udp/4001/quic-v1", "/ip4/127.0.0.1/udp/4001/quic-v1")
		var want []ranked
		for _, ad := range swarm.DefaultDialRanker(mas("/ip4/203.0.113.7/tcp/4001", "/ip4/203.0.113.7/udp/4001/quic-v1", "/ip4/127.0.0.1/udp/4001/quic-v1")) {
			want = append(want, ranked{ad.Addr.String(), ad.Delay})
		}
		assert.Equal(t, want, rank(addrs))
		assert.Equal(t, "/ip4/127.0.0.1/udp/4001/quic-v1", want[0].addr)
	})
	t.Run("public TCP is not preferred", func(t *testing.T) {
		got := rank(mas("/ip4/203.0.113.7/tcp/4001", "/ip4/203.0.113.7/udp/4001/quic-v1"))
		assert.Equal(t, "/ip4/203.0.113.7/udp/4001/quic-v1", got[0].addr)
	})
	t.Run("nothing", func(t *testing.T) {
		assert.Empty(t, rank(nil))
	})
}

// newDualHost is a NewHost on 127.0.0.1 with TCP and QUIC.
func newDualHost(t *testing.T) host.Host {
	t.Helper()
	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	h, err := NewHost(context.Background(), HostConfig{PrivKey: priv, ListenAddrs: ListenAddrs("127.0.0.1", 0)})
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// TestHostsOnLANConnectOverTCP: given both of a local peer's addresses,
// NewHost's hosts end up with one connection, over TCP.
func TestHostsOnLANConnectOverTCP(t *testing.T) {
	a, b := newDualHost(t), newDualHost(t)
	var kinds []string
	for _, ad := range b.Addrs() {
		kinds = append(kinds, TransportName(ad.String()))
	}
	require.ElementsMatch(t, []string{"tcp", "quic-v1"}, kinds, "b offers both")
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, a.Connect(ctx, peer.AddrInfo{ID: b.ID(), Addrs: b.Addrs()}))
	conns := a.Network().ConnsToPeer(b.ID())
	require.Len(t, conns, 1, "one connection, no QUIC twin")
	assert.Equal(t, "tcp", TransportName(conns[0].RemoteMultiaddr().String()))
}

// TestLANFallsBackToQUIC: a local peer whose TCP address refuses is reached
// over QUIC.
func TestLANFallsBackToQUIC(t *testing.T) {
	a, b := newDualHost(t), newDualHost(t)
	// A TCP port on 127.0.0.1 that nothing listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closed, err := manet.FromNetAddr(l.Addr())
	require.NoError(t, err)
	require.NoError(t, l.Close())
	addrs := []ma.Multiaddr{closed}
	for _, ad := range b.Addrs() {
		if TransportName(ad.String()) == "quic-v1" {
			addrs = append(addrs, ad)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, a.Connect(ctx, peer.AddrInfo{ID: b.ID(), Addrs: addrs}))
	conns := a.Network().ConnsToPeer(b.ID())
	require.Len(t, conns, 1)
	assert.Equal(t, "quic-v1", TransportName(conns[0].RemoteMultiaddr().String()))
}
