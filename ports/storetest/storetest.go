// Package storetest is the behavioural contract of ports.Store, run by every
// implementation's tests (the in-memory fake and the SQL adapters) so that
// they all keep the semantics the bus and the group core rely on.
package storetest

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/ports"
)

// RunStoreContract runs the contract scenarios, bus then groups, as
// subtests. open must return a new, empty store for each call;
// RunStoreContract closes it. Group scenarios that need GroupHistory or
// PublicGroups skip stores that are not a GroupStore.
func RunStoreContract(t *testing.T, open func(t *testing.T) ports.Store) {
	t.Helper()
	for _, sc := range slices.Concat(scenarios, groupScenarios) {
		t.Run(sc.name, func(t *testing.T) {
			st := open(t)
			t.Cleanup(func() { assert.NoError(t, st.Close()) })
			sc.run(t, st)
		})
	}
}

// Frame returns the msg frame the bus would store for seq to a peer.
func Frame(seq int64, topic, payload string) *mq.Frame {
	return &mq.Frame{
		Type:    mq.TypeMsg,
		ID:      fmt.Sprintf("id-%d-%s", seq, topic),
		Seq:     seq,
		Topic:   topic,
		Payload: json.RawMessage(payload),
	}
}

// Put is the PutOutbox change of f to peer.
func Put(peer mq.PeerID, f *mq.Frame) mq.Change {
	return mq.Change{Kind: mq.PutOutbox, Peer: peer, Seq: f.Seq, Frame: f}
}

// Del is the DeleteOutbox change of seq to peer.
func Del(peer mq.PeerID, seq int64) mq.Change {
	return mq.Change{Kind: mq.DeleteOutbox, Peer: peer, Seq: seq}
}

// Model is a reference implementation of the store's semantics: apply
// changes in order, the last write wins.
type Model struct {
	Epoch   string
	Outbox  map[mq.PeerID]map[int64]mq.Frame
	NextSeq map[mq.PeerID]int64
	Cursors map[mq.PeerID]mq.Cursor
}

// NewModel returns an empty model.
func NewModel() *Model {
	return &Model{Outbox: map[mq.PeerID]map[int64]mq.Frame{}, NextSeq: map[mq.PeerID]int64{}, Cursors: map[mq.PeerID]mq.Cursor{}}
}

// Apply applies cs in order.
func (m *Model) Apply(cs []mq.Change) {
	for _, c := range cs {
		switch c.Kind {
		case mq.SetEpoch:
			m.Epoch = c.Epoch
		case mq.PutOutbox:
			if m.Outbox[c.Peer] == nil {
				m.Outbox[c.Peer] = map[int64]mq.Frame{}
			}
			m.Outbox[c.Peer][c.Seq] = *c.Frame
		case mq.DeleteOutbox:
			delete(m.Outbox[c.Peer], c.Seq)
			if len(m.Outbox[c.Peer]) == 0 {
				delete(m.Outbox, c.Peer)
			}
		case mq.SetNextSeq:
			m.NextSeq[c.Peer] = c.Seq
		case mq.SetCursor:
			m.Cursors[c.Peer] = mq.Cursor{Epoch: c.Epoch, Next: c.Seq}
		}
	}
}

// Snapshot is the model's state in the form LoadBus returns, outbox sorted.
func (m *Model) Snapshot() mq.Snapshot {
	s := mq.Snapshot{Epoch: m.Epoch, NextSeq: map[mq.PeerID]int64{}, Cursors: map[mq.PeerID]mq.Cursor{}}
	for p, fs := range m.Outbox {
		for _, f := range fs {
			s.Outbox = append(s.Outbox, mq.OutboxEntry{To: p, Frame: f})
		}
	}
	sortOutbox(s.Outbox)
	for p, n := range m.NextSeq {
		s.NextSeq[p] = n
	}
	for p, c := range m.Cursors {
		s.Cursors[p] = c
	}
	return s
}

