package rendezvous

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/domain/presence"
	"github.com/goop-p2p/goop/ports"
)

func newDiscovery(t *testing.T, url string, h host.Host, key crypto.PrivKey, tune func(*DiscoveryConfig)) *Discovery {
	t.Helper()
	cfg := DiscoveryConfig{URLs: []string{url}, Key: key, Host: h,
		Client: ClientConfig{MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}}
	if tune != nil {
		tune(&cfg)
	}
	d, err := NewDiscovery(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = d.Close() })
	return d
}

// selfPresence is what the node's presence core publishes for h.
func selfPresence(h host.Host, label string) presence.Msg {
	return presence.Msg{Type: presence.TypeOnline, PeerID: presence.PeerID(h.ID().String()), Content: label,
		Addrs: HostAddrs(h, MaxAddrs), TS: time.Now().UnixMilli()}
}

// TestDiscoveryThreeNodes: three nodes whose discoveries know only the
// server's URL publish, report each other as verified WAN presence, and
// connect to each other.
func TestDiscoveryThreeNodes(t *testing.T) {
	srv := startServer(t, ServerConfig{})
	type node struct {
		h    host.Host
		d    *Discovery
		conn <-chan mq.PeerID
	}
	var nodes []node
	for range 3 {
		h, key := newHost(t)
		conn := make(chan mq.PeerID, 16)
		h.Network().Notify(&network.NotifyBundle{ConnectedF: func(_ network.Network, c network.Conn) {
			select {
			case conn <- mq.PeerID(c.RemotePeer().String()):
			default:
			}
		}})
		nodes = append(nodes, node{h: h, d: newDiscovery(t, srv.URL, h, key, nil), conn: conn})
	}
	assert.Zero(t, srv.Stats().Clients, "nothing runs before the first Publish")
	for i, n := range nodes {
		require.NoError(t, n.d.Publish(selfPresence(n.h, fmt.Sprint("node", i))))
	}
	for i, n := range nodes {
		want := map[presence.PeerID]bool{}
		for j, o := range nodes {
			if j != i {
				want[presence.PeerID(o.h.ID().String())] = true
			}
		}
		seen := map[presence.PeerID]bool{}
		for len(seen) < len(want) {
			ev := recv(t, n.d.Events(), fmt.Sprintf("node%d to hear of the others", i))
			require.Equal(t, ports.PresenceReceived, ev.Kind)
			assert.Equal(t, presence.SourceWAN, ev.Source)
			assert.True(t, ev.Verified, "the client checked the signature")
			assert.NotEmpty(t, ev.Msg.Sig)
			require.True(t, want[ev.Msg.PeerID], "only the others: %s", ev.Msg.PeerID)
			require.NoError(t, ev.Msg.Validate(), "what reaches the node is a valid presence")
			seen[ev.Msg.PeerID] = true
		}
		connected := map[mq.PeerID]bool{}
		for len(connected) < len(want) {
			connected[recv(t, n.conn, fmt.Sprintf("node%d to be connected to the others", i))] = true
		}
	}
	assert.Equal(t, 3, srv.Stats().VerifiedPeers)
	assert.Equal(t, 3, srv.Stats().Clients)
}

// TestDiscoveryOfflineAndClose: an offline Publish makes the clients
// publish offline and stop; later Publishes are ignored; Close closes
// Events; Publish after Close is ErrClosed.
func TestDiscoveryOfflineAndClose(t *testing.T) {
	srv := startServer(t, ServerConfig{})
	h, key := newHost(t)
	// A long heartbeat: only Publish makes the client publish in time.
	d := newDiscovery(t, srv.URL, h, key, func(c *DiscoveryConfig) { c.Client.Heartbeat = time.Hour })
	m := selfPresence(h, "leaver")
	require.NoError(t, d.Publish(m))
	got := recv(t, srv.pubs, "online")
	assert.Equal(t, TypeOnline, got.Type)
	assert.True(t, got.Verified)
	assert.Equal(t, "leaver", got.Content)

	m.Type, m.Content = TypeUpdate, "renamed"
	require.NoError(t, d.Publish(m))
	for got = recv(t, srv.pubs, "the update"); got.Content != "renamed"; got = recv(t, srv.pubs, "the update") {
	}
	assert.True(t, got.Verified, "published at once, not at the next heartbeat")

	m.Type = TypeOffline
	require.NoError(t, d.Publish(m))
	for got = recv(t, srv.pubs, "offline"); got.Type != TypeOffline; got = recv(t, srv.pubs, "offline") {
	}
	assert.Zero(t, srv.Stats().Peers)
	m.Type = TypeUpdate
	assert.NoError(t, d.Publish(m), "ignored after the offline")

	require.NoError(t, d.Close())
	_, open := <-d.Events()
	assert.False(t, open, "Events is closed")
	assert.ErrorIs(t, d.Publish(m), ports.ErrClosed)
	assert.NoError(t, d.Close(), "idempotent")
}

