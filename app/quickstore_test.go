package app_test

import (
	"context"
	"slices"
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

// quickStore is a recStore that also stores batches of cursors alone at
// once (ports.QuickStore). It records the batches offered to ApplyNow, and
// in stored, in order, every batch stored by either path, once stored.
type quickStore struct {
	*recStore
	qmu     sync.Mutex
	offered []ports.Batch
	stored  []ports.Batch
}

func (s *quickStore) ApplyNow(b ports.Batch) bool {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	s.offered = append(s.offered, ports.Batch{Bus: slices.Clone(b.Bus)}) // the caller reuses b's arrays
	for _, c := range b.Bus {
		if c.Kind != mq.SetCursor {
			return false
		}
	}
	if len(b.Groups) > 0 || len(b.Peers) > 0 || s.Store.Apply(context.Background(), b) != nil {
		return false
	}
	s.stored = append(s.stored, ports.Batch{Bus: slices.Clone(b.Bus)})
	return true
}

func (s *quickStore) Apply(ctx context.Context, b ports.Batch) error {
	cs := slices.Clone(b.Bus)
	err := s.recStore.Apply(ctx, b)
	if err == nil {
		s.qmu.Lock()
		s.stored = append(s.stored, ports.Batch{Bus: cs})
		s.qmu.Unlock()
	}
	return err
}

// offeredCursor reports whether a batch setting peer's cursor to next was
// offered to ApplyNow.
func (s *quickStore) offeredCursor(peer mq.PeerID, next int64) bool {
	return s.index(s.offered, mq.SetCursor, peer, next) >= 0
}

// storedAt returns the position in stored of the batch holding a change of
// kind for (peer, seq), or -1.
func (s *quickStore) storedAt(kind mq.ChangeKind, peer mq.PeerID, seq int64) int {
	return s.index(s.stored, kind, peer, seq)
}

func (s *quickStore) index(bs []ports.Batch, kind mq.ChangeKind, peer mq.PeerID, seq int64) int {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	for i, b := range bs {
		for _, c := range b.Bus {
			if c.Kind == kind && c.Peer == peer && c.Seq == seq {
				return i
			}
		}
	}
	return -1
}

// handedTransport is a memory transport whose events reach the runtime
// through an unbuffered channel: once a msg frame is handed over (a token
// in msgs), the runtime's loop has taken it, and handles it before any
// command it takes afterwards.
type handedTransport struct {
	*memory.Transport
	events chan ports.TransportEvent
	msgs   chan struct{}
}

func handOver(tr *memory.Transport) *handedTransport {
	h := &handedTransport{Transport: tr, events: make(chan ports.TransportEvent), msgs: make(chan struct{}, 16)}
	go func() {
		defer close(h.events)
		for ev := range tr.Events() {
			h.events <- ev
			if ev.Kind == ports.FrameReceived && ev.Frame.IsMsg() {
				h.msgs <- struct{}{}
			}
		}
	}()
	return h
}

func (h *handedTransport) Events() <-chan ports.TransportEvent { return h.events }

// A receiver's cursor is stored on the runtime's loop through the store's
// fast path (no hand-over to the persister) when nothing stored earlier is
// on its way; while an earlier batch is still being stored, the cursor
// waits its turn behind it, and the ack behind the cursor.
func TestReceiverCursorIsStoredOnTheLoopWhenNothingWaits(t *testing.T) {
	net := memory.NewNetwork()
	mem := memory.NewStore()
	store := &quickStore{recStore: &recStore{Store: mem}}
	tr := handOver(net.Join("B"))
	defer tr.Close()
	brt := app.NewRuntime(app.NewNode("B", app.State{}, memory.NewRand(seedOf("B")), app.NodeOptions{}), tr, store, system.Clock{}, nil)
	bctx, stopB := context.WithCancel(context.Background())
	defer func() { stopB(); <-brt.Done() }()
	go func() { _ = brt.Run(bctx) }()
	a := startNode(t, net, "A", memory.NewStore(), app.NodeOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	// B's start-up state (its epoch) is stored: nothing is on its way.
	require.NoError(t, brt.Do(ctx, func(time.Time, *app.Node) {}))
	f, ev, err := a.rt.SendWait(ctx, "B", "chat", []byte(`1`))
	require.NoError(t, err)
	require.Equal(t, app.EventDelivered, ev.Kind)
	<-tr.msgs
	require.True(t, store.offeredCursor("A", f.Seq+1), "the cursor was offered to the fast path")
	assert.Equal(t, -1, store.applyOf(mq.SetCursor, "A", f.Seq+1), "and did not go through Apply")
	assert.GreaterOrEqual(t, store.storedAt(mq.SetCursor, "A", f.Seq+1), 0, "it is stored")

	// B's first message to A reserves sequence numbers: a batch that
	// later steps depend on, held at the gate.
	gate := make(chan struct{})
	store.setGate(gate)
	sent := make(chan error, 1)
	go func() {
		_, err := brt.Send(ctx, "A", "chat", []byte(`"b"`))
		sent <- err
	}()
	<-store.held
	acked := make(chan mq.Frame, 1)
	go func() {
		f, _, err := a.rt.SendWait(ctx, "B", "chat", []byte(`2`))
		assert.NoError(t, err)
		acked <- f
	}()
	// B's loop took A's second message; two commands later (each taken
	// after the one before ran) it has also finished that step.
	<-tr.msgs
	for range 2 {
		ran := make(chan struct{})
		go func() { _ = brt.Do(ctx, func(time.Time, *app.Node) { close(ran) }) }()
		<-ran
	}
	assert.False(t, store.offeredCursor("A", f.Seq+2), "not stored on the loop while an earlier batch is held")
	// Stored in order: the cursor only after the batch held at the gate,
	// and the ack only after the cursor.
	close(gate)
	require.NoError(t, <-sent)
	f2 := <-acked
	assert.Equal(t, f.Seq+1, f2.Seq)
	held := store.storedAt(mq.PutOutbox, "A", 1) // B's message to A
	require.GreaterOrEqual(t, held, 0)
	assert.Greater(t, store.storedAt(mq.SetCursor, "A", f2.Seq+1), held, "the cursor was stored after the held batch, before its ack")
}
