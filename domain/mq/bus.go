package mq

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"time"
)

// ErrQueueFull is returned by Send when the destination already has
// Options.MaxPending unacknowledged messages: the caller must back off.
var ErrQueueFull = errors.New("mq: outbox for peer is full")

// Options tune the bus. Zero fields take the defaults of DefaultOptions.
type Options struct {
	// Window is the number of messages in flight (sent, unacked) per destination.
	Window int
	// MaxPending bounds the unacknowledged messages queued per destination.
	MaxPending int
	// InitialRTO is the first retransmission timeout; it doubles per attempt up to MaxRTO.
	InitialRTO time.Duration
	MaxRTO     time.Duration
	// MaxAttempts is how many times a message is sent before it is reported failed.
	MaxAttempts int
	// ReorderBuffer bounds the out-of-order messages held per sender.
	ReorderBuffer int
	// DedupeWindow is how many message ids from compat (epoch-less) senders are remembered.
	DedupeWindow int
	// SeqReserve is how many sequence numbers per destination are reserved
	// durably at a time. Because a restarted node resumes above its last
	// reservation, a new message may be sent before its outbox row is stored
	// without any risk of a sequence number being used twice.
	SeqReserve int64
	// UnsafeSkipDedupe is fault injection for simnet's self-test; never set in
	// production. It makes the ordered receive path deliver a duplicate (seq
	// below the cursor) again instead of only acknowledging it.
	UnsafeSkipDedupe bool
}

// DefaultOptions are the bus settings of a real node: a 2 s first ack timeout
// as in Goop2, doubling to 60 s, 10 attempts (about 6 minutes) before failing.
func DefaultOptions() Options {
	return Options{
		Window:        8192,
		MaxPending:    100_000,
		InitialRTO:    2 * time.Second,
		MaxRTO:        60 * time.Second,
		MaxAttempts:   10,
		ReorderBuffer: 4096,
		DedupeWindow:  1 << 16,
		SeqReserve:    1024,
	}
}

func (o Options) withDefaults() Options {
	d := DefaultOptions()
	if o.Window <= 0 {
		o.Window = d.Window
	}
	if o.MaxPending <= 0 {
		o.MaxPending = d.MaxPending
	}
	if o.InitialRTO <= 0 {
		o.InitialRTO = d.InitialRTO
	}
	if o.MaxRTO <= 0 {
		o.MaxRTO = d.MaxRTO
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = d.MaxAttempts
	}
	if o.ReorderBuffer <= 0 {
		o.ReorderBuffer = d.ReorderBuffer
	}
	if o.DedupeWindow <= 0 {
		o.DedupeWindow = d.DedupeWindow
	}
	if o.SeqReserve <= 0 {
		o.SeqReserve = d.SeqReserve
	}
	return o
}

// OutboxEntry is one durable, unacknowledged outgoing message.
type OutboxEntry struct {
	To    PeerID
	Frame Frame
}

// Cursor is the receiver's durable position in one sender's ordered stream.
type Cursor struct {
	Epoch string
	Next  int64 // next seq to deliver
}

// Snapshot is the bus's durable state, as loaded from storage at start-up.
type Snapshot struct {
	Epoch   string
	Outbox  []OutboxEntry
	NextSeq map[PeerID]int64
	Cursors map[PeerID]Cursor
}

// ChangeKind names one durable change of bus state.
type ChangeKind uint8

// Change kinds. A batch of changes must be applied atomically and in order.
const (
	SetEpoch     ChangeKind = iota + 1 // Epoch
	PutOutbox                          // Peer, Frame
	DeleteOutbox                       // Peer, Seq
	SetNextSeq                         // Peer, Seq = reservation ceiling: no seq at or above it was used
	SetCursor                          // Peer, Epoch, Seq = next seq to deliver
)

// Change is one durable change the runtime must persist before sending the
// frames of the same Ready.
type Change struct {
	Kind  ChangeKind
	Peer  PeerID
	Seq   int64
	Epoch string
	Frame *Frame
}

