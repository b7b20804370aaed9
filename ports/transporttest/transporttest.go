// Package transporttest is the contract test suite every ports.Transport
// implementation must pass (memory fake, simnet, libp2p).
package transporttest

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/ports"
)

// Timeout bounds every wait of the suite.
const Timeout = 10 * time.Second

// Run runs the contract against transports made by newPair, which returns two
// fresh transports that can reach each other (a to b and b to a). Each case
// gets its own pair; Run closes both at the end of the case (Close must be
// idempotent), after any cleanup newPair registered on t has been scheduled.
func Run(t *testing.T, newPair func(t *testing.T) (a, b ports.Transport)) {
	t.Helper()
	cases := []struct {
		name string
		run  func(t *testing.T, a, b ports.Transport)
	}{
		{"SelfIsTheID", testSelf},
		{"MsgArrivesIntact", testMsgIntact},
		{"AckArrives", testAck},
		{"PipelinedInOrder", testPipelined},
		{"SendAfterCloseFails", testSendAfterClose},
		{"EventsClosedAfterClose", testEventsClosed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, b := newPair(t)
			require.NotNil(t, a)
			require.NotNil(t, b)
			t.Cleanup(func() {
				assert.NoError(t, a.Close())
				assert.NoError(t, b.Close())
			})
			c.run(t, a, b)
		})
	}
}

// NextFrame returns the next FrameReceived event of tr, skipping connectivity
// events; it fails the test after Timeout or if Events is closed.
func NextFrame(t *testing.T, tr ports.Transport) ports.TransportEvent {
	t.Helper()
	tm := time.NewTimer(Timeout)
	defer tm.Stop()
	for {
		select {
		case ev, ok := <-tr.Events():
			require.True(t, ok, "events channel closed while waiting for a frame")
			if ev.Kind == ports.FrameReceived {
				return ev
			}
		case <-tm.C:
			require.FailNow(t, "no frame received", "after %s", Timeout)
		}
	}
}

func testSelf(t *testing.T, a, b ports.Transport) {
	assert.NotEmpty(t, a.Self())
	assert.NotEmpty(t, b.Self())
	assert.NotEqual(t, a.Self(), b.Self())
	assert.Equal(t, a.Self(), a.Self(), "Self is stable")

	require.NoError(t, a.Send(b.Self(), msg("self-1", 1)))
	ev := NextFrame(t, b)
	assert.Equal(t, a.Self(), ev.From, "frames are reported from the sender's Self")
}

func testMsgIntact(t *testing.T, a, b ports.Transport) {
	f := mq.Frame{
		Type:    mq.TypeMsg,
		ID:      "0b7c6f3e-2d7e-4b8a-9f55-3c2f8f1e9a01",
		Seq:     42,
		Topic:   "group:0123456789abcdef:msg",
		Payload: json.RawMessage(`{"text":"héllo \"world\" <&>","n":[1,2.5,null],"nested":{"ok":true}}`),
		Origin:  "12D3KooWOriginPeerOfARelayedMessage",
		Epoch:   "epoch-7f3a",
		Floor:   40,
	}
	require.NoError(t, a.Send(b.Self(), f))
	ev := NextFrame(t, b)
	got := ev.Frame
	assert.Equal(t, a.Self(), ev.From)
	assert.Equal(t, f.Type, got.Type)
	assert.Equal(t, f.ID, got.ID)
	assert.Equal(t, f.Seq, got.Seq)
	assert.Equal(t, f.Topic, got.Topic)
	assert.JSONEq(t, string(f.Payload), string(got.Payload))
	assert.Equal(t, f.Origin, got.Origin)
	assert.Equal(t, f.Epoch, got.Epoch)
	assert.Equal(t, f.Floor, got.Floor)
}

