package p2p

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/host/eventbus"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/ports"
)

// Protocol ids of the message bus (SPEC §1). 1.0.0 is what Goop2 peers speak:
// one msg line per stream answered by one ack line. 1.1.0 is ours: one
// long-lived, pipelined stream per peer pair carrying msgs and acks both ways.
const (
	ProtocolMQ11 protocol.ID = "/goop/mq/1.1.0"
	ProtocolMQ10 protocol.ID = "/goop/mq/1.0.0"
)

// Defaults of MQOptions.
const (
	DefaultQueueLen     = 16384
	DefaultEventBuffer  = 8192
	DefaultWriteTimeout = 10 * time.Second
	DefaultReadTimeout  = 3 * time.Second  // compat receiver read/write deadline
	DefaultAckTimeout   = 2 * time.Second  // compat sender ack timeout
	DefaultOpenTimeout  = 5 * time.Second  // opening a stream (dial included)
	DefaultIdleTimeout  = 10 * time.Minute // a silent 1.1.0 stream is dropped
	DefaultRecheck10    = 10 * time.Minute // how long a peer is remembered as 1.0.0-only
)

// Limits on what one peer can make us hold.
const (
	maxStreams11PerPeer = 4    // concurrent 1.1.0 streams with one peer
	maxInbound10PerPeer = 128  // concurrent inbound 1.0.0 streams from one peer
	maxRoutesPerPeer    = 1024 // remembered "ack goes back on stream X" entries
	maxOnly10Memory     = 4096 // remembered 1.0.0-only peers
	readBufInit         = 16 << 10
	writeBufSize        = 32 << 10
)

// MQOptions tune an MQTransport. Zero fields take the defaults above.
type MQOptions struct {
	// QueueLen bounds the frames queued per destination peer; Send returns
	// ports.ErrBackpressure beyond it.
	QueueLen int
	// EventBuffer is the capacity of the Events channel.
	EventBuffer int
	// WriteTimeout bounds each blocking write. A peer whose writes block longer
	// (or whose queue stays full that long without progress) is disconnected.
	// On long-lived 1.1.0 streams, deadlines are re-armed lazily and fire
	// between 1 and 1.25 times the timeout (see armDeadline); the same holds
	// for ReadTimeout and IdleTimeout there.
	WriteTimeout time.Duration
	// ReadTimeout bounds reading a started line, reading a 1.0.0 msg, waiting
	// for room in a full Events channel, and waiting for the core's ack to an
	// inbound 1.0.0 msg.
	ReadTimeout time.Duration
	// AckTimeout bounds waiting for the ack of an outgoing 1.0.0 msg.
	AckTimeout time.Duration
	// OpenTimeout bounds opening a stream, dialing included.
	OpenTimeout time.Duration
	// IdleTimeout drops a 1.1.0 stream on which nothing arrived for this long
	// (counted after ReadTimeout of silence). The writer opens a new one when needed.
	IdleTimeout time.Duration
	// Recheck10 is how long a peer that answered only 1.0.0 is served with
	// 1.0.0 before 1.1.0 is offered again.
	Recheck10 time.Duration
	// Only10 makes the transport speak compat only: the 1.1.0 handler is not
	// registered and 1.1.0 is never offered (compat tests and benchmarks).
	Only10 bool
	// Logger receives the transport's logs (default slog.Default()). Protocol
	// errors of peers are logged at Debug.
	Logger *slog.Logger
	// DropInbound is a TEST-ONLY hook: when it returns true for a received
	// frame, the frame is dropped before it reaches Events (an inbound 1.0.0
	// msg's stream is reset). Tests use it to lose acks or msgs at will. It is
	// called from network goroutines and must be safe for concurrent use.
	DropInbound func(from mq.PeerID, f mq.Frame) bool
	// NoReceivedAcks turns off the early received acks on 1.1.0 streams
	// (tests and benchmarks that measure the final ack alone).
	NoReceivedAcks bool
}