// Outgoing is a frame to hand to the transport.
type Outgoing struct {
	To    PeerID
	Frame Frame
}

// Delivery is a message handed to the application, exactly once.
type Delivery struct {
	From PeerID
	Msg  Frame
}

// Result reports the fate of a message this node sent. Received results are
// early news (the peer's transport has it); every message then gets exactly
// one final result: delivered (stored by the peer) or Failed.
type Result struct {
	To       PeerID
	ID       string
	Topic    string
	Failed   bool
	Received bool
	Reason   string
}

// Ready is what the bus asks its runtime to do, in this order: send
// EarlyFrames (they depend on nothing in Changes), persist Changes, then send
// Frames, then hand Deliveries and Results to the app.
type Ready struct {
	Changes     []Change
	EarlyFrames []Outgoing
	Frames      []Outgoing
	Deliveries  []Delivery
	Results     []Result
}

// Empty reports whether there is nothing to do.
func (r *Ready) Empty() bool {
	return len(r.Changes) == 0 && len(r.EarlyFrames) == 0 && len(r.Frames) == 0 && len(r.Deliveries) == 0 && len(r.Results) == 0
}

type pending struct {
	f        Frame
	want     string // asked of the receiver at each transmission (Frame.Want)
	attempts int
	acked    bool
	reported bool // its Received result went out
}

type dest struct {
	peer     PeerID
	activeAt int        // index in Bus.active, or -1
	next     int64      // next seq to assign
	reserved int64      // durable ceiling: seqs below it may be assigned
	queue    []*pending // unacked messages in increasing seq order (acked ones popped from the head)
	sent     int        // number of queue entries (a prefix) that have been transmitted at least once
	rto      time.Duration
	due      time.Time // retransmit deadline when sent > 0
	seqDirty bool
}

// activate lists d in b.active if it is not there yet.
func (b *Bus) activate(d *dest) {
	if d.activeAt < 0 {
		d.activeAt = len(b.active)
		b.active = append(b.active, d)
	}
}

// deactivate removes d from b.active if it is there.
func (b *Bus) deactivate(d *dest) {
	if i := d.activeAt; i >= 0 {
		last := len(b.active) - 1
		b.active[i] = b.active[last]
		b.active[i].activeAt = i
		b.active[last] = nil
		b.active = b.active[:last]
		d.activeAt = -1
	}
}

// find returns the queued message with seq, or nil (binary search: the queue
// is in increasing seq order).
func (d *dest) find(seq int64) *pending {
	i, ok := slices.BinarySearchFunc(d.queue, seq, func(p *pending, s int64) int { return cmp.Compare(p.f.Seq, s) })
	if !ok {
		return nil
	}
	return d.queue[i]
}

type source struct {
	epoch string
	next  int64
	buf   map[int64]Frame // out-of-order frames; nil when empty
	dirty bool
	// held is the final ack of the last message delivered in this step
	// whose sender takes cumulative acks (Frame.AckMode): Drain sends it,
	// one for all of them (see ack).
	held Frame
	// retired are earlier epochs of this sender seen since start: a late
	// frame of a retired incarnation is acknowledged, never delivered.
	retired []string
}

// maxRetiredEpochs bounds the retired epochs remembered per sender.
const maxRetiredEpochs = 4

// Bus is the sans-I/O state machine of one node's message bus. It is not safe
// for concurrent use: one goroutine (or the simulator's scheduler) drives it.
type Bus struct {
	self    PeerID
	opts    Options
	epoch   string
	dests   map[PeerID]*dest
	sources map[PeerID]*source
	seen    map[string]struct{} // compat dedupe window
	seenQ   []string
	seenAt  int
	out     Ready
	// spare holds arrays handed back by Reuse while out's were in use,
	// for the outputs after the next Drain (empty, at most maxReused long).
	spare Ready
	// validJSON is the last payload Send found valid JSON, until the next
	// Drain: a group fan-out sends one payload (the same memory, which the
	// bus keeps and nobody may modify) to every member, checked once.
	validJSON []byte
	// active lists destinations with unacked messages (in no order; a
	// dest knows its place); dirty lists coalesce changes.
	active       []*dest
	dirtyDests   []PeerID
	dirtySources []PeerID
	// mustPersistFirst: this Ready reserved sequence numbers or set the
	// epoch, so no msg frame may leave before its Changes are stored.
	mustPersistFirst bool
}

