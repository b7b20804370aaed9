package storetest

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/domain/presence"
	"github.com/goop-p2p/goop/ports"
)

// RunPeerStoreContract runs the peer cache scenarios (Batch.Peers and
// LoadPeers) as subtests. open must return a new, empty store for each call;
// RunPeerStoreContract closes it.
func RunPeerStoreContract(t *testing.T, open func(t *testing.T) ports.Store) {
	t.Helper()
	for _, sc := range peerScenarios {
		t.Run(sc.name, func(t *testing.T) {
			st := open(t)
			t.Cleanup(func() { assert.NoError(t, st.Close()) })
			sc.run(t, st)
		})
	}
}

// TestPeer returns a peer row with every field set, times on whole
// milliseconds in UTC.
func TestPeer(id presence.PeerID) *presence.Peer {
	return &presence.Peer{ID: id, Label: "peer " + string(id) + " ☕", Email: "p@example.com", AvatarHash: "ab12",
		ActiveTemplate: "blog", PublicKey: "pk-" + string(id), EncryptionSupported: true, Version: "0.1.0",
		Addrs: []string{"/ip4/10.0.0.1/tcp/4001", "/ip4/10.0.0.1/udp/4001/quic-v1"}, Verified: true,
		Source: presence.SourceLAN, Online: false, LastSeen: baseTime, OfflineSince: baseTime.Add(20 * time.Second),
		TS: baseTime.UnixMilli() - 5}
}

// PutPeer returns the change storing p.
func PutPeer(p *presence.Peer) presence.Change {
	return presence.Change{Kind: presence.PutPeer, ID: p.ID, Peer: p}
}

// DeletePeer returns the change deleting the row of id.
func DeletePeer(id presence.PeerID) presence.Change {
	return presence.Change{Kind: presence.DeletePeer, ID: id}
}

// LoadPeers reads st's peer cache.
func LoadPeers(t *testing.T, st ports.Store) []presence.Peer {
	t.Helper()
	ps, err := st.LoadPeers(context.Background())
	require.NoError(t, err)
	return ps
}

func applyPeers(t *testing.T, st ports.Store, cs ...presence.Change) {
	t.Helper()
	require.NoError(t, st.Apply(context.Background(), ports.Batch{Peers: cs}))
}

var peerScenarios = []scenario{
	{"PeersEmptyStore", func(t *testing.T, st ports.Store) {
		assert.Empty(t, LoadPeers(t, st))
	}},
	{"PeerRoundTripsEveryField", func(t *testing.T, st ports.Store) {
		off := TestPeer("12D3KooWOff")
		on := TestPeer("12D3KooWOn")
		on.Online, on.OfflineSince, on.Addrs, on.Verified, on.Source = true, time.Time{}, nil, false, presence.SourceWAN
		applyPeers(t, st, PutPeer(off), PutPeer(on))
		assert.Equal(t, []presence.Peer{*off, *on}, LoadPeers(t, st))
	}},
	{"PeerPutReplacesAndDeleteRemoves", func(t *testing.T, st ports.Store) {
		a, b := TestPeer("12D3KooWA"), TestPeer("12D3KooWB")
		applyPeers(t, st, PutPeer(a), PutPeer(b))
		a2 := TestPeer("12D3KooWA")
		a2.Label, a2.Online, a2.OfflineSince = "renamed", true, time.Time{}
		applyPeers(t, st, PutPeer(a2), DeletePeer("12D3KooWB"), DeletePeer("12D3KooWNeverStored"))
		assert.Equal(t, []presence.Peer{*a2}, LoadPeers(t, st))
	}},
	{"PeerChangesOfOneBatchApplyInOrder", func(t *testing.T, st ports.Store) {
		a, b := TestPeer("12D3KooWA"), TestPeer("12D3KooWB")
		applyPeers(t, st, PutPeer(b))
		// Put then delete, and delete then put, in one batch.
		applyPeers(t, st, PutPeer(a), DeletePeer("12D3KooWA"), DeletePeer("12D3KooWB"), PutPeer(b))
		assert.Equal(t, []presence.Peer{*b}, LoadPeers(t, st))
	}},
	{"PeersSortedByByteOrder", func(t *testing.T, st ports.Store) {
		var cs []presence.Change
		for _, id := range []presence.PeerID{"abc", "Zed", "12D3KooWX", "QmY"} {
			cs = append(cs, PutPeer(TestPeer(id)))
		}
		applyPeers(t, st, cs...)
		var ids []presence.PeerID
		for _, p := range LoadPeers(t, st) {
			ids = append(ids, p.ID)
		}
		assert.Equal(t, []presence.PeerID{"12D3KooWX", "QmY", "Zed", "abc"}, ids)
	}},
	{"PeersWithBusChangesInOneBatch", func(t *testing.T, st ports.Store) {
		p := TestPeer("12D3KooWA")
		require.NoError(t, st.Apply(context.Background(), ports.Batch{
			Bus: []mq.Change{{Kind: mq.SetEpoch, Epoch: "e1"}}, Peers: []presence.Change{PutPeer(p)}}))
		assert.Equal(t, []presence.Peer{*p}, LoadPeers(t, st))
		assert.Equal(t, "e1", Load(t, st).Epoch)
	}},
	{"ManyPeers", func(t *testing.T, st ports.Store) {
		var cs []presence.Change
		for i := 0; i < 1200; i++ {
			cs = append(cs, PutPeer(TestPeer(presence.PeerID("12D3KooW"+strconv.Itoa(i)))))
		}
		applyPeers(t, st, cs...)
		assert.Len(t, LoadPeers(t, st), 1200)
		var dels []presence.Change
		for _, c := range cs[:700] {
			dels = append(dels, DeletePeer(c.ID))
		}
		applyPeers(t, st, dels...)
		assert.Len(t, LoadPeers(t, st), 500)
	}},
}
