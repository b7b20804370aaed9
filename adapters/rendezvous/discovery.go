package rendezvous

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/goop-p2p/goop/adapters/p2p"
	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/domain/presence"
	"github.com/goop-p2p/goop/ports"
)

var _ ports.Discovery = (*Discovery)(nil)

// Defaults of DiscoveryConfig's zero fields.
const (
	DefaultEventQueue = 256
	DefaultMaxDials   = maxParallelDials
)

// DiscoveryConfig configures NewDiscovery.
type DiscoveryConfig struct {
	// URLs are the rendezvous servers to publish to and follow, one client
	// each (at least one): presence.rendezvous_wan, and a hosting node's own
	// server.
	URLs []string
	// Key is the node's libp2p identity; every publish is signed with it
	// (required).
	Key crypto.PrivKey
	// Host dials the peers the servers tell of (nil: the adapter never dials).
	Host host.Host
	// Client tunes every client (Heartbeat, timeouts, backoff); its URL, Key,
	// Presence, OnPresence and Log are set by NewDiscovery.
	Client ClientConfig
	// EventQueue bounds Events (default DefaultEventQueue).
	EventQueue int
	// MaxDials bounds concurrent dials (default DefaultMaxDials);
	// DialTimeout bounds each (default DialTimeout).
	MaxDials    int
	DialTimeout time.Duration
	// Log receives the adapter's logs (nil: discard).
	Log *slog.Logger
}

// DiscoveryStats count what a Discovery did.
type DiscoveryStats struct {
	Received      uint64 // presences delivered to Events
	EventsDropped uint64 // events dropped on a full Events queue
	Dials         uint64 // dials started
	DialsDropped  uint64 // dials not started: MaxDials running
}

// Discovery is the WAN side of ports.Discovery (SPEC §6): it publishes the
// node's presence, signed, to one or more rendezvous servers and follows
// their /events streams (reconnecting with backoff, so that a server restart
// is survived), and it connects to the peers they tell of.
//
//   - Publish hands the node's presence to every client, which publishes it
//     at once and then every heartbeat (with its own, growing ts, and the
//     type online after each (re)connection, update otherwise; addresses
//     public first, those that do not parse left out). The clients
//     start with the first Publish: a node that never announces itself does
//     not use the rendezvous. An offline Publish stops them (each publishes
//     an offline, bounded by 2 s); later Publishes are ignored.
//   - Events carries each presence the servers stream about another peer as
//     a PresenceReceived with Source presence.SourceWAN, Verified when the
//     client checked its signature itself (the server's claim is not
//     trusted). The runtime's peer table decides what to believe.
//   - A peer the servers tell of is dialed (with DialTimeout) when it is not
//     connected, at most once per 30 s; Dial hints are followed for peers
//     the servers told of and ignored for others (LAN discovery dials those).
//
// Every queue is bounded and nothing blocks on the network. Safe for
// concurrent use.
type Discovery struct {
	cfg     DiscoveryConfig
	log     *slog.Logger
	clients []*Client
	sem     chan struct{}
	events  chan ports.DiscoveryEvent

	dialCtx    context.Context // ends at Close
	stopDials  context.CancelFunc
	runCtx     context.Context // ends at the offline Publish or Close
	stopRun    context.CancelFunc
	clientsRun sync.WaitGroup
	dials      sync.WaitGroup

	mu      sync.Mutex // guards what follows and the WaitGroups' Add
	self    presence.Msg
	started bool
	stopped bool // an offline was published: the clients are stopping
	closed  bool
	peers   map[peer.ID]*wanPeer

	closeOnce sync.Once
	stats     struct{ received, eventsDropped, dials, dialsDropped atomic.Uint64 }
}

// wanPeer is what the adapter remembers of a peer a server told of.
type wanPeer struct {
	heard    time.Time // last presence
	dialedAt time.Time // last dial started
	dialing  bool
}

// maxPeerMemory bounds Discovery's per-peer records.
const maxPeerMemory = 4096

