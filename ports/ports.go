// Package ports declares the small interfaces the app layer needs from the
// outside world. Each has an in-memory fake in ports/memory, a simulated
// implementation in simnet, and real adapters under adapters/.
package ports

import (
	"context"
	"errors"
	"time"

	"github.com/goop-p2p/goop/domain/group"
	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/domain/presence"
)

// Clock is the source of time. Real nodes use the wall clock; simnet a virtual one.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// NewTimer returns a timer that fires once after d.
	NewTimer(d time.Duration) Timer
}

// Timer is a one-shot timer, as time.Timer, safe for concurrent use (Stop and
// Reset may be called while another goroutine waits on C).
type Timer interface {
	C() <-chan time.Time
	// Stop prevents the timer from firing; it reports whether it was active.
	Stop() bool
	// Reset re-arms the timer to fire after d.
	Reset(d time.Duration)
}

// Rand is the source of randomness (ids, jitter). Real nodes read crypto/rand;
// simnet derives a per-peer stream from the seed.
type Rand interface {
	Uint64() uint64
	// Read fills p completely; it never fails.
	Read(p []byte) (int, error)
}

// ErrBackpressure is returned by Transport.Send when the per-peer queue is
// full (the peer does not read). The frame is dropped; the bus retransmits.
var ErrBackpressure = errors.New("transport: peer queue full")

// ErrClosed is returned by operations on a closed transport or store.
var ErrClosed = errors.New("closed")

// TransportEventKind tells what a TransportEvent carries.
type TransportEventKind uint8

// Transport event kinds.
const (
	// FrameReceived: Frame arrived from From (already decoded and validated).
	FrameReceived TransportEventKind = iota + 1
	// PeerConnected: a connection to From is up (first one, or again after loss).
	PeerConnected
	// PeerDisconnected: the last connection to From is gone.
	PeerDisconnected
)

// TransportEvent is something the transport reports to the node's runtime.
type TransportEvent struct {
	Kind  TransportEventKind
	From  mq.PeerID
	Frame mq.Frame
}

// Transport carries bus frames between peers (SPEC §1–2: /goop/mq/1.1.0 with
// fallback to /goop/mq/1.0.0 on libp2p). It is safe for concurrent use.
type Transport interface {
	// Self is the local peer id.
	Self() mq.PeerID
	// Send hands f to the network for peer to and returns at once: it never
	// blocks on the peer. Delivery is best effort; the bus retries. An ack
	// frame answers the msg with the same id on the stream it came in on when
	// that stream is still open. Returns ErrBackpressure when the peer's queue
	// is full, ErrClosed after Close.
	Send(to mq.PeerID, f mq.Frame) error
	// Events is the stream of received frames and connectivity changes. It is
	// closed by Close. The transport never blocks the network on a slow reader
	// for longer than its read deadline: a full channel drops the stream.
	Events() <-chan TransportEvent
	// Close releases the transport; Events is closed afterwards.
	Close() error
}

// DirectSender is an optional Transport fast path: a frame written on the
// caller's goroutine instead of being handed to a writer goroutine, for the
// latency of a caller that waits on the answer anyway.
type DirectSender interface {
	// ClaimDirect reserves the way to peer to for f when nothing is queued
	// for it and a connection is ready, and returns the write to run (exactly
	// once, soon, outside any lock that the node's loop takes: it may block
	// up to the transport's write timeout). Frames sent to the peer in the
	// meantime are queued behind f. ok is false when f must go through Send.
	ClaimDirect(to mq.PeerID, f mq.Frame) (write func(), ok bool)
}

// AckNotifier is an optional Transport hook: every ack received is shown to
// hook on the network goroutine that read it, as it is reported on Events,
// so that a caller waiting for that ack can be woken at once instead of
// after the node's loop handled the event. hook must not block.
type AckNotifier interface {
	SetAckHook(hook func(from mq.PeerID, ack mq.Frame))
}

