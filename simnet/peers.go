package simnet

import (
	"context"

	"github.com/goop-p2p/goop/domain/presence"
)

// LoadPeers implements ports.Store: the cached peer table as Apply left it
// (memory.Peers semantics, sorted by peer id), so that a restarted simulated
// peer starts from the table it had persisted before its crash.
func (s *Store) LoadPeers(context.Context) ([]presence.Peer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.table.Snapshot(), nil
}
