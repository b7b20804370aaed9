package simnet

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/goop-p2p/goop/app"
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

type msgRec struct {
	id       string
	from, to int32
	flags    uint8
	seq      int64
	sum      uint64
	sentAt   int64
}

// MQChecker checks the bus's delivery guarantees (SPEC §2) and, for
// liveness, that every message queued through World.Send was delivered and
// acknowledged to its sender.
type MQChecker struct {
	// AllowFailures makes a failed message (the bus gave up, EventFailed)
	// count as settled for liveness, for worlds with bounded retries. Without
	// it a failed message is a liveness failure.
	AllowFailures bool

	msgs    map[string]*msgRec
	sent    []*msgRec // messages queued through World.Send, in order
	last    map[uint64]int64
	open    int // sent messages not yet both delivered and acknowledged
	failed  int
	checked [5]uint64
}

// NewMQChecker returns an empty bus checker.
func NewMQChecker() *MQChecker {
	return &MQChecker{msgs: map[string]*msgRec{}, last: map[uint64]int64{}}
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
	h := uint64(fnvOffset)
	for _, x := range b {
		h ^= uint64(x)
		h *= fnvPrime
	}
	return h
}

// Observe implements Checker.
func (c *MQChecker) Observe(w *World, s *Step) *Violation {
	if s.Kind == StepSend && s.Frame != nil {
		r := &msgRec{id: s.Frame.ID, from: int32(s.Peer), to: int32(s.To), flags: recKnown,
			seq: s.Frame.Seq, sum: payloadSum(s.Frame.Payload), sentAt: int64(s.Time)}
		if c.msgs[r.id] != nil {
			return &Violation{Property: PropIntegrity, Detail: fmt.Sprintf("%s queued message id %s twice", w.Name(s.Peer), r.id)}
		}
		c.msgs[r.id] = r
		c.sent = append(c.sent, r)
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
	r := c.msgs[ev.MsgID]
	c.checked[0]++
	if r != nil && r.flags&recDelivered != 0 {
		return &Violation{Property: PropNoDuplicate, Detail: fmt.Sprintf("%s delivered message #%d from %s twice (id %s)",
			w.Name(int(to)), seq, peerName(w, from), ev.MsgID)}
	}
	if r == nil { // sent by a core, not through World.Send: check what we can
		r = &msgRec{id: ev.MsgID, from: from, to: to, seq: seq}
		c.msgs[ev.MsgID] = r
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
	return nil
}

func (c *MQChecker) result(w *World, s *Step, ev *app.Event) *Violation {
	from := int32(s.Peer)
	r := c.msgs[ev.MsgID]
	c.checked[4]++
	if r != nil && r.flags&(recAcked|recFailed) != 0 {
		return &Violation{Property: PropOneResult, Detail: fmt.Sprintf("%s learnt the fate of its message #%d to %s twice (id %s)",
			w.Name(int(from)), r.seq, peerName(w, r.to), ev.MsgID)}
	}
	if ev.Kind == app.EventFailed {
		if r == nil {
			r = &msgRec{id: ev.MsgID, from: from, to: -1}
			c.msgs[ev.MsgID] = r
		}
		r.flags |= recFailed
		if r.flags&recKnown != 0 {
			c.failed++
			if c.AllowFailures {
				c.open--
			}
		}
		return nil
	}
	c.checked[2]++
	if r == nil || r.flags&recDelivered == 0 {
		to := "?"
		if i, ok := w.Index(ev.Peer); ok {
			to = w.Name(i)
		}
		return &Violation{Property: PropAckedKept, Detail: fmt.Sprintf("%s got an ack from %s for message %s, which %s never delivered",
			w.Name(int(from)), to, ev.MsgID, to)}
	}
	r.flags |= recAcked
	if r.flags&recKnown != 0 {
		c.open--
	}
	return nil
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
	fmt.Fprintf(&b, "mq: %d of %d messages not delivered and acknowledged (%d failed)", c.open, len(c.sent), c.failed)
	n := 0
	for _, r := range c.sent {
		if r.flags&(recDelivered|recAcked) == recDelivered|recAcked || c.AllowFailures && r.flags&recFailed != 0 {
			continue
		}
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
		n++
	}
	return b.String()
}
