package simnet

import (
	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/domain/presence"
)

// eventKind tells what a scheduled event does when it fires.
type eventKind uint8

const (
	evFrame      eventKind = iota + 1 // a frame arrives at peer to
	evWake                            // peer to's timers may be due
	evConnect                         // peer to learns that a connection to from is up
	evDisconnect                      // peer to learns that its connection to from is gone
	evBroadcast                       // a LAN broadcast from peer from arrives at peer to
	evAction                          // a scheduled Action runs
	// Discovery (discovery.go):
	evGossip     // a presence published by from arrives at to over GossipSub on their LAN
	evMDNS       // an mDNS announcement of from arrives at to (arg 1: a query, answered)
	evJoined     // to learns that from joined the presence topic on their LAN connection
	evRdvPublish // a presence published by from arrives at the rendezvous
	evRdvEvent   // an event of the rendezvous' stream arrives at to (arg: stream generation, verified)
)

// event is one scheduled happening. Events live in a slab and are reused.
type event struct {
	kind     eventKind
	to, from int32
	toLife   uint32 // the life of peer to when the event was scheduled
	fromLife uint32 // the life of peer from when the event was scheduled
	frame    mq.Frame
	payload  []byte
	pmsg     *presence.Msg // a presence message (shared, never modified)
	act      Action
	arg      int64
}

type item struct {
	at   int64
	seq  uint64
	slot uint32
}

func (a item) less(b item) bool {
	if a.at != b.at {
		return a.at < b.at
	}
	return a.seq < b.seq
}

// sched is a binary min-heap of events ordered by (virtual time, sequence).
// The sequence number makes the order total, so equal times pop in the order
// they were scheduled.
type sched struct {
	items []item
	slots pool[event]
	seq   uint64
}

func (s *sched) len() int { return len(s.items) }

// peekAt returns the time of the next event; the heap must not be empty.
func (s *sched) peekAt() int64 { return s.items[0].at }

// push schedules ev at time at.
func (s *sched) push(at int64, ev event) {
	s.seq++
	s.items = append(s.items, item{at: at, seq: s.seq, slot: s.slots.put(ev)})
	// sift up
	i := len(s.items) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !s.items[i].less(s.items[p]) {
			break
		}
		s.items[i], s.items[p] = s.items[p], s.items[i]
		i = p
	}
}

// pop removes the next event and returns its time, sequence and a copy of it.
func (s *sched) pop() (int64, uint64, event) {
	top := s.items[0]
	n := len(s.items) - 1
	s.items[0] = s.items[n]
	s.items = s.items[:n]
	// sift down
	i := 0
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		m := l
		if r := l + 1; r < n && s.items[r].less(s.items[l]) {
			m = r
		}
		if !s.items[m].less(s.items[i]) {
			break
		}
		s.items[i], s.items[m] = s.items[m], s.items[i]
		i = m
	}
	ev := *s.slots.at(top.slot)
	s.slots.release(top.slot)
	return top.at, top.seq, ev
}
