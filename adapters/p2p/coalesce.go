package p2p

import (
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
)

// coalescingMuxer is the yamux multiplexer (libp2p's, for TCP connections)
// with each session writing through a coalescingConn.
type coalescingMuxer struct {
	inner network.Multiplexer
}

func (m coalescingMuxer) NewConn(nc net.Conn, isServer bool, scope network.PeerScope) (network.MuxedConn, error) {
	return m.inner.NewConn(newCoalescingConn(nc), isServer, scope)
}

// coalesceMax bounds the bytes a coalescingConn holds while a write is under
// way: a writer that would go beyond it waits until that write ends (the
// session's write deadline bounds the wait). A frame larger than this is
// held on its own.
const coalesceMax = 128 << 10

// coalesceCounts counts, over all coalescingConns, the frames written and
// the writes to the connections under them (benchmarks report their ratio).
type coalesceCounts struct{ frames, writes atomic.Int64 }

// coalesceStats is nil but in benchmarks and tests that count (off the
// frames' path otherwise: one shared counter written by every connection
// on every core would cost more than its load).
var coalesceStats atomic.Pointer[coalesceCounts]

// spareMax bounds the buffer an idle coalescingConn keeps for its next
// write: a stream's opening takes a few hundred bytes; the buffer of a
// larger write (frames of a transfer that came during one) is let go.
const spareMax = 16 << 10

// closeFlushWait bounds how long Close waits for held frames to be written.
const closeFlushWait = 250 * time.Millisecond

// youngFrames is how many frames after its open a stream's frames are
// gathered with those that follow them (see coalescingConn).
const youngFrames = 4

// coalescingConn writes a yamux session's frames to the connection under it,
// gathering the frames of a stream's first exchange into one write.
//
// go-yamux writes each frame on its own (its write coalescing is disabled
// upstream): with TLS over TCP, one record and one syscall per frame. A
// stream's opening costs several back-to-back frames from both sides: the
// opener's SYN and first data, the acceptor's ACK, the two replies of
// libp2p's protocol negotiation and its handler's answer, then both sides'
// FIN. A /goop/mq/1.0.0 message, one stream each, cost 8 writes, the largest
// share of its round trip's CPU on loopback.
//
// So a frame that opens a stream (SYN or ACK flag), and the next youngFrames
// frames of that stream, are not written by the session's send loop: it
// hands them to a drain goroutine. Go runs the goroutine just started right
// after its starter blocks (the send loop waiting for its next frame) unless
// an idle core takes it first, so the frames the send loop takes meanwhile
// join the same write, and no timer delays a lone frame. All other frames
// are written at once by the caller, as without this conn, unless a drain is
// under way: then they join it, in order.
type coalescingConn struct {
	net.Conn

	mu    sync.Mutex
	room  sync.Cond // broadcast when held is taken for writing, on error and on close
	held  []byte    // frames waiting for the write under way
	spare []byte    // the buffer of the previous write, reused (up to spareMax)
	busy  bool      // a write (or drain) is under way; new frames join held
	idle  chan struct{}
	err   error // the first write error, or net.ErrClosed after Close
	young [8]youngStream
	next  int // young's slot to overwrite next
}

// youngStream is a recently opened stream and how many more of its frames
// are gathered.
type youngStream struct {
	id   uint32
	left uint8
}

func newCoalescingConn(c net.Conn) *coalescingConn {
	cc := &coalescingConn{Conn: c}
	cc.room.L = &cc.mu
	return cc
}

// yamux frame header (12 bytes): version, type, flags, stream id, length.
const (
	yamuxHeaderSize = 12
	yamuxTypeWindow = 1 // data (0) and window updates (1) carry a stream's flags
	yamuxFlagSYN    = 1
	yamuxFlagACK    = 2
	yamuxFlagFIN    = 4
	yamuxFlagRST    = 8
)

// gather reports whether frame p (one yamux frame, as the session writes
// them) belongs to a stream's first exchange, and keeps track of those
// streams. Anything that does not parse as a frame is written at once.
func (c *coalescingConn) gather(p []byte) bool {
	if len(p) < yamuxHeaderSize || p[0] != 0 || p[1] > yamuxTypeWindow {
		return false
	}
	flags := binary.BigEndian.Uint16(p[2:4])
	id := binary.BigEndian.Uint32(p[4:8])
	if flags&(yamuxFlagSYN|yamuxFlagACK) != 0 {
		c.young[c.next] = youngStream{id: id, left: youngFrames}
		c.next = (c.next + 1) % len(c.young)
		return true
	}
	for i := range c.young {
		y := &c.young[i]
		if y.id != id || y.left == 0 {
			continue
		}
		y.left--
		if flags&(yamuxFlagFIN|yamuxFlagRST) != 0 {
			y.left = 0
		}
		return true
	}
	return false
}

func (c *coalescingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.err == nil && c.busy && len(c.held) > 0 && len(c.held)+len(p) > coalesceMax {
		c.room.Wait()
	}
	if c.err != nil {
		return 0, c.err
	}
	st := coalesceStats.Load()
	if st != nil {
		st.frames.Add(1)
	}
	gather := c.gather(p)
	if c.busy {
		c.hold(p)
		return len(p), nil
	}
	c.busy = true
	if gather {
		c.hold(p)
		go c.drain()
		return len(p), nil
	}
	c.mu.Unlock()
	if st != nil {
		st.writes.Add(1)
	}
	n, err := c.Conn.Write(p)
	c.mu.Lock()
	if err != nil && c.err == nil {
		c.err = err
	}
	c.drainLocked()
	return n, err
}

// hold appends p to the held frames, in the spare buffer if held has none.
func (c *coalescingConn) hold(p []byte) {
	if c.held == nil {
		c.held, c.spare = c.spare[:0], nil
	}
	c.held = append(c.held, p...)
}

func (c *coalescingConn) drain() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.drainLocked()
}

// drainLocked writes the held frames until there are none (or a write
// failed), then marks the conn idle. c.mu is held, and released during
// each write.
func (c *coalescingConn) drainLocked() {
	for len(c.held) > 0 && c.err == nil {
		out := c.held
		c.held, c.spare = c.spare[:0], nil
		c.room.Broadcast()
		c.mu.Unlock()
		if st := coalesceStats.Load(); st != nil {
			st.writes.Add(1)
		}
		_, err := c.Conn.Write(out)
		c.mu.Lock()
		if cap(out) <= spareMax {
			c.spare = out[:0]
		}
		if err != nil && c.err == nil {
			c.err = err
		}
	}
	c.held = nil
	c.busy = false
	if c.idle != nil {
		close(c.idle)
		c.idle = nil
	}
	c.room.Broadcast()
}

// flushed returns a channel closed once no write is under way and nothing
// is held (at once if so now).
func (c *coalescingConn) flushed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.busy {
		return closedChan
	}
	if c.idle == nil {
		c.idle = make(chan struct{})
	}
	return c.idle
}

var closedChan = func() chan struct{} { ch := make(chan struct{}); close(ch); return ch }()

// Close writes the held frames (waiting up to closeFlushWait for them),
// then closes the connection.
func (c *coalescingConn) Close() error {
	tm := time.NewTimer(closeFlushWait)
	select {
	case <-c.flushed():
	case <-tm.C:
	}
	tm.Stop()
	c.mu.Lock()
	if c.err == nil {
		c.err = net.ErrClosed
	}
	c.room.Broadcast()
	c.mu.Unlock()
	return c.Conn.Close()
}
