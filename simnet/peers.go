package simnet

import (
	"context"

	"github.com/goop-p2p/goop/domain/presence"
)

// LoadPeers implements ports.Store. The simulated store does not keep the
// peer cache yet (Apply ignores Batch.Peers, and simnet nodes announce no
// presence): a restarted simulated peer starts with an empty peer table.
// The simnet discovery scenario is to keep it (memory.Peers does).
func (s *Store) LoadPeers(context.Context) ([]presence.Peer, error) { return nil, nil }