func testAck(t *testing.T, a, b ports.Transport) {
	m := msg("ack-me", 7)
	require.NoError(t, a.Send(b.Self(), m))
	ev := NextFrame(t, b)
	require.Equal(t, mq.TypeMsg, ev.Frame.Type)
	require.NoError(t, b.Send(ev.From, mq.AckFor(&ev.Frame)))

	back := NextFrame(t, a)
	assert.Equal(t, b.Self(), back.From)
	assert.Equal(t, mq.Frame{Type: mq.TypeAck, ID: m.ID, Seq: m.Seq}, back.Frame)
}

// testPipelined sends 1,000 msgs without waiting and requires them to arrive
// in order, each exactly once. b plays the bus core and acks every msg; a's
// acks are drained. A sender that meets backpressure waits for b to progress
// and resends the same frame, which keeps the order.
func testPipelined(t *testing.T, a, b ports.Transport) {
	const n = 1000
	progress := make(chan struct{}, 1)
	result := make(chan error, 1)
	go func() {
		next := int64(1)
		tm := time.NewTimer(Timeout)
		defer tm.Stop()
		for next <= n {
			select {
			case ev, ok := <-b.Events():
				if !ok {
					result <- errors.New("b's events closed")
					return
				}
				if ev.Kind != ports.FrameReceived || ev.Frame.Type != mq.TypeMsg {
					continue
				}
				if ev.Frame.Seq != next || ev.Frame.ID != fmt.Sprintf("pipe-%d", next) {
					result <- fmt.Errorf("got msg %s seq %d, want seq %d", ev.Frame.ID, ev.Frame.Seq, next)
					return
				}
				next++
				_ = b.Send(ev.From, mq.AckFor(&ev.Frame)) // best effort, as a bus core
				select {
				case progress <- struct{}{}:
				default:
				}
			case <-tm.C:
				result <- fmt.Errorf("only %d of %d msgs arrived within %s", next-1, n, Timeout)
				return
			}
		}
		result <- nil
	}()
	stopDrain := make(chan struct{})
	drained := make(chan struct{})
	go func() { // a's acks must not pile up
		defer close(drained)
		for {
			select {
			case _, ok := <-a.Events():
				if !ok {
					return
				}
			case <-stopDrain:
				return
			}
		}
	}()
	defer func() { close(stopDrain); <-drained }()

	deadline := time.NewTimer(Timeout)
	defer deadline.Stop()
	for i := int64(1); i <= n; i++ {
		for {
			err := a.Send(b.Self(), msg(fmt.Sprintf("pipe-%d", i), i))
			if err == nil {
				break
			}
			require.ErrorIs(t, err, ports.ErrBackpressure)
			select {
			case <-progress:
			case err := <-result:
				require.FailNow(t, "receiver stopped early", "%v", err)
			case <-deadline.C:
				require.FailNow(t, "backpressure did not clear", "at msg %d", i)
			}
		}
	}
	require.NoError(t, <-result)
}

func testSendAfterClose(t *testing.T, a, b ports.Transport) {
	require.NoError(t, a.Close())
	err := a.Send(b.Self(), msg("late", 1))
	assert.ErrorIs(t, err, ports.ErrClosed)
	assert.NoError(t, a.Close(), "Close is idempotent")
}

func testEventsClosed(t *testing.T, a, b ports.Transport) {
	require.NoError(t, a.Send(b.Self(), msg("before-close", 1)))
	require.NoError(t, a.Close())
	tm := time.NewTimer(Timeout)
	defer tm.Stop()
	for {
		select {
		case _, ok := <-a.Events():
			if !ok {
				return
			}
		case <-tm.C:
			require.FailNow(t, "Events not closed after Close")
		}
	}
}

func msg(id string, seq int64) mq.Frame {
	return mq.Frame{
		Type:    mq.TypeMsg,
		ID:      id,
		Seq:     seq,
		Topic:   "chat",
		Payload: json.RawMessage(fmt.Sprintf(`{"seq":%d}`, seq)),
	}
}
