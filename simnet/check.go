package simnet

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/mq"
)

// Violation is a broken safety property, found right after the step that broke it.
type Violation struct {
	Property string        `json:"property"`
	Time     time.Duration `json:"time"`
	Detail   string        `json:"detail"`
}

func (v *Violation) Error() string {
	return fmt.Sprintf("invariant %s broken at %s: %s", v.Property, v.Time, v.Detail)
}

// PropertyCount is a property a checker verifies and how often it was checked.
type PropertyCount struct {
	Name    string `json:"name"`
	Checked uint64 `json:"checked"`
}

// Checker verifies properties of a running world. The world calls Observe
// after every step (invariants) and Converged during the liveness phase.
// A checker keeps its own memory outside the nodes, so crashes do not erase
// what it saw. New cores add their own Checker to Options.Checkers.
type Checker interface {
	// Name names the checker, e.g. "mq".
	Name() string
	// Properties lists the safety properties checked so far, in a fixed order.
	Properties() []PropertyCount
	// Observe sees a step after the world carried it out and returns the
	// first property it breaks, or nil. The step is only valid during the call.
	Observe(w *World, s *Step) *Violation
	// Converged reports whether everything the checker waits for happened.
	// It is called after every event of the liveness phase: keep it cheap.
	Converged() bool
	// Waiting describes what the checker still waits for.
	Waiting(w *World) string
}

// DefaultCheckers returns fresh instances of every built-in checker.
func DefaultCheckers() []Checker { return []Checker{NewMQChecker()} }

// Properties of the message bus checked by MQChecker.
const (
	PropNoDuplicate = "mq/no-duplicate"     // a message is delivered at most once, across receiver crashes
	PropOrder       = "mq/per-sender-order" // per (sender, receiver), delivered seqs strictly increase
	PropAckedKept   = "mq/acked-not-lost"   // a message acknowledged to its sender was delivered before
	PropIntegrity   = "mq/integrity"        // a delivered message is the one sent: ends, seq and payload
	PropOneResult   = "mq/one-result"       // a sender learns one fate (delivered or failed) per message
)

const (
	recKnown uint8 = 1 << iota // queued through World.Send
	recDelivered
	recAcked
	recFailed
)

// msgRec is what the checker remembers of a message until it is settled:
// delivered and given its one result (acknowledged or failed).
type msgRec struct {
	from, to int32
	flags    uint8
	seq      int64
	sum      uint64
	sentAt   int64
	order    uint64 // 1 + position among the messages queued through World.Send; 0 for others
}

// mqMsgKey is a message id in compact form: a canonical UUID (what nodes
// generate) as its 128 bits. Other ids are kept as strings (msgIndex.other).
type mqMsgKey struct{ hi, lo uint64 }

// msgIndex maps message ids to values: the slots of live records in
// MQChecker.recs (MQChecker.live) or the flags of settled messages
// (MQChecker.done).
type msgIndex struct {
	uuids map[mqMsgKey]uint32
	other map[string]uint32
}

// parseUUID parses a canonical lower-case UUID (8-4-4-4-12 hex digits, as
// uuid.UUID.String writes them); ok is false for anything else (upper case,
// braces, urn: forms), so that keys and ids correspond one to one.
func parseUUID(id string) (k mqMsgKey, ok bool) {
	if len(id) != 36 || strings.ContainsAny(id, "ABCDEF") {
		return k, false
	}
	u, err := uuid.Parse(id)
	if err != nil {
		return k, false
	}
	return mqMsgKey{binary.BigEndian.Uint64(u[:8]), binary.BigEndian.Uint64(u[8:])}, true
}

// msgRef is a message id ready for msgIndex: parsed once per use.
type msgRef struct {
	id   string
	key  mqMsgKey
	uuid bool
}

func refOf(id string) msgRef {
	k, ok := parseUUID(id)
	return msgRef{id: id, key: k, uuid: ok}
}

