package p2p

import (
	"bufio"
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/goop-p2p/goop/domain/mq"
)

// outItem is one queued frame; via, for an ack, is the 1.1.0 stream its msg
// came in on (used if still open).
type outItem struct {
	f   mq.Frame
	via *stream11
}

// stream11 is one 1.1.0 stream with a peer, inbound or outbound. Its reader
// is a readLoop goroutine; its writer is the peer's writer goroutine, which
// alone touches bw and dirty.
type stream11 struct {
	s     network.Stream
	dead  atomic.Bool
	bw    *bufio.Writer
	dirty bool
}

// kill resets the stream once.
func (st *stream11) kill() {
	if st.dead.CompareAndSwap(false, true) {
		_ = st.s.Reset()
	}
}

// peerState is what the transport holds for one remote peer: its outbound
// queue and writer goroutine, its live 1.1.0 streams and ack routes.
type peerState struct {
	t      *MQTransport
	id     peer.ID
	pid    mq.PeerID
	q      frameQueue
	done   chan struct{} // closed by teardown
	ctx    context.Context
	cancel context.CancelFunc
	once   sync.Once
	// unprotect ends the connection manager's protection of the peer,
	// which lasts from the state's creation until its teardown (Protect).
	unprotect func()

	deq      atomic.Uint64 // frames taken from q so far (progress of the writer)
	until10  atomic.Int64  // unix nanos until which the peer is served with 1.0.0 (0: not)
	nstreams atomic.Int32
	nroutes  atomic.Int32
	dropping atomic.Bool
	fin10    atomic.Int32 // finish10 goroutines running
	// dialing is set while the writer connects to the peer (see open): a
	// connection lost meanwhile does not tear the peer down.
	dialing atomic.Bool
	// dialCancel ends the writer's running dial (see dial and reachable).
	dialCancel atomic.Pointer[context.CancelFunc]

	// wmu is the write lock: whoever holds it writes to the peer's streams
	// through w — the writer goroutine while it drains q, or a caller of
	// MQTransport.ClaimDirect writing one frame on its own goroutine.
	wmu sync.Mutex
	w   *peerWriter
	// claimedSt and claimedF, under wmu from ClaimDirect to the write it
	// returns (writeClaimedFn: writeClaimed, bound once), are the stream
	// and frame claimed.
	claimedSt      *stream11
	claimedF       mq.Frame
	writeClaimedFn func()

	mu      sync.Mutex
	torn    bool
	streams []*stream11 // live 1.1.0 streams, oldest first; the writer prefers the oldest
	routes  map[string]*stream11
	out10   network.Stream // outbound 1.0.0 stream in use by the writer
	fullAt  time.Time      // when Send found q full (0: not full), with deq at that time
	fullDeq uint64
}

func newPeerState(t *MQTransport, id peer.ID, pid mq.PeerID) *peerState {
	ctx, cancel := context.WithCancel(context.Background())
	p := &peerState{
		t:      t,
		id:     id,
		pid:    pid,
		q:      frameQueue{max: t.opts.QueueLen, signal: make(chan struct{}, 1)},
		done:   make(chan struct{}),
		ctx:    ctx,
		cancel: cancel,
		routes: map[string]*stream11{},
	}
	p.w = &peerWriter{p: p}
	p.writeClaimedFn = p.writeClaimed
	return p
}

// teardown forgets the peer: it stops the writer (queued frames are dropped;
// the bus retransmits) and resets every stream. Idempotent.
func (p *peerState) teardown() {
	p.once.Do(func() {
		t := p.t
		t.mu.Lock()
		if t.peers[p.pid] == p {
			delete(t.peers, p.pid)
		}
		t.mu.Unlock()
		close(p.done)
		p.cancel()
		if p.unprotect != nil {
			p.unprotect()
		}
		p.mu.Lock()
		p.torn = true
		streams, out10 := p.streams, p.out10
		p.streams, p.routes, p.out10 = nil, nil, nil
		p.nstreams.Store(0)
		p.nroutes.Store(0)
		p.mu.Unlock()
		for _, st := range streams {
			st.kill()
		}
		if out10 != nil {
			_ = out10.Reset()
		}
	})
}

func (p *peerState) isTorn() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// addStream registers a new 1.1.0 stream; nil if the peer is gone or has too many.
func (p *peerState) addStream(s network.Stream) *stream11 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.torn || len(p.streams) >= maxStreams11PerPeer {
		return nil
	}
	st := &stream11{s: s}
	p.streams = append(p.streams, st)
	p.nstreams.Store(int32(len(p.streams)))
	return st
}

