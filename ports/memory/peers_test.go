package memory_test

import (
	"testing"

	"github.com/goop-p2p/goop/ports"
	"github.com/goop-p2p/goop/ports/memory"
	"github.com/goop-p2p/goop/ports/storetest"
)

func TestPeerStoreContract(t *testing.T) {
	storetest.RunPeerStoreContract(t, func(*testing.T) ports.Store { return memory.NewStore() })
}
