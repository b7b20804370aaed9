package memory

import (
	"context"
	"slices"
	"strings"

	"github.com/goop-p2p/goop/domain/presence"
)

// Peers holds the cached peer table in memory, applying presence.Change
// values as a durable store must. The zero value is an empty table. Not safe
// for concurrent use (Store guards it with its mutex).
type Peers struct {
	rows map[presence.PeerID]presence.Peer
}

// Apply applies changes in order.
func (s *Peers) Apply(cs []presence.Change) {
	for _, c := range cs {
		switch c.Kind {
		case presence.PutPeer:
			if c.Peer == nil {
				continue
			}
			if s.rows == nil {
				s.rows = map[presence.PeerID]presence.Peer{}
			}
			p := *c.Peer
			p.Addrs = slices.Clone(p.Addrs)
			s.rows[c.ID] = p
		case presence.DeletePeer:
			delete(s.rows, c.ID)
		}
	}
}

// Snapshot returns the rows sorted by peer id (copies).
func (s *Peers) Snapshot() []presence.Peer {
	out := make([]presence.Peer, 0, len(s.rows))
	for _, p := range s.rows {
		p.Addrs = slices.Clone(p.Addrs)
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b presence.Peer) int { return strings.Compare(string(a.ID), string(b.ID)) })
	return out
}

// LoadPeers implements ports.Store.
func (s *Store) LoadPeers(context.Context) ([]presence.Peer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peers.Snapshot(), nil
}
