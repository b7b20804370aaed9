package p2p

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/ports"
)

// recordConn is the connection under a coalescingConn in these tests: it
// records each write, and, when gated, blocks each write until the test
// lets one through (or the conn is closed).
type recordConn struct {
	net.Conn // nil: only Write and Close are used

	gate   chan struct{} // nil: writes pass at once
	mu     sync.Mutex
	writes [][]byte
	total  int
	wrote  chan struct{} // signalled after each write
	closed chan struct{}
	fail   error
}

func newRecordConn(gated bool) *recordConn {
	r := &recordConn{wrote: make(chan struct{}, 1024), closed: make(chan struct{})}
	if gated {
		r.gate = make(chan struct{})
	}
	return r
}

func (r *recordConn) Write(p []byte) (int, error) {
	if r.gate != nil {
		select {
		case <-r.gate:
		case <-r.closed:
			return 0, net.ErrClosed
		}
	}
	r.mu.Lock()
	if r.fail != nil {
		r.mu.Unlock()
		return 0, r.fail
	}
	r.writes = append(r.writes, bytes.Clone(p))
	r.total += len(p)
	r.mu.Unlock()
	r.wrote <- struct{}{}
	return len(p), nil
}

func (r *recordConn) Close() error {
	close(r.closed)
	return nil
}

func (r *recordConn) recorded() ([][]byte, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.writes, r.total
}

// waitBytes waits until r has been written n bytes in all.
func (r *recordConn) waitBytes(t *testing.T, n int) {
	t.Helper()
	tm := time.NewTimer(waitFor)
	defer tm.Stop()
	for {
		if _, total := r.recorded(); total >= n {
			return
		}
		select {
		case <-r.wrote:
		case <-tm.C:
			_, total := r.recorded()
			t.Fatalf("%d bytes written, want %d", total, n)
		}
	}
}

// frame is a yamux frame: data (typ 0) or window update (1) of stream id.
func frame(typ byte, flags uint16, id uint32, body string) []byte {
	h := make([]byte, yamuxHeaderSize, yamuxHeaderSize+len(body))
	h[1] = typ
	binary.BigEndian.PutUint16(h[2:4], flags)
	binary.BigEndian.PutUint32(h[4:8], id)
	binary.BigEndian.PutUint32(h[8:12], uint32(len(body)))
	return append(h, body...)
}