// NewDiscovery checks cfg and returns the adapter; its clients start with
// the first Publish. The caller owns cfg.Host and closes the adapter before
// it.
func NewDiscovery(cfg DiscoveryConfig) (*Discovery, error) {
	if len(cfg.URLs) == 0 {
		return nil, errors.New("rendezvous: discovery: no server URL")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.EventQueue <= 0 {
		cfg.EventQueue = DefaultEventQueue
	}
	if cfg.MaxDials <= 0 {
		cfg.MaxDials = DefaultMaxDials
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DialTimeout
	}
	d := &Discovery{cfg: cfg, log: cfg.Log,
		sem:    make(chan struct{}, cfg.MaxDials),
		events: make(chan ports.DiscoveryEvent, cfg.EventQueue),
		peers:  make(map[peer.ID]*wanPeer)}
	for _, u := range cfg.URLs {
		cc := cfg.Client
		cc.URL, cc.Key, cc.Log = u, cfg.Key, cfg.Log
		cc.Presence = d.presence
		cc.OnPresence = d.onPresence
		c, err := NewClient(cc)
		if err != nil {
			return nil, err
		}
		d.clients = append(d.clients, c)
	}
	d.dialCtx, d.stopDials = context.WithCancel(context.Background())
	d.runCtx, d.stopRun = context.WithCancel(context.Background())
	return d, nil
}

// Stats returns the adapter's counters.
func (d *Discovery) Stats() DiscoveryStats {
	s := &d.stats
	return DiscoveryStats{Received: s.received.Load(), EventsDropped: s.eventsDropped.Load(),
		Dials: s.dials.Load(), DialsDropped: s.dialsDropped.Load()}
}

// Publish implements ports.Discovery: msg becomes what the clients publish
// (its Type, TS, Verified and Sig are theirs to set), at once. It never
// blocks; ErrClosed after Close.
func (d *Discovery) Publish(msg presence.Msg) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.closed:
		return ports.ErrClosed
	case d.stopped:
		return nil
	case msg.Type == presence.TypeOffline:
		d.stopped = true
		d.stopRun() // each client publishes its offline as it stops
		return nil
	}
	msg.Addrs = rankAddrs(msg.Addrs)
	d.self = msg
	if !d.started {
		d.started = true
		d.clientsRun.Add(len(d.clients))
		for _, c := range d.clients {
			go func() {
				defer d.clientsRun.Done()
				_ = c.Run(d.runCtx)
			}()
		}
		return nil
	}
	for _, c := range d.clients {
		c.Refresh()
	}
	return nil
}

// presence is the clients' Presence: the last published msg (a copy).
func (d *Discovery) presence() PresenceMsg {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := d.self
	m.Addrs = slices.Clone(m.Addrs)
	return m
}

// onPresence receives a client's verified-or-not presence of another peer
// (on that client's stream goroutine): it is queued for the runtime and the
// peer is dialed if need be.
func (d *Discovery) onPresence(m PresenceMsg) {
	select {
	case d.events <- ports.DiscoveryEvent{Kind: ports.PresenceReceived, Source: presence.SourceWAN, Verified: m.Verified, Msg: m}:
		d.stats.received.Add(1)
	default:
		if d.stats.eventsDropped.Add(1)%100 == 1 {
			d.log.Warn("rendezvous: node too slow; dropping presence events", "dropped", d.stats.eventsDropped.Load())
		}
	}
	if d.cfg.Host == nil || m.Type == TypeOffline {
		return
	}
	ai, err := AddrInfo(&m)
	if err != nil {
		return
	}
	now := time.Now()
	d.mu.Lock()
	p := d.rememberLocked(ai.ID, now)
	due := p != nil && now.Sub(p.dialedAt) >= redialAfter
	d.mu.Unlock()
	if due {
		d.dial(d.dialCtx, ai)
	}
}