func (x *msgIndex) get(m *msgRef) (uint32, bool) {
	if m.uuid {
		v, ok := x.uuids[m.key]
		return v, ok
	}
	v, ok := x.other[m.id]
	return v, ok
}

func (x *msgIndex) set(m *msgRef, v uint32) {
	if m.uuid {
		x.uuids[m.key] = v
		return
	}
	if x.other == nil {
		x.other = map[string]uint32{}
	}
	x.other[m.id] = v
}

func (x *msgIndex) del(m *msgRef) {
	if m.uuid {
		delete(x.uuids, m.key)
		return
	}
	delete(x.other, m.id)
}

func newMsgIndex() msgIndex { return msgIndex{uuids: map[mqMsgKey]uint32{}} }

// MQChecker checks the bus's delivery guarantees (SPEC §2) and, for
// liveness, that every message queued through World.Send was delivered and
// acknowledged to its sender.
//
// Memory: a message's full record (ends, seq, payload hash) is kept only
// until it is settled (delivered and given its result); then only its id and
// flags remain (about 24 bytes), which is all the later checks need: a
// second delivery is a duplicate and a second result breaks one-result
// whatever else they carry. Per-sender order keeps one watermark per
// (sender, receiver). Live and settled messages are indexed apart: the few
// live ones are looked up on every step and stay in cache.
type MQChecker struct {
	// AllowFailures makes a failed message (the bus gave up, EventFailed)
	// count as settled for liveness, for worlds with bounded retries. Without
	// it a failed message is a liveness failure.
	AllowFailures bool

	live    msgIndex         // id → slot in recs
	done    msgIndex         // id → flags of a settled message
	recs    pool[msgRec]     // live records
	sentN   uint64           // messages queued through World.Send
	last    map[uint64]int64 // (from, to) → last delivered seq
	open    int              // sent messages not yet both delivered and acknowledged
	failed  int
	checked [5]uint64
}

// NewMQChecker returns an empty bus checker.
func NewMQChecker() *MQChecker {
	return &MQChecker{live: newMsgIndex(), done: newMsgIndex(), last: map[uint64]int64{}}
}

// Name implements Checker.
func (c *MQChecker) Name() string { return "mq" }

// Properties implements Checker.
func (c *MQChecker) Properties() []PropertyCount {
	names := [...]string{PropNoDuplicate, PropOrder, PropAckedKept, PropIntegrity, PropOneResult}
	out := make([]PropertyCount, len(names))
	for i, n := range names {
		out[i] = PropertyCount{Name: n, Checked: c.checked[i]}
	}
	return out
}

// Outstanding returns how many messages queued through World.Send are not yet
// both delivered and acknowledged, and how many of them failed.
func (c *MQChecker) Outstanding() (open, failed int) { return c.open, c.failed }

// payloadSum hashes a payload as the wire keeps it: mq.AppendFrame compacts
// JSON that spans lines, so such payloads are hashed compacted.
func payloadSum(b []byte) uint64 {
	if bytes.IndexByte(b, '\n') >= 0 || bytes.IndexByte(b, '\r') >= 0 {
		var buf bytes.Buffer
		if json.Compact(&buf, b) == nil {
			b = buf.Bytes()
		}
	}
	// 8 bytes at a time; every step is a bijection of h for a given word, so
	// payloads that differ in one word always hash differently.
	h := uint64(fnvOffset) ^ uint64(len(b))
	for len(b) >= 8 {
		h = (h ^ binary.LittleEndian.Uint64(b)) * fnvPrime
		h ^= h >> 29
		b = b[8:]
	}
	var tail uint64
	for i, x := range b {
		tail |= uint64(x) << (8 * i)
	}
	h = (h ^ tail) * fnvPrime
	return h ^ h>>29
}