func (o MQOptions) withDefaults() MQOptions {
	set := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if o.QueueLen <= 0 {
		o.QueueLen = DefaultQueueLen
	}
	if o.EventBuffer <= 0 {
		o.EventBuffer = DefaultEventBuffer
	}
	set(&o.WriteTimeout, DefaultWriteTimeout)
	set(&o.ReadTimeout, DefaultReadTimeout)
	set(&o.AckTimeout, DefaultAckTimeout)
	set(&o.OpenTimeout, DefaultOpenTimeout)
	set(&o.IdleTimeout, DefaultIdleTimeout)
	set(&o.Recheck10, DefaultRecheck10)
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

var (
	_ ports.Transport      = (*MQTransport)(nil)
	_ ports.DirectSender   = (*MQTransport)(nil)
	_ ports.AckNotifier    = (*MQTransport)(nil)
	_ ports.InlineReceiver = (*MQTransport)(nil)
)

// inlineHandler is the handler of ports.InlineReceiver.
type inlineHandler = func(from mq.PeerID, f mq.Frame) (taken, acked bool)

// MQTransport carries bus frames over libp2p (ports.Transport). It speaks
// /goop/mq/1.1.0 (one pipelined stream per peer pair) and falls back to
// /goop/mq/1.0.0 (one stream per msg) for peers that only speak compat.
//
// Each destination peer has a bounded queue drained by one writer goroutine
// that batches writes, so Send never blocks. Every network call is bounded
// by a timeout, and every buffer the network can fill is bounded. Safe for
// concurrent use. The transport does not own the host: Close leaves it open.
type MQTransport struct {
	h      host.Host
	self   mq.PeerID
	opts   MQOptions
	log    *slog.Logger
	events chan ports.TransportEvent
	done   chan struct{}
	closed atomic.Bool
	sub    event.Subscription

	mu      sync.RWMutex
	stopped bool // under mu; no goroutine is tracked once set
	peers   map[mq.PeerID]*peerState
	only10  map[peer.ID]time.Time // peers that answered 1.0.0, until when
	in10    map[network.Stream]struct{}
	in10n   map[peer.ID]int

	wmu     sync.Mutex
	waiters map[waitKey][]chan mq.Frame // inbound 1.0.0 msgs waiting for the core's ack
	nwait   atomic.Int64

	ackHook atomic.Pointer[func(mq.PeerID, mq.Frame)]
	inline  atomic.Pointer[inlineHandler]
	queued  atomic.Int64 // events handed to Events so far (see Queued)

	amu   sync.Mutex
	addrs map[peer.ID][]ma.Multiaddr // see rememberAddrs

	wg sync.WaitGroup
}

// Bounds of the addresses MQTransport remembers (rememberAddrs).
const (
	maxRememberedPeers = 4096
	maxRememberedAddrs = 8
)

// rememberAddrs keeps addrs (the listen addresses a peer announced, or those
// we reached it at) for redialing it after it went away. libp2p's peerstore
// keeps a disconnected peer's addresses only as identify leaves them, and
// after a restart of a peer it can hold none at all: then a member could
// never dial its group's host again (seen in
// TestGroupSurvivesHostRestartOverLibp2p: "no addresses" from the first
// dial after the host went down, and at every retransmission after).
func (t *MQTransport) rememberAddrs(id peer.ID, addrs []ma.Multiaddr) {
	if len(addrs) == 0 {
		return
	}
	addrs = slices.Clone(addrs[:min(len(addrs), maxRememberedAddrs)])
	t.amu.Lock()
	defer t.amu.Unlock()
	if _, ok := t.addrs[id]; !ok && len(t.addrs) >= maxRememberedPeers {
		for k := range t.addrs { // any one makes room
			delete(t.addrs, k)
			break
		}
	}
	t.addrs[id] = addrs
}

// restoreAddrs gives the peerstore back the addresses remembered for id when
// it has none left, so that a dial can be tried.
func (t *MQTransport) restoreAddrs(id peer.ID) {
	if len(t.h.Peerstore().Addrs(id)) > 0 {
		return
	}
	t.amu.Lock()
	addrs := t.addrs[id]
	t.amu.Unlock()
	if len(addrs) > 0 {
		t.h.Peerstore().AddAddrs(id, addrs, peerstore.RecentlyConnectedAddrTTL)
	}
}

type waitKey struct {
	from mq.PeerID
	id   string
}

// NewMQTransport registers the bus stream handlers on h (1.0.0 always, 1.1.0
// unless opts.Only10) and starts watching connectivity. Close it to release
// its goroutines; the host stays open.
func NewMQTransport(h host.Host, opts MQOptions) *MQTransport {
	opts = opts.withDefaults()
	t := &MQTransport{
		h:       h,
		self:    mq.PeerID(h.ID().String()),
		opts:    opts,
		log:     opts.Logger,
		events:  make(chan ports.TransportEvent, opts.EventBuffer),
		done:    make(chan struct{}),
		peers:   map[mq.PeerID]*peerState{},
		only10:  map[peer.ID]time.Time{},
		in10:    map[network.Stream]struct{}{},
		in10n:   map[peer.ID]int{},
		waiters: map[waitKey][]chan mq.Frame{},
		addrs:   map[peer.ID][]ma.Multiaddr{},
	}
	sub, err := h.EventBus().Subscribe([]any{new(event.EvtPeerConnectednessChanged), new(event.EvtPeerIdentificationCompleted)},
		eventbus.BufSize(256))
	if err != nil {
		t.log.Error("p2p: mq: cannot watch connectivity; no peer events will be reported", "err", err)
	} else {
		t.sub = sub
		t.wg.Add(1)
		go t.watchConns()
	}
	// 1.1.0 first: each handler set is announced to connected peers on its
	// own (identify push), and a peer that learnt of 1.0.0 alone would pick
	// it for a stream opened meanwhile and take us for a 1.0.0-only node
	// for Recheck10.
	if !opts.Only10 {
		h.SetStreamHandler(ProtocolMQ11, t.handle11)
	}
	h.SetStreamHandler(ProtocolMQ10, t.handle10)
	return t
}

// Self implements ports.Transport.
func (t *MQTransport) Self() mq.PeerID { return t.self }

// SpeaksOurs reports whether peer p offers /goop/mq/1.1.0, our bus: a
// Goop2 peer speaks only 1.0.0, and knows none of our protocol extensions
// (such as a group's history for members). known is false when this node
// has not learned p's protocols yet (no connection has been identified).
func (t *MQTransport) SpeaksOurs(p mq.PeerID) (ours, known bool) {
	id, err := peer.Decode(string(p))
	if err != nil {
		return false, false
	}
	t.mu.Lock()
	until, marked := t.only10[id]
	t.mu.Unlock()
	if marked && time.Now().Before(until) {
		return false, true // it refused a 1.1.0 stream
	}
	protos, err := t.h.Peerstore().GetProtocols(id)
	if err != nil || len(protos) == 0 {
		return false, false
	}
	return slices.Contains(protos, ProtocolMQ11), true
}

// Events implements ports.Transport. The channel is closed by Close.
func (t *MQTransport) Events() <-chan ports.TransportEvent { return t.events }

// Send implements ports.Transport. It validates f and queues it for the
// peer's writer; it never blocks. The transport keeps f (and its Payload) until
// the frame is written: the caller must not modify the payload afterwards. An
// ack answering an inbound 1.0.0 msg goes straight to that msg's stream; an
// ack for a 1.0.0-only peer with no such stream is dropped (compat has no way
// to carry it). Returns ports.ErrBackpressure when the peer's queue is full and
// ports.ErrClosed after Close.
func (t *MQTransport) Send(to mq.PeerID, f mq.Frame) error {
	if t.closed.Load() {
		return ports.ErrClosed
	}
	if err := f.Validate(); err != nil {
		return fmt.Errorf("p2p: mq: send to %s: %w", to, err)
	}
	isAck := f.Type == mq.TypeAck
	if isAck && t.nwait.Load() > 0 && t.answer10(to, f) {
		return nil
	}
	p, err := t.peerFor(to)
	if err != nil {
		return err
	}
	it := outItem{f: f}
	if isAck {
		it.via = p.takeRoute(f.ID)
	}
	if p.q.push(it) {
		return nil
	}
	if p.stuck(t.opts.WriteTimeout) && !p.dropping.Load() && t.track() {
		go func() {
			defer t.wg.Done()
			t.dropSlow(p, "queue stayed full")
		}()
	}
	return ports.ErrBackpressure
}

// ClaimDirect implements ports.DirectSender: when nothing is queued for the
// peer and a 1.1.0 stream to it is open, it takes the peer's write lock and
// returns a function that writes f on the caller's goroutine (bounded by
// WriteTimeout) and releases the lock — saving the hand-over to the writer
// goroutine. The caller must call write exactly once, soon; frames sent for
// the peer meanwhile are queued behind f. ok is false when f must go through
// Send instead (nothing was taken).
func (t *MQTransport) ClaimDirect(to mq.PeerID, f mq.Frame) (write func(), ok bool) {
	if t.closed.Load() || f.Validate() != nil {
		return nil, false
	}
	t.mu.RLock()
	p := t.peers[to]
	t.mu.RUnlock()
	if p == nil {
		return nil, false
	}
	// An ack may answer an inbound 1.0.0 msg or be routed to the stream its
	// msg came in on: Send knows how.
	if f.Type == mq.TypeAck && (t.nwait.Load() > 0 || p.nroutes.Load() > 0) {
		return nil, false
	}
	st := p.claim()
	if st == nil {
		return nil, false
	}
	p.claimedSt, p.claimedF = st, f
	return p.writeClaimedFn, true
}

// SetAckHook implements ports.AckNotifier: hook is called with every ack
// read from a peer, on the network goroutine that read it, right after the
// ack is handed to Events. hook must not block. Set it before any traffic.
func (t *MQTransport) SetAckHook(hook func(from mq.PeerID, ack mq.Frame)) {
	t.ackHook.Store(&hook)
}

// SetInlineHandler implements ports.InlineReceiver: frames read from 1.1.0
// streams are offered to h on the stream's reader goroutine before they go
// to Events. Set it before any traffic.
func (t *MQTransport) SetInlineHandler(h func(from mq.PeerID, f mq.Frame) (taken, acked bool)) {
	t.inline.Store(&h)
}

// Queued implements ports.InlineReceiver.
func (t *MQTransport) Queued() int64 { return t.queued.Load() }

// Close implements ports.Transport: it removes the stream handlers, resets
// every bus stream, stops all goroutines (waiting for them) and closes Events.
// The host is left open. Safe to call more than once.
func (t *MQTransport) Close() error {
	t.mu.Lock()
	if t.stopped {
		t.mu.Unlock()
		return nil
	}
	t.stopped = true
	t.closed.Store(true)
	peers := make([]*peerState, 0, len(t.peers))
	for _, p := range t.peers {
		peers = append(peers, p)
	}
	in10 := make([]network.Stream, 0, len(t.in10))
	for s := range t.in10 {
		in10 = append(in10, s)
	}
	t.mu.Unlock()

	t.h.RemoveStreamHandler(ProtocolMQ10)
	if !t.opts.Only10 {
		t.h.RemoveStreamHandler(ProtocolMQ11)
	}
	close(t.done)
	for _, p := range peers {
		p.teardown()
	}
	for _, s := range in10 {
		_ = s.Reset()
	}
	if t.sub != nil {
		_ = t.sub.Close()
	}
	t.wg.Wait()
	close(t.events)
	return nil
}

// track registers a goroutine with the WaitGroup Close waits on; false once
// the transport is closing (the caller must then not start its work).
func (t *MQTransport) track() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return false
	}
	t.wg.Add(1)
	return true
}

