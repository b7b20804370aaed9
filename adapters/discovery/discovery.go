// Package discovery is the libp2p side of LAN discovery (SPEC §6): presence
// over GossipSub on topic goop.presence.v1, and mDNS with the peer's
// p2p.mdns_tag as service name (peers with different tags never see each
// other). It implements ports.Discovery for the node's runtime.
//
// Nothing from the network is trusted: inbound presence is size-checked,
// decoded and validated before it is delivered or relayed (a GossipSub
// validator), must be signed by the peer it is about (GossipSub strict
// signing, and the author must be the message's peerId), and is rate limited
// per author and in total. Every queue is bounded: on overload, events are
// dropped (presence repeats itself every heartbeat), never blocking the
// network or the node.
package discovery

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/discovery/mdns"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/goop-p2p/goop/adapters/p2p"
	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/domain/presence"
	"github.com/goop-p2p/goop/ports"
)

var _ ports.Discovery = (*Adapter)(nil)

// Defaults of Config's zero fields.
const (
	DefaultEventQueue   = 256
	DefaultPublishQueue = 16
	DefaultMaxDials     = 8
	DefaultDialTimeout  = 10 * time.Second
	DefaultTieBreak     = 500 * time.Millisecond
	DefaultDialRetries  = 3
	// DefaultPeerRate and DefaultPeerBurst bound the presence messages one
	// author may have delivered (a heartbeat every 5 s needs 0.2/s).
	DefaultPeerRate  = 2.0
	DefaultPeerBurst = 10
	// DefaultGlobalRate and DefaultGlobalBurst bound all inbound presence.
	DefaultGlobalRate  = 500.0
	DefaultGlobalBurst = 1000
	// DefaultLinger is how long Close lets a just-published offline travel
	// before it stops GossipSub.
	DefaultLinger = 200 * time.Millisecond
	// publishTimeout bounds one GossipSub publication.
	publishTimeout = 5 * time.Second
	// maxTracked bounds the per-author rate limiter's table.
	maxTracked = 4096
)

// Config configures New. Zero fields take the defaults above.
type Config struct {
	// MDNSTag is the mDNS service tag (p2p.mdns_tag); empty turns mDNS off
	// (GossipSub presence still runs over whatever connections exist).
	MDNSTag string
	// Log receives the adapter's logs (nil: discard).
	Log *slog.Logger
	// EventQueue bounds Events; PublishQueue bounds Publish.
	EventQueue, PublishQueue int
	// MaxDials bounds concurrent dials; DialTimeout bounds each.
	MaxDials    int
	DialTimeout time.Duration
	// TieBreak is how long the peer with the higher id waits before it
	// dials a peer that may be dialing it at the same moment; it is also
	// the first pause before a failed dial is retried (doubling after).
	TieBreak time.Duration
	// DialRetries is how often a failed dial is retried.
	DialRetries int
	// PeerRate/PeerBurst (per author) and GlobalRate/GlobalBurst (all
	// authors) rate-limit inbound presence, in messages per second.
	PeerRate    float64
	PeerBurst   int
	GlobalRate  float64
	GlobalBurst int
	// Linger is how long Close waits after an offline was published.
	Linger time.Duration
	// NoDial makes Dial a no-op and mDNS finds only reported, not dialed:
	// the adapter never opens a connection itself.
	NoDial bool
}

