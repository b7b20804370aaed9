package p2p

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/goop-p2p/goop/domain/mq"
)

// ProtocolEcho is a line echo protocol used as the transport benchmark's
// baseline: every '\n'-terminated line received is written back on the same
// long-lived stream.
const ProtocolEcho protocol.ID = "/goop/bench/echo/1.0.0"

// echoTimeout bounds each read (idle or partial) and write of the echo protocol.
const echoTimeout = 30 * time.Second

// RegisterEcho installs the ProtocolEcho handler on h. Lines are bounded by
// mq.MaxLineBytes; an oversize line resets the stream. Each handler runs on
// the goroutine libp2p gives it and ends with its stream.
func RegisterEcho(h host.Host) {
	h.SetStreamHandler(ProtocolEcho, func(s network.Stream) {
		lr := newLineReader(s, mq.MaxLineBytes, 4096).withDeadlines(s, echoTimeout, echoTimeout)
		bw := bufio.NewWriterSize(&deadlineWriter{s: s, timeout: echoTimeout}, 64<<10)
		for {
			line, err := lr.next()
			if err != nil {
				if errors.Is(err, errLineTooLong) {
					_ = s.Reset()
				} else {
					_ = s.Close()
				}
				return
			}
			_, _ = bw.Write(line)
			if err := bw.WriteByte('\n'); err != nil {
				_ = s.Reset()
				return
			}
			if !lr.buffered() {
				if err := bw.Flush(); err != nil {
					_ = s.Reset()
					return
				}
			}
		}
	})
}

// EchoRoundTrip opens one ProtocolEcho stream to p and measures n round trips
// of payload (which must not contain '\n'), one line at a time. Each round
// trip is bounded by 30 s; ctx is checked between round trips. It blocks
// until done and returns the durations measured so far with any error.
func EchoRoundTrip(ctx context.Context, h host.Host, p peer.ID, n int, payload []byte) ([]time.Duration, error) {
	if bytes.IndexByte(payload, '\n') >= 0 {
		return nil, errors.New("p2p: echo: payload contains a newline")
	}
	octx, cancel := context.WithTimeout(ctx, 5*time.Second)
	s, err := h.NewStream(octx, p, ProtocolEcho)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("p2p: echo: open stream to %s: %w", p, err)
	}
	defer s.Close()
	line := append(append(make([]byte, 0, len(payload)+1), payload...), '\n')
	lr := newLineReader(s, mq.MaxLineBytes, 4096).withDeadlines(s, echoTimeout, echoTimeout)
	w := &deadlineWriter{s: s, timeout: echoTimeout}
	out := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		if err := ctx.Err(); err != nil {
			_ = s.Reset()
			return out, fmt.Errorf("p2p: echo: %w", err)
		}
		t0 := time.Now()
		if _, err := w.Write(line); err != nil {
			_ = s.Reset()
			return out, fmt.Errorf("p2p: echo: write: %w", err)
		}
		got, err := lr.next()
		if err != nil {
			_ = s.Reset()
			return out, fmt.Errorf("p2p: echo: read: %w", err)
		}
		out = append(out, time.Since(t0))
		if !bytes.Equal(got, payload) {
			_ = s.Reset()
			return out, errors.New("p2p: echo: reply differs from request")
		}
	}
	return out, nil
}

// deadlineWriter bounds each write to its stream by timeout (up to 1.25 x
// timeout, see armDeadline), so a bufio.Writer over it never blocks longer.
type deadlineWriter struct {
	s       network.Stream
	timeout time.Duration
	cur     time.Time
}

func (w *deadlineWriter) Write(p []byte) (int, error) {
	if err := armDeadline(w.s.SetWriteDeadline, &w.cur, w.timeout); err != nil {
		return 0, err
	}
	return w.s.Write(p)
}
