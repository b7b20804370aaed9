package app

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/ports"
)

// ErrStopped is returned by Runtime calls after the runtime stopped.
var ErrStopped = errors.New("node runtime stopped")

// maxBatch bounds how many inputs one loop iteration takes before it
// persists and sends: large enough to amortise a SQLite transaction, small
// enough to keep latency low.
const maxBatch = 512

// maxJobs bounds the batches waiting to be stored; when it is reached the
// loop waits for the store (back-pressure instead of unbounded memory).
const maxJobs = 64

// maxGroup bounds how many queued jobs one transaction stores together.
const maxGroup = 32

// commitLinger is how long the runtime gathers changes that nobody waits on
// — outbox rows of messages already sent, and deletions of acknowledged
// ones, which wait up to deleteLinger (see splitLazy) — before it hands
// them to the persister. A message
// acknowledged within it never costs a row, and the store's work stays off
// the CPU while round trips are under way. Everything else is stored at once.
const commitLinger = 2 * time.Millisecond

// deleteLinger is how long deletions of acknowledged outbox rows are
// gathered (commitLinger applies to the rows themselves). A deletion that
// waits risks nothing: after a crash the row is sent again, and the
// receiver, which has it, acknowledges it without delivering it twice. And
// gathering them for longer spares the store a transaction every
// commitLinger while messages come one at a time (a group's host deletes
// its members' rows as their acks arrive).
const deleteLinger = 100 * time.Millisecond

// maxLazy bounds the lazy changes held at once; more are stored at once.
const maxLazy = 8192

// maxKeptDels bounds the array of gathered deletions kept for the next ones
// after a hand-over.
const maxKeptDels = 4096

// outKey names an outbox row.
type outKey struct {
	peer mq.PeerID
	seq  int64
}

// job is one Ready on its way through the persister: store its batch, then
// send its frames, complete its commands and publish its events.
type job struct {
	rd     Ready
	events []Event
	cmds   []command
	// barrier: frames sent later must wait for this job (it stores state
	// they depend on: a sequence reservation, an epoch, group state; or it
	// holds msg frames that must go out before later ones).
	barrier bool
	// lazy: only outbox rows and deletions that nobody waits on, gathered
	// by the runtime (see gatherLazy); not counted in flight.
	lazy bool
}

// hasWork reports whether j has anything to store, send, complete or
// publish.
func (j *job) hasWork() bool {
	return !j.rd.Batch.Empty() || len(j.rd.Frames) > 0 || len(j.events) > 0 || len(j.cmds) > 0 ||
		len(j.rd.Publish) > 0 || len(j.rd.Dial) > 0 || len(j.rd.History) > 0
}

// isBarrier reports whether frames of later steps depend on j being stored.
// Outbox rows and cursors are the only changes they never depend on: a msg
// frame needs its epoch and sequence reservation stored, not its own row, and
// acks wait for their own step's cursor.
func (j *job) isBarrier() bool {
	b := &j.rd.Batch
	if len(b.Groups) > 0 || len(b.Peers) > 0 {
		return true
	}
	for i := range b.Bus {
		switch b.Bus[i].Kind {
		case mq.PutOutbox, mq.DeleteOutbox, mq.SetCursor:
		default:
			return true
		}
	}
	for i := range j.rd.Frames {
		if j.rd.Frames[i].Frame.Type == mq.TypeMsg {
			return true
		}
	}
	return false
}

type command struct {
	fn   func(now time.Time, n *Node)
	done chan error
}

// Runtime drives one Node with real ports on a single goroutine: it reads the
// transport, timers and commands, feeds them to the node, persists each Ready
// before sending its frames, and publishes events. Its methods are safe for
// concurrent use.
type Runtime struct {
	node  *Node
	tr    ports.Transport
	store ports.Store
	clock ports.Clock
	log   *slog.Logger
	disc  ports.Discovery // nil: no discovery (see SetDiscovery)

	cmds    chan command
	stopped chan struct{}
	err     error

	// The persistence pipeline: the loop hands each Ready that needs storing
	// to one persister goroutine, in order, and goes on with its inputs.
	jobs      chan job
	linger    time.Duration // see SetCommitLinger
	inflight  atomic.Int64  // jobs handed over and not yet completed
	barriers  atomic.Int64  // of which barriers (see job.isBarrier)
	fatal     chan struct{} // closed by the persister when a batch cannot be stored
	persisted chan struct{} // closed when the persister has exited

	// stepMu is held by whoever steps the node: the loop for each batch of
	// inputs, or a caller stepping inline (see stepInline). The fields below
	// it are guarded by it.
	stepMu  sync.Mutex
	running bool               // Run is looping: inline steps are allowed
	runCtx  context.Context    // Run's ctx
	timer   ports.Timer        // the loop's wake-up timer
	ds      ports.DirectSender // tr's fast path, if it has one
	quick   ports.QuickStore   // store's fast path, if it has one
	// inline is set during an inline step (stepInline, stepReceived):
	// frames the transport lets the stepping goroutine write itself are
	// collected in direct, and written once the step is done (endStep).
	inline bool
	direct []func()
	// directTo, during a step of a received frame on a network goroutine
	// (stepReceived), is the frame's sender: the only peer written to
	// directly, so that a slow peer never holds up the reading of another.
	// If the frame is a msg, ackID is its id, and acked records that the
	// step sent its final ack.
	directTo mq.PeerID
	ackID    string
	acked    bool
	ir       ports.InlineReceiver // tr's inline path, if it has one
	taken    int64                // events taken from tr.Events() so far
	// armed: the loop's timer is set for armedAt (zero: an hour after it
	// was set) and has not fired since (see armTimer).
	armed   bool
	armedAt time.Time
	// Lazy changes (see splitLazy) gathered before they go to the
	// persister: each outbox row (lazyRows) for up to linger, deletions
	// (lazyDels) for up to deleteLinger (at least linger); an outbox row
	// whose deletion comes meanwhile is dropped here, with its deletion.
	lazyRows []mq.Change
	rowsAt   []time.Time // when each of lazyRows was gathered
	lazyDels []mq.Change
	lazyPuts map[outKey]int // index in lazyRows of a gathered PutOutbox
	delsDue  time.Time      // when lazyDels must be handed over (zero: none)
	// held are the outbox rows of messages a caller waits on (SendWait,
	// SendRoundTrip), kept apart from lazyRows until the wait ends without
	// the message's final ack (see release): no timer is set for them, so
	// round trips one after another set none. A node that stops stores
	// them; one that crashes loses only messages whose callers were told
	// nothing yet. Their deletion drops them, as it drops a gathered row.
	// stepWaited lists the messages of waiting callers queued in the step
	// being flushed, in the order they were queued.
	held       map[outKey]mq.Change
	stepWaited []outKey

	mu   sync.Mutex
	subs map[*Subscription]struct{}
	// subKinds is the union of the kinds subs take (bit k: kind k; all bits
	// when one takes every kind), kept by subsChanged for mutedKinds,
	// which reads it without mu.
	subKinds atomic.Uint32
	waiters  map[string]waiter
	nwait    atomic.Int64 // len(waiters), read without mu
	// waitChans are waiters' channels kept for the next ones (endWait),
	// at most maxWaitChans.
	waitChans []chan Event
	// released lists held rows whose wait ended without the final ack,
	// for the next step to gather (nreleased: its length, read without mu).
	released  []outKey
	nreleased atomic.Int32

	// Members' history questions, answered from the store by one goroutine
	// (historyWorker); nil when the store keeps no history. asking counts
	// each member's questions waiting or being answered.
	history chan HistoryQuestion
	asking  map[mq.PeerID]int
}

