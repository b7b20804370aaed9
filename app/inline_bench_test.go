package app_test

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/goop-p2p/goop/adapters/system"
	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/ports"
	"github.com/goop-p2p/goop/ports/memory"
)

// wireTransport joins two runtimes in one process with the inline path of
// the p2p transport and nothing else: a frame written directly (ClaimDirect)
// is encoded, decoded and offered to the peer's inline handler on the
// writing goroutine, as the peer's stream reader would after reading it. So
// a round trip stepped inline at both ends runs on the caller's goroutine
// alone, and costs what the node's own code costs: no network, no
// scheduler.
type wireTransport struct {
	self, to mq.PeerID
	peer     *wireTransport
	h        func(mq.PeerID, mq.Frame) (bool, bool)
	events   chan ports.TransportEvent
	queued   atomic.Int64
	claimed  mq.Frame
	write    func() // t.writeClaimed, bound once
	line     []byte
}

func newWirePair() (a, b *wireTransport) {
	a = &wireTransport{self: "A", to: "B", events: make(chan ports.TransportEvent, 1024)}
	b = &wireTransport{self: "B", to: "A", events: make(chan ports.TransportEvent, 1024)}
	a.peer, b.peer = b, a
	a.write, b.write = a.writeClaimed, b.writeClaimed
	return a, b
}

func (t *wireTransport) Self() mq.PeerID                     { return t.self }
func (t *wireTransport) Events() <-chan ports.TransportEvent { return t.events }
func (t *wireTransport) Close() error                        { return nil }
func (t *wireTransport) Queued() int64                       { return t.queued.Load() }

func (t *wireTransport) SetInlineHandler(h func(mq.PeerID, mq.Frame) (bool, bool)) { t.h = h }

// Send hands f to the peer's loop (the frames not written directly).
func (t *wireTransport) Send(to mq.PeerID, f mq.Frame) error {
	t.peer.queue(ports.TransportEvent{Kind: ports.FrameReceived, From: t.self, Frame: f})
	return nil
}

func (t *wireTransport) queue(ev ports.TransportEvent) {
	t.queued.Add(1)
	t.events <- ev
}

func (t *wireTransport) ClaimDirect(to mq.PeerID, f mq.Frame) (func(), bool) {
	t.claimed = f
	return t.write, true
}

// writeClaimed puts the claimed frame on the wire and reads it at the peer.
func (t *wireTransport) writeClaimed() {
	t.line = mq.AppendFrame(t.line[:0], &t.claimed)
	f, err := mq.DecodeFrame(t.line[:len(t.line)-1])
	if err != nil {
		panic(err)
	}
	if taken, _ := t.peer.h(t.self, f); !taken {
		t.peer.queue(ports.TransportEvent{Kind: ports.FrameReceived, From: t.self, Frame: f})
	}
}

// cursorStore stores a receiver's cursors at once (ports.QuickStore), in a
// map, as the SQLite store copies them into its mapped log.
type cursorStore struct {
	*memory.Store
	cursors map[mq.PeerID]int64
}

func (s *cursorStore) ApplyNow(b ports.Batch) bool {
	if len(b.Groups) > 0 || len(b.Peers) > 0 {
		return false
	}
	for _, c := range b.Bus {
		if c.Kind != mq.SetCursor {
			return false
		}
	}
	for _, c := range b.Bus {
		s.cursors[c.Peer] = c.Seq
	}
	return true
}

// BenchmarkInlineRoundTrip measures the node's own work for one round trip
// stepped inline at both ends (SendRoundTrip from A to B: A's step and
// write, B's decode, step and ack, A's decode and step, the caller's
// wake-up), without the network: the CPU the bus adds to a stream echo.
func BenchmarkInlineRoundTrip(b *testing.B) {
	ta, tb := newWirePair()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := func(id mq.PeerID, tr *wireTransport) *app.Runtime {
		node := app.NewNode(id, app.State{}, memory.NewRand(seedOf(id)), app.NodeOptions{})
		rt := app.NewRuntime(node, tr, &cursorStore{Store: memory.NewStore(), cursors: map[mq.PeerID]int64{}}, system.Clock{}, nil)
		go func() { _ = rt.Run(ctx) }()
		return rt
	}
	a := start("A", ta)
	start("B", tb)
	payload := benchPayload()
	roundTrip := func() {
		if _, _, err := a.SendRoundTrip(ctx, "B", "bench.rtt", payload); err != nil {
			b.Fatal(err)
		}
	}
	for range 100 {
		roundTrip()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		roundTrip()
	}
	b.StopTimer()
	if ta.queued.Load()+tb.queued.Load() > 0 {
		b.Logf("%d frames went through the loops", ta.queued.Load()+tb.queued.Load())
	}
}

func benchPayload() []byte {
	p := make([]byte, 0, 64)
	p = append(p, `{"pad":"`...)
	for len(p) < 62 {
		p = append(p, 'x')
	}
	return append(p, `"}`...)
}
