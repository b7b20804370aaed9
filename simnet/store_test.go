package simnet

import (
	"testing"

	"github.com/goop-p2p/goop/ports"
	"github.com/goop-p2p/goop/ports/storetest"
)

// TestStoreContract proves the sim store keeps the semantics every store must.
func TestStoreContract(t *testing.T) {
	storetest.RunStoreContract(t, func(*testing.T) ports.Store { return NewStore() })
}

// TestPeerStoreContract proves the sim store keeps the peer cache as every
// store must (Batch.Peers applied in order, LoadPeers returns the rows).
func TestPeerStoreContract(t *testing.T) {
	storetest.RunPeerStoreContract(t, func(*testing.T) ports.Store { return NewStore() })
}