// writeFrames writes frames to c from a goroutine, and sends the first
// error, or nil, on the channel returned.
func writeFrames(c *coalescingConn, frames [][]byte) <-chan error {
	done := make(chan error, 1)
	go func() {
		for _, f := range frames {
			if _, err := c.Write(f); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	return done
}

// writeAll writes frames to c from another goroutine and fails the test if
// the writes do not all return: a coalescingConn must not wait for a write
// to the conn under it to add frames to one under way.
func writeAll(t *testing.T, c *coalescingConn, frames ...[]byte) {
	t.Helper()
	done := writeFrames(c, frames)
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(waitFor):
		t.Fatal("a frame's write waited for the write under way")
	}
}

// countCoalescing turns on the coalescingConns' counts until tb ends.
func countCoalescing(tb testing.TB) *coalesceCounts {
	st := &coalesceCounts{}
	coalesceStats.Store(st)
	tb.Cleanup(func() { coalesceStats.Store(nil) })
	return st
}

// A stream's opening frames, and any frame that comes while they are being
// written, share writes, in order.
func TestCoalescingGathersStreamOpening(t *testing.T) {
	r := newRecordConn(true)
	c := newCoalescingConn(r)
	frames := [][]byte{
		frame(1, yamuxFlagSYN, 3, ""),          // the opener's SYN
		frame(0, 0, 3, "/multistream/1.0.0\n"), // its first data
		frame(0, 0, 3, `{"type":"msg"}`+"\n"),
		frame(0, 0, 5, "an old stream's data"), // not young: joins the write under way
		frame(0, yamuxFlagFIN, 3, ""),
	}
	writeAll(t, c, frames...)
	close(r.gate)
	want := bytes.Join(frames, nil)
	r.waitBytes(t, len(want))
	writes, _ := r.recorded()
	require.Equal(t, want, bytes.Join(writes, nil), "the frames, in order")
	// The drain goroutine may have taken the SYN alone before the others
	// came; never more than that.
	require.LessOrEqual(t, len(writes), 2, "5 frames in at most 2 writes")
	<-c.flushed()
}

// A frame of a stream not being opened is written by its caller, at once,
// when no write is under way: no hand-over, no wait.
func TestCoalescingWritesOtherFramesAtOnce(t *testing.T) {
	r := newRecordConn(false)
	c := newCoalescingConn(r)
	for i, f := range [][]byte{
		frame(0, 0, 9, "steady data"),
		frame(2, yamuxFlagSYN, 0, ""),                            // a ping
		[]byte("short"),                                          // not a frame: written as is
		append([]byte{7}, frame(0, yamuxFlagSYN, 11, "")[1:]...), // unknown version
	} {
		n, err := c.Write(f)
		require.NoError(t, err)
		require.Equal(t, len(f), n)
		writes, _ := r.recorded()
		require.Len(t, writes, i+1, "written before Write returned")
		require.Equal(t, f, writes[i])
	}
}

// gather's bookkeeping: a stream is young from its SYN or ACK frame for
// youngFrames more frames, or until its FIN or RST; 8 streams at most.
func TestCoalescingGatherBookkeeping(t *testing.T) {
	c := newCoalescingConn(newRecordConn(false))
	require.True(t, c.gather(frame(1, yamuxFlagSYN, 1, "")))
	for range youngFrames {
		require.True(t, c.gather(frame(0, 0, 1, "x")))
	}
	require.False(t, c.gather(frame(0, 0, 1, "x")), "no longer young")

	require.True(t, c.gather(frame(0, yamuxFlagACK, 2, "accepted, with data")))
	require.True(t, c.gather(frame(0, yamuxFlagFIN, 2, "")))
	require.False(t, c.gather(frame(0, 0, 2, "x")), "ended by its FIN")
	require.True(t, c.gather(frame(1, yamuxFlagACK, 4, "")))
	require.True(t, c.gather(frame(1, yamuxFlagRST, 4, "")))
	require.False(t, c.gather(frame(1, 0, 4, "")), "ended by its RST")

	require.False(t, c.gather(frame(0, 0, 99, "never opened here")))
	require.False(t, c.gather(frame(2, yamuxFlagSYN, 0, "")), "pings are not a stream's")

	// The 9th open takes the oldest's place.
	for id := uint32(101); id <= 109; id++ {
		require.True(t, c.gather(frame(1, yamuxFlagSYN, id, "")))
	}
	require.False(t, c.gather(frame(0, 0, 101, "x")), "forgotten")
	require.True(t, c.gather(frame(0, 0, 109, "x")))
}

// While a write is under way, the frames held for the next one stay under
// coalesceMax bytes (plus one frame larger than that on its own): a
// connection that does not drain cannot grow them.
func TestCoalescingBoundsHeldBytes(t *testing.T) {
	r := newRecordConn(true)
	c := newCoalescingConn(r)
	const n = 40
	body := string(bytes.Repeat([]byte("b"), 16<<10))
	frames := [][]byte{frame(1, yamuxFlagSYN, 3, "")}
	for range n {
		frames = append(frames, frame(0, 0, 3, body))
	}
	done := writeFrames(c, frames)
	want := bytes.Join(frames, nil)
	for {
		// One write at a time through the gate.
		select {
		case r.gate <- struct{}{}:
		case <-time.After(waitFor):
			t.Fatal("no write came to the gate")
		}
		<-r.wrote
		if _, total := r.recorded(); total == len(want) {
			break
		}
	}
	require.NoError(t, <-done)
	writes, _ := r.recorded()
	require.Equal(t, want, bytes.Join(writes, nil))
	for i, w := range writes {
		require.LessOrEqual(t, len(w), coalesceMax, "write %d", i)
	}
	require.Greater(t, len(writes), len(want)/coalesceMax, "no write beyond the bound")

	// Idle again, the conn keeps no large buffer.
	<-c.flushed()
	c.mu.Lock()
	defer c.mu.Unlock()
	require.Nil(t, c.held)
	require.LessOrEqual(t, cap(c.spare), spareMax)
}

// A failed write is returned to the frames' writer: at once for its own
// frame, and on its next Write for held frames.
func TestCoalescingReportsWriteErrors(t *testing.T) {
	boom := errors.New("connection reset")
	r := newRecordConn(false)
	r.fail = boom
	c := newCoalescingConn(r)
	_, err := c.Write(frame(0, 0, 9, "x"))
	require.ErrorIs(t, err, boom)
	_, err = c.Write(frame(0, 0, 9, "y"))
	require.ErrorIs(t, err, boom, "the conn stays failed")

	r2 := newRecordConn(false)
	r2.fail = boom
	c2 := newCoalescingConn(r2)
	n, err := c2.Write(frame(1, yamuxFlagSYN, 3, ""))
	require.NoError(t, err, "held for the drain")
	require.Equal(t, yamuxHeaderSize, n)
	<-c2.flushed()
	_, err = c2.Write(frame(0, 0, 3, "x"))
	require.ErrorIs(t, err, boom)
}

// Close writes what is held before closing the conn under it; a write that
// never ends delays Close by closeFlushWait at most.
func TestCoalescingCloseFlushes(t *testing.T) {
	r := newRecordConn(true)
	c := newCoalescingConn(r)
	frames := [][]byte{frame(1, yamuxFlagSYN, 3, ""), frame(0, 0, 3, "last words"), frame(0, yamuxFlagFIN, 3, "")}
	writeAll(t, c, frames...)
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	close(r.gate)
	require.NoError(t, <-closed)
	writes, _ := r.recorded()
	require.Equal(t, bytes.Join(frames, nil), bytes.Join(writes, nil), "all written before the close")
	_, err := c.Write(frame(0, 0, 3, "x"))
	require.ErrorIs(t, err, net.ErrClosed)

	stuck := newRecordConn(true) // its gate never opens
	cs := newCoalescingConn(stuck)
	writeAll(t, cs, frame(1, yamuxFlagSYN, 3, ""))
	t0 := time.Now()
	require.NoError(t, cs.Close())
	require.Less(t, time.Since(t0), waitFor)
	<-cs.flushed() // the stuck write ended with the close
}

// NewHost's TCP connections write through coalescingConn: an MQ 1.0.0 msg
// (a stream each) between two of them goes through its writes.
func TestNewHostCoalescesTCP(t *testing.T) {
	ha, hb := newTestHost(t), newTestHost(t)
	connect(t, ha, hb)
	ta := newTransport(t, ha, MQOptions{Only10: true})
	tb := newTransport(t, hb, MQOptions{Only10: true})
	ackAll(tb, nil)
	st := countCoalescing(t)
	frames, writes := st.frames.Load(), st.writes.Load()
	f := testMsg("m-coalesce", 1)
	require.NoError(t, ta.Send(pidOf(hb), f))
	require.Equal(t, f.ID, nextEvent(t, ta, isFrame).Frame.ID, "acked")
	require.GreaterOrEqual(t, st.frames.Load()-frames, int64(5), "SYN, data; ACK, negotiation, ack at least")
	require.Greater(t, st.writes.Load(), writes)
}

// A node whose yamux gathers writes talks to a stock libp2p host (a Goop2
// peer's yamux writes each frame on its own) both ways, over 1.0.0 (a
// stream per msg: every msg's frames are gathered) and 1.1.0, with small
// msgs and ones larger than coalesceMax.
func TestCoalescingInteropsWithStockYamux(t *testing.T) {
	big := json.RawMessage(`"` + strings.Repeat("x", 300<<10) + `"`)
	for _, only10 := range []bool{true, false} {
		t.Run(fmt.Sprintf("only10=%v", only10), func(t *testing.T) {
			ours := newTestHost(t)
			stock, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
			require.NoError(t, err)
			t.Cleanup(func() { _ = stock.Close() })
			connect(t, ours, stock)
			to, ts := newTransport(t, ours, MQOptions{Only10: only10}), newTransport(t, stock, MQOptions{Only10: only10})
			outO, outS := make(chan ports.TransportEvent, 256), make(chan ports.TransportEvent, 256)
			ackAll(to, outO)
			ackAll(ts, outS)
			const n = 40
			for _, dir := range []struct {
				from     *MQTransport
				to       host.Host
				got, ack chan ports.TransportEvent
			}{{to, stock, outS, outO}, {ts, ours, outO, outS}} {
				for i := 1; i <= n; i++ {
					f := testMsg(fmt.Sprintf("m-%d", i), int64(i))
					if i%10 == 0 {
						f.Payload = big
					}
					require.NoError(t, dir.from.Send(pidOf(dir.to), f))
				}
				for i := 1; i <= n; i++ {
					ev := waitChan(t, dir.got, func(ev ports.TransportEvent) bool { return isFrame(ev) && ev.Frame.Type == mq.TypeMsg })
					require.Equal(t, fmt.Sprintf("m-%d", i), ev.Frame.ID, "in order")
					if i%10 == 0 {
						require.Equal(t, string(big), string(ev.Frame.Payload))
					}
				}
				acked := map[string]bool{}
				for len(acked) < n {
					ev := waitChan(t, dir.ack, func(ev ports.TransportEvent) bool {
						return isFrame(ev) && ev.Frame.Type == mq.TypeAck && ev.Frame.Stage == ""
					})
					acked[ev.Frame.ID] = true
				}
			}
		})
	}
}
