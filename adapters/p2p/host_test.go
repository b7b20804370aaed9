package p2p

import (
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/domain/mq"
)

func TestLoadOrCreateIdentity(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data", "identity.key")
	k1, err := LoadOrCreateIdentity(path)
	require.NoError(t, err)
	k2, err := LoadOrCreateIdentity(path)
	require.NoError(t, err)
	id1, err := peer.IDFromPrivateKey(k1)
	require.NoError(t, err)
	id2, err := peer.IDFromPrivateKey(k2)
	require.NoError(t, err)
	assert.Equal(t, id1, id2, "the identity is stable across runs")
	assert.True(t, k1.Type() == crypto.Ed25519, "Ed25519 key, got %s", k1.Type())
	if runtime.GOOS != "windows" {
		fi, err := os.Stat(path)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	}
	left, err := filepath.Glob(filepath.Join(filepath.Dir(path), ".identity-*"))
	require.NoError(t, err)
	assert.Empty(t, left, "no temporary file is left behind")
}

func TestLoadOrCreateIdentityExisting(t *testing.T) {
	dir := t.TempDir()
	ed, _, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	edRaw, err := crypto.MarshalPrivateKey(ed)
	require.NoError(t, err)
	secp, _, err := crypto.GenerateSecp256k1Key(rand.Reader)
	require.NoError(t, err)
	secpRaw, err := crypto.MarshalPrivateKey(secp)
	require.NoError(t, err)

	cases := []struct {
		name    string
		data    []byte
		mode    os.FileMode
		wantErr string
	}{
		{"OpenModeIsNarrowed", edRaw, 0o644, ""},
		{"Garbage", []byte("not a key"), 0o600, "decode"},
		{"NotEd25519", secpRaw, 0o600, "want Ed25519"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, c.name+".key")
			require.NoError(t, os.WriteFile(path, c.data, c.mode))
			require.NoError(t, os.Chmod(path, c.mode))
			k, err := LoadOrCreateIdentity(path)
			if c.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), c.wantErr)
				return
			}
			require.NoError(t, err)
			assert.True(t, k.Equals(ed), "the existing key is loaded, not replaced")
			if runtime.GOOS != "windows" {
				fi, err := os.Stat(path)
				require.NoError(t, err)
				assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
			}
		})
	}
}

func TestListenAddrs(t *testing.T) {
	cases := []struct {
		name string
		ip   string
		port int
		want []string
	}{
		{"IPv4", "0.0.0.0", 4001, []string{"/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"}},
		{"AnyPort", "127.0.0.1", 0, []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"}},
		{"IPv6", "::", 4001, []string{"/ip6/::/tcp/4001", "/ip6/::/udp/4001/quic-v1"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			assert.Equal(t, c.want, ListenAddrs(c.ip, c.port))
		})
	}
}

func TestNewHostRejectsBadConfig(t *testing.T) {
	secp, _, err := crypto.GenerateSecp256k1Key(rand.Reader)
	require.NoError(t, err)
	ed, _, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	cases := []struct {
		name string
		cfg  HostConfig
	}{
		{"NoKey", HostConfig{}},
		{"NotEd25519", HostConfig{PrivKey: secp}},
		{"BadPort", HostConfig{PrivKey: ed, ListenPort: 70000}},
		{"HighBelowLow", HostConfig{PrivKey: ed, ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}, ConnMgrLow: 10, ConnMgrHigh: 5}},
		{"BadAddr", HostConfig{PrivKey: ed, ListenAddrs: []string{"not-a-multiaddr"}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, err := NewHost(context.Background(), c.cfg)
			if h != nil {
				_ = h.Close()
			}
			assert.Error(t, err)
		})
	}
}

// TestNewHostAdmitsWhatConnMgrKeeps: the resource manager admits as many
// connections as the connection manager keeps (libp2p's own check, which
// only logs a warning when they conflict), and more when asked.
func TestNewHostAdmitsWhatConnMgrKeeps(t *testing.T) {
	for _, c := range []struct {
		name      string
		low, high int
	}{{"defaults", 0, 0}, {"large", 2000, 4000}} {
		t.Run(c.name, func(t *testing.T) {
			priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
			require.NoError(t, err)
			h, err := NewHost(context.Background(), HostConfig{PrivKey: priv,
				ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}, ConnMgrLow: c.low, ConnMgrHigh: c.high})
			require.NoError(t, err)
			defer h.Close()
			high := max(c.high, DefaultConnMgrHigh)
			lim, ok := h.Network().ResourceManager().(connmgr.GetConnLimiter)
			require.True(t, ok, "the resource manager reports its connection limit")
			assert.GreaterOrEqual(t, lim.GetConnLimit(), high)
			assert.NoError(t, h.ConnManager().(interface {
				CheckLimit(connmgr.GetConnLimiter) error
			}).CheckLimit(lim))
		})
	}
}

