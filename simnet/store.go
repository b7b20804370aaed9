package simnet

import (
	"context"
	"sync"

	"github.com/goop-p2p/goop/domain/group"
	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/ports"
	"github.com/goop-p2p/goop/ports/memory"
)

var _ ports.Store = (*Store)(nil)

// peerIndex resolves peer ids to the dense indexes of a world's peers.
type peerIndex interface {
	index(id mq.PeerID) (int32, bool)
	peerID(i int32) mq.PeerID
}

// outKey is an outbox row: a peer slot (see Store.slot) and a seq.
type outKey struct {
	slot int32
	seq  int64
}

// Store is a simulated peer's durable storage: what survives a crash. It
// applies bus changes with the semantics of memory.ApplyBusChanges (checked by
// the shared ports/storetest contract), group changes with memory.Groups and
// peer table changes with memory.Peers. Bus rows are keyed by peer slot, not
// by peer id: a world's peers have their index as slot (small keys, cheap to
// hash, no string compares); other ids get negative slots of the store's own.
// Safe for concurrent use, although a world uses it from one goroutine.
type Store struct {
	mu      sync.Mutex
	epoch   string
	peers   peerIndex // nil: every peer id gets a store slot
	nextSeq rowLog[int64]
	cursors rowLog[mq.Cursor]
	outbox  map[outKey]mq.Frame
	// Slots < 0: ids the index does not know.
	otherSlot map[mq.PeerID]int32
	otherIDs  []mq.PeerID // slot -1-k is otherIDs[k]
	groups    *memory.Groups
	table     memory.Peers
}

// rowLog keeps one value per slot as an append-only log where the last
// write wins, compacted once at least half of it is overwritten rows. A
// write (a cursor per delivery, a sequence reservation per new destination)
// is an append: no hashing, no map growth; only a restart's LoadBus reads
// it, replaying it in order.
type rowLog[V any] struct {
	rows []logRow[V]
	live int    // distinct slots at the last compaction
	mark bitset // scratch for compact
}

type logRow[V any] struct {
	slot int32
	v    V
}

func (l *rowLog[V]) set(slot int32, v V) {
	l.rows = append(l.rows, logRow[V]{slot, v})
	if len(l.rows) >= 2*l.live+64 {
		l.compact()
	}
}

// compact keeps the last row of each slot, in place.
func (l *rowLog[V]) compact() {
	var neg map[int32]bool
	w := len(l.rows)
	for i := len(l.rows) - 1; i >= 0; i-- {
		k := l.rows[i].slot
		if k < 0 {
			if neg[k] {
				continue
			}
			if neg == nil {
				neg = map[int32]bool{}
			}
			neg[k] = true
		} else {
			if l.mark.has(k) {
				continue
			}
			l.mark.add(k)
		}
		w--
		l.rows[w] = l.rows[i]
	}
	n := copy(l.rows, l.rows[w:])
	clear(l.rows[n:])
	l.rows = l.rows[:n]
	l.live = n
	clear(l.mark)
}

// NewStore returns an empty store.
func NewStore() *Store { return newStore(nil) }

func newStore(peers peerIndex) *Store {
	return &Store{peers: peers, outbox: map[outKey]mq.Frame{}, groups: memory.NewGroups()}
}

// slot returns p's slot.
func (s *Store) slot(p mq.PeerID) int32 {
	if s.peers != nil {
		if i, ok := s.peers.index(p); ok {
			return i
		}
	}
	if k, ok := s.otherSlot[p]; ok {
		return k
	}
	if s.otherSlot == nil {
		s.otherSlot = map[mq.PeerID]int32{}
	}
	s.otherIDs = append(s.otherIDs, p)
	k := int32(-len(s.otherIDs))
	s.otherSlot[p] = k
	return k
}

// idOf returns the peer id of slot k.
func (s *Store) idOf(k int32) mq.PeerID {
	if k < 0 {
		return s.otherIDs[-1-k]
	}
	return s.peers.peerID(k)
}

// LoadBus implements ports.Store. The outbox comes in map order; the bus sorts it.
func (s *Store) LoadBus(context.Context) (mq.Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := mq.Snapshot{Epoch: s.epoch, NextSeq: make(map[mq.PeerID]int64, s.nextSeq.live),
		Cursors: make(map[mq.PeerID]mq.Cursor, s.cursors.live)}
	if len(s.outbox) > 0 {
		snap.Outbox = make([]mq.OutboxEntry, 0, len(s.outbox))
	}
	for k, f := range s.outbox {
		snap.Outbox = append(snap.Outbox, mq.OutboxEntry{To: s.idOf(k.slot), Frame: f})
	}
	for _, r := range s.nextSeq.rows { // in write order: the last write wins
		snap.NextSeq[s.idOf(r.slot)] = r.v
	}
	for _, r := range s.cursors.rows {
		snap.Cursors[s.idOf(r.slot)] = r.v
	}
	return snap, nil
}

// LoadGroups returns the stored group state.
func (s *Store) LoadGroups(context.Context) (group.Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.groups.Snapshot(), nil
}

// Apply implements ports.Store: the batch is applied whole, in order.
func (s *Store) Apply(_ context.Context, b ports.Batch) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range b.Bus {
		c := &b.Bus[i]
		switch c.Kind {
		case mq.SetEpoch:
			s.epoch = c.Epoch
		case mq.PutOutbox:
			s.outbox[outKey{s.slot(c.Peer), c.Seq}] = *c.Frame
		case mq.DeleteOutbox:
			delete(s.outbox, outKey{s.slot(c.Peer), c.Seq})
		case mq.SetNextSeq:
			s.nextSeq.set(s.slot(c.Peer), c.Seq)
		case mq.SetCursor:
			s.cursors.set(s.slot(c.Peer), mq.Cursor{Epoch: c.Epoch, Next: c.Seq})
		}
	}
	if len(b.Groups) > 0 {
		s.groups.Apply(b.Groups)
	}
	if len(b.Peers) > 0 {
		s.table.Apply(b.Peers)
	}
	return nil
}

// Close implements ports.Store.
func (s *Store) Close() error { return nil }