// historyQueue bounds the history questions waiting, and historyPerPeer
// those of one member: more are dropped (the member's request times out),
// so members asking in a loop cost the host a bounded amount of work, and
// one member cannot crowd the others out.
const (
	historyQueue   = 32
	historyPerPeer = 2
)

// NewRuntime prepares a runtime; call Run to start it.
func NewRuntime(node *Node, tr ports.Transport, store ports.Store, clock ports.Clock, log *slog.Logger) *Runtime {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Runtime{
		node: node, tr: tr, store: store, clock: clock, log: log,
		linger:    commitLinger,
		cmds:      make(chan command, 1024),
		stopped:   make(chan struct{}),
		jobs:      make(chan job, maxJobs),
		fatal:     make(chan struct{}),
		persisted: make(chan struct{}),
		lazyPuts:  map[outKey]int{},
		held:      map[outKey]mq.Change{},
		subs:      map[*Subscription]struct{}{},
		waiters:   map[string]waiter{},
	}
	r.ds, _ = tr.(ports.DirectSender)
	r.quick, _ = store.(ports.QuickStore)
	if an, ok := tr.(ports.AckNotifier); ok {
		an.SetAckHook(r.onAck)
	}
	if ir, ok := tr.(ports.InlineReceiver); ok {
		r.ir = ir
		ir.SetInlineHandler(r.stepReceived)
	}
	return r
}

// SetCommitLinger sets how long outbox rows and deletions that nobody waits
// on are gathered before they are stored (default 2 ms; 0: stored with
// their step). Call it before Run.
func (r *Runtime) SetCommitLinger(d time.Duration) { r.linger = max(d, 0) }

// Self is the node's peer id.
func (r *Runtime) Self() mq.PeerID { return r.node.Self() }

// Run runs the loop until ctx is cancelled or persisting fails (a node that
// cannot store must not send). It returns nil on a clean stop.
func (r *Runtime) Run(ctx context.Context) error {
	defer r.stop()
	go r.persister(ctx)
	if hr, ok := r.store.(ports.HistoryReader); ok {
		hctx, stopHistory := context.WithCancel(ctx)
		done := make(chan struct{})
		r.mu.Lock()
		r.history = make(chan HistoryQuestion, historyQueue)
		jobs := r.history
		r.mu.Unlock()
		go func() {
			defer close(done)
			r.historyWorker(hctx, hr, jobs)
		}()
		defer func() {
			stopHistory()
			<-done
		}()
	}
	defer func() {
		close(r.jobs)
		<-r.persisted
	}()
	timer := r.clock.NewTimer(time.Hour)
	defer timer.Stop()
	// Finish restoring (timers, re-joins), persist what that produced (e.g. a
	// new epoch) and resend the outbox.
	r.stepMu.Lock()
	now := r.clock.Now()
	r.node.Tick(now)
	if err := r.flush(ctx, now, nil); err != nil {
		r.stepMu.Unlock()
		return err
	}
	r.runCtx, r.timer, r.running = ctx, timer, true
	r.armTimer(timer, now)
	r.stepMu.Unlock()
	// No inline step may run once Run returns (the persister is gone), and
	// the lazy changes gathered go to the persister first.
	defer func() {
		r.stepMu.Lock()
		r.running = false
		_ = r.handOverLazy()
		r.stepMu.Unlock()
	}()
	events := r.tr.Events()
	discEvents := r.discoveryEvents()
	for {
		var pending []command
		select {
		case <-ctx.Done():
			r.stepMu.Lock()
			r.running = false
			r.shutdown(ctx)
			r.stepMu.Unlock()
			return nil
		case <-r.fatal:
			return r.err
		case ev, ok := <-discEvents:
			r.stepMu.Lock()
			discEvents = r.onDiscovery(discEvents, ev, ok)
		case ev, ok := <-events:
			if !ok {
				return nil
			}
			r.stepMu.Lock()
			r.taken++
			r.node.Handle(r.clock.Now(), ev)
		case c := <-r.cmds:
			r.stepMu.Lock()
			c.fn(r.clock.Now(), r.node)
			if c.done != nil {
				pending = append(pending, c)
			}
		case <-timer.C():
			r.stepMu.Lock()
			r.armed = false
			r.node.Tick(r.clock.Now())
		}
		// Take whatever else is ready, up to maxBatch inputs, then flush once.
	more:
		for i := 0; i < maxBatch; i++ {
			select {
			case ev, ok := <-discEvents:
				discEvents = r.onDiscovery(discEvents, ev, ok)
			case ev, ok := <-events:
				if !ok {
					break more
				}
				r.taken++
				r.node.Handle(r.clock.Now(), ev)
			case c := <-r.cmds:
				c.fn(r.clock.Now(), r.node)
				if c.done != nil {
					pending = append(pending, c)
				}
			default:
				break more
			}
		}
		now := r.clock.Now()
		err := r.flush(ctx, now, pending)
		r.armTimer(timer, now)
		r.stepMu.Unlock()
		if err != nil {
			return err
		}
	}
}

