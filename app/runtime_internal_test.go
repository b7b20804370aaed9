package app

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/adapters/system"
	"github.com/goop-p2p/goop/domain/group"
	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/ports"
	"github.com/goop-p2p/goop/ports/memory"
)

// Members' history questions wait in a bounded queue: a member asking in a
// loop cannot grow the host's memory; the extra questions are dropped, and
// none reaches the node's subscribers.
func TestHistoryQuestionsAreBounded(t *testing.T) {
	r := NewRuntime(NewNode("H", State{}, system.Rand{}, NodeOptions{}), nil, nil, system.Clock{}, nil)
	r.history = make(chan HistoryQuestion, historyQueue)
	sub := r.Subscribe(1)
	q := group.HistoryQuestion{Req: "r", Limit: 5}
	ask := func(from mq.PeerID) {
		r.send(context.Background(), &job{rd: Ready{History: []HistoryQuestion{{Group: "g", From: from, Q: q}}}}, false)
	}
	for range 10 {
		ask("A")
	}
	assert.Len(t, r.history, historyPerPeer, "one member cannot crowd the others out")
	for i := range 3 * historyQueue {
		ask(mq.PeerID(fmt.Sprint("M", i)))
	}
	assert.Len(t, r.history, historyQueue)
	j := <-r.history
	assert.Equal(t, HistoryQuestion{Group: "g", From: "A", Q: q}, j)
	ask("A")
	assert.Len(t, r.history, historyQueue-1, "A still has one waiting and one being answered")
	r.answered(j)
	ask("A")
	assert.Len(t, r.history, historyQueue, "answered: A may ask again")
	assert.Empty(t, sub.C, "questions reach no subscriber")
}

// The node hands a member's history question to the runtime in
// Ready.History, not among the events its subscribers see.
func TestHistoryQuestionIsWorkNotAnEvent(t *testing.T) {
	n := NewNode("H", State{}, system.Rand{}, NodeOptions{})
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	g, err := n.Group(now).Create(now, group.CreateSpec{ID: "0123456789abcdef", Name: "chat"})
	require.NoError(t, err)
	n.Group(now).Receive(now, "A", group.Topic(g.ID, group.TypeJoin), []byte(`{"type":"join","group":"0123456789abcdef"}`), "")
	n.Ready()
	n.Group(now).Receive(now, "A", group.Topic(g.ID, group.TypeHistory),
		[]byte(`{"type":"history","group":"0123456789abcdef","req":"r1","limit":7}`), "")
	rd := n.Ready()
	assert.Equal(t, []HistoryQuestion{{Group: g.ID, From: "A", Q: group.HistoryQuestion{Req: "r1", Limit: 7}}}, rd.History)
	assert.Empty(t, rd.Events, "a question is no news for the node's subscribers")
}

// A message given up is logged (quiet logs show warnings): one line per
// destination, however many of its messages failed together.
func TestFailuresAreLoggedOncePerPeer(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	r := NewRuntime(NewNode("H", State{}, system.Rand{}, NodeOptions{}), nil, nil, system.Clock{}, log)
	var evs []Event
	for i := range 5 {
		evs = append(evs, Event{Kind: EventFailed, Peer: "B", MsgID: fmt.Sprint("m", i), Reason: "no ack from B after 10 attempts"})
	}
	evs = append(evs, Event{Kind: EventDelivered, Peer: "C", MsgID: "ok"}, Event{Kind: EventFailed, Peer: "C", MsgID: "c1", Reason: "bad JSON"})
	r.publish(evs)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	require.Len(t, lines, 2, buf.String())
	assert.Contains(t, lines[0], "to=B count=5 first_msg_id=m0")
	assert.Contains(t, lines[0], `reason="no ack from B after 10 attempts"`)
	assert.Contains(t, lines[1], "to=C count=1 first_msg_id=c1")
}

// manualClock is a ports.Clock whose time moves only when told.
type manualClock struct{ now time.Time }

func (c *manualClock) Now() time.Time                       { return c.now }
func (c *manualClock) NewTimer(d time.Duration) ports.Timer { panic("not used") }

