package app_test

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
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

// inlineTransport is a memory transport with the inline path of the p2p
// one (ports.InlineReceiver, ports.DirectSender): its reader offers each
// frame received to the runtime's inline handler first, and only the frames
// declined go to Events, counted by Queued.
type inlineTransport struct {
	*memory.Transport
	h        atomic.Pointer[func(mq.PeerID, mq.Frame) (bool, bool)]
	events   chan ports.TransportEvent
	queued   atomic.Int64
	taken    atomic.Int64 // msgs the handler took
	direct   chan mq.Frame
	declined chan struct{} // a token per msg handed to Events
	peers    chan struct{} // a token per PeerConnected handed to Events
}

func newInlineTransport(net *memory.Network, id mq.PeerID) *inlineTransport {
	t := &inlineTransport{Transport: net.Join(id), events: make(chan ports.TransportEvent, 1024),
		direct: make(chan mq.Frame, 1024), declined: make(chan struct{}, 4096), peers: make(chan struct{}, 16)}
	go t.read()
	return t
}

func (t *inlineTransport) read() {
	defer close(t.events)
	for ev := range t.Transport.Events() {
		isMsg := ev.Kind == ports.FrameReceived && ev.Frame.Type == mq.TypeMsg
		if h := t.h.Load(); h != nil && ev.Kind == ports.FrameReceived {
			// Counted before the step, whose answer may end the test's
			// round trip before the handler returns.
			if isMsg {
				t.taken.Add(1)
			}
			if taken, _ := (*h)(ev.From, ev.Frame); taken {
				continue
			}
			if isMsg {
				t.taken.Add(-1)
			}
		}
		t.queued.Add(1)
		t.events <- ev
		if ev.Kind == ports.PeerConnected {
			t.peers <- struct{}{}
		}
		if ev.Kind == ports.FrameReceived && ev.Frame.Type == mq.TypeMsg {
			select {
			case t.declined <- struct{}{}:
			default:
			}
		}
	}
}

func (t *inlineTransport) Events() <-chan ports.TransportEvent { return t.events }

func (t *inlineTransport) SetInlineHandler(h func(mq.PeerID, mq.Frame) (bool, bool)) { t.h.Store(&h) }

func (t *inlineTransport) Queued() int64 { return t.queued.Load() }

func (t *inlineTransport) ClaimDirect(to mq.PeerID, f mq.Frame) (func(), bool) {
	return func() {
		select {
		case t.direct <- f:
		default:
		}
		_ = t.Transport.Send(to, f)
	}, true
}

// startInlineNode runs node id on an inlineTransport, with a store that
// stores a receiver's cursors at once (ports.QuickStore), as SQLite does.
func startInlineNode(t *testing.T, net *memory.Network, id mq.PeerID) (*app.Runtime, *inlineTransport) {
	t.Helper()
	return startInlineNodeClock(t, net, id, system.Clock{})
}

// startInlineNodeClock is startInlineNode with the runtime on clock.
func startInlineNodeClock(t *testing.T, net *memory.Network, id mq.PeerID, clock ports.Clock) (*app.Runtime, *inlineTransport) {
	t.Helper()
	tr := newInlineTransport(net, id)
	node := app.NewNode(id, app.State{}, memory.NewRand(seedOf(id)), app.NodeOptions{})
	store := &quickStore{recStore: &recStore{Store: memory.NewStore()}}
	rt := app.NewRuntime(node, tr, store, clock, nil)
	require.NotNil(t, tr.h.Load(), "the runtime installs its inline handler")
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _ = rt.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-rt.Done()
		_ = tr.Close()
	})
	return rt, tr
}

// TestInlineStepAcksFromTheReader: a msg received while the node is idle is
// stepped on the transport's reader goroutine: delivered to the
// application, and its final ack written from there (ClaimDirect). The
// ack, taken inline at the sender too, wakes the caller waiting for it.
func TestInlineStepAcksFromTheReader(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a, _, tb, sub := idlePair(ctx, t, 16)

	// Several round trips: the node's own timers may hold it for a moment,
	// and a round trip then goes through the loop.
	ids := map[string]bool{}
	for range 10 {
		f, ev, err := a.SendRoundTrip(ctx, "B", "chat", json.RawMessage(`"hi"`))
		require.NoError(t, err)
		ids[f.ID] = true
		got := waitEvent(t, sub, app.EventMessage)
		assert.Equal(t, f.ID, got.MsgID)
		if ev.Kind != app.EventDelivered {
			assert.Equal(t, app.EventReceived, ev.Kind) // went through the loop
		}
	}
	assert.Positive(t, tb.taken.Load(), "B stepped msgs on its reader")
	assert.Len(t, tb.direct, int(tb.taken.Load()), "and wrote each one's ack from there")
	for len(tb.direct) > 0 {
		d := <-tb.direct
		assert.Equal(t, mq.TypeAck, d.Type)
		assert.Empty(t, d.Stage, "the final ack")
		assert.True(t, ids[d.ID], "of a msg sent")
	}
}