func sortOutbox(es []mq.OutboxEntry) {
	slices.SortFunc(es, func(a, b mq.OutboxEntry) int {
		return cmp.Or(cmp.Compare(a.To, b.To), cmp.Compare(a.Frame.Seq, b.Frame.Seq))
	})
}

// Load reads st's snapshot with its outbox sorted by destination and seq,
// and its empty parts normalized, for comparison with Model.Snapshot.
func Load(t *testing.T, st ports.Store) mq.Snapshot {
	t.Helper()
	snap, err := st.LoadBus(context.Background())
	require.NoError(t, err)
	require.NotNil(t, snap.NextSeq, "LoadBus must return a non-nil NextSeq map")
	require.NotNil(t, snap.Cursors, "LoadBus must return a non-nil Cursors map")
	if len(snap.Outbox) == 0 {
		snap.Outbox = nil
	}
	sortOutbox(snap.Outbox)
	return snap
}

// RequireState fails unless st holds exactly what m holds.
func RequireState(t *testing.T, m *Model, st ports.Store) {
	t.Helper()
	require.Equal(t, m.Snapshot(), Load(t, st))
}

func apply(t *testing.T, st ports.Store, m *Model, cs ...mq.Change) {
	t.Helper()
	require.NoError(t, st.Apply(context.Background(), ports.Batch{Bus: cs}))
	m.Apply(cs)
}

type scenario struct {
	name string
	run  func(t *testing.T, st ports.Store)
}