// Outbox rows nobody waits on go to the store after commitLinger;
// deletions of acknowledged rows wait up to deleteLinger, so that a host
// whose members' acks come one at a time does not store them one
// transaction at a time. A deletion of a row still gathered drops both.
func TestDeletionsLingerLongerThanRows(t *testing.T) {
	r, clk := lazyRuntime()
	row, del := outboxRow, outboxDel
	handed := func() []mq.Change {
		select {
		case j := <-r.jobs:
			assert.True(t, j.lazy)
			return j.rd.Batch.Bus
		default:
			return nil
		}
	}

	r.gatherLazy([]mq.Change{row(1), row(2), del(0)}, clk.now)
	r.gatherLazy([]mq.Change{del(2)}, clk.now) // acked before it was stored
	require.NoError(t, r.lazyDue(clk.now))
	assert.Nil(t, handed(), "nothing is due yet")

	clk.now = clk.now.Add(commitLinger)
	require.NoError(t, r.lazyDue(clk.now))
	assert.Equal(t, []mq.Change{row(1)}, handed(), "the rows go after commitLinger; row 2 never")
	r.gatherLazy([]mq.Change{del(1)}, clk.now)

	clk.now = clk.now.Add(deleteLinger - commitLinger - time.Millisecond)
	require.NoError(t, r.lazyDue(clk.now))
	assert.Nil(t, handed(), "the deletions wait")
	clk.now = clk.now.Add(time.Millisecond)
	require.NoError(t, r.lazyDue(clk.now))
	assert.Equal(t, []mq.Change{del(0), del(1)}, handed(), "then go together, in order")
	assert.True(t, r.rowsDue().IsZero() && r.delsDue.IsZero())
}

// A subscription for some kinds of events gets only those, and the others
// cannot fill its buffer.
func TestSubscribeKindsGetsOnlyThoseKinds(t *testing.T) {
	r := NewRuntime(NewNode("H", State{}, system.Rand{}, NodeOptions{}), nil, nil, system.Clock{}, nil)
	groups := r.SubscribeKinds(2, EventGroup)
	peersAndGroups := r.SubscribeKinds(8, EventPeer, EventGroup)
	all := r.Subscribe(8)
	var evs []Event
	for range 5 {
		evs = append(evs, Event{Kind: EventMessage}, Event{Kind: EventDelivered})
	}
	evs = append(evs, Event{Kind: EventGroup, Group: &group.Event{Type: group.EvMsg}}, Event{Kind: EventPeer})
	r.publish(evs)
	require.Len(t, groups.C, 1, "ten other events did not close a buffer of two")
	assert.Equal(t, EventGroup, (<-groups.C).Kind)
	assert.Len(t, peersAndGroups.C, 2)
	_, open := <-all.C
	assert.True(t, open)
	for range all.C { // closed: 12 events into a buffer of 8
	}
	assert.True(t, all.closed)
}

// Each outbox row waits its own commitLinger for its ack, not only the
// first of a batch: a row gathered just before the batch's time came stays
// for the next one, and is never written if acknowledged meanwhile.
func TestEachRowGetsItsWholeLinger(t *testing.T) {
	r, clk := lazyRuntime()
	row := outboxRow
	handed := func() []mq.Change {
		select {
		case j := <-r.jobs:
			return j.rd.Batch.Bus
		default:
			return nil
		}
	}
	r.gatherLazy([]mq.Change{row(1)}, clk.now)
	clk.now = clk.now.Add(commitLinger / 2)
	r.gatherLazy([]mq.Change{row(2), row(3)}, clk.now)
	clk.now = clk.now.Add(commitLinger / 2)
	require.NoError(t, r.lazyDue(clk.now))
	assert.Equal(t, []mq.Change{row(1)}, handed(), "only the row whose linger is over")
	assert.Equal(t, clk.now.Add(commitLinger/2), r.rowsDue(), "the next row's own time")

	r.gatherLazy([]mq.Change{{Kind: mq.DeleteOutbox, Peer: "B", Seq: 2}}, clk.now) // acked in time
	clk.now = clk.now.Add(commitLinger / 2)
	require.NoError(t, r.lazyDue(clk.now))
	assert.Equal(t, []mq.Change{row(3)}, handed(), "row 2 was never written, nor its deletion")
	assert.True(t, r.rowsDue().IsZero())
	assert.Empty(t, r.lazyRows)
	assert.Empty(t, r.lazyDels)
}