func (c Config) withDefaults() Config {
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.EventQueue <= 0 {
		c.EventQueue = DefaultEventQueue
	}
	if c.PublishQueue <= 0 {
		c.PublishQueue = DefaultPublishQueue
	}
	if c.MaxDials <= 0 {
		c.MaxDials = DefaultMaxDials
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.TieBreak <= 0 {
		c.TieBreak = DefaultTieBreak
	}
	if c.DialRetries <= 0 {
		c.DialRetries = DefaultDialRetries
	}
	if c.PeerRate <= 0 {
		c.PeerRate = DefaultPeerRate
	}
	if c.PeerBurst <= 0 {
		c.PeerBurst = DefaultPeerBurst
	}
	if c.GlobalRate <= 0 {
		c.GlobalRate = DefaultGlobalRate
	}
	if c.GlobalBurst <= 0 {
		c.GlobalBurst = DefaultGlobalBurst
	}
	if c.Linger <= 0 {
		c.Linger = DefaultLinger
	}
	return c
}

// Stats count what the adapter did; read them with Adapter.Stats.
type Stats struct {
	Received      uint64 // presence delivered to Events
	Invalid       uint64 // inbound presence refused as malformed, oversize or forged
	RateLimited   uint64 // inbound presence dropped by the rate limits
	EventsDropped uint64 // events dropped on a full Events queue
	Found         uint64 // peers found by mDNS
	Dials         uint64 // dials started
	DialsFailed   uint64 // dials that ended without a connection
	DialsDropped  uint64 // dial hints dropped (too many dials running)
	Published     uint64 // our presence messages published
}

// Adapter is the GossipSub + mDNS discovery of one libp2p host. Safe for
// concurrent use.
type Adapter struct {
	h      host.Host
	cfg    Config
	log    *slog.Logger
	ctx    context.Context // ends at Close
	cancel context.CancelFunc

	ps      *pubsub.PubSub
	topic   *pubsub.Topic
	sub     *pubsub.Subscription
	joins   *pubsub.TopicEventHandler
	mdns    interface{ Close() error }
	addrSub event.Subscription
	limiter *limiter

	pubCh   chan presence.Msg
	pubDone chan struct{}

	mu          sync.Mutex // guards closed, dialing, offlineSent and wg.Add
	closed      bool
	dialing     map[peer.ID]map[string]bool // the addresses (bytes) being dialed
	offlineSent bool
	sem         chan struct{}
	wg          sync.WaitGroup

	evMu     sync.RWMutex // guards evClosed against sends on events
	evClosed bool
	events   chan ports.DiscoveryEvent

	closeOnce sync.Once
	stats     struct {
		received, invalid, rateLimited, eventsDropped, found, dials, dialsFailed, dialsDropped, published atomic.Uint64
	}
}

// New starts presence on GossipSub (topic presence.Topic, flood publishing,
// strict signing, only that topic accepted from peers) and, when
// cfg.MDNSTag is set, mDNS: peers it finds are dialed and reported as
// PeerFound. ctx bounds the start only. The caller owns h and must Close the
// adapter before closing h.
func New(ctx context.Context, h host.Host, cfg Config) (_ *Adapter, err error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("discovery: %w", err)
	}
	cfg = cfg.withDefaults()
	a := &Adapter{h: h, cfg: cfg, log: cfg.Log, dialing: map[peer.ID]map[string]bool{},
		sem:     make(chan struct{}, cfg.MaxDials),
		events:  make(chan ports.DiscoveryEvent, cfg.EventQueue),
		pubCh:   make(chan presence.Msg, cfg.PublishQueue),
		pubDone: make(chan struct{}),
		limiter: newLimiter(cfg.PeerRate, cfg.PeerBurst, cfg.GlobalRate, cfg.GlobalBurst)}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			a.cancel()
		}
	}()
	a.ps, err = pubsub.NewGossipSub(a.ctx, h,
		pubsub.WithFloodPublish(true),
		pubsub.WithMessageSignaturePolicy(pubsub.StrictSign),
		pubsub.WithSubscriptionFilter(pubsub.NewAllowlistSubscriptionFilter(presence.Topic)),
		pubsub.WithPeerExchange(false),
	)
	if err != nil {
		return nil, fmt.Errorf("discovery: gossipsub: %w", err)
	}
	if err := a.ps.RegisterTopicValidator(presence.Topic, a.validate, pubsub.WithValidatorInline(true)); err != nil {
		return nil, fmt.Errorf("discovery: presence validator: %w", err)
	}
	if a.topic, err = a.ps.Join(presence.Topic); err != nil {
		return nil, fmt.Errorf("discovery: join %s: %w", presence.Topic, err)
	}
	if a.sub, err = a.topic.Subscribe(pubsub.WithBufferSize(cfg.EventQueue)); err != nil {
		return nil, fmt.Errorf("discovery: subscribe %s: %w", presence.Topic, err)
	}
	if a.joins, err = a.topic.EventHandler(); err != nil {
		a.sub.Cancel()
		return nil, fmt.Errorf("discovery: topic events: %w", err)
	}
	if a.addrSub, err = h.EventBus().Subscribe(new(event.EvtLocalAddressesUpdated)); err != nil {
		a.sub.Cancel()
		a.joins.Cancel()
		return nil, fmt.Errorf("discovery: address events: %w", err)
	}
	a.wg.Add(4)
	go a.readLoop()
	go a.publishLoop()
	go a.addrLoop()
	go a.joinLoop()
	if cfg.MDNSTag != "" {
		svc := mdns.NewMdnsService(h, cfg.MDNSTag, notifee{a})
		if err := svc.Start(); err != nil {
			_ = a.Close()
			return nil, fmt.Errorf("discovery: mdns %q: %w", cfg.MDNSTag, err)
		}
		a.mu.Lock()
		a.mdns = svc
		a.mu.Unlock()
	}
	return a, nil
}

