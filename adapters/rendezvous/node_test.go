package rendezvous

import (
	"context"
	"net"
	"strconv"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/adapters/p2p"
)

func newHost(t *testing.T) (host.Host, crypto.PrivKey) {
	t.Helper()
	key := newKey(t)
	h, err := p2p.NewHost(context.Background(), p2p.HostConfig{PrivKey: key, ListenAddrs: p2p.ListenAddrs("127.0.0.1", 0)})
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.Close() })
	return h, key
}

// connected returns a channel that gets the id of every peer h connects to.
func connected(h host.Host) <-chan peer.ID {
	c := make(chan peer.ID, 64)
	h.Network().Notify(&network.NotifyBundle{ConnectedF: func(_ network.Network, conn network.Conn) {
		select {
		case c <- conn.RemotePeer():
		default:
		}
	}})
	return c
}

func TestListenNamesTheKey(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	_, port, _ := net.SplitHostPort(busy.Addr().String())
	p, _ := strconv.Atoi(port)
	_, err = Listen("127.0.0.1", p)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "presence.rendezvous_port: 127.0.0.1:"+port+" is in use")
}

func TestPresenceAddrInfo(t *testing.T) {
	key, other := newKey(t), newKey(t)
	id := idOf(t, key)
	m := PresenceMsg{PeerID: id, Addrs: []string{
		"/ip4/127.0.0.1/tcp/1",
		"/ip4/127.0.0.1/tcp/2/p2p/" + string(id),
		"/ip4/127.0.0.1/tcp/3/p2p/" + string(idOf(t, other)),
		"not a multiaddr",
	}}
	ai, err := AddrInfo(&m)
	require.NoError(t, err)
	assert.Equal(t, string(id), ai.ID.String())
	require.Len(t, ai.Addrs, 2)
	assert.Equal(t, "/ip4/127.0.0.1/tcp/1", ai.Addrs[0].String())
	assert.Equal(t, "/ip4/127.0.0.1/tcp/2", ai.Addrs[1].String())
}

func TestSignedBytesCoverEveryField(t *testing.T) {
	key := newKey(t)
	base := PresenceMsg{Type: TypeOnline, Content: "c", Email: "e@x", AvatarHash: "h", ActiveTemplate: "t",
		Addrs: []string{"/ip4/1.2.3.4/tcp/1"}, PublicKey: "pk", EncryptionSupported: true, GoopClientVersion: "v", TS: 42}
	require.NoError(t, Sign(&base, key))
	require.NoError(t, VerifySignature(&base))
	mutations := map[string]func(m *PresenceMsg){
		"type":                func(m *PresenceMsg) { m.Type = TypeUpdate },
		"content":             func(m *PresenceMsg) { m.Content = "d" },
		"email":               func(m *PresenceMsg) { m.Email = "f@x" },
		"avatarHash":          func(m *PresenceMsg) { m.AvatarHash = "i" },
		"activeTemplate":      func(m *PresenceMsg) { m.ActiveTemplate = "u" },
		"addrs":               func(m *PresenceMsg) { m.Addrs = append(m.Addrs, "/ip4/1.2.3.4/tcp/2") },
		"publicKey":           func(m *PresenceMsg) { m.PublicKey = "pl" },
		"encryptionSupported": func(m *PresenceMsg) { m.EncryptionSupported = false },
		"goopClientVersion":   func(m *PresenceMsg) { m.GoopClientVersion = "w" },
		"ts":                  func(m *PresenceMsg) { m.TS = 43 },
		"field boundaries":    func(m *PresenceMsg) { m.Content, m.Email = "ce", "@x" },
	}
	for name, mutate := range mutations {
		t.Run(name, func(t *testing.T) {
			m := base
			m.Addrs = append([]string(nil), base.Addrs...)
			mutate(&m)
			assert.ErrorIs(t, VerifySignature(&m), ErrBadSignature)
		})
	}
	m := base
	m.Verified = true
	assert.NoError(t, VerifySignature(&m), "verified is not covered")
}