// NewBus restores a bus from its durable snapshot. If snap.Epoch is empty the
// node is new: newEpoch becomes its epoch and is persisted with the first Ready.
func NewBus(self PeerID, snap Snapshot, newEpoch string, opts Options) *Bus {
	b := &Bus{
		self:    self,
		opts:    opts.withDefaults(),
		epoch:   snap.Epoch,
		dests:   map[PeerID]*dest{},
		sources: map[PeerID]*source{},
		seen:    map[string]struct{}{},
	}
	if b.epoch == "" {
		b.epoch = newEpoch
		b.out.Changes = append(b.out.Changes, Change{Kind: SetEpoch, Epoch: newEpoch})
		b.mustPersistFirst = true
	}
	for p, n := range snap.NextSeq {
		d := b.dest(p)
		d.next, d.reserved = n, n
	}
	entries := slices.Clone(snap.Outbox)
	slices.SortFunc(entries, func(a, c OutboxEntry) int {
		if a.To != c.To {
			if a.To < c.To {
				return -1
			}
			return 1
		}
		return int(a.Frame.Seq - c.Frame.Seq)
	})
	for _, e := range entries {
		d := b.dest(e.To)
		p := &pending{f: e.Frame}
		d.queue = append(d.queue, p)
		b.activate(d)
		if e.Frame.Seq >= d.next {
			d.next = e.Frame.Seq + 1
			d.reserved = d.next
		}
	}
	for p, c := range snap.Cursors {
		b.sources[p] = &source{epoch: c.Epoch, next: c.Next}
	}
	return b
}

// Self is the local peer id.
func (b *Bus) Self() PeerID { return b.self }

// Epoch is this node's outbox incarnation.
func (b *Bus) Epoch() string { return b.epoch }

func (b *Bus) dest(p PeerID) *dest {
	d := b.dests[p]
	if d == nil {
		d = &dest{peer: p, next: 1, rto: b.opts.InitialRTO, activeAt: -1}
		b.dests[p] = d
	}
	return d
}

// Pending returns the number of unacknowledged messages queued for p.
func (b *Bus) Pending(p PeerID) int {
	if d := b.dests[p]; d != nil {
		return len(d.queue)
	}
	return 0
}

// TotalPending returns the number of unacknowledged messages for all peers.
func (b *Bus) TotalPending() int {
	n := 0
	for _, d := range b.dests {
		n += len(d.queue)
	}
	return n
}

// Send enqueues a message for peer to. id must be unique (a UUID from the
// node's random source). It returns the frame as it will travel. The message
// is durable once the Ready holding its PutOutbox change is persisted.
func (b *Bus) Send(now time.Time, to PeerID, id, topic string, payload []byte, origin PeerID) (Frame, error) {
	return b.SendWant(now, to, id, topic, payload, origin, "")
}

