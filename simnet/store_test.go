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