// TestDiscoveryDialsOnlyPeersItHeardOf: Dial hints for a peer no server
// told of are left to LAN discovery; a peer a server told of is dialed.
func TestDiscoveryDialsOnlyPeersItHeardOf(t *testing.T) {
	srv := startServer(t, ServerConfig{})
	h, key := newHost(t)
	d := newDiscovery(t, srv.URL, h, key, nil)
	other, _ := newHost(t)
	addrs := HostAddrs(other, MaxAddrs)
	d.Dial(context.Background(), mq.PeerID(other.ID().String()), addrs)
	assert.Zero(t, d.Stats().Dials, "not heard of through a rendezvous")
	assert.NotEqual(t, network.Connected, h.Network().Connectedness(other.ID()))

	// A compat (unsigned) presence of the other peer on the server.
	compat := PresenceMsg{Type: TypeOnline, PeerID: presence.PeerID(other.ID().String()), Content: "compat", Addrs: addrs}
	require.Equal(t, http.StatusNoContent, publish(t, srv.URL, compat, ""))
	require.NoError(t, d.Publish(selfPresence(h, "dialer")))
	ev := recv(t, d.Events(), "the compat presence")
	assert.False(t, ev.Verified, "unsigned presence is reported unverified")
	assert.Equal(t, "compat", ev.Msg.Content)
	require.Eventually(t, func() bool { return h.Network().Connectedness(other.ID()) == network.Connected },
		waitFor, 10*time.Millisecond, "the peer the server told of is dialed")
	assert.EqualValues(t, 1, d.Stats().Dials)
}

// TestDiscoveryEventsAreBounded: a node that does not read Events loses
// events, never blocks the client.
func TestDiscoveryEventsAreBounded(t *testing.T) {
	srv := startServer(t, ServerConfig{})
	h, key := newHost(t)
	d := newDiscovery(t, srv.URL, nil, key, func(c *DiscoveryConfig) { c.EventQueue = 2 })
	for i := range 5 {
		require.Equal(t, http.StatusNoContent, publish(t, srv.URL, signed(t, newKey(t), TypeOnline, fmt.Sprint("p", i), time.Now()), ""))
	}
	require.NoError(t, d.Publish(selfPresence(h, "slow reader")))
	require.Eventually(t, func() bool { return d.Stats().EventsDropped == 3 }, waitFor, 10*time.Millisecond)
	assert.EqualValues(t, 2, d.Stats().Received)
	require.NoError(t, d.Close(), "Close does not hang on a full queue")
}

func TestNewDiscoveryErrors(t *testing.T) {
	key := newKey(t)
	_, err := NewDiscovery(DiscoveryConfig{Key: key})
	assert.ErrorContains(t, err, "no server URL")
	_, err = NewDiscovery(DiscoveryConfig{URLs: []string{"ftp://x"}, Key: key})
	assert.ErrorContains(t, err, "is not an http")
	_, err = NewDiscovery(DiscoveryConfig{URLs: []string{"http://x"}})
	assert.ErrorContains(t, err, "no key")
}

func TestRankAddrs(t *testing.T) {
	in := []string{"/ip4/127.0.0.1/tcp/1", "garbage", "/ip4/192.168.1.2/tcp/1", "/ip4/203.0.113.5/tcp/1", "/dns4/example.com/tcp/1"}
	assert.Equal(t, []string{"/ip4/203.0.113.5/tcp/1", "/ip4/192.168.1.2/tcp/1", "/dns4/example.com/tcp/1", "/ip4/127.0.0.1/tcp/1"},
		rankAddrs(in), "ranked; what does not parse is left out")
	many := make([]string, MaxAddrs+5)
	for i := range many {
		many[i] = fmt.Sprintf("/ip4/10.0.0.%d/tcp/1", i)
	}
	assert.Len(t, rankAddrs(many), MaxAddrs)
}
