package sqlstore

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/domain/presence"
	"github.com/goop-p2p/goop/ports"
	"github.com/goop-p2p/goop/ports/storetest"
)

func TestPeerStoreContract(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newDB func(testing.TB) Config) {
		storetest.RunPeerStoreContract(t, func(t *testing.T) ports.Store { return mustOpen(t, newDB(t)) })
	})
}

// TestPeerCacheSurvivesReopen: what a node knew of its peers is there after
// a restart.
func TestPeerCacheSurvivesReopen(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newDB func(testing.TB) Config) {
		cfg := newDB(t)
		s := mustOpen(t, cfg)
		p := storetest.TestPeer("12D3KooWA")
		require.NoError(t, s.Apply(context.Background(), ports.Batch{Peers: []presence.Change{storetest.PutPeer(p)}}))
		require.NoError(t, s.Close())
		s = mustOpen(t, cfg)
		defer s.Close()
		assert.Equal(t, []presence.Peer{*p}, storetest.LoadPeers(t, s))
	})
}

// TestBadPeerChangeRefusesWholeBatch: a batch with an invalid peer change
// stores none of its changes, bus changes included.
func TestBadPeerChangeRefusesWholeBatch(t *testing.T) {
	bad := func(mut func(c *presence.Change)) presence.Change {
		c := storetest.PutPeer(storetest.TestPeer("12D3KooWBad"))
		mut(&c)
		return c
	}
	tests := map[string]presence.Change{
		"invalid peer id":  {Kind: presence.DeletePeer, ID: "not/a peer"},
		"missing row":      {Kind: presence.PutPeer, ID: "12D3KooWBad"},
		"row of another":   bad(func(c *presence.Change) { c.ID = "12D3KooWOther" }),
		"NUL in the label": bad(func(c *presence.Change) { c.Peer.Label = "a\x00b" }),
		"invalid UTF-8":    bad(func(c *presence.Change) { c.Peer.Addrs = []string{"/ip4/\xff"} }),
		"unknown kind":     {Kind: 99, ID: "12D3KooWBad"},
	}
	forEachBackend(t, func(t *testing.T, newDB func(testing.TB) Config) {
		for name, c := range tests {
			t.Run(name, func(t *testing.T) {
				s := mustOpen(t, newDB(t))
				defer s.Close()
				good := storetest.TestPeer("12D3KooWGood")
				err := s.Apply(context.Background(), ports.Batch{
					Bus:   []mq.Change{{Kind: mq.SetEpoch, Epoch: "e1"}},
					Peers: []presence.Change{storetest.PutPeer(good), c},
				})
				require.Error(t, err)
				assert.Contains(t, err.Error(), "peer change 1")
				assert.Empty(t, storetest.LoadPeers(t, s))
				assert.Empty(t, storetest.Load(t, s).Epoch)
			})
		}
	})
}