// countedTransport is a memory transport whose Queued the test sets.
type countedTransport struct {
	*memory.Transport
	queued atomic.Int64
}

func (c *countedTransport) SetInlineHandler(func(mq.PeerID, mq.Frame) (bool, bool)) {}
func (c *countedTransport) Queued() int64                                           { return c.queued.Load() }

// nowStore is a memory store that stores every batch at once
// (ports.QuickStore).
type nowStore struct{ *memory.Store }

func (s nowStore) ApplyNow(b ports.Batch) bool { return s.Apply(context.Background(), b) == nil }

// stepReceived steps only frames somebody waits on — a msg asking for the
// received ack, an ack while a caller waits — and only when the node is
// idle: the loop runs, nobody holds the node, and every event handed to
// Events was taken, so a frame never overtakes one still on its way. It
// reports a msg's ack as sent when its step sent it.
func TestStepReceivedOnlyWhenIdle(t *testing.T) {
	net := memory.NewNetwork()
	tr := &countedTransport{Transport: net.Join("A")}
	net.Join("B")
	r := NewRuntime(NewNode("A", State{}, system.Rand{}, NodeOptions{}), tr, nowStore{memory.NewStore()}, system.Clock{}, nil)
	seq := int64(0)
	msg := func() mq.Frame {
		seq++
		return mq.Frame{Type: mq.TypeMsg, ID: fmt.Sprint("m", seq), Seq: seq, Topic: "chat", Payload: []byte(`1`),
			Epoch: "e1", Want: mq.StageReceived}
	}
	ack := mq.Frame{Type: mq.TypeAck, ID: "x", Seq: 1}
	m1 := msg() // declined until it is taken: the node never saw it
	taken, _ := r.stepReceived("B", m1)
	assert.False(t, taken, "not before Run")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = r.Run(ctx) }()
	// The loop takes B's PeerConnected: once the channel is empty, one
	// more command completes after that event was stepped.
	for {
		require.NoError(t, r.Do(ctx, func(time.Time, *Node) {}))
		if len(tr.Events()) == 0 {
			require.NoError(t, r.Do(ctx, func(time.Time, *Node) {}))
			break
		}
	}
	r.stepMu.Lock()
	took := r.taken
	r.stepMu.Unlock()

	tr.queued.Store(took + 1)
	taken, _ = r.stepReceived("B", m1)
	assert.False(t, taken, "an event is on its way through Events")
	tr.queued.Store(took)
	r.stepMu.Lock()
	taken, _ = r.stepReceived("B", m1)
	r.stepMu.Unlock()
	assert.False(t, taken, "somebody steps the node")
	taken, acked := r.stepReceived("B", m1)
	assert.True(t, taken)
	assert.True(t, acked, "the step sent the msg's ack")

	m := msg()
	m.Want = ""
	taken, _ = r.stepReceived("B", m)
	assert.False(t, taken, "nobody waits on a msg that does not ask for the received ack")
	taken, _ = r.stepReceived("B", ack)
	assert.False(t, taken, "nobody waits on an ack")
	r.nwait.Store(1) // a caller waits
	taken, acked = r.stepReceived("B", ack)
	assert.True(t, taken)
	assert.False(t, acked, "an ack gets no ack")
}