// record returns the record of id: the live one (r, in slot), or the flags
// of a settled message (r nil, settled true), or neither (not seen).
func (c *MQChecker) record(id *msgRef) (r *msgRec, slot uint32, flags uint8, settled bool) {
	if v, ok := c.live.get(id); ok {
		r = c.recs.at(v)
		return r, v, r.flags, false
	}
	if v, ok := c.done.get(id); ok {
		return nil, 0, uint8(v), true
	}
	return nil, 0, 0, false
}

// add stores a new live record for id and returns it and its slot.
func (c *MQChecker) add(id *msgRef, r msgRec) (*msgRec, uint32) {
	slot := c.recs.put(r)
	c.live.set(id, slot)
	return c.recs.at(slot), slot
}

// settle releases the record of id once it is delivered and has its result:
// only its flags stay. slot must hold id's live record.
func (c *MQChecker) settle(id *msgRef, slot uint32) {
	r := c.recs.at(slot)
	if r.flags&recDelivered == 0 || r.flags&(recAcked|recFailed) == 0 {
		return
	}
	c.live.del(id)
	c.done.set(id, uint32(r.flags))
	c.recs.release(slot)
}

// Observe implements Checker.
func (c *MQChecker) Observe(w *World, s *Step) *Violation {
	if s.Kind == StepSend && s.Frame != nil {
		id := refOf(s.Frame.ID)
		if r, _, _, settled := c.record(&id); r != nil || settled {
			return &Violation{Property: PropIntegrity, Detail: fmt.Sprintf("%s queued message id %s twice", w.Name(s.Peer), id.id)}
		}
		c.sentN++
		c.add(&id, msgRec{from: int32(s.Peer), to: int32(s.To), flags: recKnown,
			seq: s.Frame.Seq, sum: payloadSum(s.Frame.Payload), sentAt: int64(s.Time), order: c.sentN})
		c.open++
	}
	for i := range s.Events {
		ev := &s.Events[i]
		switch ev.Kind {
		case app.EventMessage:
			if v := c.delivered(w, s, ev); v != nil {
				return v
			}
		case app.EventDelivered, app.EventFailed:
			if ev.MsgID == "" {
				continue // a send the node refused (e.g. a group relay to a full outbox): no message
			}
			if v := c.result(w, s, ev); v != nil {
				return v
			}
		}
	}
	return nil
}

func (c *MQChecker) delivered(w *World, s *Step, ev *app.Event) *Violation {
	to := int32(s.Peer)
	fi, ok := w.Index(ev.Peer)
	from := int32(fi)
	if !ok {
		from = -1
	}
	seq := ev.Msg.Seq
	id := refOf(ev.MsgID)
	r, slot, flags, _ := c.record(&id)
	c.checked[0]++
	if flags&recDelivered != 0 {
		return &Violation{Property: PropNoDuplicate, Detail: fmt.Sprintf("%s delivered message #%d from %s twice (id %s)",
			w.Name(int(to)), seq, peerName(w, from), ev.MsgID)}
	}
	if r == nil { // sent by a core, not through World.Send: check what we can
		r, slot = c.add(&id, msgRec{from: from, to: to, seq: seq})
	}
	c.checked[3]++
	if r.flags&recKnown != 0 && (r.from != from || r.to != to || r.seq != seq || r.sum != payloadSum(ev.Msg.Payload)) {
		return &Violation{Property: PropIntegrity, Detail: fmt.Sprintf("%s delivered %s#%d (id %s) but %s queued it for %s as #%d with other content",
			w.Name(int(to)), peerName(w, from), seq, ev.MsgID, peerName(w, r.from), peerName(w, r.to), r.seq)}
	}
	c.checked[1]++
	key := uint64(uint32(from))<<32 | uint64(uint32(to))
	if last, ok := c.last[key]; ok && seq <= last {
		return &Violation{Property: PropOrder, Detail: fmt.Sprintf("%s delivered %s#%d after %s#%d",
			w.Name(int(to)), peerName(w, from), seq, peerName(w, from), last)}
	}
	c.last[key] = seq
	r.flags |= recDelivered
	if r.flags&(recKnown|recAcked) == recKnown|recAcked {
		c.open--
	}
	c.settle(&id, slot)
	return nil
}

