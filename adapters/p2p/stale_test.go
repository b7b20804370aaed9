package p2p

import (
	"context"
	"crypto/rand"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/stretchr/testify/require"
)

// TestLiveOlderConnectionIsKept: a peer with two live connections to us
// (here two hosts of one identity, as two dials crossing each other leave)
// answers the probe of the older one, and both stay.
func TestLiveOlderConnectionIsKept(t *testing.T) {
	hr := newTestHost(t)
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	twin := func() host.Host {
		h, err := NewHost(context.Background(), HostConfig{PrivKey: key, ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}})
		require.NoError(t, err)
		t.Cleanup(func() { _ = h.Close() })
		return h
	}
	h1, h2 := twin(), twin()
	connect(t, h1, hr)
	connect(t, h2, hr)
	r := hr.(*reapingHost)
	require.Eventually(t, func() bool { return r.rounds.Load() == 1 }, waitFor, time.Millisecond, "the older connection is probed")
	require.Len(t, hr.Network().ConnsToPeer(h1.ID()), 2, "a live connection is not closed")
}