// stepInline runs fn on the caller's goroutine as one node step, flushes it
// like the loop does, and then carries out the frames the transport let it
// write directly (ports.DirectSender) — saving the hand-overs to the loop
// and to the peer's writer for a caller that waits on the answer anyway. It
// reports false, without running fn, when the loop is not running (before
// Run, or after it stopped): the caller then goes through the loop.
func (r *Runtime) stepInline(fn func(now time.Time, n *Node)) (bool, error) {
	r.stepMu.Lock()
	if !r.running {
		r.stepMu.Unlock()
		return false, nil
	}
	now := r.clock.Now()
	fn(now, r.node)
	r.inline = true
	err := r.flush(r.runCtx, now, nil)
	r.inline = false
	r.endStep(now)
	return true, err
}

// stepReceived is the transport's inline handler (ports.InlineReceiver). It
// takes the frames somebody waits on: a msg whose sender waits for its round
// trip (it asks for the received ack), and acks while a caller here waits
// for one. When the node is idle — nobody steps it and no event is on its
// way through Events, so f overtakes nothing — it steps f on the network
// goroutine that read it, like the loop would, and writes the frames for
// f's sender from there (the others are queued): the loop is not woken, and
// the ack of a msg leaves without a hand-over to the peer's writer. It
// declines (taken false) any other frame, and when the node is busy or not
// running: the loop steps those, many at once under load.
func (r *Runtime) stepReceived(from mq.PeerID, f mq.Frame) (taken, acked bool) {
	if f.Type == mq.TypeAck && r.nwait.Load() == 0 || f.Type == mq.TypeMsg && !f.AsksReceived() {
		return false, false
	}
	if !r.stepMu.TryLock() {
		return false, false
	}
	if !r.running || r.taken != r.ir.Queued() {
		r.stepMu.Unlock()
		return false, false
	}
	now := r.clock.Now()
	r.node.Handle(now, ports.TransportEvent{Kind: ports.FrameReceived, From: from, Frame: f})
	r.inline, r.directTo = true, from
	if f.Type == mq.TypeMsg {
		r.ackID = f.ID
	}
	err := r.flush(r.runCtx, now, nil)
	acked = r.acked
	r.inline, r.directTo, r.ackID, r.acked = false, "", "", false
	r.endStep(now)
	if err != nil {
		// The persister failed: the loop sees it (r.fatal) and stops.
		r.log.Debug("inline step", "from", from, "err", err)
	}
	return true, acked
}

// endStep ends an inline step (stepInline, stepReceived): it sets the
// loop's timer, releases the node, then carries out the direct writes the
// step collected — copied first into an array on the stack when they fit
// (the usual one or two), and r.direct emptied for the next step.
func (r *Runtime) endStep(now time.Time) {
	var local [4]func()
	direct := append(local[:0], r.direct...)
	clear(r.direct)
	r.direct = r.direct[:0]
	r.armTimer(r.timer, now)
	r.stepMu.Unlock()
	for _, write := range direct {
		write()
	}
}

// armTimer sets the loop's timer t for the node's next wake-up or the next
// hand-over of lazy changes, whichever comes first (in an hour when there is
// none). A timer set, and not yet fired, for that time or an earlier one is
// left as it is: waking the loop early costs a Tick that finds nothing due
// and sets the timer again, while setting it costs every step. Messages sent
// one after another, each acknowledged before the next, thus set it once per
// retransmission timeout, not twice a message.
func (r *Runtime) armTimer(t ports.Timer, now time.Time) {
	at, ok := r.node.NextWake()
	for _, due := range []time.Time{r.rowsDue(), r.delsDue} {
		if !due.IsZero() && (!ok || due.Before(at)) {
			at, ok = due, true
		}
	}
	if !ok {
		at = time.Time{}
	}
	if r.armed && (!ok || !r.armedAt.IsZero() && !at.Before(r.armedAt)) {
		return
	}
	r.armed, r.armedAt = true, at
	if !t.Stop() {
		select {
		case <-t.C():
		default:
		}
	}
	if !ok {
		t.Reset(time.Hour)
		return
	}
	t.Reset(max(at.Sub(now), 0))
}