// InlineReceiver is an optional Transport fast path: a received frame is
// offered to a handler on the network goroutine that read it before it goes
// to Events, so that a node with nothing else to do is stepped right there
// instead of waking its loop, and the step's answer to the sender (an ack)
// is written from there too. A frame the handler does not take goes to
// Events as usual.
type InlineReceiver interface {
	// SetInlineHandler installs h; set it before any traffic. h reports
	// whether it took f, and whether the step already sent f's final ack to
	// from (the transport then sends no early received ack for f). h is
	// called from many goroutines at once and must not wait for the node:
	// it declines when the node is busy.
	SetInlineHandler(h func(from mq.PeerID, f mq.Frame) (taken, acked bool))
	// Queued counts the events handed to Events so far. Each is counted
	// before it is put in the channel, and uncounted if it could not be put
	// there. A handler that counts the events it took from Events takes a
	// frame only when both counts agree: then no earlier event is still on
	// its way, and the frame overtakes nothing.
	Queued() int64
}

// Batch is one atomic set of durable changes produced by a node step. The
// runtime persists it before sending any frame of the same step.
type Batch struct {
	Bus    []mq.Change
	Groups []group.Change
	// Peers are changes of the cached peer table (`_peers`).
	Peers []presence.Change
}

// Empty reports whether the batch holds no change.
func (b *Batch) Empty() bool { return len(b.Bus) == 0 && len(b.Groups) == 0 && len(b.Peers) == 0 }

// Append adds o's changes after b's, so that applying b equals applying the
// two in order (and atomically).
func (b *Batch) Append(o Batch) {
	b.Bus = append(b.Bus, o.Bus...)
	b.Groups = append(b.Groups, o.Groups...)
	b.Peers = append(b.Peers, o.Peers...)
}

// Store is the node's durable state (data.db). Safe for concurrent use.
type Store interface {
	// LoadBus returns the bus snapshot (empty for a new store).
	LoadBus(ctx context.Context) (mq.Snapshot, error)
	// LoadGroups returns the group snapshot (empty for a new store) in a
	// deterministic order; its maps are never nil.
	LoadGroups(ctx context.Context) (group.Snapshot, error)
	// LoadPeers returns the cached peer table (empty for a new store),
	// sorted by peer id.
	LoadPeers(ctx context.Context) ([]presence.Peer, error)
	// Apply persists a batch atomically: all of it or none of it.
	Apply(ctx context.Context, b Batch) error
	// Close flushes and closes the store.
	Close() error
}

// QuickStore is a Store that can store some batches at once on the
// caller's goroutine, without waiting for anything: ApplyNow stores b, as
// Apply would, and reports true when it can do so at no more cost than a
// copy in memory (a SQLite store: a receiver's cursors, copied into its
// mapped cursor log, while nothing else holds the store); otherwise it
// stores nothing and reports false, and b goes to Apply. The runtime asks
// it on its loop, for a step's batch when nothing stored earlier is still
// waiting: a receiver's cursor then costs no hand-over to the persister.
type QuickStore interface {
	ApplyNow(b Batch) bool
}

// HistoryReader is a Store that keeps the history of the groups this node
// hosts (the messages it relayed), which members may ask for.
type HistoryReader interface {
	// GroupHistory returns the newest entries of groupID, oldest first: at
	// most limit of them.
	GroupHistory(ctx context.Context, groupID string, limit int) ([]group.HistoryEntry, error)
}

// GroupTypeHandler plugs a group app type (files, cluster, listen, ...) into
// the node without touching the group core. The node calls its hooks on its
// own goroutine, in event order, while it collects a step's outputs (before
// the runtime persists them); hooks must not block: start long work
// elsewhere and report back as inputs.
type GroupTypeHandler interface {
	// Type is the group_type this handler serves.
	Type() string
	// Flags tell the core how groups of this type behave.
	Flags() group.TypeFlags
	// OnCreate runs when this node created a group of the type.
	OnCreate(g group.Group)
	// OnJoin runs when peer joined a group of the type (hosted here, or the
	// local node joined: then peer is the local id).
	OnJoin(groupID string, host, peer mq.PeerID)
	// OnLeave runs when peer left, was evicted or kicked (reason says which),
	// or the local node left.
	OnLeave(groupID string, host, peer mq.PeerID, reason string)
	// OnClose runs when a group of the type closed or dissolved.
	OnClose(groupID string, host mq.PeerID, reason string)
	// OnEvent sees every event of groups of the type (messages included).
	OnEvent(ev group.Event)
}