// SendWant is Send with want carried by each transmission (Frame.Want):
// StageReceived asks the peer's transport for an early received ack, for a
// sender that waits for it.
func (b *Bus) SendWant(now time.Time, to PeerID, id, topic string, payload []byte, origin PeerID, want string) (Frame, error) {
	if !knownStage(want) {
		return Frame{}, fmt.Errorf("%w: unknown want %q", ErrBadFrame, want)
	}
	if to == "" || len(to) > MaxPeerIDBytes {
		return Frame{}, fmt.Errorf("%w: bad destination peer id", ErrBadFrame)
	}
	if to == b.self {
		return Frame{}, fmt.Errorf("%w: cannot send to self", ErrBadFrame)
	}
	f := Frame{Type: TypeMsg, ID: id, Topic: topic, Payload: payload, Origin: origin}
	if len(f.Payload) == 0 {
		f.Payload = []byte("null")
	}
	if err := f.Validate(); err != nil {
		return Frame{}, err
	}
	if err := b.checkedJSON(f.Payload); err != nil {
		return Frame{}, err // it says "payload ..."
	}
	d := b.dest(to)
	if len(d.queue) >= b.opts.MaxPending {
		return Frame{}, fmt.Errorf("%w (%d messages to %s)", ErrQueueFull, len(d.queue), to)
	}
	f.Seq = d.next
	d.next++
	if f.Seq >= d.reserved {
		// A new block: persisted before any frame of this Ready goes out.
		d.reserved = f.Seq + b.opts.SeqReserve
		b.mustPersistFirst = true
		if !d.seqDirty {
			d.seqDirty = true
			b.dirtyDests = append(b.dirtyDests, to)
		}
	}
	b.activate(d)
	p := &pending{f: f, want: want}
	d.queue = append(d.queue, p)
	// The row shares the queued frame, which is never changed.
	b.out.Changes = append(b.out.Changes, Change{Kind: PutOutbox, Peer: to, Seq: f.Seq, Frame: &p.f})
	b.fill(now, to, d)
	return f, nil
}

// Grow makes room in the next Ready for n more messages sent: their frames
// and outbox rows (a fan-out to n peers then allocates each once).
func (b *Bus) Grow(n int) {
	b.out.Frames = slices.Grow(b.out.Frames, n)
	b.out.Changes = slices.Grow(b.out.Changes, n)
}

// fill transmits queued messages up to the window.
func (b *Bus) fill(now time.Time, to PeerID, d *dest) {
	start := d.sent
	for d.sent < len(d.queue) && d.sent < b.opts.Window {
		b.transmit(to, d, d.queue[d.sent])
		d.sent++
	}
	if start == 0 && d.sent > 0 {
		d.due = now.Add(d.rto)
	}
}

func (b *Bus) transmit(to PeerID, d *dest, p *pending) {
	p.attempts++
	f := p.f
	f.Epoch = b.epoch
	f.Floor = d.queue[0].f.Seq
	f.Want = p.want
	f.AckMode = AckBatch // onAck takes a cumulative ack
	b.out.Frames = append(b.out.Frames, Outgoing{To: to, Frame: f})
}

// Receive handles a frame that arrived from peer from (already validated).
func (b *Bus) Receive(now time.Time, from PeerID, f Frame) {
	if f.Type == TypeAck {
		b.onAck(now, from, f)
		return
	}
	if f.Epoch == "" {
		b.onCompatMsg(from, f)
		return
	}
	s := b.sources[from]
	if s != nil && s.epoch != f.Epoch && slices.Contains(s.retired, f.Epoch) {
		// A delayed frame of the sender's previous incarnation: that outbox
		// is gone, so only stop its retransmissions.
		b.out.Frames = append(b.out.Frames, Outgoing{To: from, Frame: AckFor(&f)})
		return
	}
	if s == nil || s.epoch != f.Epoch {
		ns := &source{epoch: f.Epoch, next: 1}
		if s != nil {
			ns.retired = append(slices.Clone(s.retired), s.epoch)
			if len(ns.retired) > maxRetiredEpochs {
				ns.retired = ns.retired[len(ns.retired)-maxRetiredEpochs:]
			}
		}
		s = ns
		b.sources[from] = s
		b.markSource(from, s)
	}
	if f.Floor > s.next {
		for seq := range s.buf {
			if seq < f.Floor {
				delete(s.buf, seq)
			}
		}
		s.next = f.Floor
		b.markSource(from, s)
	}
	switch {
	case f.Seq < s.next && b.opts.UnsafeSkipDedupe:
		ack := AckFor(&f)
		f.Epoch, f.Floor = "", 0
		b.out.Deliveries = append(b.out.Deliveries, Delivery{From: from, Msg: f})
		b.out.Frames = append(b.out.Frames, Outgoing{To: from, Frame: ack})
	case f.Seq < s.next:
		// Already delivered: acknowledged again.
		b.ack(from, s, f)
	case f.Seq == s.next:
		b.deliver(from, s, f)
	default:
		if _, ok := s.buf[f.Seq]; !ok && len(s.buf) < b.opts.ReorderBuffer {
			if s.buf == nil {
				s.buf = map[int64]Frame{}
			}
			s.buf[f.Seq] = f
		}
	}
	// Deliver whatever is now in order.
	for len(s.buf) > 0 {
		nf, ok := s.buf[s.next]
		if !ok {
			break
		}
		delete(s.buf, s.next)
		b.deliver(from, s, nf)
	}
	if s.buf != nil && len(s.buf) == 0 {
		s.buf = nil // most senders are in order most of the time: keep no empty map per sender
	}
}