// flush takes the node's Ready. Frames that depend on nothing stored go out
// at once when no earlier batch they may depend on is still being stored
// (else they wait their turn, so a sequence reservation is never relied on
// before it is durable); acknowledgements from peers are published at once.
// The rest — storing the batch, then sending its frames, completing the
// commands and publishing its events — is the persister's, in order. When
// nothing earlier is still being stored, and the step has nothing to store
// or the store stores it at once (ports.QuickStore: a receiver's cursor),
// it all happens here, without a hand-over.
func (r *Runtime) flush(ctx context.Context, now time.Time, pending []command) error {
	if r.nreleased.Load() > 0 {
		r.gatherReleased(now)
	}
	r.node.Mute(r.mutedKinds())
	rd := r.node.Ready()
	// spent collects the arrays of rd handed back to the node (Reuse) once
	// nothing holds them: all of them when the step completes here.
	spent := Ready{Batch: ports.Batch{Bus: rd.Batch.Bus}, Frames: rd.Frames, Events: rd.Events}
	if r.barriers.Load() == 0 {
		r.sendFrames(rd.EarlyFrames, r.inline)
		spent.EarlyFrames = rd.EarlyFrames
	} else {
		rd.Frames = append(rd.EarlyFrames, rd.Frames...)
	}
	rd.EarlyFrames = nil
	// The events Ready handed over are filtered in place: those that wait
	// for the batch keep their order in the same array.
	later := rd.Events[:0]
	for _, ev := range rd.Events {
		if ev.Kind == EventDelivered || ev.Kind == EventReceived {
			r.publish([]Event{ev})
			continue
		}
		later = append(later, ev)
	}
	clear(rd.Events[len(later):])
	rd.Events = nil
	j := job{rd: rd, events: later, cmds: pending}
	// Outbox rows and their deletions are waited on by nobody once the
	// frames went out (unless a caller waits for the step to be stored):
	// they are gathered for up to commitLinger (gatherLazy), while what the
	// step's frames and events depend on is stored at once.
	var lazy []mq.Change
	if len(pending) == 0 && r.linger > 0 {
		lazy = splitLazy(&j.rd.Batch)
	}
	// With nothing stored earlier still on its way (lazy changes aside: no
	// step depends on them), what the step needs stored is stored here if
	// the store can do it at once (a receiver's cursor), and the step
	// completes here, without a hand-over to the persister.
	if r.inflight.Load() == 0 && (j.rd.Batch.Empty() || r.quick != nil && r.quick.ApplyNow(j.rd.Batch)) {
		r.complete(ctx, &j, r.inline)
	} else {
		// The job holds its arrays, but not those of the changes split off
		// (gathered below, by copy), nor the frames sent early.
		spent.Frames, spent.Events = nil, nil
		if len(lazy) == 0 {
			spent.Batch.Bus = nil
		}
		if j.hasWork() {
			if err := r.enqueue(j); err != nil {
				return err
			}
		}
	}
	if len(lazy) > 0 {
		r.gatherLazy(lazy, now)
	}
	r.stepWaited = r.stepWaited[:0]
	r.node.Reuse(&spent)
	return r.lazyDue(now)
}

// lazyDue hands the gathered lazy changes over when their time has come by
// now, or they are too many: the rows alone when only theirs has come.
func (r *Runtime) lazyDue(now time.Time) error {
	if len(r.lazyRows) == 0 && len(r.lazyDels) == 0 && len(r.held) == 0 {
		return nil
	}
	switch {
	case len(r.lazyRows)+len(r.lazyDels)+len(r.held) >= maxLazy,
		!r.delsDue.IsZero() && !now.Before(r.delsDue):
		return r.handOverLazy()
	case len(r.rowsAt) > 0 && !now.Before(r.rowsDue()):
		return r.handOver(false, now)
	}
	return nil
}

// gatherLazy adds lazy changes (outbox rows and deletions) to those
// gathered, or held (the rows of waited messages). A deletion of a row
// gathered or held and not yet handed over drops the row and itself: the
// row was never stored (PutOutbox is emitted once per message, and (peer,
// seq) names one message, never reused).
func (r *Runtime) gatherLazy(cs []mq.Change, now time.Time) {
	// The rows of waited messages come in the order stepWaited lists them
	// (both are the order of the step's sends), so one pass matches them.
	// A row that did not match would only be gathered instead of held.
	waited := r.stepWaited
	for _, c := range cs {
		k := outKey{c.Peer, c.Seq}
		switch c.Kind {
		case mq.PutOutbox:
			if len(waited) > 0 && waited[0] == k {
				waited = waited[1:]
				r.held[k] = c
				continue
			}
			r.lazyPuts[k] = len(r.lazyRows)
			r.lazyRows = append(r.lazyRows, c)
			r.rowsAt = append(r.rowsAt, now)
		case mq.DeleteOutbox:
			if _, ok := r.held[k]; ok {
				delete(r.held, k)
				continue
			}
			if i, ok := r.lazyPuts[k]; ok {
				r.lazyRows[i] = mq.Change{} // dropped at hand-over
				delete(r.lazyPuts, k)
				if len(r.lazyPuts) == 0 {
					// Every row gathered was dropped: none is due any
					// more, and no timer need wake the loop for them.
					clear(r.lazyRows)
					r.lazyRows, r.rowsAt = r.lazyRows[:0], r.rowsAt[:0]
				}
				continue
			}
			if r.delsDue.IsZero() {
				r.delsDue = now.Add(max(r.linger, deleteLinger))
			}
			r.lazyDels = append(r.lazyDels, c)
		}
	}
}

// release moves the held row of message (to, seq) to the rows gathered
// for the linger, through the next step: its caller stopped waiting before
// the final ack, and may have been told that the message is queued. With
// wake (the caller gave up), the loop is woken for it unless its command
// queue is full (then it steps soon anyway). Without (an early received
// ack was enough), the step of the final ack, which comes next, gathers
// the row and drops it; if that ack never comes, the message's
// retransmission (a step) gathers it.
func (r *Runtime) release(to mq.PeerID, seq int64, wake bool) {
	r.mu.Lock()
	r.released = append(r.released, outKey{to, seq})
	r.nreleased.Store(int32(len(r.released)))
	r.mu.Unlock()
	if !wake {
		return
	}
	select {
	case r.cmds <- command{fn: func(time.Time, *Node) {}}:
	default:
	}
}

// gatherReleased gathers the released rows still held (see release).
func (r *Runtime) gatherReleased(now time.Time) {
	r.mu.Lock()
	ks := r.released
	r.released = nil
	r.nreleased.Store(0)
	r.mu.Unlock()
	for _, k := range ks {
		if c, ok := r.held[k]; ok {
			delete(r.held, k)
			r.gatherLazy([]mq.Change{c}, now)
		}
	}
}

// handOverLazy sends every gathered lazy change to the persister, and the
// held rows.
func (r *Runtime) handOverLazy() error { return r.handOver(true, time.Time{}) }

