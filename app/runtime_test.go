package app_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/adapters/system"
	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/ports"
	"github.com/goop-p2p/goop/ports/memory"
)

type testNode struct {
	rt    *app.Runtime
	store *memory.Store
	tr    *memory.Transport
	done  chan error
	stop  context.CancelFunc
}

func startNode(t *testing.T, net *memory.Network, id mq.PeerID, store *memory.Store, opts app.NodeOptions) *testNode {
	t.Helper()
	return startNodeWith(t, net, id, store, store, opts, nil)
}

// startNodeWith is startNode with the runtime persisting to st (a wrapper of
// store) and before called ahead of Run.
func startNodeWith(t *testing.T, net *memory.Network, id mq.PeerID, store *memory.Store, st ports.Store,
	opts app.NodeOptions, before func(*app.Runtime)) *testNode {
	t.Helper()
	snap, err := store.LoadBus(context.Background())
	require.NoError(t, err)
	gsnap, err := store.LoadGroups(context.Background())
	require.NoError(t, err)
	node := app.NewNode(id, app.State{Bus: snap, Groups: gsnap}, memory.NewRand(seedOf(id)), opts)
	tr := net.Join(id)
	rt := app.NewRuntime(node, tr, st, system.Clock{}, nil)
	if before != nil {
		before(rt)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tn := &testNode{rt: rt, store: store, tr: tr, done: make(chan error, 1), stop: cancel}
	go func() { tn.done <- rt.Run(ctx) }()
	t.Cleanup(func() { tn.shutdown(t) })
	return tn
}

func (n *testNode) shutdown(t *testing.T) {
	n.stop()
	select {
	case <-n.rt.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("runtime did not stop")
	}
	_ = n.tr.Close()
}

func waitEvent(t *testing.T, sub *app.Subscription, kind app.EventKind) app.Event {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case ev, ok := <-sub.C:
			require.True(t, ok, "subscription closed")
			if ev.Kind == kind {
				return ev
			}
		case <-timeout:
			t.Fatalf("no event of kind %d", kind)
		}
	}
}

func TestSendWaitDeliversAndReportsDelivered(t *testing.T) {
	net := memory.NewNetwork()
	a := startNode(t, net, "A", memory.NewStore(), app.NodeOptions{})
	b := startNode(t, net, "B", memory.NewStore(), app.NodeOptions{})
	sub := b.rt.Subscribe(16)
	defer sub.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f, ev, err := a.rt.SendWait(ctx, "B", "chat", []byte(`{"text":"hello"}`))
	require.NoError(t, err)
	assert.Equal(t, app.EventDelivered, ev.Kind)
	assert.Equal(t, f.ID, ev.MsgID)

	got := waitEvent(t, sub, app.EventMessage)
	assert.Equal(t, mq.PeerID("A"), got.Peer)
	assert.Equal(t, f.ID, got.Msg.ID)
	assert.JSONEq(t, `{"text":"hello"}`, string(got.Msg.Payload))
}

func TestReceiptTopicBecomesReceiptEvent(t *testing.T) {
	net := memory.NewNetwork()
	a := startNode(t, net, "A", memory.NewStore(), app.NodeOptions{})
	b := startNode(t, net, "B", memory.NewStore(), app.NodeOptions{})
	sub := a.rt.Subscribe(16)
	defer sub.Close()
	ctx := context.Background()
	require.NoError(t, b.rt.Do(ctx, func(now time.Time, n *app.Node) {
		_, err := n.SendReceipt(now, "A", "msg-123")
		assert.NoError(t, err)
	}))
	ev := waitEvent(t, sub, app.EventReceipt)
	assert.Equal(t, "msg-123", ev.MsgID)
	assert.Equal(t, mq.PeerID("B"), ev.Peer)
}

func TestSendIsDurableBeforeReturn(t *testing.T) {
	net := memory.NewNetwork()
	store := memory.NewStore()
	a := startNode(t, net, "A", store, app.NodeOptions{})
	_, err := a.rt.Send(context.Background(), "nobody", "chat", []byte(`1`))
	require.NoError(t, err)
	snap, err := store.LoadBus(context.Background())
	require.NoError(t, err)
	require.Len(t, snap.Outbox, 1, "Send returns only after the outbox row is stored")
	assert.Equal(t, mq.PeerID("nobody"), snap.Outbox[0].To)
}