func (b *Bus) markSource(from PeerID, s *source) {
	if !s.dirty {
		s.dirty = true
		b.dirtySources = append(b.dirtySources, from)
	}
}

func (b *Bus) deliver(from PeerID, s *source, f Frame) {
	s.next = f.Seq + 1
	b.markSource(from, s)
	b.ack(from, s, f)
	f.Epoch, f.Floor, f.AckMode = "", 0, ""
	b.out.Deliveries = append(b.out.Deliveries, Delivery{From: from, Msg: f})
}

// ack acknowledges msg f (its sender's ordered stream is s). A sender that
// takes cumulative acks (ours: Frame.AckMode) gets one per step, for the
// last message delivered or seen again: its Floor, the cursor, acknowledges
// every message of the sender's epoch below it (Drain sends it; the sender
// is marked dirty, as every delivery marks it). Any other sender gets each
// ack at once; ours carry the Floor too, which a sender that does not know
// it ignores.
func (b *Bus) ack(from PeerID, s *source, f Frame) {
	if f.AckMode == AckBatch {
		if s.held.ID == "" || f.Seq > s.held.Seq {
			s.held = AckFor(&f) // the newest: the sender surely still has it queued
		}
		b.markSource(from, s)
		return
	}
	a := AckFor(&f)
	a.Floor = s.next
	b.out.Frames = append(b.out.Frames, Outgoing{To: from, Frame: a})
}

func (b *Bus) onCompatMsg(from PeerID, f Frame) {
	key := string(from) + "\x00" + f.ID
	b.out.Frames = append(b.out.Frames, Outgoing{To: from, Frame: AckFor(&f)})
	if _, dup := b.seen[key]; dup {
		return
	}
	if len(b.seenQ) < b.opts.DedupeWindow {
		b.seenQ = append(b.seenQ, key)
	} else {
		delete(b.seen, b.seenQ[b.seenAt])
		b.seenQ[b.seenAt] = key
		b.seenAt = (b.seenAt + 1) % len(b.seenQ)
	}
	b.seen[key] = struct{}{}
	b.out.Deliveries = append(b.out.Deliveries, Delivery{From: from, Msg: f})
}