// untilClosed, as emit's wait, waits for room until the transport closes.
const untilClosed time.Duration = -1

// emit hands ev to Events, waiting at most wait for room (0: not at all;
// untilClosed: until Close). It reports false if ev was not delivered.
// Queued counts ev meanwhile.
func (t *MQTransport) emit(ev ports.TransportEvent, wait time.Duration) bool {
	t.queued.Add(1)
	select {
	case t.events <- ev:
		return true
	default:
	}
	if wait != 0 {
		var expired <-chan time.Time
		if wait > 0 {
			tm := time.NewTimer(wait)
			defer tm.Stop()
			expired = tm.C
		}
		select {
		case t.events <- ev:
			return true
		case <-expired:
		case <-t.done:
		}
	}
	t.queued.Add(-1)
	return false
}

// deliver reports a received frame, unless the test hook drops it. It returns
// false when Events stayed full for the read deadline.
func (t *MQTransport) deliver(from mq.PeerID, f mq.Frame) bool {
	if t.dropped(from, f) {
		return true
	}
	return t.emitFrame(from, f)
}

// dropped reports whether the test hook DropInbound drops f.
func (t *MQTransport) dropped(from mq.PeerID, f mq.Frame) bool {
	return t.opts.DropInbound != nil && t.opts.DropInbound(from, f)
}