// dropStream unregisters and resets st.
func (p *peerState) dropStream(st *stream11) {
	p.mu.Lock()
	if i := slices.Index(p.streams, st); i >= 0 {
		p.streams = slices.Delete(p.streams, i, i+1)
		p.nstreams.Store(int32(len(p.streams)))
	}
	if p.nroutes.Load() > 0 {
		for id, r := range p.routes {
			if r == st {
				delete(p.routes, id)
			}
		}
		p.nroutes.Store(int32(len(p.routes)))
	}
	p.mu.Unlock()
	st.kill()
}

// pushReceived queues the early received ack of msg f, which came in on st
// (best effort: with the queue full, the final ack still comes).
func (p *peerState) pushReceived(st *stream11, f *mq.Frame) {
	p.q.push(outItem{f: mq.ReceivedAckFor(f), via: st})
}

// firstLive returns the oldest live 1.1.0 stream, or nil.
func (p *peerState) firstLive() *stream11 {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, st := range p.streams {
		if !st.dead.Load() {
			return st
		}
	}
	return nil
}

// noteRoute remembers that msg id came in on st, when st is not the stream
// the writer would pick anyway (only with several streams to the peer).
func (p *peerState) noteRoute(id string, st *stream11) {
	if p.nstreams.Load() <= 1 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.streams) > 1 && p.streams[0] != st && len(p.routes) < maxRoutesPerPeer {
		p.routes[id] = st
		p.nroutes.Store(int32(len(p.routes)))
	}
}

// takeRoute returns (and forgets) the stream msg id came in on, if noted.
func (p *peerState) takeRoute(id string) *stream11 {
	if p.nroutes.Load() == 0 {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.routes[id]
	delete(p.routes, id)
	p.nroutes.Store(int32(len(p.routes)))
	return st
}

// stuck is called by Send when q is full. It reports whether q has been full
// for longer than limit without the writer taking anything from it.
func (p *peerState) stuck(limit time.Duration) bool {
	now := time.Now()
	deq := p.deq.Load()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fullAt.IsZero() || p.fullDeq != deq {
		p.fullAt, p.fullDeq = now, deq
		return false
	}
	return now.Sub(p.fullAt) > limit
}

// is10 reports whether the peer is currently served with 1.0.0.
func (p *peerState) is10() bool {
	if p.t.opts.Only10 {
		return true
	}
	u := p.until10.Load()
	if u == 0 {
		return false
	}
	if time.Now().UnixNano() < u {
		return true
	}
	p.until10.Store(0) // re-check: offer 1.1.0 again
	return false
}

// setOut10 records the writer's current 1.0.0 stream so teardown can reset it.
func (p *peerState) setOut10(s network.Stream) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.torn {
		return false
	}
	p.out10 = s
	return true
}

// lacks11 reports whether identify told us the peer's protocols and
// /goop/mq/1.1.0 is not among them.
func (p *peerState) lacks11() bool {
	protos, err := p.t.h.Peerstore().GetProtocols(p.id)
	return err == nil && len(protos) > 0 && !slices.Contains(protos, ProtocolMQ11)
}

// open opens a stream to the peer offering protos in order, within
// OpenTimeout. When not connected it dials first through Connect, which dials
// again when the peer drops the connection right after accepting it (a host
// flooded with handshakes, such as a group's host that restarted and is
// being re-joined by all its members at once): the queued frames then go out
// on the connection that stayed instead of being dropped with the peer.
func (p *peerState) open(protos ...protocol.ID) (network.Stream, error) {
	ctx, cancel := context.WithTimeout(p.ctx, p.t.opts.OpenTimeout)
	defer cancel()
	h := p.t.h
	if h.Network().Connectedness(p.id) != network.Connected {
		p.t.restoreAddrs(p.id)
		p.dialing.Store(true)
		err := p.dial(ctx)
		p.dialing.Store(false)
		if err != nil && h.Network().Connectedness(p.id) != network.Connected {
			return nil, err
		}
	}
	return h.NewStream(ctx, p.id, protos...)
}

// dial connects to the peer through Connect, and stops waiting as soon as
// the peer is reachable some other way (see reachable): a peer that
// restarted on new addresses is found so while our dial of its old ones
// waits out its timeouts (a QUIC port that nobody serves never refuses;
// libp2p gives up on a local address after 5 s), and libp2p does not end a
// dial when the peer connects meanwhile. The transport's watchConns, which
// sees the connection events, calls reachable.
func (p *peerState) dial(ctx context.Context) error {
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p.dialCancel.Store(&cancel)
	defer p.dialCancel.Store(nil)
	// A connection identified before dialCancel was set: Connect returns
	// at once, as host.Connect does for a connected peer.
	return Connect(dctx, p.t.h, peer.AddrInfo{ID: p.id})
}

