// Package memory holds in-memory fakes of the ports, for unit tests.
package memory

import (
	"context"
	"math/rand/v2"
	"slices"
	"sync"

	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/ports"
)

var (
	_ ports.Transport = (*Transport)(nil)
	_ ports.Store     = (*Store)(nil)
	_ ports.Rand      = (*Rand)(nil)
)

// Network connects in-memory transports by peer id. Safe for concurrent use.
type Network struct {
	mu    sync.Mutex
	peers map[mq.PeerID]*Transport
	// QueueLen bounds each transport's event channel (default 1024).
	QueueLen int
}

// NewNetwork returns an empty network.
func NewNetwork() *Network { return &Network{peers: map[mq.PeerID]*Transport{}} }

// Join attaches a new transport for id; it reports PeerConnected for every
// peer already present (and they for it).
func (n *Network) Join(id mq.PeerID) *Transport {
	n.mu.Lock()
	defer n.mu.Unlock()
	ql := n.QueueLen
	if ql <= 0 {
		ql = 1024
	}
	t := &Transport{net: n, self: id, events: make(chan ports.TransportEvent, ql)}
	for pid, o := range n.peers {
		o.push(ports.TransportEvent{Kind: ports.PeerConnected, From: id})
		t.push(ports.TransportEvent{Kind: ports.PeerConnected, From: pid})
	}
	n.peers[id] = t
	return t
}

// Transport is an in-memory ports.Transport.
type Transport struct {
	net    *Network
	self   mq.PeerID
	mu     sync.Mutex
	closed bool
	events chan ports.TransportEvent
	// Filter, when set, is asked before each frame is delivered; false drops it.
	Filter func(from, to mq.PeerID, f mq.Frame) bool
}

// Self implements ports.Transport.
func (t *Transport) Self() mq.PeerID { return t.self }

// Events implements ports.Transport.
func (t *Transport) Events() <-chan ports.TransportEvent { return t.events }

func (t *Transport) push(ev ports.TransportEvent) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	select {
	case t.events <- ev:
		return true
	default:
		return false
	}
}

// Send implements ports.Transport.
func (t *Transport) Send(to mq.PeerID, f mq.Frame) error {
	t.mu.Lock()
	closed := t.closed
	t.mu.Unlock()
	if closed {
		return ports.ErrClosed
	}
	t.net.mu.Lock()
	dst := t.net.peers[to]
	t.net.mu.Unlock()
	if dst == nil {
		return nil // unreachable peer: dropped, as on a real network
	}
	if t.Filter != nil && !t.Filter(t.self, to, f) {
		return nil
	}
	f.Payload = slices.Clone(f.Payload)
	if !dst.push(ports.TransportEvent{Kind: ports.FrameReceived, From: t.self, Frame: f}) {
		return ports.ErrBackpressure
	}
	return nil
}

// Close implements ports.Transport.
func (t *Transport) Close() error {
	t.net.mu.Lock()
	if t.net.peers[t.self] == t {
		delete(t.net.peers, t.self)
	}
	others := make([]*Transport, 0, len(t.net.peers))
	for _, o := range t.net.peers {
		others = append(others, o)
	}
	t.net.mu.Unlock()
	for _, o := range others {
		o.push(ports.TransportEvent{Kind: ports.PeerDisconnected, From: t.self})
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.closed {
		t.closed = true
		close(t.events)
	}
	return nil
}

// Store is an in-memory ports.Store. Its contents survive a "restart" when the
// same *Store is handed to a new node.
type Store struct {
	mu      sync.Mutex
	epoch   string
	outbox  map[mq.PeerID]map[int64]mq.Frame
	nextSeq map[mq.PeerID]int64
	cursors map[mq.PeerID]mq.Cursor
	groups  *Groups
	peers   Peers
	// FailNext, when set, makes the next Apply fail with this error and change nothing.
	FailNext error
}

// NewStore returns an empty store.
func NewStore() *Store {
	return &Store{outbox: map[mq.PeerID]map[int64]mq.Frame{}, nextSeq: map[mq.PeerID]int64{},
		cursors: map[mq.PeerID]mq.Cursor{}, groups: NewGroups()}
}

// SetFailNext makes the next Apply fail with err and change nothing. Safe
// for concurrent use (Apply may run on another goroutine).
func (s *Store) SetFailNext(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.FailNext = err
}

// LoadBus implements ports.Store.
func (s *Store) LoadBus(context.Context) (mq.Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := mq.Snapshot{Epoch: s.epoch, NextSeq: map[mq.PeerID]int64{}, Cursors: map[mq.PeerID]mq.Cursor{}}
	for p, m := range s.outbox {
		for _, f := range m {
			snap.Outbox = append(snap.Outbox, mq.OutboxEntry{To: p, Frame: f})
		}
	}
	for p, n := range s.nextSeq {
		snap.NextSeq[p] = n
	}
	for p, c := range s.cursors {
		snap.Cursors[p] = c
	}
	return snap, nil
}

// Apply implements ports.Store.
func (s *Store) Apply(_ context.Context, b ports.Batch) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.FailNext != nil {
		err := s.FailNext
		s.FailNext = nil
		return err
	}
	ApplyBusChanges(b.Bus, &s.epoch, s.outbox, s.nextSeq, s.cursors)
	s.groups.Apply(b.Groups)
	s.peers.Apply(b.Peers)
	return nil
}

// ApplyBusChanges applies bus changes to plain maps; simnet's store shares it.
func ApplyBusChanges(cs []mq.Change, epoch *string, outbox map[mq.PeerID]map[int64]mq.Frame,
	nextSeq map[mq.PeerID]int64, cursors map[mq.PeerID]mq.Cursor) {
	for _, c := range cs {
		switch c.Kind {
		case mq.SetEpoch:
			*epoch = c.Epoch
		case mq.PutOutbox:
			m := outbox[c.Peer]
			if m == nil {
				m = map[int64]mq.Frame{}
				outbox[c.Peer] = m
			}
			m[c.Seq] = *c.Frame
		case mq.DeleteOutbox:
			delete(outbox[c.Peer], c.Seq)
			if len(outbox[c.Peer]) == 0 {
				delete(outbox, c.Peer)
			}
		case mq.SetNextSeq:
			nextSeq[c.Peer] = c.Seq
		case mq.SetCursor:
			cursors[c.Peer] = mq.Cursor{Epoch: c.Epoch, Next: c.Seq}
		}
	}
}

// Close implements ports.Store.
func (s *Store) Close() error { return nil }

// Rand is a seeded, deterministic ports.Rand. Not safe for concurrent use.
type Rand struct{ r *rand.Rand }

// NewRand returns a deterministic source for seed.
func NewRand(seed uint64) *Rand {
	return &Rand{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// Uint64 implements ports.Rand.
func (r *Rand) Uint64() uint64 { return r.r.Uint64() }

// Read implements ports.Rand.
func (r *Rand) Read(p []byte) (int, error) {
	for i := 0; i < len(p); i += 8 {
		v := r.r.Uint64()
		for j := 0; j < 8 && i+j < len(p); j++ {
			p[i+j] = byte(v >> (8 * j))
		}
	}
	return len(p), nil
}
