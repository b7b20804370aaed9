package app_test

import (
	"context"
	"errors"
	"fmt"
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
	snap, err := store.LoadBus(context.Background())
	require.NoError(t, err)
	gsnap, err := store.LoadGroups(context.Background())
	require.NoError(t, err)
	node := app.NewNode(id, app.State{Bus: snap, Groups: gsnap}, memory.NewRand(seedOf(id)), opts)
	tr := net.Join(id)
	rt := app.NewRuntime(node, tr, store, system.Clock{}, nil)
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