// reachable ends a running dial of the peer (see dial): a connection to it
// completed identify — the peer dialed us, or another dial of ours
// (discovery's, with its new addresses) got through. A connection the peer
// drops right after accepting it completes no identify: those stay
// Connect's to judge (it dials again).
func (p *peerState) reachable() {
	if cancel := p.dialCancel.Load(); cancel != nil {
		(*cancel)()
	}
}

// openFailed handles a failed stream open: a peer we are not connected to is
// forgotten (its queue dropped; the bus retransmits on PeerConnected).
func (p *peerState) openFailed(err error) {
	t := p.t
	if !t.closed.Load() && !p.isTorn() {
		t.log.Debug("p2p: mq: cannot open stream", "peer", p.pid, "err", err)
	}
	if t.h.Network().Connectedness(p.id) != network.Connected {
		p.teardown()
	}
}

// run is the peer's writer goroutine: it drains q in order, batching writes
// into the streams' buffers and flushing when q is momentarily empty.
func (p *peerState) run() {
	defer p.t.wg.Done()
	defer p.teardown()
	var batch []outItem
	for !p.isTorn() {
		more, ok := p.drain(&batch)
		if !ok {
			return
		}
		if more {
			continue
		}
		select {
		case <-p.q.signal:
		case <-p.done:
			return
		}
	}
}

// drain takes the write lock and writes one batch from q, or flushes when q
// is empty. more reports that q had frames; !ok that the writer must stop.
// Taking a batch and writing it happen under one hold of the lock, so a
// frame written directly (ClaimDirect, only when q is empty) never overtakes
// a frame queued before it.
func (p *peerState) drain(batch *[]outItem) (more, ok bool) {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	*batch = p.q.pop((*batch)[:0], writerBatch)
	if len(*batch) == 0 {
		return false, p.w.flush()
	}
	for i := range *batch {
		p.deq.Add(1)
		if !p.w.handle((*batch)[i]) {
			clear(*batch) // do not retain the payloads
			return true, false
		}
		(*batch)[i] = outItem{} // do not retain the payload
	}
	return true, true
}

// claim takes the write lock for a direct write of one frame when that
// cannot reorder or delay anything: q is empty, the peer speaks 1.1.0 and the
// writer has a live stream to it. It returns that stream, or nil (lock not
// held) when the frame must be queued.
func (p *peerState) claim() *stream11 {
	if p.isTorn() || p.is10() || !p.wmu.TryLock() {
		return nil
	}
	if p.q.len() == 0 && !p.isTorn() {
		if st := p.w.stream(); st != nil {
			return st
		}
	}
	p.wmu.Unlock()
	return nil
}

// writeClaimed writes the frame claimed (claimedF, to claimedSt) and
// flushes, forgets it, then releases the write lock taken by claim. A
// failed write is handled as the writer would (the stream is dropped, or a
// peer that does not read is disconnected); the bus retransmits.
func (p *peerState) writeClaimed() {
	defer p.wmu.Unlock()
	ok := p.w.write(p.claimedSt, &p.claimedF)
	p.claimedSt, p.claimedF = nil, mq.Frame{}
	if ok {
		p.w.flush()
	}
}

// maxFinish10 bounds the 1.0.0 streams per peer whose final ack is awaited
// in the background (see send10): well under the 128 inbound streams a
// peer accepts from us (ours: maxInbound10PerPeer; libp2p's resource
// manager has a similar default), even while the peer's store stalls.
const maxFinish10 = 16

// writerBatch is how many frames the writer takes from its queue at once.
const writerBatch = 64

// frameQueue is a bounded FIFO of frames whose memory grows with its content
// (a channel of QueueLen frames would cost ~0.5 MB per peer up front).
// signal receives a token when the queue goes from empty to non-empty.
type frameQueue struct {
	mu     sync.Mutex
	ring   []outItem
	head   int
	n      int
	max    int
	signal chan struct{}
}

// push appends it; false if the queue holds max frames already.
func (q *frameQueue) push(it outItem) bool {
	q.mu.Lock()
	if q.n >= q.max {
		q.mu.Unlock()
		return false
	}
	if q.n == len(q.ring) {
		size := max(16, 2*len(q.ring))
		size = min(size, q.max)
		ring := make([]outItem, size)
		k := copy(ring, q.ring[q.head:])
		copy(ring[k:], q.ring[:q.head])
		q.ring, q.head = ring, 0
	}
	q.ring[(q.head+q.n)%len(q.ring)] = it
	q.n++
	wasEmpty := q.n == 1
	q.mu.Unlock()
	if wasEmpty {
		select {
		case q.signal <- struct{}{}:
		default:
		}
	}
	return true
}

