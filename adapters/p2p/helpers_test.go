package p2p

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/ports"
)

const waitFor = 10 * time.Second

// testLogger discards logs unless GOOP_TEST_LOG is set (then Debug to stderr).
func testLogger() *slog.Logger {
	if os.Getenv("GOOP_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// newTestHost starts a host on 127.0.0.1 (TCP only), closed at cleanup.
func newTestHost(tb testing.TB) host.Host {
	tb.Helper()
	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(tb, err)
	h, err := NewHost(context.Background(), HostConfig{
		PrivKey:     priv,
		ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"},
	})
	require.NoError(tb, err)
	tb.Cleanup(func() { _ = h.Close() })
	return h
}

// connect dials b from a (NewStream later waits for identify by itself).
func connect(tb testing.TB, a, b host.Host) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(tb, a.Connect(ctx, peer.AddrInfo{ID: b.ID(), Addrs: b.Addrs()}))
}

// newTransport makes an MQTransport with a quiet logger, closed at cleanup.
func newTransport(tb testing.TB, h host.Host, opts MQOptions) *MQTransport {
	tb.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger()
	}
	tr := NewMQTransport(h, opts)
	tb.Cleanup(func() { _ = tr.Close() })
	return tr
}

func pidOf(h host.Host) mq.PeerID { return mq.PeerID(h.ID().String()) }

func testMsg(id string, seq int64) mq.Frame {
	return mq.Frame{Type: mq.TypeMsg, ID: id, Seq: seq, Topic: "chat",
		Payload: json.RawMessage(fmt.Sprintf(`{"n":%d}`, seq))}
}

// nextEvent returns the next event of tr accepted by match, skipping others.
func nextEvent(tb testing.TB, tr ports.Transport, match func(ports.TransportEvent) bool) ports.TransportEvent {
	tb.Helper()
	tm := time.NewTimer(waitFor)
	defer tm.Stop()
	for {
		select {
		case ev, ok := <-tr.Events():
			require.True(tb, ok, "events closed")
			if match(ev) {
				return ev
			}
		case <-tm.C:
			require.FailNow(tb, "expected event did not come")
		}
	}
}

func isFrame(ev ports.TransportEvent) bool { return ev.Kind == ports.FrameReceived }

// ackAll plays the bus core for tr: it acknowledges every msg received and
// forwards every event to out (if not nil, dropping when out is full). It
// stops when tr's Events closes.
func ackAll(tr ports.Transport, out chan<- ports.TransportEvent) {
	go func() {
		for ev := range tr.Events() {
			if ev.Kind == ports.FrameReceived && ev.Frame.Type == mq.TypeMsg {
				_ = tr.Send(ev.From, mq.AckFor(&ev.Frame))
			}
			if out != nil {
				select {
				case out <- ev:
				default:
				}
			}
		}
	}()
}

// rawStream opens a stream from h to peer id for protocol proto, as a raw
// client would, with waitFor as its deadline; it is closed when the test
// ends.
func rawStream(t *testing.T, h host.Host, id peer.ID, proto protocol.ID) network.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	s, err := h.NewStream(ctx, id, proto)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	require.NoError(t, s.SetDeadline(time.Now().Add(waitFor)))
	return s
}