func (b *Bus) onAck(now time.Time, from PeerID, f Frame) {
	d := b.dests[from]
	if d == nil {
		return
	}
	p := d.find(f.Seq)
	if p == nil || p.f.ID != f.ID || p.acked {
		return
	}
	if f.Stage == StageReceived {
		// The peer's transport has it: early news, once; the message stays
		// (and is retransmitted) until the final ack says it is stored.
		if !p.reported {
			p.reported = true
			b.out.Results = append(b.out.Results, Result{To: from, ID: p.f.ID, Topic: p.f.Topic, Received: true})
		}
		return
	}
	// A cumulative ack (ours) also acknowledges every message below its
	// Floor: the receiver's cursor in our epoch (p's id vouches for the
	// epoch) passed them, so each was delivered — or given up by us, and
	// then it is no longer queued.
	for _, q := range d.queue {
		if q.f.Seq >= f.Floor {
			break
		}
		if q != p && !q.acked {
			b.acked(from, q)
		}
	}
	b.acked(from, p)
	// Pop acked entries from the head; progress resets the backoff.
	popped := 0
	for popped < len(d.queue) && d.queue[popped].acked {
		popped++
	}
	if popped > 0 {
		clear(d.queue[:popped])
		if popped == len(d.queue) {
			d.queue = d.queue[:0] // the next message takes the same slot
		} else {
			d.queue = d.queue[popped:]
		}
		d.sent -= popped
		if d.sent < 0 {
			d.sent = 0
		}
	}
	d.rto = b.opts.InitialRTO
	if d.sent > 0 {
		d.due = now.Add(d.rto)
	}
	b.fill(now, from, d)
	if len(d.queue) == 0 {
		b.deactivate(d)
	}
}

// acked records the final ack of p, a message to peer to.
func (b *Bus) acked(to PeerID, p *pending) {
	p.acked = true
	b.out.Changes = append(b.out.Changes, Change{Kind: DeleteOutbox, Peer: to, Seq: p.f.Seq})
	b.out.Results = append(b.out.Results, Result{To: to, ID: p.f.ID, Topic: p.f.Topic})
}

// Connected tells the bus a connection to p (re)appeared: unacked messages to
// it are retransmitted at once instead of waiting for their timeout.
func (b *Bus) Connected(now time.Time, p PeerID) {
	d := b.dests[p]
	if d == nil || len(d.queue) == 0 {
		return
	}
	d.rto = b.opts.InitialRTO
	b.retransmit(now, p, d)
}

// NextWake returns when Tick must next be called, if ever.
func (b *Bus) NextWake() (time.Time, bool) {
	var at time.Time
	ok := false
	for _, d := range b.active {
		if !ok || d.due.Before(at) {
			at, ok = d.due, true
		}
	}
	return at, ok
}

// Tick retransmits or fails messages whose ack timed out by now.
func (b *Bus) Tick(now time.Time) {
	var due []PeerID
	for _, d := range b.active {
		if !now.Before(d.due) {
			due = append(due, d.peer)
		}
	}
	slices.Sort(due)
	for _, p := range due {
		d := b.dests[p]
		d.rto = min(d.rto*2, b.opts.MaxRTO)
		b.retransmit(now, p, d)
	}
}

// retransmit fails messages out of attempts and resends the rest of the window.
func (b *Bus) retransmit(now time.Time, to PeerID, d *dest) {
	kept := d.queue[:0]
	for i, p := range d.queue {
		if p.acked {
			continue // acknowledged behind an unacknowledged head: already reported and deleted
		}
		if i < d.sent && p.attempts >= b.opts.MaxAttempts {
			b.out.Changes = append(b.out.Changes, Change{Kind: DeleteOutbox, Peer: to, Seq: p.f.Seq})
			b.out.Results = append(b.out.Results, Result{To: to, ID: p.f.ID, Topic: p.f.Topic, Failed: true,
				Reason: fmt.Sprintf("no ack from %s after %d attempts", to, p.attempts)})
			continue
		}
		kept = append(kept, p)
	}
	clear(d.queue[len(kept):])
	d.queue = kept
	d.sent = 0
	if len(d.queue) == 0 {
		b.deactivate(d)
		return
	}
	for d.sent < len(d.queue) && d.sent < b.opts.Window {
		b.transmit(to, d, d.queue[d.sent])
		d.sent++
	}
	d.due = now.Add(d.rto)
}

// checkedJSON checks that p is one JSON value as a frame's payload (see
// CheckPayload), checking only a payload other than the last one found
// valid since the last Drain (see validJSON).
func (b *Bus) checkedJSON(p []byte) error {
	if len(p) > 0 && len(p) == len(b.validJSON) && &p[0] == &b.validJSON[0] {
		return nil
	}
	if err := CheckPayload(p); err != nil {
		return err
	}
	b.validJSON = p
	return nil
}

