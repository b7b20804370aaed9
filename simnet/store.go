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

type outKey struct {
	peer mq.PeerID
	seq  int64
}

// Store is a simulated peer's durable storage: what survives a crash. It
// applies bus changes with the semantics of memory.ApplyBusChanges (checked by
// the shared ports/storetest contract), keyed so that a busy outbox does not
// allocate a map per destination, group changes with memory.Groups and peer
// table changes with memory.Peers.
// Safe for concurrent use, although a world uses it from one goroutine.
type Store struct {
	mu      sync.Mutex
	epoch   string
	outbox  map[outKey]mq.Frame
	nextSeq map[mq.PeerID]int64
	cursors map[mq.PeerID]mq.Cursor
	groups  *memory.Groups
	peers   memory.Peers
}

// NewStore returns an empty store.
func NewStore() *Store {
	return &Store{outbox: map[outKey]mq.Frame{}, nextSeq: map[mq.PeerID]int64{},
		cursors: map[mq.PeerID]mq.Cursor{}, groups: memory.NewGroups()}
}

// LoadBus implements ports.Store. The outbox comes in map order; the bus sorts it.
func (s *Store) LoadBus(context.Context) (mq.Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := mq.Snapshot{Epoch: s.epoch, NextSeq: make(map[mq.PeerID]int64, len(s.nextSeq)),
		Cursors: make(map[mq.PeerID]mq.Cursor, len(s.cursors))}
	for k, f := range s.outbox {
		snap.Outbox = append(snap.Outbox, mq.OutboxEntry{To: k.peer, Frame: f})
	}
	for p, n := range s.nextSeq {
		snap.NextSeq[p] = n
	}
	for p, c := range s.cursors {
		snap.Cursors[p] = c
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
			s.outbox[outKey{c.Peer, c.Seq}] = *c.Frame
		case mq.DeleteOutbox:
			delete(s.outbox, outKey{c.Peer, c.Seq})
		case mq.SetNextSeq:
			s.nextSeq[c.Peer] = c.Seq
		case mq.SetCursor:
			s.cursors[c.Peer] = mq.Cursor{Epoch: c.Epoch, Next: c.Seq}
		}
	}
	if len(b.Groups) > 0 {
		s.groups.Apply(b.Groups)
	}
	if len(b.Peers) > 0 {
		s.peers.Apply(b.Peers)
	}
	return nil
}

// Close implements ports.Store.
func (s *Store) Close() error { return nil }