// handOver sends gathered outbox rows, and the gathered deletions and held
// rows too if dels, to the persister as one job: rows first (a deletion
// gathered never names a row gathered or held, which it would have
// dropped). With dels every row goes; without, only the rows gathered
// linger ago or earlier: each row gets its whole linger to be acknowledged
// and never written, not only the first of a batch.
func (r *Runtime) handOver(dels bool, now time.Time) error {
	n := len(r.lazyRows) // with dels: every row
	if !dels {
		cutoff := now.Add(-r.linger)
		n = 0
		for n < len(r.rowsAt) && !r.rowsAt[n].After(cutoff) {
			n++
		}
	}
	cs := slices.DeleteFunc(slices.Clone(r.lazyRows[:n]), func(c mq.Change) bool { return c.Kind == 0 })
	r.keepRows(n)
	if dels && len(r.held) > 0 {
		// Ordered for a store that writes rows in order of arrival.
		held := slices.SortedFunc(maps.Values(r.held), func(a, b mq.Change) int {
			return cmp.Or(cmp.Compare(a.Peer, b.Peer), cmp.Compare(a.Seq, b.Seq))
		})
		cs = append(cs, held...)
		clear(r.held)
	}
	if dels {
		cs = append(cs, r.lazyDels...)
		// The next deletions reuse the array (copied into cs), unless a
		// burst made it large.
		r.lazyDels, r.delsDue = r.lazyDels[:0], time.Time{}
		if cap(r.lazyDels) > maxKeptDels {
			r.lazyDels = nil
		}
	}
	if len(cs) == 0 {
		return nil
	}
	return r.enqueue(job{rd: Ready{Batch: ports.Batch{Bus: cs}}, lazy: true})
}

// rowsDue is when the oldest gathered row must be handed over (zero: none
// gathered).
func (r *Runtime) rowsDue() time.Time {
	if len(r.rowsAt) == 0 {
		return time.Time{}
	}
	return r.rowsAt[0].Add(r.linger)
}

// keepRows drops the first n gathered rows (handed over) and the rows
// dropped by their deletion, keeping the others in order, indexed and
// timed.
func (r *Runtime) keepRows(n int) {
	end, w := len(r.lazyRows), 0
	clear(r.lazyPuts)
	for i := n; i < end; i++ {
		c := r.lazyRows[i]
		if c.Kind == 0 {
			continue
		}
		r.lazyPuts[outKey{c.Peer, c.Seq}] = w
		r.lazyRows[w], r.rowsAt[w] = c, r.rowsAt[i]
		w++
	}
	clear(r.lazyRows[w:end])
	r.lazyRows, r.rowsAt = r.lazyRows[:w], r.rowsAt[:w]
}

// enqueue hands j to the persister. Lazy jobs are not counted in flight:
// nothing sent later depends on them.
func (r *Runtime) enqueue(j job) error {
	if !j.lazy {
		j.barrier = j.isBarrier()
		r.inflight.Add(1)
		if j.barrier {
			r.barriers.Add(1)
		}
	}
	select {
	case r.jobs <- j:
		return nil
	case <-r.fatal:
		r.done(&j)
		r.fail(&j, r.err)
		return r.err
	}
}

// splitLazy moves b's outbox rows and outbox deletions (in their order) out
// of b and returns them, unless b changes the epoch (then it stays whole).
// They may be stored after later batches: outbox rows and their deletions
// keep their own order, and nothing else depends on them — a msg frame
// leaves before its row anyway (its sequence number comes from a
// reservation, which is not lazy), acks depend on cursors, and a crash loses
// at most the rows of the last commitLinger, as it loses a message whose row
// was not yet stored.
func splitLazy(b *ports.Batch) []mq.Change {
	n := 0
	for i := range b.Bus {
		switch b.Bus[i].Kind {
		case mq.SetEpoch:
			return nil
		case mq.PutOutbox, mq.DeleteOutbox:
			n++
		}
	}
	switch n {
	case 0:
		return nil
	case len(b.Bus):
		lazy := b.Bus
		b.Bus = nil
		return lazy
	}
	lazy := make([]mq.Change, 0, n)
	keep := make([]mq.Change, 0, len(b.Bus)-n)
	for _, c := range b.Bus {
		if c.Kind == mq.PutOutbox || c.Kind == mq.DeleteOutbox {
			lazy = append(lazy, c)
		} else {
			keep = append(keep, c)
		}
	}
	b.Bus = keep
	return lazy
}

// done takes a completed (or failed) job off the in-flight counts.
func (r *Runtime) done(j *job) {
	if j.lazy {
		return
	}
	if j.barrier {
		r.barriers.Add(-1)
	}
	r.inflight.Add(-1)
}

// persister stores jobs in order until the loop closes r.jobs. After a
// failure it stores nothing more: the remaining jobs' commands get the error
// and their frames are never sent.
func (r *Runtime) persister(ctx context.Context) {
	defer close(r.persisted)
	var failed error
	group := make([]job, 0, maxGroup)
	for j := range r.jobs {
		// Group commit: the jobs that queued up while the last batch was
		// being stored go into one transaction, in order (an outbox row whose
		// final ack arrived meanwhile is then never written at all).
		group = append(group[:0], j)
	more:
		for len(group) < maxGroup {
			select {
			case j2, ok := <-r.jobs:
				if !ok {
					break more
				}
				group = append(group, j2)
			default:
				break more
			}
		}
		if failed == nil {
			// One job (a node at ease): its own batch, not a copy.
			batch := group[0].rd.Batch
			if len(group) > 1 {
				batch = ports.Batch{}
				for _, g := range group {
					batch.Append(g.rd.Batch)
				}
			}
			if !batch.Empty() {
				if err := r.store.Apply(context.WithoutCancel(ctx), batch); err != nil {
					failed = fmt.Errorf("persist node state: %w", err)
					r.log.Error("stopping node: cannot persist", "err", failed)
					r.mu.Lock()
					r.err = failed
					r.mu.Unlock()
					close(r.fatal)
				}
			}
		}
		for i := range group {
			g := &group[i]
			if failed != nil {
				r.fail(g, failed)
				r.done(g)
				continue
			}
			// The job's frames and events go out while it still holds
			// back later steps (done), so none overtakes them; its
			// commands return only after that, so a caller's next step is
			// not held back by the job it waited for.
			r.send(ctx, g, false)
			r.done(g)
			r.returnCmds(g.cmds, nil)
		}
		clear(group) // the next group's jobs do not keep these alive
	}
}

