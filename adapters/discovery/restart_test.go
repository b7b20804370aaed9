package discovery

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
	"github.com/goop-p2p/goop/adapters/p2p"
	"github.com/goop-p2p/goop/domain/presence"
	"github.com/goop-p2p/goop/ports"
)

// heartbeat publishes h's presence on a every interval until the test ends.
func heartbeat(t *testing.T, a *Adapter, h host.Host, label string, every time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		tk := time.NewTicker(every)
		defer tk.Stop()
		for {
			_ = a.Publish(online(h, label))
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
			}
		}
	}()
}

// TestRestartedPeerHearsUsAgain: a peer that crashed (its connection to us
// left open, frozen: no FIN, no RST) and came back under the same identity on
// a new connection must hear our presence again, not only we its.
func TestRestartedPeerHearsUsAgain(t *testing.T) {
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	hB, err := p2p.NewHost(context.Background(), p2p.HostConfig{PrivKey: key,
		ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = hB.Close() })
	aB, err := New(context.Background(), hB, Config{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = aB.Close() })
	cB := collect(aB)
	heartbeat(t, aB, hB, "b", 100*time.Millisecond)

	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	hA := hostWithKey(t, priv)
	aA, err := New(context.Background(), hA, Config{})
	require.NoError(t, err)
	cA := collect(aA)
	heartbeat(t, aA, hA, "a", 100*time.Millisecond)

	// A reaches B through the proxy; both hear each other.
	bAddr, err := manet.ToNetAddr(hB.Addrs()[0])
	require.NoError(t, err)
	fz := nettest.NewFreezer(t, bAddr.String())
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, hA.Connect(ctx, peer.AddrInfo{ID: hB.ID(), Addrs: []ma.Multiaddr{fz.Addr(t)}}))
	cA.wait(t, "A hears B", presenceFrom(hB, presence.TypeOnline), nil)
	cB.wait(t, "B hears A", presenceFrom(hA, presence.TypeOnline), nil)

	// A crashes: its connection stays open at B, frozen.
	fz.Freeze()
	_ = aA.Close()
	_ = hA.Close()

	// A comes back with the same identity and connects to B directly.
	hA2 := hostWithKey(t, priv)
	aA2, err := New(context.Background(), hA2, Config{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = aA2.Close() })
	cA2 := collect(aA2)
	heartbeat(t, aA2, hA2, "a2", 100*time.Millisecond)
	connect(t, hA2, hB)
	cB.wait(t, "B hears A again", func(ev ports.DiscoveryEvent) bool {
		return presenceFrom(hA2, presence.TypeOnline)(ev) && ev.Msg.Content == "a2"
	}, nil)
	cA2.wait(t, "A hears B again", presenceFrom(hB, presence.TypeOnline), nil)
}