// TestAdmitConns raises only the system's connection limits, only where
// they are lower than needed, and never lifts a block or an unlimited value.
func TestAdmitConns(t *testing.T) {
	limits := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&limits)
	small := limits.Scale(128<<20, 256) // a small machine: low limits
	in := small.ToPartialLimitConfig()
	require.Less(t, int(in.System.ConnsInbound), 800, "premise: the small machine admits fewer")

	got := admitConns(small, 800).ToPartialLimitConfig()
	assert.EqualValues(t, 1000, got.System.Conns)
	assert.EqualValues(t, 800, got.System.ConnsInbound)
	assert.EqualValues(t, 800, got.System.ConnsOutbound)
	want := in
	want.System.Conns, want.System.ConnsInbound, want.System.ConnsOutbound = 1000, 800, 800
	assert.Equal(t, want, got, "every other limit is libp2p's")

	// Limits already high enough are kept.
	assert.Equal(t, in, admitConns(small, 2).ToPartialLimitConfig())

	// Unlimited stays unlimited, a block stays a block.
	p := in
	p.System.Conns, p.System.ConnsInbound = rcmgr.Unlimited, rcmgr.BlockAllLimit
	odd := admitConns(p.Build(small), 800).ToPartialLimitConfig()
	assert.Equal(t, rcmgr.Unlimited, odd.System.Conns)
	assert.Equal(t, rcmgr.BlockAllLimit, odd.System.ConnsInbound)
	assert.EqualValues(t, 800, odd.System.ConnsOutbound)
}

// TestQUIC: the default listen set includes QUIC v1, and the bus works over it.
func TestQUIC(t *testing.T) {
	mk := func() *MQTransport {
		priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
		require.NoError(t, err)
		h, err := NewHost(context.Background(), HostConfig{PrivKey: priv, ListenAddrs: ListenAddrs("127.0.0.1", 0)})
		require.NoError(t, err)
		t.Cleanup(func() { _ = h.Close() })
		return newTransport(t, h, MQOptions{})
	}
	a, b := mk(), mk()
	var quic []string
	for _, ad := range b.h.Addrs() {
		if TransportName(ad.String()) == "quic-v1" {
			quic = append(quic, ad.String()+"/p2p/"+b.h.ID().String())
		}
	}
	require.NotEmpty(t, quic, "b listens on QUIC")
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, ConnectPeers(ctx, a.h, quic))
	ackAll(b, nil)
	f := testMsg("over-quic", 1)
	require.NoError(t, a.Send(b.Self(), f))
	ev := nextEvent(t, a, isFrame)
	assert.Equal(t, mq.AckFor(&f), ev.Frame)
	conns := a.h.Network().ConnsToPeer(b.h.ID())
	require.NotEmpty(t, conns)
	assert.Contains(t, conns[0].RemoteMultiaddr().String(), "quic-v1")
}

func TestConnectPeers(t *testing.T) {
	a, b := newTestHost(t), newTestHost(t)
	ghost, _, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	ghostID, err := peer.IDFromPrivateKey(ghost)
	require.NoError(t, err)
	good := b.Addrs()[0].String() + "/p2p/" + b.ID().String()
	unreachable := "/ip4/127.0.0.1/tcp/1/p2p/" + ghostID.String()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	start := time.Now()
	err = ConnectPeers(ctx, a, []string{good, "garbage", unreachable, "/ip4/127.0.0.1/tcp/9/p2p/" + a.ID().String()})
	require.Error(t, err)
	assert.Contains(t, err.Error(), `"garbage"`)
	assert.Contains(t, err.Error(), ghostID.String())
	assert.NotContains(t, err.Error(), b.ID().String(), "the good peer is not reported")
	assert.Less(t, time.Since(start), DefaultDialTimeout+time.Second)
	assert.Equal(t, "Connected", a.Network().Connectedness(b.ID()).String())
	assert.NoError(t, ConnectPeers(ctx, a, nil))
}