func TestOutboxSurvivesRestartAndIsDeliveredOnReconnect(t *testing.T) {
	net := memory.NewNetwork()
	store := memory.NewStore()
	a := startNode(t, net, "A", store, app.NodeOptions{})
	for i := 0; i < 5; i++ {
		_, err := a.rt.Send(context.Background(), "B", fmt.Sprintf("t%d", i), nil)
		require.NoError(t, err)
	}
	a.shutdown(t) // B was never there: all five wait in the durable outbox

	b := startNode(t, net, "B", memory.NewStore(), app.NodeOptions{})
	sub := b.rt.Subscribe(16)
	defer sub.Close()
	startNode(t, net, "A", store, app.NodeOptions{}) // restart: outbox resumes on connect
	for i := 0; i < 5; i++ {
		ev := waitEvent(t, sub, app.EventMessage)
		assert.Equal(t, fmt.Sprintf("t%d", i), ev.Topic, "per-sender order kept across the restart")
	}
}

func TestPersistFailureStopsNodeAndSendsNothing(t *testing.T) {
	net := memory.NewNetwork()
	store := memory.NewStore()
	a := startNode(t, net, "A", store, app.NodeOptions{})
	b := startNode(t, net, "B", memory.NewStore(), app.NodeOptions{})
	sub := b.rt.Subscribe(16)
	defer sub.Close()

	boom := errors.New("disk full")
	store.SetFailNext(boom)
	_, err := a.rt.Send(context.Background(), "B", "chat", nil)
	require.ErrorIs(t, err, boom)
	select {
	case err := <-a.done:
		require.ErrorIs(t, err, boom)
	case <-time.After(5 * time.Second):
		t.Fatal("runtime kept running after a failed persist")
	}
	assert.ErrorIs(t, a.rt.Err(), boom)
	_, err = a.rt.Send(context.Background(), "B", "chat", nil)
	assert.ErrorIs(t, err, app.ErrStopped)
	// B connected event may be pending; what matters: no message arrived.
	select {
	case ev, ok := <-sub.C:
		if ok {
			assert.NotEqual(t, app.EventMessage, ev.Kind, "a message whose state was not stored must not be sent")
		}
	default:
	}
}

func TestSlowSubscriberIsClosedNotBlocking(t *testing.T) {
	net := memory.NewNetwork()
	a := startNode(t, net, "A", memory.NewStore(), app.NodeOptions{})
	b := startNode(t, net, "B", memory.NewStore(), app.NodeOptions{})
	slow := b.rt.Subscribe(1) // never read
	fast := b.rt.Subscribe(64)
	defer fast.Close()
	for i := 0; i < 5; i++ {
		_, _, err := a.rt.SendWait(context.Background(), "B", "chat", nil)
		require.NoError(t, err)
	}
	for i := 0; i < 5; i++ {
		waitEvent(t, fast, app.EventMessage)
	}
	n := 0
	for range slow.C { // closed after its one buffered event
		n++
	}
	assert.Equal(t, 1, n)
}

func TestSendRejectsBadInput(t *testing.T) {
	net := memory.NewNetwork()
	a := startNode(t, net, "A", memory.NewStore(), app.NodeOptions{})
	_, err := a.rt.Send(context.Background(), "B", "", nil)
	assert.ErrorIs(t, err, mq.ErrBadFrame)
	_, err = a.rt.Send(context.Background(), "B", "t", make([]byte, mq.MaxPayloadBytes+1))
	assert.ErrorIs(t, err, mq.ErrPayloadTooLarge)
	_, err = a.rt.Send(context.Background(), "A", "t", nil)
	assert.ErrorIs(t, err, mq.ErrBadFrame)
}

var _ ports.Store = (*memory.Store)(nil)

func seedOf(id mq.PeerID) uint64 {
	var h uint64 = 1469598103934665603
	for i := 0; i < len(id); i++ {
		h = (h ^ uint64(id[i])) * 1099511628211
	}
	return h
}

func TestPostPipelinesInOrder(t *testing.T) {
	net := memory.NewNetwork()
	a := startNode(t, net, "A", memory.NewStore(), app.NodeOptions{})
	b := startNode(t, net, "B", memory.NewStore(), app.NodeOptions{})
	sub := b.rt.Subscribe(2048)
	defer sub.Close()
	ctx := context.Background()
	for i := 0; i < 500; i++ {
		require.NoError(t, a.rt.Post(ctx, "B", fmt.Sprintf("t%d", i), []byte(`1`)))
	}
	for i := 0; i < 500; i++ {
		ev := waitEvent(t, sub, app.EventMessage)
		require.Equal(t, fmt.Sprintf("t%d", i), ev.Topic)
	}
	assert.ErrorIs(t, a.rt.Post(ctx, "B", "", nil), mq.ErrBadFrame)
	assert.ErrorIs(t, a.rt.Post(ctx, "B", "t", make([]byte, mq.MaxPayloadBytes+1)), mq.ErrPayloadTooLarge)
	asub := a.rt.Subscribe(4096) // late delivered events for the 500 above arrive here too
	defer asub.Close()
	require.NoError(t, a.rt.Post(ctx, "B", "t", []byte("{bad")), "JSON is checked on the node's goroutine")
	ev := waitEvent(t, asub, app.EventFailed)
	assert.Contains(t, ev.Reason, "JSON")
}