// complete carries out a job that needs nothing stored (or stored at once),
// on the stepping goroutine. direct is as for sendFrames.
func (r *Runtime) complete(ctx context.Context, j *job, direct bool) {
	r.send(ctx, j, direct)
	r.returnCmds(j.cmds, nil)
}

// send hands a stored job's frames and dials over, and publishes its events.
// direct is as for sendFrames.
func (r *Runtime) send(ctx context.Context, j *job, direct bool) {
	r.sendFrames(j.rd.Frames, direct)
	r.discover(ctx, &j.rd)
	if len(j.rd.History) > 0 {
		r.askHistory(j.rd.History)
	}
	if len(j.events) > 0 {
		r.publish(j.events)
	}
}

// returnCmds ends the commands of a job with err.
func (r *Runtime) returnCmds(cmds []command, err error) {
	for _, c := range cmds {
		if c.done != nil {
			c.done <- err
		}
	}
}

func (r *Runtime) fail(j *job, err error) { r.returnCmds(j.cmds, err) }

// sendFrames hands frames to the transport. With direct (an inline step,
// on the stepping goroutine under stepMu), frames the transport lets the
// stepping goroutine write itself are collected in r.direct instead, and
// the final ack of the msg a stepReceived handles (ackID) is noted.
func (r *Runtime) sendFrames(frames []mq.Outgoing, direct bool) {
	for _, o := range frames {
		if direct {
			if r.ackID != "" && o.To == r.directTo && o.Frame.Type == mq.TypeAck && o.Frame.Stage == "" && o.Frame.ID == r.ackID {
				r.acked = true
			}
			if r.ds != nil && (r.directTo == "" || o.To == r.directTo) {
				if write, ok := r.ds.ClaimDirect(o.To, o.Frame); ok {
					r.direct = append(r.direct, write)
					continue
				}
			}
		}
		if err := r.tr.Send(o.To, o.Frame); err != nil && !errors.Is(err, ports.ErrBackpressure) {
			r.log.Debug("transport send", "to", o.To, "err", err)
		}
	}
}

func (r *Runtime) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.stopped:
		return
	default:
	}
	close(r.stopped)
	for s := range r.subs {
		s.closeLocked()
	}
	r.subs = map[*Subscription]struct{}{}
	r.subsChanged()
}

// Err returns why the runtime stopped, if it failed.
func (r *Runtime) Err() error {
	select {
	case <-r.stopped:
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.err
	default:
		return nil
	}
}

// Done is closed when Run has returned.
func (r *Runtime) Done() <-chan struct{} { return r.stopped }