// Addrs returns the host's current multiaddrs (without /p2p/<id>): what
// our presence announces.
func (a *Adapter) Addrs() []string {
	addrs := a.h.Addrs()
	out := make([]string, 0, len(addrs))
	for _, m := range addrs {
		out = append(out, m.String())
	}
	return out
}

// Stats returns the adapter's counters.
func (a *Adapter) Stats() Stats {
	s := &a.stats
	return Stats{Received: s.received.Load(), Invalid: s.invalid.Load(), RateLimited: s.rateLimited.Load(),
		EventsDropped: s.eventsDropped.Load(), Found: s.found.Load(), Dials: s.dials.Load(),
		DialsFailed: s.dialsFailed.Load(), DialsDropped: s.dialsDropped.Load(), Published: s.published.Load()}
}

// Events implements ports.Discovery.
func (a *Adapter) Events() <-chan ports.DiscoveryEvent { return a.events }

// Publish implements ports.Discovery: msg is queued for GossipSub.
func (a *Adapter) Publish(msg presence.Msg) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return ports.ErrClosed
	}
	select {
	case a.pubCh <- msg:
		if msg.Type == presence.TypeOffline {
			a.offlineSent = true
		}
		return nil
	default:
		return ports.ErrBackpressure
	}
}

// Dial implements ports.Discovery: a connection to id at addrs is made in
// the background unless id is us, already connected or being dialed at
// those addresses, or MaxDials dials are running (the hint is dropped).
func (a *Adapter) Dial(ctx context.Context, id mq.PeerID, addrs []string) {
	pid, err := peer.Decode(string(id))
	if err != nil {
		a.log.Debug("discovery: dial hint with a bad peer id", "peer", id, "err", err)
		return
	}
	var mas []ma.Multiaddr
	for _, s := range addrs {
		m, err := ma.NewMultiaddr(s)
		if err != nil {
			continue
		}
		tr, p := peer.SplitAddr(m)
		if tr == nil || p != "" && p != pid {
			continue
		}
		mas = append(mas, tr)
	}
	a.dial(ctx, peer.AddrInfo{ID: pid, Addrs: mas})
}

