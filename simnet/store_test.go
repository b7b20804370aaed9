package simnet

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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

// TestRowLog: whatever the writes and compactions, replaying the log gives
// the last value written per slot, and the log stays within twice the
// distinct slots.
func TestRowLog(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var l rowLog[int64]
	want := map[int32]int64{}
	for i := 0; i < 50_000; i++ {
		slot := int32(r.IntN(300) - 20) // some slots < 0: ids the world does not know
		v := r.Int64()
		l.set(slot, v)
		want[slot] = v
		if i%997 == 0 || i == 49_999 {
			got := map[int32]int64{}
			for _, row := range l.rows {
				got[row.slot] = row.v
			}
			require.Equal(t, want, got, "after %d writes", i+1)
			assert.LessOrEqual(t, len(l.rows), 2*len(want)+64)
		}
	}
}
