package p2p

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/quic-go/quic-go"
)

// ErrDroppedAfterAccept is returned by Connect when the peer closed every
// connection right after its handshake.
var ErrDroppedAfterAccept = errors.New("the peer closed the connection right after accepting it")

// connectTries is how many times Connect dials a peer that closes the
// connection right after accepting it, refusedTries how many times one that
// refuses the handshake (it says it is busy: a burst takes it a while, up
// to seconds for hundreds of dialers on 2 cores); connectPause is the pause
// before the second dial, doubled before each further one up to
// maxConnectPause (and jittered).
const (
	connectTries    = 4
	refusedTries    = 8
	connectPause    = 50 * time.Millisecond
	maxConnectPause = time.Second
)

// Connect dials ai and, unlike host.Connect alone, makes sure the
// connection is still up when it returns nil, and rides out a host that is
// momentarily flooded with handshakes.
//
// When many peers dial one host at once (a group's members after its host
// restarted), the host's QUIC stack sheds load in two ways. quic-go refuses
// new handshakes beyond its queue (CONNECTION_REFUSED: the dial fails), and
// go-libp2p's QUIC listener closes handshaken connections beyond the 16 its
// accept loop has not taken yet ("queue full") — then libp2p has reported
// the dial done and host.Connect still returns nil. 50-60 dialers on a busy
// 2-core host lose a few connections one time in five; 100 dialers lose
// some every time. Over TCP, the host's resource manager admits a limited
// number of connections in handshake (libp2p's transient limit: 79 inbound
// on a 24 GiB machine) and closes the others before their security
// handshake: the dial fails with EOF (of 300 dials at once, 221 failed so).
// Connect dials again in all these cases after a short jittered pause
// (doubling each time), up to connectTries dials after drops and
// refusedTries after refusals, while ctx allows: by then the burst has been
// accepted. A connection closed by the peer's connection gater looks the
// same from here and gets the same tries. Any other dial error is returned
// at once.
func Connect(ctx context.Context, h host.Host, ai peer.AddrInfo) error {
	id := ai.ID
	pause := connectPause
	refused, dropped := 0, 0
	for try := 1; ; try++ {
		dctx := ctx
		if try > 1 {
			// A refused dial left libp2p's dial backoff behind; this retry
			// is ours and must not be refused by it.
			dctx = network.WithForceDirectDial(ctx, "p2p: connect again")
		}
		err := h.Connect(dctx, ai)
		switch {
		case err == nil && stayed(ctx, h, id):
			return nil
		case err == nil || closedAfterHandshake(err):
			if dropped++; dropped == connectTries {
				return fmt.Errorf("p2p: connect %s: %w (%d dials)", id, ErrDroppedAfterAccept, try)
			}
		case refusedHandshake(err):
			if refused++; refused == refusedTries {
				return fmt.Errorf("p2p: connect %s: refused %d times: %w", id, refused, err)
			}
		default:
			return err
		}
		// Jitter in [pause/2, 3*pause/2): dialers shed together do not
		// come back together.
		tm := time.NewTimer(pause/2 + rand.N(pause))
		select {
		case <-ctx.Done():
			tm.Stop()
			return fmt.Errorf("p2p: connect %s: the peer shed the connection and %w", id, ctx.Err())
		case <-tm.C:
		}
		pause = min(2*pause, maxConnectPause)
	}
}

// refusedHandshake reports whether err is a dial the peer refused because
// it has too many handshakes under way: its QUIC stack answered
// CONNECTION_REFUSED, or it closed (or reset) a TCP connection before the
// handshake ended.
func refusedHandshake(err error) bool {
	var te *quic.TransportError
	if errors.As(err, &te) && te.Remote && te.ErrorCode == quic.ConnectionRefused {
		return true
	}
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
}

// closedAfterHandshake reports whether err is a QUIC dial the peer closed
// right after its handshake, before our side of the dial had finished:
// go-libp2p's listener dropping it ("queue full", code 1) or the peer's
// connection gater refusing it (network.ConnGated). Which of the two sides
// finishes first is a race: the same close more often reaches us after
// host.Connect returned nil, and stayed sees it then.
func closedAfterHandshake(err error) bool {
	var ae *quic.ApplicationError
	return errors.As(err, &ae) && ae.Remote &&
		(ae.ErrorCode == quicQueueFull || ae.ErrorCode == quic.ApplicationErrorCode(network.ConnGated))
}

// quicQueueFull is the code go-libp2p's QUIC listener closes a handshaken
// connection with when its accept queue is full.
const quicQueueFull quic.ApplicationErrorCode = 1

// connectSettle bounds how long stayed waits for a connection whose
// identify failed to finish closing.
const connectSettle = time.Second

// stayed reports whether h still has a live connection to id after a dial
// reported success. A connection the peer dropped right after its handshake
// fails identify, so host.Connect returns, while quic-go may not have marked
// it closed yet (it fails the streams first): when identify taught us
// nothing about id (no protocols known), an open-looking QUIC connection is
// given up to connectSettle to close. An identified peer is not waited for.
func stayed(ctx context.Context, h host.Host, id peer.ID) bool {
	conns := h.Network().ConnsToPeer(id)
	if len(conns) == 0 {
		return false
	}
	protos, err := h.Peerstore().GetProtocols(id)
	identified := err == nil && len(protos) > 0
	for _, c := range conns {
		if c.IsClosed() {
			continue
		}
		var qc *quic.Conn
		if identified || !c.As(&qc) {
			return true
		}
		tm := time.NewTimer(connectSettle)
		select {
		case <-qc.Context().Done():
			tm.Stop()
			continue
		case <-ctx.Done():
			tm.Stop()
			return false
		case <-tm.C:
			return true
		}
	}
	return false
}