// Do runs fn on the node's goroutine and returns once the state fn produced is
// persisted (so a message queued by fn is durable). fn must not block.
func (r *Runtime) Do(ctx context.Context, fn func(now time.Time, n *Node)) error {
	c := command{fn: fn, done: make(chan error, 1)}
	select {
	case r.cmds <- c:
	case <-r.stopped:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-c.done:
		return err
	case <-r.stopped:
		// The loop may have run fn and flushed just before stopping.
		select {
		case err := <-c.done:
			return err
		default:
			return ErrStopped
		}
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Send queues a message durably and returns its frame without waiting for
// the peer.
func (r *Runtime) Send(ctx context.Context, to mq.PeerID, topic string, payload []byte) (mq.Frame, error) {
	var f mq.Frame
	var serr error
	if err := r.Do(ctx, func(now time.Time, n *Node) { f, serr = n.Send(now, to, topic, payload, "") }); err != nil {
		return mq.Frame{}, err
	}
	return f, serr
}

// Post queues a message without waiting for it to be stored: it becomes
// durable with the node's next flush (microseconds later under load), so a
// crash in between may lose it, and the caller was not told otherwise. Use it
// to pipeline many messages; use Send when the caller must know the message
// is stored. Bad input is refused at once; a refusal found on the node's
// goroutine (e.g. mq.ErrQueueFull) is published as an EventFailed. Post
// blocks only while the node's command queue is full.
func (r *Runtime) Post(ctx context.Context, to mq.PeerID, topic string, payload []byte) error {
	if err := mq.ValidateTopic(topic); err != nil {
		return err
	}
	if len(payload) > mq.MaxPayloadBytes {
		return fmt.Errorf("%w: %d bytes (max %d)", mq.ErrPayloadTooLarge, len(payload), mq.MaxPayloadBytes)
	}
	c := command{fn: func(now time.Time, n *Node) {
		if _, err := n.Send(now, to, topic, payload, ""); err != nil {
			n.events = append(n.events, Event{Kind: EventFailed, Peer: to, Topic: topic, Reason: err.Error()})
		}
	}}
	select {
	case r.cmds <- c:
		return nil
	case <-r.stopped:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
}

// SendWait queues a message and waits until the peer's node acknowledged
// it (EventDelivered), it failed (EventFailed), or ctx ends. On ctx expiry
// the message stays queued, stored within the linger, and the returned frame
// is still valid. While the caller waits, the message's outbox row is held
// in memory (see Runtime.held): a message acknowledged meanwhile is never
// written, and a crash meanwhile loses only what the caller was not told.
func (r *Runtime) SendWait(ctx context.Context, to mq.PeerID, topic string, payload []byte) (mq.Frame, Event, error) {
	return r.sendWait(ctx, to, topic, payload, false)
}

// SendRoundTrip is SendWait that returns at the first acknowledgement of any
// kind: EventReceived (the peer's transport has it; a Goop 1.1.0 peer sends
// it at once), or EventDelivered/EventFailed. It measures the bus round trip
// as SPEC §2 defines the ack: a transport ack.
func (r *Runtime) SendRoundTrip(ctx context.Context, to mq.PeerID, topic string, payload []byte) (mq.Frame, Event, error) {
	return r.sendWait(ctx, to, topic, payload, true)
}

// waiter is a caller of SendWait/SendRoundTrip waiting for its message.
type waiter struct {
	ch    chan Event // capacity 1: the one event that ends the wait
	early bool       // EventReceived is enough
	to    mq.PeerID
	seq   int64
	topic string
}

// maxWaitChans bounds the waiters' channels kept for reuse.
const maxWaitChans = 64

func (r *Runtime) sendWait(ctx context.Context, to mq.PeerID, topic string, payload []byte, early bool) (mq.Frame, Event, error) {
	// Wait until the node queued the message, not until its outbox row is
	// stored: the ack this call waits for supersedes that (and if storing
	// fails the node stops, which ends the wait).
	// A caller content with the transport ack asks the peer for it (it is
	// sent only when asked).
	w := waiter{early: early, to: to, topic: topic}
	want := ""
	if early {
		want = mq.StageReceived
	}
	// The caller waits anyway: step the node on its goroutine, and write the
	// msg from here when the transport allows (no hand-over to the loop nor
	// to the peer's writer).
	f, ran, err := r.stepSend(&w, payload, want)
	if err == nil && !ran {
		f, err = r.loopSend(ctx, &w, payload, want)
	}
	if w.ch != nil { // queued, and w is its waiter
		defer r.endWait(f.ID, w.ch)
		if err != nil {
			r.release(to, f.Seq, true) // the wait ends here
		}
	}
	if err != nil {
		return f, Event{}, err
	}
	select {
	case ev := <-w.ch:
		switch ev.Kind {
		case EventFailed:
			return f, ev, fmt.Errorf("message %s to %s failed: %s", f.ID, to, ev.Reason)
		case EventReceived:
			r.release(to, f.Seq, false) // the final ack is still to come
		}
		return f, ev, nil
	case <-ctx.Done():
		r.release(to, f.Seq, true)
		return f, Event{}, ctx.Err()
	case <-r.stopped:
		return f, Event{}, ErrStopped // (the loop stored the held rows)
	}
}

// stepSend queues w's message as an inline step (see stepInline) and
// registers w as its waiter. ran is false when the loop must do it
// (loopSend); err is the node's refusal or a failed step.
func (r *Runtime) stepSend(w *waiter, payload []byte, want string) (f mq.Frame, ran bool, err error) {
	var serr error
	ran, err = r.stepInline(func(now time.Time, n *Node) { f, serr = r.queueWaiting(now, n, w, payload, want) })
	if err == nil {
		err = serr
	}
	return f, ran, err
}

// loopSend is stepSend through the loop, for when it cannot step inline.
// The loop works on a copy of w (the inline path keeps w on the caller's
// stack), copied back once it is done. A caller that stops waiting before
// the loop came to its message (ctx) leaves it unsent: it was told so.
func (r *Runtime) loopSend(ctx context.Context, w *waiter, payload []byte, want string) (mq.Frame, error) {
	type result struct {
		mu     sync.Mutex
		w      waiter
		f      mq.Frame
		err    error
		queued bool // the loop came to it
		gone   bool // the caller stopped waiting first
	}
	res := &result{w: *w}
	done := make(chan struct{})
	c := command{fn: func(now time.Time, n *Node) {
		res.mu.Lock()
		defer res.mu.Unlock()
		if !res.gone {
			res.f, res.err = r.queueWaiting(now, n, &res.w, payload, want)
		}
		res.queued = true
		close(done)
	}}
	select {
	case r.cmds <- c:
	case <-r.stopped:
		return mq.Frame{}, ErrStopped
	case <-ctx.Done():
		return mq.Frame{}, ctx.Err()
	}
	select {
	case <-done:
	case <-r.stopped:
		return mq.Frame{}, ErrStopped
	case <-ctx.Done():
	}
	res.mu.Lock()
	defer res.mu.Unlock()
	if !res.queued { // ctx ended first
		res.gone = true
		return mq.Frame{}, ctx.Err()
	}
	*w = res.w
	if res.err == nil && ctx.Err() != nil {
		return res.f, ctx.Err() // queued, but the caller stops waiting
	}
	return res.f, res.err
}

// queueWaiting queues w's message on n and, once it is queued, registers w
// as its waiter with a channel of its own (w.ch).
func (r *Runtime) queueWaiting(now time.Time, n *Node, w *waiter, payload []byte, want string) (mq.Frame, error) {
	f, err := n.SendWant(now, w.to, w.topic, payload, "", want)
	if err != nil {
		return f, err
	}
	r.stepWaited = append(r.stepWaited, outKey{w.to, f.Seq})
	r.mu.Lock()
	w.seq = f.Seq
	if k := len(r.waitChans); k > 0 {
		w.ch = r.waitChans[k-1]
		r.waitChans = r.waitChans[:k-1]
	} else {
		w.ch = make(chan Event, 1)
	}
	r.waiters[f.ID] = *w
	r.nwait.Add(1)
	r.mu.Unlock()
	return f, nil
}

// endWait forgets the waiter of msg id, if it is still there, and keeps its
// channel ch for the next one: emptied, as nobody can send to it any more.
func (r *Runtime) endWait(id string, ch chan Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dropWaiter(id)
	select {
	case <-ch:
	default:
	}
	if len(r.waitChans) < maxWaitChans {
		r.waitChans = append(r.waitChans, ch)
	}
}

// onAck is the transport's ack hook (ports.AckNotifier): it wakes the caller
// waiting for that ack at once, from the network goroutine, instead of after
// the loop handled it. The loop still handles the ack for the bus (and
// publishes the event to subscribers); the waiter is then gone.
func (r *Runtime) onAck(from mq.PeerID, ack mq.Frame) {
	r.mu.Lock()
	defer r.mu.Unlock()
	w, ok := r.waiters[ack.ID]
	if !ok || w.to != from || w.seq != ack.Seq {
		return
	}
	ev := Event{Kind: EventDelivered, Peer: from, MsgID: ack.ID, Topic: w.topic}
	if ack.Stage == mq.StageReceived {
		if !w.early {
			return
		}
		ev.Kind = EventReceived
	}
	r.dropWaiter(ack.ID)
	w.ch <- ev
}

// dropWaiter forgets the caller waiting for msg id, if any. Under r.mu.
func (r *Runtime) dropWaiter(id string) {
	if _, ok := r.waiters[id]; ok {
		delete(r.waiters, id)
		r.nwait.Add(-1)
	}
}

// Subscription receives node events. When its buffer is full the
// subscription is closed (C is closed) rather than ever blocking the node.
type Subscription struct {
	C      <-chan Event
	c      chan Event
	r      *Runtime
	closed bool
	kinds  uint32 // bit k: events of kind k are wanted (0: all)
}

// Subscribe returns a subscription with a buffer of n events.
func (r *Runtime) Subscribe(n int) *Subscription { return r.SubscribeKinds(n) }

// SubscribeKinds returns a subscription with a buffer of n events of the
// given kinds only (none given: all of them). The others never reach its
// buffer: a subscriber that needs group events does not wake up, nor fall
// behind, for every message and acknowledgement of a busy node.
func (r *Runtime) SubscribeKinds(n int, kinds ...EventKind) *Subscription {
	c := make(chan Event, n)
	s := &Subscription{C: c, c: c, r: r}
	for _, k := range kinds {
		s.kinds |= 1 << k
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.stopped:
		s.closeLocked()
	default:
		r.subs[s] = struct{}{}
		r.subsChanged()
	}
	return s
}

// Close ends the subscription; C is closed.
func (s *Subscription) Close() {
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	delete(s.r.subs, s)
	s.r.subsChanged()
	s.closeLocked()
}

func (s *Subscription) closeLocked() {
	if !s.closed {
		s.closed = true
		close(s.c)
	}
}

// subsChanged recomputes subKinds after subs changed. Under r.mu.
func (r *Runtime) subsChanged() {
	var wanted uint32
	for s := range r.subs {
		if s.kinds == 0 {
			wanted = ^uint32(0)
			break
		}
		wanted |= s.kinds
	}
	r.subKinds.Store(wanted)
}

// mutedKinds returns the kinds of Mutable events that no subscriber and no
// waiter takes: the node need not build them.
func (r *Runtime) mutedKinds() uint32 {
	wanted := r.subKinds.Load()
	if r.nwait.Load() > 0 {
		wanted |= 1<<EventDelivered | 1<<EventReceived // (failures are never muted)
	}
	return Mutable &^ wanted
}

func (r *Runtime) publish(evs []Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logFailures(evs)
	for _, ev := range evs {
		if ev.Kind == EventDelivered || ev.Kind == EventFailed || ev.Kind == EventReceived {
			if w, ok := r.waiters[ev.MsgID]; ok && (ev.Kind != EventReceived || w.early) {
				r.dropWaiter(ev.MsgID)
				w.ch <- ev
			}
		}
		for s := range r.subs {
			if s.kinds != 0 && s.kinds&(1<<ev.Kind) == 0 {
				continue
			}
			select {
			case s.c <- ev:
			default:
				r.log.Warn("event subscriber too slow; closing it")
				delete(r.subs, s)
				r.subsChanged()
				s.closeLocked()
			}
		}
	}
}

// askHistory queues members' history questions for historyWorker, dropping
// those beyond the queue's bounds or when there is no worker.
func (r *Runtime) askHistory(qs []HistoryQuestion) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, q := range qs {
		if r.history == nil {
			return
		}
		if r.asking[q.From] >= historyPerPeer {
			r.log.Debug("history question dropped: the member has others waiting", "group", q.Group, "from", q.From)
			continue
		}
		select {
		case r.history <- q:
			if r.asking == nil {
				r.asking = map[mq.PeerID]int{}
			}
			r.asking[q.From]++
		default:
			r.log.Debug("history question dropped: too many waiting", "group", q.Group, "from", q.From)
		}
	}
}

// answered ends j's count in r.asking.
func (r *Runtime) answered(j HistoryQuestion) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.asking[j.From]--; r.asking[j.From] <= 0 {
		delete(r.asking, j.From)
	}
}

// historyWorker answers members' history questions one at a time: it reads
// the store, then hands the entries to the group core, which checks that
// the asker is still a member and sends them.
func (r *Runtime) historyWorker(ctx context.Context, hr ports.HistoryReader, jobs <-chan HistoryQuestion) {
	for {
		select {
		case <-ctx.Done():
			return
		case j := <-jobs:
			r.answerHistory(ctx, hr, j)
		}
	}
}

// answerHistory reads the entries j asks for and hands them to the group
// core to send.
func (r *Runtime) answerHistory(ctx context.Context, hr ports.HistoryReader, j HistoryQuestion) {
	defer r.answered(j)
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	entries, err := hr.GroupHistory(rctx, j.Group, j.Q.Limit)
	cancel()
	if err != nil {
		r.log.Warn("group history for a member", "group", j.Group, "from", j.From, "err", err)
		return
	}
	err = r.Do(ctx, func(now time.Time, n *Node) {
		if err := n.Group(now).AnswerHistory(now, j.Group, j.From, j.Q.Req, entries); err != nil {
			r.log.Debug("history answer", "group", j.Group, "from", j.From, "err", err)
		}
	})
	if err != nil && ctx.Err() == nil {
		r.log.Debug("history answer", "group", j.Group, "err", err)
	}
}

// logFailures logs the messages given up among evs: one line per
// destination (a dead peer's whole queue fails at once), with the count and
// the first one's id and reason.
func (r *Runtime) logFailures(evs []Event) {
	type failure struct {
		n          int
		id, reason string
	}
	var failed map[mq.PeerID]*failure
	var order []mq.PeerID
	for _, ev := range evs {
		if ev.Kind != EventFailed {
			continue
		}
		if failed == nil {
			failed = map[mq.PeerID]*failure{}
		}
		f := failed[ev.Peer]
		if f == nil {
			f = &failure{id: ev.MsgID, reason: ev.Reason}
			failed[ev.Peer] = f
			order = append(order, ev.Peer)
		}
		f.n++
	}
	for _, p := range order {
		f := failed[p]
		r.log.Warn("messages given up", "to", p, "count", f.n, "first_msg_id", f.id, "reason", f.reason)
	}
}