// dial connects to ai in the background, unless ai is us, already
// connected or being dialed at the same addresses, or MaxDials dials are
// running (the hint is dropped). A hint with addresses that a running dial
// of the peer does not try dials those alongside: libp2p joins the two
// dials, and the first connection ends both.
//
// Two peers that find each other at the same moment (mDNS answers both)
// must not dial each other at once: libp2p's TCP transport dials from its
// listening port, so the two dials become one TCP simultaneous open in which
// both sides act as the TLS client and the handshake fails. So the peer
// whose id sorts higher waits TieBreak before dialing, and only dials if the
// other side's connection has not arrived by then. A failed dial is retried
// up to DialRetries times, with a doubling pause, while the peer is still
// not connected.
func (a *Adapter) dial(ctx context.Context, ai peer.AddrInfo) {
	if a.cfg.NoDial || ai.ID == a.h.ID() || len(ai.Addrs) == 0 || a.connected(ai.ID) {
		return
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	// Only the addresses no running dial of the peer tries: a hint with
	// the current addresses of a peer that restarted (mDNS finds it once)
	// must not wait behind a dial of its old ones, which may take many
	// seconds to fail.
	running := a.dialing[ai.ID]
	fresh := ai.Addrs[:0:0]
	for _, m := range ai.Addrs {
		if !running[string(m.Bytes())] {
			fresh = append(fresh, m)
		}
	}
	if len(fresh) == 0 {
		a.mu.Unlock()
		return
	}
	select {
	case a.sem <- struct{}{}:
	default:
		a.mu.Unlock()
		a.stats.dialsDropped.Add(1)
		return
	}
	if running == nil {
		running = map[string]bool{}
		a.dialing[ai.ID] = running
	}
	for _, m := range fresh {
		running[string(m.Bytes())] = true
	}
	ai.Addrs = fresh
	a.wg.Add(1)
	a.mu.Unlock()
	go func() {
		defer a.wg.Done()
		defer func() {
			a.mu.Lock()
			if running := a.dialing[ai.ID]; running != nil {
				for _, m := range ai.Addrs {
					delete(running, string(m.Bytes()))
				}
				if len(running) == 0 {
					delete(a.dialing, ai.ID)
				}
			}
			a.mu.Unlock()
			<-a.sem
		}()
		dctx, cancel := context.WithCancel(a.ctx)
		defer cancel()
		stop := context.AfterFunc(ctx, cancel)
		defer stop()
		pause := a.cfg.TieBreak
		if a.h.ID() < ai.ID {
			pause = 0 // the lower id dials first
		}
		for attempt := 0; attempt <= a.cfg.DialRetries; attempt++ {
			if pause > 0 && !sleepCtx(dctx, pause) {
				return
			}
			if a.connected(ai.ID) {
				return
			}
			a.stats.dials.Add(1)
			tctx, tcancel := context.WithTimeout(dctx, a.cfg.DialTimeout)
			if attempt > 0 {
				// The failed dial left libp2p's dial backoff behind; this
				// retry is our own decision and must not be refused by it.
				tctx = network.WithForceDirectDial(tctx, "discovery retry")
			}
			err := p2p.Connect(tctx, a.h, ai)
			tcancel()
			if err == nil {
				return
			}
			a.stats.dialsFailed.Add(1)
			a.log.Debug("discovery: dial", "peer", ai.ID, "attempt", attempt+1, "err", err)
			if dctx.Err() != nil {
				return
			}
			pause = a.cfg.TieBreak << attempt
		}
	}()
}

func (a *Adapter) connected(id peer.ID) bool {
	return a.h.Network().Connectedness(id) == network.Connected
}

// sleepCtx waits d or until ctx ends; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// emit queues ev for the runtime without blocking; dropped when full.
func (a *Adapter) emit(ev ports.DiscoveryEvent) bool {
	a.evMu.RLock()
	defer a.evMu.RUnlock()
	if a.evClosed {
		return false
	}
	select {
	case a.events <- ev:
		return true
	default:
		if a.stats.eventsDropped.Add(1)%100 == 1 {
			a.log.Warn("discovery: node too slow; dropping discovery events", "dropped", a.stats.eventsDropped.Load())
		}
		return false
	}
}

// validate is the presence topic's GossipSub validator: it runs before a
// message is delivered or relayed.
func (a *Adapter) validate(_ context.Context, from peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
	author := msg.GetFrom()
	if from == a.h.ID() && author == a.h.ID() {
		return pubsub.ValidationAccept // our own publication
	}
	if len(msg.Data) > presence.MaxMsgBytes {
		a.stats.invalid.Add(1)
		return pubsub.ValidationReject
	}
	if !a.limiter.allow(author, time.Now()) {
		a.stats.rateLimited.Add(1)
		return pubsub.ValidationIgnore
	}
	m, err := presence.Decode(msg.Data)
	if err != nil || m.PeerID != mq.PeerID(author.String()) {
		a.stats.invalid.Add(1)
		a.log.Debug("discovery: refused presence", "author", author, "via", from, "err", err, "peer_id", m.PeerID)
		return pubsub.ValidationReject
	}
	msg.ValidatorData = m
	return pubsub.ValidationAccept
}

func (a *Adapter) readLoop() {
	defer a.wg.Done()
	for {
		msg, err := a.sub.Next(a.ctx)
		if err != nil {
			return
		}
		author := msg.GetFrom()
		if author == a.h.ID() {
			continue
		}
		m, ok := msg.ValidatorData.(presence.Msg)
		if !ok {
			continue
		}
		if a.emit(ports.DiscoveryEvent{Kind: ports.PresenceReceived, Source: presence.SourceLAN,
			From: mq.PeerID(author.String()), Msg: m}) {
			a.stats.received.Add(1)
		}
	}
}

func (a *Adapter) publishLoop() {
	defer a.wg.Done()
	defer close(a.pubDone)
	for m := range a.pubCh {
		ctx, cancel := context.WithTimeout(a.ctx, publishTimeout)
		err := a.topic.Publish(ctx, m.Encode())
		cancel()
		if err != nil {
			a.log.Debug("discovery: publish presence", "type", m.Type, "err", err)
			continue
		}
		a.stats.published.Add(1)
	}
}

// joinLoop reports peers that join the presence topic: they have not heard
// our presence yet.
func (a *Adapter) joinLoop() {
	defer a.wg.Done()
	for {
		ev, err := a.joins.NextPeerEvent(a.ctx)
		if err != nil {
			return
		}
		if ev.Type == pubsub.PeerJoin {
			a.emit(ports.DiscoveryEvent{Kind: ports.PeerJoined, Source: presence.SourceLAN, Peer: mq.PeerID(ev.Peer.String())})
		}
	}
}

func (a *Adapter) addrLoop() {
	defer a.wg.Done()
	for {
		select {
		case <-a.ctx.Done():
			return
		case _, ok := <-a.addrSub.Out():
			if !ok {
				return
			}
			a.emit(ports.DiscoveryEvent{Kind: ports.AddrsChanged, Addrs: a.Addrs()})
		}
	}
}

// notifee receives mDNS finds (on goroutines of the mdns package, possibly
// after Close).
type notifee struct{ a *Adapter }

func (n notifee) HandlePeerFound(ai peer.AddrInfo) {
	a := n.a
	if ai.ID == a.h.ID() || a.ctx.Err() != nil {
		return
	}
	a.stats.found.Add(1)
	addrs := make([]string, 0, len(ai.Addrs))
	for _, m := range ai.Addrs {
		addrs = append(addrs, m.String())
	}
	if len(addrs) > presence.MaxAddrs {
		addrs = addrs[:presence.MaxAddrs]
	}
	a.emit(ports.DiscoveryEvent{Kind: ports.PeerFound, Source: presence.SourceLAN, Peer: mq.PeerID(ai.ID.String()), Addrs: addrs})
	a.dial(a.ctx, ai)
}

// Close implements ports.Discovery: queued publications go out (an offline
// gets Linger to travel), then mDNS and GossipSub stop, running dials are
// cancelled, and Events is closed. It does not close the host.
func (a *Adapter) Close() error {
	a.closeOnce.Do(func() {
		a.mu.Lock()
		a.closed = true
		close(a.pubCh)
		lingering := a.offlineSent
		svc := a.mdns
		a.mu.Unlock()
		if svc != nil {
			_ = svc.Close()
		}
		select {
		case <-a.pubDone:
		case <-time.After(publishTimeout):
		}
		if lingering {
			t := time.NewTimer(a.cfg.Linger)
			<-t.C
		}
		a.sub.Cancel()
		a.joins.Cancel()
		_ = a.addrSub.Close()
		a.cancel() // stops GossipSub (PubSub has no Close) and the dials
		a.wg.Wait()
		a.evMu.Lock()
		a.evClosed = true
		close(a.events)
		a.evMu.Unlock()
	})
	return nil
}

// limiter is a token bucket per author plus a global one.
type limiter struct {
	mu                sync.Mutex
	peerRate, global  float64
	peerBurst, gBurst float64
	gTokens           float64
	gLast             time.Time
	peers             map[peer.ID]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newLimiter(peerRate float64, peerBurst int, globalRate float64, globalBurst int) *limiter {
	return &limiter{peerRate: peerRate, peerBurst: float64(peerBurst), global: globalRate,
		gBurst: float64(globalBurst), gTokens: float64(globalBurst), peers: map[peer.ID]*bucket{}}
}

// allow takes a token from author's bucket and the global one.
func (l *limiter) allow(author peer.ID, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.gLast.IsZero() {
		l.gTokens = min(l.gBurst, l.gTokens+now.Sub(l.gLast).Seconds()*l.global)
	}
	l.gLast = now
	b := l.peers[author]
	if b == nil {
		if len(l.peers) >= maxTracked {
			l.sweep(now)
		}
		if len(l.peers) >= maxTracked {
			return false // too many authors at once: overload
		}
		b = &bucket{tokens: l.peerBurst, last: now}
		l.peers[author] = b
	}
	b.tokens = min(l.peerBurst, b.tokens+now.Sub(b.last).Seconds()*l.peerRate)
	b.last = now
	if b.tokens < 1 || l.gTokens < 1 {
		return false
	}
	b.tokens--
	l.gTokens--
	return true
}

// sweep forgets authors whose bucket has refilled (they are as new).
func (l *limiter) sweep(now time.Time) {
	for id, b := range l.peers {
		if b.tokens+now.Sub(b.last).Seconds()*l.peerRate >= l.peerBurst {
			delete(l.peers, id)
		}
	}
}