// emitFrame hands a received frame to Events (see deliver), then shows an
// ack to the ack hook.
func (t *MQTransport) emitFrame(from mq.PeerID, f mq.Frame) bool {
	ok := t.emit(ports.TransportEvent{Kind: ports.FrameReceived, From: from, Frame: f}, t.opts.ReadTimeout)
	// The hook comes after the event: the goroutine it wakes (a caller
	// waiting for this ack) is then the one the scheduler runs next.
	if f.Type == mq.TypeAck {
		if h := t.ackHook.Load(); h != nil {
			(*h)(from, f)
		}
	}
	return ok
}

// report hands an ack read from peer from to Events (logging when the
// channel stayed full).
func (t *MQTransport) report(from mq.PeerID, ack mq.Frame) {
	if !t.deliver(from, ack) && !t.closed.Load() {
		t.log.Debug("p2p: mq: events channel full; ack dropped", "peer", from)
	}
}

// watchConns turns the host's connectedness changes (first connection up,
// last connection down) into PeerConnected / PeerDisconnected events.
func (t *MQTransport) watchConns() {
	defer t.wg.Done()
	wait := func(ev ports.TransportEvent) bool { return t.emit(ev, untilClosed) }
	for _, id := range t.h.Network().Peers() {
		if !wait(ports.TransportEvent{Kind: ports.PeerConnected, From: mq.PeerID(id.String())}) {
			return
		}
	}
	for {
		select {
		case <-t.done:
			return
		case e, ok := <-t.sub.Out():
			if !ok {
				return
			}
			if idev, ok := e.(event.EvtPeerIdentificationCompleted); ok {
				t.rememberAddrs(idev.Peer, idev.ListenAddrs)
				if idev.Conn != nil && !idev.Conn.IsClosed() {
					t.reachable(idev.Peer)
				}
				continue
			}
			ev, ok := e.(event.EvtPeerConnectednessChanged)
			if !ok {
				continue
			}
			pid := mq.PeerID(ev.Peer.String())
			switch ev.Connectedness {
			case network.Connected:
				if !wait(ports.TransportEvent{Kind: ports.PeerConnected, From: pid}) {
					return
				}
			case network.NotConnected:
				if t.h.Network().Connectedness(ev.Peer) != network.Connected {
					t.mu.RLock()
					p := t.peers[pid]
					t.mu.RUnlock()
					// A peer being dialed is left to its writer: Connect
					// dials again if the connection was dropped, and a
					// dial that fails in the end tears the peer down
					// (openFailed).
					if p != nil && !p.dialing.Load() {
						p.teardown()
					}
				}
				if !wait(ports.TransportEvent{Kind: ports.PeerDisconnected, From: pid}) {
					return
				}
			}
		}
	}
}