// rememberLocked records that a server told of id at now; nil when the
// memory is full of peers heard within the last redialAfter.
func (d *Discovery) rememberLocked(id peer.ID, now time.Time) *wanPeer {
	p := d.peers[id]
	if p == nil {
		if len(d.peers) >= maxPeerMemory {
			for k, q := range d.peers {
				if !q.dialing && now.Sub(q.heard) >= redialAfter {
					delete(d.peers, k)
				}
			}
			if len(d.peers) >= maxPeerMemory {
				return nil
			}
		}
		p = &wanPeer{}
		d.peers[id] = p
	}
	p.heard = now
	return p
}

// Dial implements ports.Discovery: a connection to id at addrs is made in
// the background when a server told of id, and id is not us, not connected,
// not being dialed, and fewer than MaxDials dials run.
func (d *Discovery) Dial(ctx context.Context, id mq.PeerID, addrs []string) {
	if d.cfg.Host == nil {
		return
	}
	ai, err := addrInfo(string(id), addrs)
	if err != nil {
		return
	}
	d.mu.Lock()
	_, known := d.peers[ai.ID]
	d.mu.Unlock()
	if known {
		d.dial(ctx, ai)
	}
}

// dial connects to ai in the background, bounded by DialTimeout, ctx and Close.
func (d *Discovery) dial(ctx context.Context, ai peer.AddrInfo) {
	h := d.cfg.Host
	if ai.ID == h.ID() || len(ai.Addrs) == 0 || h.Network().Connectedness(ai.ID) == network.Connected {
		return
	}
	d.mu.Lock()
	p := d.peers[ai.ID]
	if d.closed || p == nil || p.dialing {
		d.mu.Unlock()
		return
	}
	select {
	case d.sem <- struct{}{}:
	default:
		d.mu.Unlock()
		d.stats.dialsDropped.Add(1)
		return // busy: the peer's next presence tries again
	}
	p.dialing, p.dialedAt = true, time.Now()
	d.dials.Add(1)
	d.mu.Unlock()
	d.stats.dials.Add(1)
	go func() {
		defer d.dials.Done()
		defer func() {
			d.mu.Lock()
			p.dialing = false
			d.mu.Unlock()
			<-d.sem
		}()
		dctx, cancel := context.WithTimeout(d.dialCtx, d.cfg.DialTimeout)
		defer cancel()
		stop := context.AfterFunc(ctx, cancel)
		defer stop()
		if err := p2p.Connect(dctx, h, ai); err != nil {
			d.log.Debug("rendezvous: could not connect to a peer", "peer", ai.ID, "err", err)
			return
		}
		d.log.Debug("rendezvous: connected to a peer", "peer", ai.ID)
	}()
}

// Events implements ports.Discovery.
func (d *Discovery) Events() <-chan ports.DiscoveryEvent { return d.events }

// Close implements ports.Discovery: the clients stop (each publishes an
// offline, bounded by 2 s, unless an offline Publish already did), running
// dials are cancelled, and Events is closed. It does not close the host.
func (d *Discovery) Close() error {
	d.closeOnce.Do(func() {
		d.mu.Lock()
		d.closed = true
		d.mu.Unlock()
		d.stopRun()
		d.clientsRun.Wait() // no onPresence after this
		d.stopDials()
		d.dials.Wait()
		close(d.events)
	})
	return nil
}

// rankAddrs returns the addresses of addrs that parse as multiaddrs (one
// that does not would get the whole publish refused), at most MaxAddrs,
// public ones first, then private, then loopback (useful on one machine
// only): the order a remote peer should try them in.
func rankAddrs(addrs []string) []string {
	type ranked struct {
		s    string
		rank int
	}
	rs := make([]ranked, 0, len(addrs))
	for _, s := range addrs {
		if a, err := ma.NewMultiaddr(s); err == nil {
			rs = append(rs, ranked{s, rankAddr(a)})
		}
	}
	slices.SortStableFunc(rs, func(a, b ranked) int { return a.rank - b.rank })
	out := make([]string, 0, min(len(rs), MaxAddrs))
	for _, r := range rs[:min(len(rs), MaxAddrs)] {
		out = append(out, r.s)
	}
	return out
}