var scenarios = []scenario{
	{"EmptyStore", func(t *testing.T, st ports.Store) {
		snap := Load(t, st)
		assert.Empty(t, snap.Epoch)
		assert.Empty(t, snap.Outbox)
		assert.Empty(t, snap.NextSeq)
		assert.Empty(t, snap.Cursors)
		require.NoError(t, st.Apply(context.Background(), ports.Batch{}), "empty batch")
		assert.Equal(t, NewModel().Snapshot(), Load(t, st))
	}},
	{"EveryChangeKindRoundTrips", func(t *testing.T, st ports.Store) {
		m := NewModel()
		relayed := Frame(2, "group:g1:msg", `{"text":"hé ✓","n":[1,2.5,null]}`)
		relayed.Origin = "12D3KooWOrigin"
		apply(t, st, m,
			mq.Change{Kind: mq.SetEpoch, Epoch: "epoch-1"},
			Put("A", Frame(1, "chat", `"hello"`)),
			Put("A", relayed),
			Put("B", Frame(7, "cluster:g2:job:assign", `null`)),
			mq.Change{Kind: mq.SetNextSeq, Peer: "A", Seq: 3},
			mq.Change{Kind: mq.SetNextSeq, Peer: "B", Seq: 8},
			mq.Change{Kind: mq.SetCursor, Peer: "C", Epoch: "c-epoch", Seq: 42},
		)
		RequireState(t, m, st)
		apply(t, st, m, Del("A", 1), mq.Change{Kind: mq.SetCursor, Peer: "D", Epoch: "", Seq: 1})
		RequireState(t, m, st)
		snap := Load(t, st)
		require.Len(t, snap.Outbox, 2)
		assert.Equal(t, mq.OutboxEntry{To: "A", Frame: *relayed}, snap.Outbox[0])
	}},
	{"LastWriteWinsWithinBatch", func(t *testing.T, st ports.Store) {
		m := NewModel()
		apply(t, st, m,
			mq.Change{Kind: mq.SetEpoch, Epoch: "e1"},
			mq.Change{Kind: mq.SetEpoch, Epoch: "e2"},
			Put("A", Frame(1, "t1", `1`)),
			Put("A", Frame(1, "t2", `2`)),
			mq.Change{Kind: mq.SetNextSeq, Peer: "A", Seq: 5},
			mq.Change{Kind: mq.SetNextSeq, Peer: "A", Seq: 3},
			mq.Change{Kind: mq.SetCursor, Peer: "B", Epoch: "x", Seq: 9},
			mq.Change{Kind: mq.SetCursor, Peer: "B", Epoch: "y", Seq: 2},
		)
		RequireState(t, m, st)
		assert.Equal(t, "e2", Load(t, st).Epoch)
	}},
	{"LaterBatchOverwrites", func(t *testing.T, st ports.Store) {
		m := NewModel()
		apply(t, st, m, mq.Change{Kind: mq.SetEpoch, Epoch: "e1"}, Put("A", Frame(1, "t1", `1`)),
			mq.Change{Kind: mq.SetNextSeq, Peer: "A", Seq: 2}, mq.Change{Kind: mq.SetCursor, Peer: "B", Epoch: "x", Seq: 3})
		apply(t, st, m, mq.Change{Kind: mq.SetEpoch, Epoch: "e2"}, Put("A", Frame(1, "t2", `2`)),
			mq.Change{Kind: mq.SetNextSeq, Peer: "A", Seq: 9}, mq.Change{Kind: mq.SetCursor, Peer: "B", Epoch: "y", Seq: 1})
		RequireState(t, m, st)
	}},
	{"PutThenDeleteInOneBatchLeavesNothing", func(t *testing.T, st ports.Store) {
		m := NewModel()
		var cs []mq.Change
		for seq := int64(1); seq <= 300; seq++ {
			cs = append(cs, Put("A", Frame(seq, "t", `{}`)), Del("A", seq))
		}
		apply(t, st, m, cs...)
		RequireState(t, m, st)
		assert.Empty(t, Load(t, st).Outbox)
	}},
	{"DeleteOfRowFromEarlierBatch", func(t *testing.T, st ports.Store) {
		m := NewModel()
		apply(t, st, m, Put("A", Frame(1, "t", `1`)), Put("A", Frame(2, "t", `2`)), Put("B", Frame(1, "t", `3`)))
		apply(t, st, m, Put("A", Frame(3, "t", `4`)), Del("A", 1), Del("A", 3), Del("B", 1))
		RequireState(t, m, st)
	}},
	{"RePutThenDeleteOfStoredRow", func(t *testing.T, st ports.Store) {
		// The row exists before the batch: the batch's put and delete must
		// not cancel into "nothing to do".
		m := NewModel()
		apply(t, st, m, Put("A", Frame(1, "t", `"old"`)))
		apply(t, st, m, Put("A", Frame(1, "t", `"new"`)), Del("A", 1))
		RequireState(t, m, st)
		assert.Empty(t, Load(t, st).Outbox)
	}},
	{"DeleteThenPutInOneBatch", func(t *testing.T, st ports.Store) {
		m := NewModel()
		apply(t, st, m, Put("A", Frame(1, "t", `"old"`)))
		apply(t, st, m, Del("A", 1), Put("A", Frame(1, "t", `"new"`)), Del("A", 2), Put("A", Frame(2, "t", `2`)))
		RequireState(t, m, st)
		assert.Len(t, Load(t, st).Outbox, 2)
	}},
	{"DeleteOfMissingRowIsNoOp", func(t *testing.T, st ports.Store) {
		m := NewModel()
		apply(t, st, m, Del("nobody", 1), Del("nobody", 2))
		RequireState(t, m, st)
	}},
	{"ManyRowsAndRanges", func(t *testing.T, st ports.Store) {
		m := NewModel()
		peers := []mq.PeerID{"12D3KooWA", "12D3KooWB", "12D3KooWC"}
		var cs []mq.Change
		for _, p := range peers {
			for seq := int64(1); seq <= 1500; seq++ {
				cs = append(cs, Put(p, Frame(seq, "bulk", fmt.Sprintf(`{"n":%d}`, seq))))
			}
			cs = append(cs, mq.Change{Kind: mq.SetNextSeq, Peer: p, Seq: 1501})
		}
		apply(t, st, m, cs...)
		RequireState(t, m, st)
		// Acks: a contiguous prefix, then every third seq (many short ranges).
		cs = cs[:0]
		for _, p := range peers {
			for seq := int64(1); seq <= 1500; seq++ {
				if seq <= 400 || seq%3 == 0 {
					cs = append(cs, Del(p, seq))
				}
			}
		}
		apply(t, st, m, cs...)
		RequireState(t, m, st)
	}},
	{"LargePayloads", func(t *testing.T, st ports.Store) {
		m := NewModel()
		big := `"` + strings.Repeat("x", mq.MaxPayloadBytes-2) + `"`
		var cs []mq.Change
		for seq := int64(1); seq <= 6; seq++ {
			cs = append(cs, Put("A", Frame(seq, "big", big)))
		}
		apply(t, st, m, cs...)
		RequireState(t, m, st)
	}},
	{"AwkwardStrings", func(t *testing.T, st ports.Store) {
		m := NewModel()
		odd := []mq.PeerID{`it's`, `"quoted"`, `'); DROP TABLE _mq_outbox; --`, `back\slash`, `ünï ✓ 🚀`, `?$1 %s`}
		var cs []mq.Change
		for i, p := range odd {
			f := Frame(int64(i+1), string(p), `{"s":"`+strings.ReplaceAll(string(p), `"`, `\"`)+`"}`)
			f.ID = string(p) + "-id"
			f.Origin = p
			cs = append(cs, Put(p, f),
				mq.Change{Kind: mq.SetNextSeq, Peer: p, Seq: int64(i + 2)},
				mq.Change{Kind: mq.SetCursor, Peer: p, Epoch: string(p), Seq: int64(i)})
		}
		cs = append(cs, mq.Change{Kind: mq.SetEpoch, Epoch: `e'"\`})
		apply(t, st, m, cs...)
		RequireState(t, m, st)
		apply(t, st, m, Del(odd[2], 3))
		RequireState(t, m, st)
	}},
	{"RandomBatchesMatchModel", func(t *testing.T, st ports.Store) {
		// Batches of random changes over a small key space, so that puts,
		// re-puts and deletes of the same rows meet within and across batches.
		rng := rand.New(rand.NewPCG(1, 2))
		m := NewModel()
		peers := []mq.PeerID{"A", "B", "C"}
		for batch := 0; batch < 40; batch++ {
			n := rng.IntN(60)
			cs := make([]mq.Change, 0, n)
			for i := 0; i < n; i++ {
				p := peers[rng.IntN(len(peers))]
				seq := int64(rng.IntN(20))
				switch r := rng.IntN(100); {
				case r < 40:
					cs = append(cs, Put(p, Frame(seq, fmt.Sprintf("t%d", batch), fmt.Sprintf(`[%d,%d]`, batch, i))))
				case r < 80:
					cs = append(cs, Del(p, seq))
				case r < 88:
					cs = append(cs, mq.Change{Kind: mq.SetNextSeq, Peer: p, Seq: seq})
				case r < 96:
					cs = append(cs, mq.Change{Kind: mq.SetCursor, Peer: p, Epoch: fmt.Sprintf("e%d", batch), Seq: seq})
				default:
					cs = append(cs, mq.Change{Kind: mq.SetEpoch, Epoch: fmt.Sprintf("epoch%d", batch)})
				}
			}
			apply(t, st, m, cs...)
			RequireState(t, m, st)
		}
	}},
	{"ConcurrentApply", func(t *testing.T, st ports.Store) {
		// Safe for concurrent use: writers on distinct peers all land.
		const writers, perWriter = 4, 50
		var wg sync.WaitGroup
		errs := make(chan error, writers*perWriter)
		for w := 0; w < writers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p := mq.PeerID(fmt.Sprintf("W%d", w))
				for seq := int64(1); seq <= perWriter; seq++ {
					cs := []mq.Change{Put(p, Frame(seq, "c", `0`)), mq.Change{Kind: mq.SetNextSeq, Peer: p, Seq: seq + 1}}
					if seq > 1 {
						cs = append(cs, Del(p, seq-1))
					}
					errs <- st.Apply(context.Background(), ports.Batch{Bus: cs})
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		snap := Load(t, st)
		require.Len(t, snap.Outbox, writers)
		for _, e := range snap.Outbox {
			assert.Equal(t, int64(perWriter), e.Frame.Seq)
			assert.Equal(t, int64(perWriter+1), snap.NextSeq[e.To])
		}
	}},
}