// reachable ends the running dial of peer id's writer, if any (see
// peerState.dial).
func (t *MQTransport) reachable(id peer.ID) {
	t.mu.RLock()
	p := t.peers[mq.PeerID(id.String())]
	t.mu.RUnlock()
	if p != nil {
		p.reachable()
	}
}

// peerFor returns the state of destination to, creating it (and its writer).
func (t *MQTransport) peerFor(to mq.PeerID) (*peerState, error) {
	t.mu.RLock()
	p, stopped := t.peers[to], t.stopped
	t.mu.RUnlock()
	if stopped {
		return nil, ports.ErrClosed
	}
	if p != nil {
		return p, nil
	}
	if to == "" || len(to) > mq.MaxPeerIDBytes {
		return nil, fmt.Errorf("p2p: mq: bad peer id %q", to)
	}
	id, err := peer.Decode(string(to))
	if err != nil {
		return nil, fmt.Errorf("p2p: mq: bad peer id %q: %w", to, err)
	}
	if id == t.h.ID() {
		return nil, fmt.Errorf("p2p: mq: cannot send to self")
	}
	return t.peerState(id, to)
}

// peerState returns the state of peer id (string form pid), creating it.
func (t *MQTransport) peerState(id peer.ID, pid mq.PeerID) (*peerState, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return nil, ports.ErrClosed
	}
	if p := t.peers[pid]; p != nil {
		return p, nil
	}
	p := newPeerState(t, id, pid)
	if until, ok := t.only10[id]; ok {
		p.until10.Store(until.UnixNano())
	}
	// A peer the bus talks to (a group's host, its members, a direct
	// contact) keeps its connection when the connection manager trims down
	// to its low water mark (many peers discovered on a large network):
	// only peers that merely appeared are closed. The tag is the state's
	// own, so a teardown never lifts the protection of the state that
	// follows it.
	p.unprotect = Protect(t.h, id, "goop-mq/")
	t.peers[pid] = p
	t.wg.Add(1)
	go p.run()
	return p, nil
}