// Rows that were all acknowledged while gathered leave nothing due: the
// loop's timer is not set for a hand-over that would store nothing (the
// messages of a pipelined burst, acknowledged within the linger, leave no
// timer to fire for nothing).
func TestAckedRowsLeaveNothingDue(t *testing.T) {
	r, clk := lazyRuntime()
	row, del := outboxRow, outboxDel
	r.gatherLazy([]mq.Change{row(1), row(2)}, clk.now)
	r.gatherLazy([]mq.Change{del(1)}, clk.now)
	assert.Equal(t, clk.now.Add(commitLinger), r.rowsDue(), "row 2 is still due")
	r.gatherLazy([]mq.Change{del(2)}, clk.now)
	assert.True(t, r.rowsDue().IsZero(), "no row is due")
	assert.Empty(t, r.lazyRows)
	r.gatherLazy([]mq.Change{row(3)}, clk.now.Add(time.Millisecond))
	assert.Equal(t, clk.now.Add(time.Millisecond+commitLinger), r.rowsDue(), "a new row gets its whole linger")
	clk.now = clk.now.Add(time.Millisecond + commitLinger)
	require.NoError(t, r.lazyDue(clk.now))
	j := <-r.jobs
	assert.Equal(t, []mq.Change{row(3)}, j.rd.Batch.Bus)
}

// lazyRuntime is a runtime, not running, on a manual clock, with neither
// transport nor store: for tests of its parts (the gathering of lazy
// changes, waiters, subscriptions).
func lazyRuntime() (*Runtime, *manualClock) {
	clk := &manualClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	return NewRuntime(NewNode("H", State{}, system.Rand{}, NodeOptions{}), nil, nil, clk, nil), clk
}

// outboxRow is the outbox row of msg seq to B; outboxDel its deletion.
func outboxRow(seq int64) mq.Change {
	return mq.Change{Kind: mq.PutOutbox, Peer: "B", Seq: seq, Frame: &mq.Frame{Type: mq.TypeMsg, ID: fmt.Sprint("m", seq), Seq: seq}}
}

func outboxDel(seq int64) mq.Change { return mq.Change{Kind: mq.DeleteOutbox, Peer: "B", Seq: seq} }

// A waiter's channel is kept for the next waiter once the wait ended, and
// emptied first: an event that came after its caller stopped waiting (its
// ctx ended) never reaches the next caller.
func TestWaitChannelsAreReusedEmpty(t *testing.T) {
	r, _ := lazyRuntime()
	now := time.Unix(1, 0)
	w1 := waiter{to: "B", topic: "t"}
	f1, err := r.queueWaiting(now, r.node, &w1, []byte(`1`), "")
	require.NoError(t, err)
	require.NotNil(t, w1.ch)
	assert.Equal(t, int64(1), r.nwait.Load())
	// The ack comes, but the caller has already given up.
	r.publish([]Event{{Kind: EventDelivered, Peer: "B", MsgID: f1.ID}})
	require.Len(t, w1.ch, 1)
	r.endWait(f1.ID, w1.ch)
	assert.Zero(t, r.nwait.Load())
	assert.Empty(t, r.waiters)

	w2 := waiter{to: "B", topic: "t"}
	f2, err := r.queueWaiting(now, r.node, &w2, []byte(`2`), "")
	require.NoError(t, err)
	assert.Equal(t, w1.ch, w2.ch, "the channel is reused")
	assert.Empty(t, w2.ch, "and holds nothing of the last wait")
	assert.Equal(t, f2.Seq, r.waiters[f2.ID].seq)
	r.endWait(f2.ID, w2.ch)

	// A wait that ends without its waiter's event leaves no waiter either.
	assert.Zero(t, r.nwait.Load())
	assert.Len(t, r.waitChans, 1)
}