// len returns how many frames are queued.
func (q *frameQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n
}

// pop moves up to limit frames, oldest first, to dst.
func (q *frameQueue) pop(dst []outItem, limit int) []outItem {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.n > 0 && len(dst) < limit {
		dst = append(dst, q.ring[q.head])
		q.ring[q.head] = outItem{}
		q.head = (q.head + 1) % len(q.ring)
		q.n--
	}
	if q.n == 0 {
		q.head = 0
		if len(q.ring) > 1024 {
			q.ring = nil // give back the memory of a burst
		}
	}
	return dst
}

// peerWriter is the writing state of a peer: used only under peerState.wmu.
type peerWriter struct {
	p       *peerState
	cur     *stream11   // 1.1.0 stream new frames go to
	dirty   []*stream11 // streams with unflushed data
	scratch []byte
}

// handle sends one queued frame. It returns false when the writer must stop.
func (w *peerWriter) handle(it outItem) bool {
	p := w.p
	if p.is10() {
		if !w.flush() {
			return false
		}
		if it.f.Type == mq.TypeAck {
			p.t.log.Debug("p2p: mq: dropping ack for a 1.0.0 peer: its msg stream is gone", "peer", p.pid, "id", it.f.ID)
			return true
		}
		return w.send10(nil, &it.f)
	}
	st := it.via
	if st == nil || st.dead.Load() {
		st = w.stream()
	}
	if st == nil {
		// An ack is only worth a new stream if the peer speaks 1.1.0.
		protos := []protocol.ID{ProtocolMQ11, ProtocolMQ10}
		if it.f.Type == mq.TypeAck {
			if p.lacks11() {
				p.t.mark10(p)
				p.t.log.Debug("p2p: mq: dropping ack for a 1.0.0 peer: its msg stream is gone", "peer", p.pid, "id", it.f.ID)
				return true
			}
			protos = protos[:1]
		}
		s, err := p.open(protos...)
		if err != nil {
			p.openFailed(err)
			return !p.isTorn()
		}
		if s.Protocol() != ProtocolMQ11 {
			p.t.mark10(p)
			return w.send10(s, &it.f)
		}
		if st = w.adopt(s); st == nil {
			return !p.isTorn()
		}
	}
	return w.write(st, &it.f)
}

// stream returns the 1.1.0 stream to write new frames to, or nil.
func (w *peerWriter) stream() *stream11 {
	if w.cur == nil || w.cur.dead.Load() {
		w.cur = w.p.firstLive()
	}
	return w.cur
}

// adopt registers an outbound 1.1.0 stream and starts its reader.
func (w *peerWriter) adopt(s network.Stream) *stream11 {
	p, t := w.p, w.p.t
	st := p.addStream(s)
	if st == nil {
		_ = s.Reset()
		return nil
	}
	if !t.track() {
		p.dropStream(st)
		return nil
	}
	go func() {
		defer t.wg.Done()
		t.readLoop(p, st)
	}()
	w.cur = st
	return st
}

// write appends f to st's buffer.
func (w *peerWriter) write(st *stream11, f *mq.Frame) bool {
	if st.bw == nil {
		st.bw = bufio.NewWriterSize(&deadlineWriter{s: st.s, timeout: w.p.t.opts.WriteTimeout}, writeBufSize)
	}
	if !st.dirty {
		st.dirty = true
		w.dirty = append(w.dirty, st)
	}
	buf := mq.AppendFrame(st.bw.AvailableBuffer(), f)
	if _, err := st.bw.Write(buf); err != nil {
		return w.writeFailed(st, err)
	}
	return true
}

// flush writes out every stream's buffered frames.
func (w *peerWriter) flush() bool {
	ok := true
	for _, st := range w.dirty {
		st.dirty = false
		if !ok || st.dead.Load() {
			continue
		}
		if err := st.bw.Flush(); err != nil {
			ok = w.writeFailed(st, err)
		}
	}
	clear(w.dirty)
	w.dirty = w.dirty[:0]
	return ok
}