// mark10 remembers that peer id answered only 1.0.0.
func (t *MQTransport) mark10(p *peerState) {
	until := time.Now().Add(t.opts.Recheck10)
	p.until10.Store(until.UnixNano())
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.only10) >= maxOnly10Memory {
		now := time.Now()
		for id, u := range t.only10 {
			if now.After(u) || len(t.only10) >= maxOnly10Memory {
				delete(t.only10, id)
			}
		}
	}
	t.only10[p.id] = until
	t.log.Debug("p2p: mq: peer speaks only /goop/mq/1.0.0", "peer", p.pid)
}

// unmark10 forgets that peer p answered only 1.0.0: it opened a 1.1.0 stream
// to us (it was upgraded, or its bus came up after our first contact).
func (t *MQTransport) unmark10(p *peerState) {
	if p.until10.Swap(0) == 0 {
		return
	}
	t.mu.Lock()
	delete(t.only10, p.id)
	t.mu.Unlock()
	t.log.Debug("p2p: mq: peer speaks /goop/mq/1.1.0 again", "peer", p.pid)
}

// handle11 serves an inbound 1.1.0 stream: it joins the peer's streams (the
// writer may use it too) and is read here until it ends. A peer taken for
// 1.0.0-only is one no more.
func (t *MQTransport) handle11(s network.Stream) {
	if !t.track() {
		_ = s.Reset()
		return
	}
	defer t.wg.Done()
	id := s.Conn().RemotePeer()
	p, err := t.peerState(id, mq.PeerID(id.String()))
	if err != nil {
		_ = s.Reset()
		return
	}
	st := p.addStream(s)
	if st == nil {
		t.log.Debug("p2p: mq: too many 1.1.0 streams; resetting", "peer", p.pid)
		_ = s.Reset()
		return
	}
	t.unmark10(p)
	t.readLoop(p, st)
}