// The kinds muted follow the subscriptions as they come and go (closed by
// their owner, or for being too slow) and the callers waiting for acks.
func TestMutedKindsFollowSubscriptions(t *testing.T) {
	r, _ := lazyRuntime()
	assert.Equal(t, Mutable, r.mutedKinds(), "nobody listens")
	msgs := r.SubscribeKinds(1, EventMessage)
	assert.Equal(t, Mutable&^(1<<EventMessage), r.mutedKinds())
	all := r.Subscribe(1)
	assert.Zero(t, r.mutedKinds(), "a subscriber of every kind")
	all.Close()
	assert.Equal(t, Mutable&^(1<<EventMessage), r.mutedKinds())

	// A waiter wants its acks.
	w := waiter{to: "B", topic: "t"}
	f, err := r.queueWaiting(time.Unix(1, 0), r.node, &w, []byte(`1`), "")
	require.NoError(t, err)
	assert.Equal(t, uint32(1<<EventMessage|1<<EventDelivered|1<<EventReceived)&Mutable, Mutable&^r.mutedKinds())
	r.endWait(f.ID, w.ch)

	// A subscriber closed for being slow wants nothing any more.
	r.publish([]Event{{Kind: EventMessage, MsgID: "1"}, {Kind: EventMessage, MsgID: "2"}})
	_, open := <-msgs.C
	assert.True(t, open)
	_, open = <-msgs.C
	assert.False(t, open, "closed: its buffer overflowed")
	assert.Equal(t, Mutable, r.mutedKinds())
}

// putStore is a memory store that reports each outbox row it stores.
type putStore struct {
	*memory.Store
	puts chan outKey
}

func (s *putStore) Apply(ctx context.Context, b ports.Batch) error {
	if err := s.Store.Apply(ctx, b); err != nil {
		return err
	}
	for _, c := range b.Bus {
		if c.Kind == mq.PutOutbox {
			s.puts <- outKey{c.Peer, c.Seq}
		}
	}
	return nil
}

// newLone is node A's runtime, not running, with no peer to answer it, on
// a putStore.
func newLone(t *testing.T) (*Runtime, *putStore) {
	t.Helper()
	store := &putStore{Store: memory.NewStore(), puts: make(chan outKey, 16)}
	tr := memory.NewNetwork().Join("A")
	t.Cleanup(func() { _ = tr.Close() })
	return NewRuntime(NewNode("A", State{}, memory.NewRand(1), NodeOptions{}), tr, store, system.Clock{}, nil), store
}

// startLone runs newLone's runtime until the test ends.
func startLone(t *testing.T) (*Runtime, *putStore, context.CancelFunc, chan error) {
	t.Helper()
	r, store := newLone(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-r.Done()
	})
	require.NoError(t, r.Do(ctx, func(time.Time, *Node) {}))
	return r, store, cancel, done
}

// sendRoundTripAsync starts a SendRoundTrip to B and returns once the node
// queued the message.
func sendRoundTripAsync(t *testing.T, r *Runtime, ctx context.Context) chan error {
	t.Helper()
	errs := make(chan error, 1)
	go func() {
		_, _, err := r.SendRoundTrip(ctx, "B", "t", []byte(`1`))
		errs <- err
	}()
	for sent := false; !sent; {
		require.NoError(t, r.Do(context.Background(), func(_ time.Time, n *Node) { sent = n.Stats().Sent == 1 }))
	}
	return errs
}

// The outbox row of a message whose caller waits is held, with no timer
// set for it, until the wait ends: then it is stored within the linger.
func TestWaitedRowIsHeldUntilTheWaitEnds(t *testing.T) {
	r, store, _, _ := startLone(t)
	wctx, stopWaiting := context.WithCancel(context.Background())
	errs := sendRoundTripAsync(t, r, wctx)

	r.stepMu.Lock()
	assert.Len(t, r.held, 1)
	assert.Empty(t, r.lazyRows)
	armedFor := r.armedAt.Sub(time.Now())
	r.stepMu.Unlock()
	assert.Greater(t, armedFor, time.Second, "the loop's timer waits for the retransmission only")
	assert.Empty(t, store.puts, "nothing stored while the caller waits")

	stopWaiting()
	require.ErrorIs(t, <-errs, context.Canceled)
	select {
	case k := <-store.puts:
		assert.Equal(t, outKey{"B", 1}, k)
	case <-time.After(5 * time.Second):
		t.Fatal("the row was not stored after the wait ended")
	}
	r.stepMu.Lock()
	defer r.stepMu.Unlock()
	assert.Empty(t, r.held)
}