// writeFailed handles a write error on st: a write that timed out means the
// peer does not read, and it is disconnected; any other error drops the stream
// (the frames in it are lost; the bus retransmits).
func (w *peerWriter) writeFailed(st *stream11, err error) bool {
	p := w.p
	if isTimeout(err) {
		p.t.dropSlow(p, "write blocked past the write timeout")
		return false
	}
	if !p.t.closed.Load() && !st.dead.Load() {
		p.t.log.Debug("p2p: mq: write on 1.1.0 stream failed", "peer", p.pid, "err", err)
	}
	p.dropStream(st)
	return !p.isTorn()
}

// send10 sends msg f the compat way: on s (or a new 1.0.0 stream), wait for
// its ack up to AckTimeout, close; the ack is reported as FrameReceived. A
// missing ack reports nothing: the bus retransmits.
func (w *peerWriter) send10(s network.Stream, f *mq.Frame) bool {
	p, t := w.p, w.p.t
	if s == nil {
		var err error
		if s, err = p.open(ProtocolMQ10); err != nil {
			p.openFailed(err)
			return !p.isTorn()
		}
	}
	if !p.setOut10(s) {
		_ = s.Reset()
		return false
	}
	defer p.setOut10(nil)
	if f.AckMode != "" {
		// A 1.0.0 stream waits for the ack of its one msg: never batched.
		g := *f
		g.AckMode = ""
		f = &g
	}
	w.scratch = mq.AppendFrame(w.scratch[:0], f)
	if cap(w.scratch) > 64<<10 {
		defer func() { w.scratch = nil }()
	}
	_ = s.SetWriteDeadline(time.Now().Add(t.opts.WriteTimeout))
	if _, err := s.Write(w.scratch); err != nil {
		_ = s.Reset()
		if isTimeout(err) {
			t.dropSlow(p, "write blocked past the write timeout")
			return false
		}
		if !p.isTorn() {
			t.log.Debug("p2p: mq: 1.0.0 write failed", "peer", p.pid, "err", err)
		}
		return !p.isTorn()
	}
	p.deq.Add(1) // progress: the peer read the msg
	// One ack line (Goop2's only kind), or — when f asked for it and the
	// peer is a Goop node — a received ack first, then the final one.
	lr := newLineReader(s, mq.MaxLineBytes, 512)
	ack, ok := p.readAck10(s, lr, f.ID, f.Want == mq.StageReceived)
	if !ok {
		return !p.isTorn()
	}
	if ack.Stage == "" {
		_ = s.Close()
		t.report(p.pid, ack)
		return !p.isTorn()
	}
	t.report(p.pid, ack)
	// The peer has the msg: its final ack is read on another goroutine so
	// that the next msg need not wait for this one to be stored — up to
	// maxFinish10 at once (each holds a stream the peer counts against its
	// limits); past that the writer waits here.
	id := f.ID
	if p.fin10.Add(1) <= maxFinish10 && t.track() {
		go func() {
			defer t.wg.Done()
			defer p.fin10.Add(-1)
			stop := context.AfterFunc(p.ctx, func() { _ = s.Reset() }) // teardown
			defer stop()
			p.finish10(s, lr, id)
		}()
		return !p.isTorn()
	}
	p.fin10.Add(-1)
	p.finish10(s, lr, id)
	return !p.isTorn()
}

// readAck10 reads the ack of msg id on 1.0.0 stream s; received allows an
// early received ack (the msg asked for it). On failure it resets s and
// reports false.
func (p *peerState) readAck10(s network.Stream, lr *lineReader, id string, received bool) (mq.Frame, bool) {
	t := p.t
	_ = s.SetReadDeadline(time.Now().Add(t.opts.AckTimeout))
	line, err := lr.next()
	if err != nil {
		_ = s.Reset()
		if !p.isTorn() {
			t.log.Debug("p2p: mq: 1.0.0 msg not acknowledged", "peer", p.pid, "id", id, "err", err)
		}
		return mq.Frame{}, false
	}
	ack, err := mq.DecodeFrame(line)
	switch {
	case err != nil:
	case ack.Type != mq.TypeAck || ack.ID != id:
		err = errors.New("reply is not the ack of the msg sent")
	case ack.Stage == mq.StageReceived && !received:
		err = errors.New("received ack not asked for")
	}
	if err != nil {
		_ = s.Reset()
		t.log.Debug("p2p: mq: bad ack on 1.0.0 stream", "peer", p.pid, "err", err)
		return mq.Frame{}, false
	}
	return ack, true
}

// finish10 reads the final ack of msg id on 1.0.0 stream s, whose received
// ack came already, closes s and reports the ack.
func (p *peerState) finish10(s network.Stream, lr *lineReader, id string) {
	if ack, ok := p.readAck10(s, lr, id, false); ok {
		_ = s.Close()
		p.t.report(p.pid, ack)
	}
}