// readLoop reads frames from a 1.1.0 stream until it ends or breaks the
// protocol; the stream is then dropped (reset).
func (t *MQTransport) readLoop(p *peerState, st *stream11) {
	defer p.dropStream(st)
	lr := newLineReader(st.s, mq.MaxLineBytes, readBufInit).
		withDeadlines(st.s, t.opts.IdleTimeout, t.opts.ReadTimeout)
	for {
		line, err := lr.next()
		if err != nil {
			if !errors.Is(err, io.EOF) && !t.closed.Load() && !st.dead.Load() {
				t.log.Debug("p2p: mq: 1.1.0 stream ended", "peer", p.pid, "err", err)
			}
			return
		}
		f, err := mq.DecodeFrame(line)
		if err != nil {
			t.log.Debug("p2p: mq: bad frame on 1.1.0 stream; resetting", "peer", p.pid, "err", err)
			return
		}
		if f.Type == mq.TypeMsg {
			p.noteRoute(f.ID, st)
		}
		early := t.answersReceived(&f)
		if t.dropped(p.pid, f) {
			if early {
				p.pushReceived(st, &f)
			}
			continue
		}
		// The node steps the frame here when it has nothing else to do;
		// its final ack, written from here, then makes the early one
		// needless.
		if h := t.inline.Load(); h != nil {
			if taken, acked := (*h)(p.pid, f); taken {
				if early && !acked {
					p.pushReceived(st, &f)
				}
				continue
			}
		}
		if early {
			// Ours: tell the sender at once that the msg arrived (a transport
			// ack, SPEC §2) when it asks (a caller waits for it); the node's
			// final ack follows once the message is durably delivered.
			// Queued before the node is told of the msg, so that the writer
			// sends it while nothing else competes. If the node cannot take
			// the msg the stream is reset and the sender retransmits: the
			// received ack is early news only. Best effort: if the queue is
			// full the final ack still comes.
			p.pushReceived(st, &f)
		}
		if !t.emitFrame(p.pid, f) {
			if !t.closed.Load() {
				t.log.Debug("p2p: mq: events channel full; resetting 1.1.0 stream", "peer", p.pid)
			}
			return
		}
	}
}

// answersReceived reports whether msg f gets the early received ack.
func (t *MQTransport) answersReceived(f *mq.Frame) bool {
	return f.AsksReceived() && !t.opts.NoReceivedAcks
}