// A node that stops stores the rows it holds for waiting callers.
func TestHeldRowsAreStoredAtStop(t *testing.T) {
	r, store, stop, done := startLone(t)
	errs := sendRoundTripAsync(t, r, context.Background())
	stop()
	require.NoError(t, <-done)
	require.ErrorIs(t, <-errs, ErrStopped)
	require.Len(t, store.puts, 1)
	assert.Equal(t, outKey{"B", 1}, <-store.puts)
}

// A caller that stops waiting before the loop came to its message leaves
// it unsent: it was told the node did not take it.
func TestSendWaitGivenUpBeforeTheLoopSendsNothing(t *testing.T) {
	r, _ := newLone(t)
	wctx, stopWaiting := context.WithCancel(context.Background())
	errs := make(chan error, 1)
	go func() {
		f, _, err := r.SendWait(wctx, "B", "t", []byte(`1`))
		assert.Empty(t, f.ID)
		errs <- err
	}()
	for len(r.cmds) == 0 { // not running: the message waits for the loop
		runtime.Gosched()
	}
	stopWaiting()
	require.ErrorIs(t, <-errs, context.Canceled)

	ctx, cancel := context.WithCancel(context.Background())
	go func() { _ = r.Run(ctx) }()
	defer func() {
		cancel()
		<-r.Done()
	}()
	var sent uint64
	require.NoError(t, r.Do(ctx, func(_ time.Time, n *Node) { sent = n.Stats().Sent }))
	assert.Zero(t, sent)
	r.mu.Lock()
	defer r.mu.Unlock()
	assert.Empty(t, r.waiters)
}

// A row released after an early received ack waits for the next step (the
// final ack's, which drops it) without waking the loop; one released by a
// caller that gave up wakes it.
func TestReleaseWakesTheLoopOnlyForAGivenUpWait(t *testing.T) {
	r, _ := lazyRuntime()
	r.held[outKey{"B", 1}] = mq.Change{Kind: mq.PutOutbox, Peer: "B", Seq: 1}
	r.held[outKey{"B", 2}] = mq.Change{Kind: mq.PutOutbox, Peer: "B", Seq: 2}
	r.release("B", 1, false)
	assert.Empty(t, r.cmds, "the loop is not woken")
	r.release("B", 2, true)
	assert.Len(t, r.cmds, 1, "the loop is woken")
	now := time.Unix(1, 0)
	r.gatherReleased(now)
	assert.Empty(t, r.held)
	assert.Len(t, r.lazyRows, 2, "gathered for the linger")
	r.gatherLazy([]mq.Change{{Kind: mq.DeleteOutbox, Peer: "B", Seq: 1}, {Kind: mq.DeleteOutbox, Peer: "B", Seq: 2}}, now)
	assert.Empty(t, r.lazyRows, "their final acks drop them")
	assert.True(t, r.rowsDue().IsZero())
}

// In a step that queues several messages, some waited on and some not, the
// rows of the waited ones are held and the others gathered.
func TestWaitedRowsAmongOthersAreHeld(t *testing.T) {
	r, clk := lazyRuntime()
	n := r.node
	n.Ready() // the new node's epoch
	w1, w2 := waiter{to: "B", topic: "t"}, waiter{to: "C", topic: "t"}
	f1, err := r.queueWaiting(clk.now, n, &w1, []byte(`1`), "")
	require.NoError(t, err)
	f2, err := n.Send(clk.now, "B", "t", []byte(`2`), "") // nobody waits
	require.NoError(t, err)
	f3, err := r.queueWaiting(clk.now, n, &w2, []byte(`3`), "")
	require.NoError(t, err)
	rd := n.Ready()
	r.gatherLazy(splitLazy(&rd.Batch), clk.now)
	assert.ElementsMatch(t, []outKey{{"B", f1.Seq}, {"C", f3.Seq}}, slices.Collect(maps.Keys(r.held)))
	require.Len(t, r.lazyRows, 1)
	assert.Equal(t, outKey{"B", f2.Seq}, outKey{r.lazyRows[0].Peer, r.lazyRows[0].Seq})
}