func (c *MQChecker) result(w *World, s *Step, ev *app.Event) *Violation {
	from := int32(s.Peer)
	id := refOf(ev.MsgID)
	r, slot, flags, settled := c.record(&id)
	c.checked[4]++
	if flags&(recAcked|recFailed) != 0 {
		seq, to := int64(0), int32(-1)
		if r != nil {
			seq, to = r.seq, r.to
		}
		detail := fmt.Sprintf("%s learnt the fate of its message #%d to %s twice (id %s)", w.Name(int(from)), seq, peerName(w, to), ev.MsgID)
		if settled {
			detail = fmt.Sprintf("%s learnt the fate of its message %s to %s twice (the message was settled before)",
				w.Name(int(from)), ev.MsgID, peerNameOf(w, ev.Peer))
		}
		return &Violation{Property: PropOneResult, Detail: detail}
	}
	if ev.Kind == app.EventFailed {
		if r == nil {
			r, slot = c.add(&id, msgRec{from: from, to: -1})
		}
		r.flags |= recFailed
		if r.flags&recKnown != 0 {
			c.failed++
			if c.AllowFailures {
				c.open--
			}
		}
		c.settle(&id, slot)
		return nil
	}
	c.checked[2]++
	if r == nil || r.flags&recDelivered == 0 {
		to := peerNameOf(w, ev.Peer)
		return &Violation{Property: PropAckedKept, Detail: fmt.Sprintf("%s got an ack from %s for message %s, which %s never delivered",
			w.Name(int(from)), to, ev.MsgID, to)}
	}
	r.flags |= recAcked
	if r.flags&recKnown != 0 {
		c.open--
	}
	c.settle(&id, slot)
	return nil
}

func peerNameOf(w *World, id mq.PeerID) string {
	if i, ok := w.Index(id); ok {
		return w.Name(i)
	}
	return "?"
}

func peerName(w *World, i int32) string {
	if i < 0 {
		return "?"
	}
	return w.Name(int(i))
}

// Converged implements Checker: every message queued through World.Send was
// delivered and acknowledged (or, with AllowFailures, failed).
func (c *MQChecker) Converged() bool { return c.open == 0 }

// Waiting implements Checker.
func (c *MQChecker) Waiting(w *World) string {
	var b strings.Builder
	fmt.Fprintf(&b, "mq: %d of %d messages not delivered and acknowledged (%d failed)", c.open, c.sentN, c.failed)
	// Settled messages are released, so what is still open is among the live
	// records; list the first in the order they were queued.
	var open []*msgRec
	for i := range c.recs.all {
		r := &c.recs.all[i]
		if r.order == 0 || r.flags&recKnown == 0 {
			continue // a free slot, or a message not queued through World.Send
		}
		if r.flags&(recDelivered|recAcked) == recDelivered|recAcked || c.AllowFailures && r.flags&recFailed != 0 {
			continue
		}
		open = append(open, r)
	}
	slices.SortFunc(open, func(a, b *msgRec) int { return cmp.Compare(a.order, b.order) })
	for n, r := range open {
		if n == 5 {
			b.WriteString(", …")
			break
		}
		state := "not delivered"
		switch {
		case r.flags&recFailed != 0:
			state = "failed"
		case r.flags&recDelivered != 0:
			state = "delivered, not acknowledged"
		}
		sep := ": "
		if n > 0 {
			sep = ", "
		}
		fmt.Fprintf(&b, "%s%s→%s #%d queued at %s %s", sep, peerName(w, r.from), peerName(w, r.to), r.seq, time.Duration(r.sentAt), state)
	}
	return b.String()
}