// recStore records every batch applied, and can hold Apply at a gate.
type recStore struct {
	*memory.Store
	mu      sync.Mutex
	applies []ports.Batch
	gate    chan struct{} // when set, Apply waits for it to close...
	held    chan struct{} // ...after a token here
}

func (s *recStore) Apply(ctx context.Context, b ports.Batch) error {
	s.mu.Lock()
	gate := s.gate
	s.applies = append(s.applies, b)
	s.mu.Unlock()
	if gate != nil {
		s.held <- struct{}{}
		<-gate
	}
	return s.Store.Apply(ctx, b)
}

func (s *recStore) setGate(g chan struct{}) {
	s.mu.Lock()
	s.gate, s.held = g, make(chan struct{}, 16)
	s.mu.Unlock()
}

// applyOf returns the index of the Apply call holding a bus change of kind
// for (peer, seq), or -1.
func (s *recStore) applyOf(kind mq.ChangeKind, peer mq.PeerID, seq int64) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, b := range s.applies {
		for _, c := range b.Bus {
			if c.Kind == kind && c.Peer == peer && c.Seq == seq {
				return i
			}
		}
	}
	return -1
}

// TestOutboxRowAckedWithinLingerIsNeverWritten: the outbox row of a message
// sent with SendWait is gathered, not stored at once; when the ack comes
// within the linger the row never reaches the store — only its deletion
// does (the store expects it) — and the caller heard of the ack first.
func TestOutboxRowAckedWithinLingerIsNeverWritten(t *testing.T) {
	net := memory.NewNetwork()
	store := &recStore{Store: memory.NewStore()}
	a := startNodeWith(t, net, "A", store.Store, store, app.NodeOptions{},
		func(rt *app.Runtime) { rt.SetCommitLinger(time.Minute) })
	startNode(t, net, "B", memory.NewStore(), app.NodeOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// The first message to B reserves sequence numbers: a batch that later
	// frames depend on, stored at once (with its row: Send is durable).
	f0, err := a.rt.Send(ctx, "B", "chat", []byte(`0`))
	require.NoError(t, err)
	f, ev, err := a.rt.SendWait(ctx, "B", "chat", []byte(`1`))
	require.NoError(t, err)
	require.Equal(t, app.EventDelivered, ev.Kind, "the caller hears of the ack before anything is stored")
	a.shutdown(t) // what was gathered is stored at shutdown
	assert.GreaterOrEqual(t, store.applyOf(mq.PutOutbox, "B", f0.Seq), 0, "Send's row is stored")
	assert.Equal(t, -1, store.applyOf(mq.PutOutbox, "B", f.Seq), "the acked row was never written")
	assert.Equal(t, -1, store.applyOf(mq.DeleteOutbox, "B", f.Seq), "nor its deletion")
	assert.GreaterOrEqual(t, store.applyOf(mq.DeleteOutbox, "B", f0.Seq), 0, "the stored row's deletion reached the store")
	snap, err := store.LoadBus(context.Background())
	require.NoError(t, err)
	assert.Empty(t, snap.Outbox, "nothing left in the outbox")
}

// TestEarlyFramesDoNotWaitForOutboxRows: while the store is busy with a
// batch of outbox rows only (a slow disk), a new message still goes out and
// is acknowledged: msg frames wait only for the batches they depend on
// (sequence reservations, epochs, group state).
func TestEarlyFramesDoNotWaitForOutboxRows(t *testing.T) {
	net := memory.NewNetwork()
	store := &recStore{Store: memory.NewStore()}
	a := startNodeWith(t, net, "A", store.Store, store, app.NodeOptions{},
		func(rt *app.Runtime) { rt.SetCommitLinger(0) })
	startNode(t, net, "B", memory.NewStore(), app.NodeOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// The first message to B reserves sequence numbers: stored before
	// anything else goes to B.
	_, err := a.rt.Send(ctx, "B", "chat", []byte(`0`))
	require.NoError(t, err)

	gate := make(chan struct{})
	store.setGate(gate)
	defer close(gate)
	// An outbox row only: the store holds it at the gate.
	require.NoError(t, a.rt.Post(ctx, "B", "chat", []byte(`1`)))
	<-store.held
	_, ev, err := a.rt.SendWait(ctx, "B", "chat", []byte(`2`))
	require.NoError(t, err, "a message does not wait for the outbox rows of others")
	assert.Equal(t, app.EventDelivered, ev.Kind)
}

// hookTransport is a memory transport with an ack hook (ports.AckNotifier)
// that records the msg frames sent.
type hookTransport struct {
	*memory.Transport
	mu   sync.Mutex
	hook func(mq.PeerID, mq.Frame)
	sent chan mq.Frame
}

func (h *hookTransport) SetAckHook(f func(mq.PeerID, mq.Frame)) {
	h.mu.Lock()
	h.hook = f
	h.mu.Unlock()
}

func (h *hookTransport) Send(to mq.PeerID, f mq.Frame) error {
	if f.Type == mq.TypeMsg {
		h.sent <- f
	}
	return h.Transport.Send(to, f)
}

// TestAckHookWakesTheWaiter: an ack shown to the transport's hook wakes the
// caller waiting for it at once — only an ack from the message's peer with
// the message's id and seq, and a received ack only for SendRoundTrip.
func TestAckHookWakesTheWaiter(t *testing.T) {
	net := memory.NewNetwork()
	store := memory.NewStore()
	node := app.NewNode("A", app.State{}, memory.NewRand(seedOf("A")), app.NodeOptions{})
	tr := &hookTransport{Transport: net.Join("A"), sent: make(chan mq.Frame, 16)}
	rt := app.NewRuntime(node, tr, store, system.Clock{}, nil)
	require.NotNil(t, tr.hook, "the runtime registers its hook")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = rt.Run(ctx) }()

	type result struct {
		ev  app.Event
		err error
	}
	wait := func(early bool) (mq.Frame, chan result) {
		out := make(chan result, 1)
		go func() {
			wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
			defer wcancel()
			var r result
			if early {
				_, r.ev, r.err = rt.SendRoundTrip(wctx, "Z", "chat", []byte(`1`))
			} else {
				_, r.ev, r.err = rt.SendWait(wctx, "Z", "chat", []byte(`1`))
			}
			out <- r
		}()
		return <-tr.sent, out // Z is not there: only the hook can answer
	}

	f, out := wait(true)
	tr.hook("Y", mq.Frame{Type: mq.TypeAck, ID: f.ID, Seq: f.Seq, Stage: mq.StageReceived})     // another peer
	tr.hook("Z", mq.Frame{Type: mq.TypeAck, ID: f.ID, Seq: f.Seq + 1, Stage: mq.StageReceived}) // another seq
	tr.hook("Z", mq.Frame{Type: mq.TypeAck, ID: f.ID, Seq: f.Seq, Stage: mq.StageReceived})
	r := <-out
	require.NoError(t, r.err)
	assert.Equal(t, app.EventReceived, r.ev.Kind)
	assert.Equal(t, mq.PeerID("Z"), r.ev.Peer)
	assert.Equal(t, f.ID, r.ev.MsgID)

	f, out = wait(false)
	tr.hook("Z", mq.Frame{Type: mq.TypeAck, ID: f.ID, Seq: f.Seq, Stage: mq.StageReceived}) // not enough for SendWait
	tr.hook("Z", mq.Frame{Type: mq.TypeAck, ID: f.ID, Seq: f.Seq})
	r = <-out
	require.NoError(t, r.err)
	assert.Equal(t, app.EventDelivered, r.ev.Kind)
	assert.Equal(t, "chat", r.ev.Topic)
}

// TestSendWaitBeforeRunGoesThroughTheLoop: a SendWait issued before Run
// cannot step the node inline; it waits in the command queue and completes
// once the runtime runs. After Run returned, SendWait is refused with
// ErrStopped (no inline step on a stopped node).
func TestSendWaitBeforeRunGoesThroughTheLoop(t *testing.T) {
	net := memory.NewNetwork()
	startNode(t, net, "B", memory.NewStore(), app.NodeOptions{})
	store := memory.NewStore()
	node := app.NewNode("A", app.State{}, memory.NewRand(seedOf("A")), app.NodeOptions{})
	tr := net.Join("A")
	rt := app.NewRuntime(node, tr, store, system.Clock{}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	type result struct {
		ev  app.Event
		err error
	}
	out := make(chan result, 1)
	go func() {
		_, ev, err := rt.SendWait(ctx, "B", "chat", []byte(`1`))
		out <- result{ev, err}
	}()
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rt.Run(runCtx) }()
	r := <-out
	require.NoError(t, r.err)
	assert.Equal(t, app.EventDelivered, r.ev.Kind)
	stop()
	require.NoError(t, <-done)
	_, _, err := rt.SendWait(ctx, "B", "chat", []byte(`2`))
	assert.ErrorIs(t, err, app.ErrStopped)
	_ = tr.Close()
}