// TestInlineKeepsOrderWhenTheLoopIsBusy: round trips are stepped on the
// receiver's reader while its node is idle. While its loop holds the node
// (a long command) the reader steps none and hands them to Events; once the
// loop is free it still declines while earlier frames wait there. Every
// message is delivered exactly once and in order, whichever goroutine
// stepped it. Pipelined messages (Post) always go through the loop.
func TestInlineKeepsOrderWhenTheLoopIsBusy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, b, tb, sub := idlePair(ctx, t, 4096)
	const k = 100
	roundTrips := func() {
		for range k {
			_, _, err := a.SendRoundTrip(ctx, "B", "chat", json.RawMessage(`1`))
			require.NoError(t, err)
		}
	}
	roundTrips()
	// The node's own timers (presence, retransmissions) may hold it for a
	// moment, and a round trip then goes through the loop.
	assert.GreaterOrEqual(t, tb.taken.Load(), int64(k*9/10), "an idle node steps the round trips on its reader")
	took := tb.taken.Load()

	entered, release := make(chan struct{}), make(chan struct{})
	busy := make(chan error, 1)
	go func() {
		busy <- b.Do(ctx, func(time.Time, *app.Node) {
			close(entered)
			<-release
		})
	}()
	<-entered
	done := make(chan error, 2*k)
	for range 2 * k { // concurrent callers: their msgs pile up at B
		go func() {
			_, _, err := a.SendRoundTrip(ctx, "B", "chat", json.RawMessage(`2`))
			done <- err
		}()
	}
	for range 2 * k { // the loop holds the node: the reader steps none of them
		select {
		case <-tb.declined:
		case <-ctx.Done():
			t.Fatal("the msgs sent while the loop was busy did not go to Events")
		}
	}
	assert.Equal(t, took, tb.taken.Load())
	close(release)
	require.NoError(t, <-busy)
	for range 2 * k {
		require.NoError(t, <-done)
	}
	roundTrips()
	assert.Greater(t, tb.taken.Load(), took, "an idle node again steps them on its reader")

	for i := range 4 * k {
		ev := waitEvent(t, sub, app.EventMessage)
		require.Equal(t, int64(i+1), ev.Msg.Seq, "message %d delivered once, in order", i+1)
	}
	took = tb.taken.Load()
	for range 10 {
		require.NoError(t, a.Post(ctx, "B", "chat", json.RawMessage(`3`)))
	}
	for i := 4 * k; i < 4*k+10; i++ {
		ev := waitEvent(t, sub, app.EventMessage)
		require.Equal(t, int64(i+1), ev.Msg.Seq, "message %d delivered once, in order", i+1)
	}
	assert.Equal(t, took, tb.taken.Load(), "pipelined msgs went through the loop")
	t.Logf("B stepped %d msgs inline; %d events went through its loop", tb.taken.Load(), tb.queued.Load())
}

// idlePair runs nodes A and B on inline transports and returns once both
// are idle, with a subscription of subBuf to B's messages.
func idlePair(ctx context.Context, t *testing.T, subBuf int) (a, b *app.Runtime, tb *inlineTransport, sub *app.Subscription) {
	t.Helper()
	net := memory.NewNetwork()
	a, ta := startInlineNode(t, net, "A")
	b, tb = startInlineNode(t, net, "B")
	sub = b.SubscribeKinds(subBuf, app.EventMessage)
	settle(ctx, t, a, ta)
	settle(ctx, t, b, tb)
	return a, b, tb, sub
}

// settle returns once rt's loop has stepped the event of its one peer
// joining, and every other event tr handed to Events so far: the node is
// then idle.
func settle(ctx context.Context, t *testing.T, rt *app.Runtime, tr *inlineTransport) {
	t.Helper()
	select {
	case <-tr.peers:
	case <-ctx.Done():
		t.Fatal("the peer never joined")
	}
	for {
		require.NoError(t, rt.Do(ctx, func(time.Time, *app.Node) {}))
		if len(tr.events) == 0 {
			return
		}
	}
}

// timerClock is the system clock whose timers record every duration they
// are set for.
type timerClock struct {
	system.Clock
	mu  sync.Mutex
	set []time.Duration
}

func (c *timerClock) NewTimer(d time.Duration) ports.Timer {
	c.record(d)
	return &recTimer{Timer: c.Clock.NewTimer(d), c: c}
}

func (c *timerClock) record(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.set = append(c.set, d)
}

// shortest returns the shortest duration a timer was set for since the
// last call (an hour if none).
func (c *timerClock) shortest() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := time.Hour
	for _, d := range c.set {
		m = min(m, d)
	}
	c.set = nil
	return m
}

type recTimer struct {
	ports.Timer
	c *timerClock
}

func (t *recTimer) Reset(d time.Duration) {
	t.c.record(d)
	t.Timer.Reset(d)
}

// Round trips one after another set no timer but the retransmission's: a
// message's outbox row, acknowledged within the round trip, never needed
// storing, and a timer set for it would wake the node for nothing (and
// moving a timer earlier wakes the scheduler's network poller).
func TestRoundTripsSetNoLingerTimer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	net := memory.NewNetwork()
	clock := &timerClock{}
	a, ta := startInlineNodeClock(t, net, "A", clock)
	b, tb := startInlineNode(t, net, "B")
	settle(ctx, t, a, ta)
	settle(ctx, t, b, tb)
	clock.shortest()
	for range 50 {
		_, _, err := a.SendRoundTrip(ctx, "B", "t", []byte(`1`))
		require.NoError(t, err)
	}
	assert.Greater(t, clock.shortest(), time.Second)
}
