package p2p

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	ma "github.com/multiformats/go-multiaddr"
	msmux "github.com/multiformats/go-multistream"
)

// ProbeTimeout bounds the ping that tells whether an older connection to a
// peer that opened a new one is still alive.
//
// A peer that crashed, lost power or its network leaves its connections
// open at our end: no FIN or RST reaches us (never, for QUIC), and they die
// only when a keep-alive times out, 30 s or more later. When it comes back
// under the same identity, it connects to us anew while we still hold the
// old connection, and that breaks things that are per peer:
//   - GossipSub keeps writing to the old connection's stream (it opens one
//     stream per peer) and does not read the new one's until the old one
//     ends: the peer's presence reaches neither side.
//   - When the old stream finally fails, GossipSub, seeing the peer still
//     connected, forgets which topics the peer joined and never learns them
//     again: our presence never reaches the peer (until a later reconnect).
//     The same happens whenever a peer's older connection closes while a
//     newer one stays.
//   - New streams, the bus's among them, may open on the old connection.
const ProbeTimeout = 2 * time.Second

// staleRedial is how long after closing a peer's connections the reaper
// dials it again (if it has not come back by then): time enough for both
// sides to have handled the disconnection (GossipSub forgets the peer
// cleanly only while it is not connected at all). The peer whose id sorts
// higher waits twice as long, so that the two sides rarely dial at once.
const staleRedial = 250 * time.Millisecond

// reapingHost is a host that reaps stale connections (see ProbeTimeout):
//   - when a peer opens a direct connection while older direct connections
//     to it are open, each older one is pinged; if one does not answer (or
//     closed meanwhile), all connections to the peer are closed (old and
//     new: GossipSub recovers only from a complete disconnection) and the
//     peer is dialed again. Two peers dialing each other at once end up with
//     two live connections, both kept.
//   - when one of a peer's connections closes while others stay open, those
//     are pinged, and all are closed if one is dead.
//
// Close stops the probes and redials, then closes the host.
type reapingHost struct {
	host.Host
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	log    *slog.Logger

	mu      sync.Mutex
	closed  bool // set by Close: no probe starts after it
	probing map[peer.ID]bool
	rounds  atomic.Int64 // probe rounds ended (tests wait on it)
}

func reapStaleConns(h host.Host, log *slog.Logger) *reapingHost {
	r := &reapingHost{Host: h, log: log, probing: map[peer.ID]bool{}}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	h.Network().Notify(&network.NotifyBundle{ConnectedF: r.connected, DisconnectedF: r.disconnected})
	return r
}

// connected runs on the swarm's notification: it must not block. A peer
// that opens a new connection while older ones are open may have come back
// from a crash: any older one that is dead (or closed meanwhile) has all
// the peer's connections closed and the peer dialed again.
func (r *reapingHost) connected(n network.Network, c network.Conn) {
	if c.Stat().Limited {
		return
	}
	p := c.RemotePeer()
	opened := c.Stat().Opened
	var older []network.Conn
	for _, o := range n.ConnsToPeer(p) {
		if st := o.Stat(); o != c && !st.Limited && !st.Opened.After(opened) {
			older = append(older, o)
		}
	}
	r.probe(p, older, func(o network.Conn) bool {
		if !o.IsClosed() && alive(r.ctx, o) {
			return false
		}
		r.log.Info("p2p: peer opened a new connection while an older one is dead; reconnecting it",
			"peer", p, "old", o.RemoteMultiaddr(), "new", c.RemoteMultiaddr())
		redialStale(r.ctx, r.Host, p, c.RemoteMultiaddr())
		return true
	})
}

// disconnected runs on the swarm's notification: it must not block. When
// one of a peer's connections closes (a crashed peer's TCP connection gets
// a RST) while others stay open (its QUIC connections, which hear nothing),
// those others are pinged, and if one is dead all are closed: the bus and
// GossipSub stop writing into it at once instead of 30 s later, and the
// peer, if it comes back, is not met by a dead connection.
func (r *reapingHost) disconnected(n network.Network, c network.Conn) {
	p := c.RemotePeer()
	var rest []network.Conn
	for _, o := range n.ConnsToPeer(p) {
		if o != c && !o.Stat().Limited && !o.IsClosed() {
			rest = append(rest, o)
		}
	}
	r.probe(p, rest, func(o network.Conn) bool {
		if o.IsClosed() || alive(r.ctx, o) {
			return false
		}
		r.log.Debug("p2p: a connection of the peer closed and another is dead; closing the peer's connections",
			"peer", p, "dead", o.RemoteMultiaddr())
		_ = r.Network().ClosePeer(p)
		return true
	})
}

// probe runs check on each of p's connections conns, in order, on a
// goroutine of its own, until check reports it acted. One probe round per
// peer at a time; none once the host is closing.
func (r *reapingHost) probe(p peer.ID, conns []network.Conn, check func(network.Conn) bool) {
	if len(conns) == 0 || r.ctx.Err() != nil {
		return
	}
	r.mu.Lock()
	if r.closed || r.probing[p] {
		r.mu.Unlock()
		return
	}
	r.probing[p] = true
	r.wg.Add(1)
	r.mu.Unlock()
	go func() {
		defer r.wg.Done()
		defer func() {
			r.mu.Lock()
			delete(r.probing, p)
			r.mu.Unlock()
			r.rounds.Add(1)
		}()
		for _, o := range conns {
			if r.ctx.Err() != nil || check(o) {
				return
			}
		}
	}()
}

// Close implements host.Host.
func (r *reapingHost) Close() error {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.cancel()
	r.wg.Wait()
	return r.Host.Close()
}

// alive pings the peer over connection c (libp2p's ping protocol), within
// ProbeTimeout.
func alive(ctx context.Context, c network.Conn) bool {
	ctx, cancel := context.WithTimeout(ctx, ProbeTimeout)
	defer cancel()
	s, err := c.NewStream(ctx)
	if err != nil {
		return false
	}
	defer s.Reset()
	// The deadline or Close (ctx) ends a write or read that hangs.
	stop := context.AfterFunc(ctx, func() { _ = s.Reset() })
	defer stop()
	if err := s.SetProtocol(ping.ID); err != nil {
		return false
	}
	if err := msmux.SelectProtoOrFail(protocol.ID(ping.ID), s); err != nil {
		return false
	}
	out := make([]byte, ping.PingSize)
	_, _ = rand.Read(out)
	if _, err := s.Write(out); err != nil {
		return false
	}
	in := make([]byte, ping.PingSize)
	if _, err := io.ReadFull(s, in); err != nil {
		return false
	}
	return bytes.Equal(in, out)
}

// redialStale closes every connection to p and dials p again after
// staleRedial, unless p came back by itself meanwhile.
func redialStale(ctx context.Context, h host.Host, p peer.ID, addr ma.Multiaddr) {
	_ = h.Network().ClosePeer(p)
	pause := staleRedial
	if h.ID() > p {
		pause *= 2
	}
	t := time.NewTimer(pause)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return
	case <-t.C:
	}
	dctx, cancel := context.WithTimeout(ctx, DefaultDialTimeout)
	defer cancel()
	// Connect returns at once if p came back by itself meanwhile.
	_ = Connect(dctx, h, peer.AddrInfo{ID: p, Addrs: []ma.Multiaddr{addr}})
}
