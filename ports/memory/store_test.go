package memory_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/domain/group"
	"github.com/goop-p2p/goop/ports"
	"github.com/goop-p2p/goop/ports/memory"
	"github.com/goop-p2p/goop/ports/storetest"
)

func TestStoreContract(t *testing.T) {
	storetest.RunStoreContract(t, func(*testing.T) ports.Store { return memory.NewStore() })
}

func TestGroupHistoryIsBounded(t *testing.T) {
	g := memory.NewGroups()
	for i := 0; i < 3*memory.HistoryLimit; i++ {
		for _, id := range []string{"g1", "g2"} {
			h := group.HistoryEntry{GroupID: id, Payload: []byte(fmt.Sprint(i))}
			g.Apply([]group.Change{{Kind: group.AppendHistory, GroupID: id, History: &h}})
		}
	}
	assert.LessOrEqual(t, len(g.History), 4*memory.HistoryLimit, "at most twice the limit per group in memory")
	var last1 string
	n1 := 0
	for _, h := range g.History {
		if h.GroupID == "g1" {
			n1++
			last1 = string(h.Payload)
		}
	}
	assert.GreaterOrEqual(t, n1, memory.HistoryLimit, "never fewer than the limit")
	assert.Equal(t, fmt.Sprint(3*memory.HistoryLimit-1), last1, "the newest kept")

	s := memory.NewStore()
	for i := 0; i < memory.HistoryLimit+5; i++ {
		h := group.HistoryEntry{GroupID: "g", Payload: []byte(fmt.Sprint(i))}
		require.NoError(t, s.Apply(context.Background(), ports.Batch{Groups: []group.Change{{Kind: group.AppendHistory, GroupID: "g", History: &h}}}))
	}
	got, err := s.GroupHistory(context.Background(), "g", 0)
	require.NoError(t, err)
	require.Len(t, got, memory.HistoryLimit)
	assert.Equal(t, "5", string(got[0].Payload), "oldest beyond the limit not returned")
}