// maxReused bounds the length of an array Reuse keeps: a burst's arrays
// are left to the garbage collector.
const maxReused = 1024

// Reuse hands back arrays of Readys that Drain returned, for the next
// outputs, once the caller holds on to nothing in them: neither the arrays
// nor pointers to their elements (a Delivery's is never taken back: the
// node's events point to it). A step in a steady state then allocates none
// of them. Any of them may be nil; at most two arrays of each kind are
// kept, the larger ones.
func (b *Bus) Reuse(changes []Change, frames []Outgoing, results []Result) {
	b.out.Changes, b.spare.Changes = reuse(b.out.Changes, b.spare.Changes, changes)
	b.out.Frames, b.spare.Frames = reuse(b.out.Frames, b.spare.Frames, frames)
	b.out.Results, b.spare.Results = reuse(b.out.Results, b.spare.Results, results)
}

// reuse takes s, emptied (cleared: nothing it pointed to is held), as the
// outputs' array out when they have none yet, or else as the spare array,
// when it is larger than the one it replaces and not larger than
// maxReused.
func reuse[T any](out, spare, s []T) ([]T, []T) {
	if cap(s) > maxReused || cap(s) <= cap(spare) && (len(out) > 0 || cap(s) <= cap(out)) {
		return out, spare
	}
	clear(s) // past its length an array from Drain holds nothing
	s = s[:0]
	if len(out) == 0 && cap(s) > cap(out) {
		return s, spare
	}
	return out, s
}

// Drain returns the accumulated outputs and resets them. Cursor and sequence
// changes are coalesced: one per peer per Ready, in peer order.
func (b *Bus) Drain() Ready {
	b.validJSON = nil // not kept past the step
	if len(b.dirtyDests) > 1 {
		slices.Sort(b.dirtyDests)
	}
	for _, p := range b.dirtyDests {
		d := b.dests[p]
		d.seqDirty = false
		b.out.Changes = append(b.out.Changes, Change{Kind: SetNextSeq, Peer: p, Seq: d.reserved})
	}
	b.dirtyDests = b.dirtyDests[:0]
	if len(b.dirtySources) > 1 {
		slices.Sort(b.dirtySources)
	}
	for _, p := range b.dirtySources {
		s := b.sources[p]
		s.dirty = false
		b.out.Changes = append(b.out.Changes, Change{Kind: SetCursor, Peer: p, Epoch: s.epoch, Seq: s.next})
		if s.held.ID != "" {
			a := s.held
			a.Floor = s.next
			s.held = Frame{}
			b.out.Frames = append(b.out.Frames, Outgoing{To: p, Frame: a})
		}
	}
	b.dirtySources = b.dirtySources[:0]
	r := b.out
	b.out = Ready{Changes: b.spare.Changes, Frames: b.spare.Frames, Results: b.spare.Results}
	b.spare = Ready{}
	// Msg frames (new or retransmitted) depend only on the epoch and the
	// sequence reservation; acks depend on the cursors in Changes.
	if !b.mustPersistFirst {
		msgs := 0
		for i := range r.Frames {
			if r.Frames[i].Frame.Type == TypeMsg {
				msgs++
			}
		}
		switch msgs {
		case 0: // only acks: all late
		case len(r.Frames): // only msgs: all early
			r.EarlyFrames, r.Frames = r.Frames, nil
		default:
			early := make([]Outgoing, 0, msgs)
			late := make([]Outgoing, 0, len(r.Frames)-msgs)
			for _, o := range r.Frames {
				if o.Frame.Type == TypeMsg {
					early = append(early, o)
				} else {
					late = append(late, o)
				}
			}
			r.EarlyFrames, r.Frames = early, late
		}
	}
	b.mustPersistFirst = false
	return r
}
