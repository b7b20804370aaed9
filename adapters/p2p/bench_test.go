package p2p

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/ports"
)

// benchFrame is a typical bus msg (about 150 bytes on the wire).
func benchFrame(i int) mq.Frame {
	return mq.Frame{
		Type:    mq.TypeMsg,
		ID:      fmt.Sprintf("6f1d2c3b-4a59-4e8f-9b7a-%012d", i),
		Seq:     int64(i),
		Topic:   "group:0123456789abcdef:msg",
		Payload: json.RawMessage(`{"text":"hello, group","n":12345}`),
		Epoch:   "e-1",
	}
}

func reportPercentiles(b *testing.B, ds []time.Duration) {
	if len(ds) == 0 {
		return
	}
	slices.Sort(ds)
	b.ReportMetric(float64(ds[len(ds)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(ds[len(ds)*99/100].Nanoseconds())/1e3, "p99-µs")
}

// BenchmarkEcho is the baseline: a raw libp2p stream line round trip.
func BenchmarkEcho(b *testing.B) {
	ha, hb := newTestHost(b), newTestHost(b)
	connect(b, ha, hb)
	RegisterEcho(hb)
	f := benchFrame(1)
	line := mq.AppendFrame(nil, &f)
	payload := line[:len(line)-1]
	ctx := context.Background()
	_, err := EchoRoundTrip(ctx, ha, hb.ID(), 100, payload) // warm up
	require.NoError(b, err)
	b.ResetTimer()
	ds, err := EchoRoundTrip(ctx, ha, hb.ID(), b.N, payload)
	b.StopTimer()
	require.NoError(b, err)
	reportPercentiles(b, ds)
}

// roundTrips measures n msg → ack round trips from a to b; b's core acks.
func roundTrips(b *testing.B, only10 bool) {
	ha, hb := newTestHost(b), newTestHost(b)
	connect(b, ha, hb)
	ta := newTransport(b, ha, MQOptions{Only10: only10})
	tb := newTransport(b, hb, MQOptions{Only10: only10})
	ackAll(tb, nil)
	to := pidOf(hb)
	tm := time.NewTimer(waitFor)
	defer tm.Stop()
	one := func(i int) time.Duration {
		f := benchFrame(i)
		t0 := time.Now()
		if err := ta.Send(to, f); err != nil {
			b.Fatal(err)
		}
		tm.Reset(waitFor)
		for {
			select {
			case ev := <-ta.Events():
				if ev.Kind == ports.FrameReceived && ev.Frame.ID == f.ID {
					return time.Since(t0)
				}
			case <-tm.C:
				b.Fatalf("no ack for msg %d", i)
			}
		}
	}
	for i := range 200 { // warm up: streams open, identify done
		one(1_000_000 + i)
	}
	ds := make([]time.Duration, 0, b.N)
	st := countCoalescing(b)
	frames, writes := st.frames.Load(), st.writes.Load()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ds = append(ds, one(i))
	}
	b.StopTimer()
	reportPercentiles(b, ds)
	// yamux frames of both sides, and the TCP writes they took
	// (coalescingConn gathers a stream's opening: 1.0.0's 8 frames).
	b.ReportMetric(float64(st.frames.Load()-frames)/float64(b.N), "frames/op")
	b.ReportMetric(float64(st.writes.Load()-writes)/float64(b.N), "writes/op")
}

// BenchmarkMQ11RoundTrip: msg and ack on the long-lived 1.1.0 stream.
func BenchmarkMQ11RoundTrip(b *testing.B) { roundTrips(b, false) }

// BenchmarkMQ10RoundTrip: compat, a new stream per msg.
func BenchmarkMQ10RoundTrip(b *testing.B) { roundTrips(b, true) }

// BenchmarkMQ11OneWay: msgs a → b as fast as the transport goes (no acks);
// the sender backs off on ErrBackpressure until b makes progress.
func BenchmarkMQ11OneWay(b *testing.B) {
	ha, hb := newTestHost(b), newTestHost(b)
	connect(b, ha, hb)
	ta := newTransport(b, ha, MQOptions{})
	tb := newTransport(b, hb, MQOptions{})
	to := pidOf(hb)
	frames := make([]mq.Frame, 1024)
	for i := range frames {
		frames[i] = benchFrame(i)
	}

	run := func(n int) error {
		progress := make(chan struct{}, 1)
		done := make(chan error, 1)
		go func() {
			got := 0
			tm := time.NewTimer(30 * time.Second)
			defer tm.Stop()
			for got < n {
				select {
				case ev, ok := <-tb.Events():
					if !ok {
						done <- errors.New("events closed")
						return
					}
					if ev.Kind != ports.FrameReceived {
						continue
					}
					got++
					if got%64 == 0 {
						select {
						case progress <- struct{}{}:
						default:
						}
					}
				case <-tm.C:
					done <- fmt.Errorf("only %d of %d frames arrived", got, n)
					return
				}
			}
			done <- nil
		}()
		for i := 0; i < n; i++ {
			for {
				err := ta.Send(to, frames[i%len(frames)])
				if err == nil {
					break
				}
				if !errors.Is(err, ports.ErrBackpressure) {
					return err
				}
				select {
				case <-progress:
				case err := <-done:
					return fmt.Errorf("receiver stopped: %v", err)
				}
			}
		}
		return <-done
	}
	require.NoError(b, run(2000)) // warm up
	b.ResetTimer()
	start := time.Now()
	err := run(b.N)
	el := time.Since(start)
	b.StopTimer()
	require.NoError(b, err)
	b.ReportMetric(float64(b.N)/el.Seconds(), "frames/s")
}