// handle10 serves an inbound 1.0.0 stream: one msg line in, then the core's
// ack (Send with the same id) out on this stream, then close.
func (t *MQTransport) handle10(s network.Stream) {
	if !t.track() {
		_ = s.Reset()
		return
	}
	defer t.wg.Done()
	id := s.Conn().RemotePeer()
	from := mq.PeerID(id.String())
	if !t.addIn10(s, id) {
		t.log.Debug("p2p: mq: too many 1.0.0 streams; resetting", "peer", from)
		_ = s.Reset()
		return
	}
	defer t.removeIn10(s, id)
	_ = s.SetReadDeadline(time.Now().Add(t.opts.ReadTimeout))
	line, err := newLineReader(s, mq.MaxLineBytes, 4096).next()
	if err != nil {
		t.log.Debug("p2p: mq: 1.0.0 stream: no msg line", "peer", from, "err", err)
		_ = s.Reset()
		return
	}
	f, err := mq.DecodeFrame(line)
	if err == nil && f.Type != mq.TypeMsg {
		err = fmt.Errorf("%w: a 1.0.0 stream must open with a msg, got %q", mq.ErrBadFrame, f.Type)
	}
	if err != nil {
		t.log.Debug("p2p: mq: bad frame on 1.0.0 stream; resetting", "peer", from, "err", err)
		_ = s.Reset()
		return
	}
	if t.opts.DropInbound != nil && t.opts.DropInbound(from, f) {
		_ = s.Reset()
		return
	}
	// This stream waits for the ack of its one msg: it is never batched.
	f.AckMode = ""
	if t.answersReceived(&f) {
		// Ours, asked by a Goop sender (Goop2 never asks): the transport
		// ack at once — before the node is even told, so that it leaves
		// first — and the node's final ack on the same stream once the
		// message is stored. (If the node cannot take it, the stream is
		// reset and the sender retransmits: a received ack is early news
		// only.)
		early := mq.ReceivedAckFor(&f)
		_ = s.SetWriteDeadline(time.Now().Add(t.opts.ReadTimeout))
		if _, err := s.Write(mq.AppendFrame(nil, &early)); err != nil {
			t.log.Debug("p2p: mq: 1.0.0 stream: writing received ack failed", "peer", from, "err", err)
			_ = s.Reset()
			return
		}
	}
	key := waitKey{from: from, id: f.ID}
	ch := t.addWaiter(key)
	if !t.emit(ports.TransportEvent{Kind: ports.FrameReceived, From: from, Frame: f}, t.opts.ReadTimeout) {
		t.removeWaiter(key, ch)
		t.log.Debug("p2p: mq: events channel full; resetting 1.0.0 stream", "peer", from)
		_ = s.Reset()
		return
	}
	tm := time.NewTimer(t.opts.ReadTimeout)
	defer tm.Stop()
	select {
	case ack := <-ch:
		_ = s.SetWriteDeadline(time.Now().Add(t.opts.ReadTimeout))
		if _, err := s.Write(mq.AppendFrame(nil, &ack)); err != nil {
			t.log.Debug("p2p: mq: 1.0.0 stream: writing ack failed", "peer", from, "err", err)
			_ = s.Reset()
			return
		}
		_ = s.Close()
	case <-tm.C:
		t.removeWaiter(key, ch)
		t.log.Debug("p2p: mq: 1.0.0 stream: no ack from the bus in time", "peer", from, "id", f.ID)
		_ = s.Reset()
	case <-t.done:
		t.removeWaiter(key, ch)
		_ = s.Reset()
	}
}

func (t *MQTransport) addIn10(s network.Stream, id peer.ID) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped || t.in10n[id] >= maxInbound10PerPeer {
		return false
	}
	t.in10[s] = struct{}{}
	t.in10n[id]++
	return true
}

func (t *MQTransport) removeIn10(s network.Stream, id peer.ID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.in10, s)
	if t.in10n[id]--; t.in10n[id] <= 0 {
		delete(t.in10n, id)
	}
}

func (t *MQTransport) addWaiter(k waitKey) chan mq.Frame {
	ch := make(chan mq.Frame, 1)
	t.wmu.Lock()
	t.waiters[k] = append(t.waiters[k], ch)
	t.wmu.Unlock()
	t.nwait.Add(1)
	return ch
}

func (t *MQTransport) removeWaiter(k waitKey, ch chan mq.Frame) {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	chs := t.waiters[k]
	for i, c := range chs {
		if c == ch {
			chs = append(chs[:i], chs[i+1:]...)
			t.nwait.Add(-1)
			break
		}
	}
	if len(chs) == 0 {
		delete(t.waiters, k)
	} else {
		t.waiters[k] = chs
	}
}

// answer10 hands an ack to every inbound 1.0.0 stream waiting for it (a
// compat sender that retried may have two). It reports whether there was one.
func (t *MQTransport) answer10(to mq.PeerID, ack mq.Frame) bool {
	k := waitKey{from: to, id: ack.ID}
	t.wmu.Lock()
	chs := t.waiters[k]
	delete(t.waiters, k)
	t.nwait.Add(-int64(len(chs)))
	t.wmu.Unlock()
	for _, ch := range chs {
		select {
		case ch <- ack:
		default:
		}
	}
	return len(chs) > 0
}

// dropSlow disconnects a peer that does not read, resetting its streams.
// Only the first call for a peer state acts.
func (t *MQTransport) dropSlow(p *peerState, reason string) {
	if !p.dropping.CompareAndSwap(false, true) {
		return
	}
	t.log.Warn("p2p: mq: disconnecting a peer that does not read", "peer", p.pid, "reason", reason)
	p.teardown()
	_ = t.h.Network().ClosePeer(p.id)
}

func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
