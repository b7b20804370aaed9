//go:build linux || darwin

package p2p

import (
	"context"
	"crypto/rand"
	"errors"
	"sync"
	"syscall"
	"testing"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/stretchr/testify/require"
)

// TestNewHostAcceptsManyInbound: a host (a group's host, say) accepts more
// inbound connections than libp2p's machine-scaled limits admit (252 with
// 24 GiB and more; fewer on smaller machines), even when they all come at
// once (its members after it restarted), beyond the 79 connections in
// handshake it admits at a time: 300 peers dial at once through Connect,
// and all stay.
func TestNewHostAcceptsManyInbound(t *testing.T) {
	const n = 300
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < 4*n {
		t.Skipf("open-files limit %d: %d connections need about %d descriptors in this process", lim.Cur, n, 2*n)
	}
	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	h, err := NewHost(context.Background(), HostConfig{PrivKey: priv, ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}})
	require.NoError(t, err)
	defer h.Close()
	target := peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()}

	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		c, err := libp2p.New(libp2p.NoListenAddrs, libp2p.Transport(tcp.NewTCPTransport), libp2p.DisableMetrics())
		require.NoError(t, err)
		defer c.Close()
		wg.Add(1)
		go func(c host.Host) {
			defer wg.Done()
			<-start
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			errs[i] = Connect(ctx, c, target)
		}(c)
	}
	close(start)
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	require.Len(t, h.Network().Peers(), n)
}
