package simnet

import (
	"bytes"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"time"

	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/domain/presence"
	"github.com/goop-p2p/goop/ports"
)

// Discovery in the simulator (Options.Discovery) models what the real
// adapters do around the node's presence core (SPEC §6):
//
//   - mDNS (adapters/discovery): a peer announces itself to the running
//     peers of its LAN segment that use its mDNS tag, with a query that each
//     of them answers, when it starts and when its segment or tag changes
//     (three times: at once, after 1 s and after 3 s, as RFC 6762 §8.3 has
//     responders repeat themselves), and again every MDNSInterval (the
//     mDNS client's periodic query). A find is reported to the node
//     (Node.Discovered) and dialed, as the real adapter does: the two peers
//     get a LAN connection, and each learns after the link delay that the
//     other joined the presence topic (ports.PeerJoined). mDNS runs over UDP:
//     link loss applies.
//   - GossipSub: a presence the node publishes (Ready.Publish) reaches every
//     running peer it has a LAN connection with (so: same segment, same
//     tag), after the link delay, as Node.HandlePresence(lan, sender =
//     the publisher, verified). It runs over those connections: link loss
//     does not apply, partitions do. A LAN connection lasts until one end
//     crashes or moves (a partition drops what crosses it, the connection
//     survives). Dial hints (Ready.Dial) are counted, and connect the two
//     peers when they could share a LAN connection; other dials are not
//     modelled (GossipSub over WAN connections is not either).
//   - A rendezvous server (adapters/rendezvous), when DiscoveryOptions.Rendezvous:
//     a peer that uses it publishes every presence to it (HTTP: no loss, the
//     WAN link's delay); the server keeps the latest presence per peer,
//     refuses replays (a ts not newer), and streams each accepted presence to
//     every subscribed peer but its author, in order per subscriber. A peer
//     subscribes when one of its publishes reaches the server (the real
//     client connects with its first publish and reconnects with backoff) and
//     gets the server's current peers first. A partition between a peer and
//     the server breaks the peer's stream; a crashed server forgets
//     everything. Every RendezvousSweep, peers silent for RendezvousStale are
//     dropped with an offline broadcast that the server itself stamps (so
//     not verified). Streamed presence reaches the node as
//     Node.HandlePresence(wan, no sender, verified = signed by its peer).
//
// All draws come from the seed: mDNS loss and every delay from the sender's
// network stream, the server's delays from a per-subscriber stream, the mDNS
// phase from a per-peer stream.

// Rendezvous names the rendezvous node in the peer lists of Partition and
// SetLink (it is not a peer: Up, Crash and the like do not take it).
const Rendezvous = -2

const rdvIdx int32 = Rendezvous

// DefaultMDNSTag is the mDNS service tag of a peer unless its layout or
// SetTag gives another (SPEC §1, p2p.mdns_tag).
const DefaultMDNSTag = "goop-mdns"

const (
	streamDisc = 7 // a peer's discovery draws (its mDNS phase)
	streamRdv  = 8 // the rendezvous' delays toward one subscriber
)

// DiscoveryOptions configure discovery in a world. The presence timings
// (heartbeat, TTL, grace) are the nodes' own: Options.Node.Presence.
type DiscoveryOptions struct {
	// MDNSInterval is how often a peer queries and announces itself again
	// on mDNS (default a heartbeat).
	MDNSInterval time.Duration
	// Rendezvous adds a rendezvous server that every peer uses unless its
	// place says NoWAN.
	Rendezvous bool
	// RendezvousStale: the server drops a peer silent this long with an
	// offline broadcast (default 30 s, the real server's);
	// RendezvousSweep is how often it looks (default 5 s, the real one's).
	RendezvousStale time.Duration
	RendezvousSweep time.Duration
	// WANLink models the links between the peers and the server, both ways
	// (zero: DefaultWANLink). Its loss does not apply (HTTP runs over TCP).
	// SetLink with Rendezvous overrides one direction for one peer.
	WANLink LinkParams
	// Layout, if set, places peer i when it is added, before its node
	// starts. Without it a peer is on no segment, has the default tag and
	// uses the rendezvous.
	Layout func(i int) PeerPlace
}

// PeerPlace is where a peer sits: its LAN segment ("" for none), its mDNS
// tag ("" for DefaultMDNSTag) and whether it stays off the rendezvous.
type PeerPlace struct {
	Segment string
	Tag     string
	NoWAN   bool
}

// DefaultWANLink is the link between a peer and the rendezvous: 40 ms ± 20 ms.
func DefaultWANLink() LinkParams {
	return LinkParams{Latency: 40 * time.Millisecond, Jitter: 20 * time.Millisecond}
}

func (o DiscoveryOptions) withDefaults(heartbeat time.Duration) DiscoveryOptions {
	if o.MDNSInterval <= 0 {
		o.MDNSInterval = heartbeat
	}
	if o.RendezvousStale <= 0 {
		o.RendezvousStale = 30 * time.Second
	}
	if o.RendezvousSweep <= 0 {
		o.RendezvousSweep = 5 * time.Second
	}
	if o.WANLink == (LinkParams{}) {
		o.WANLink = DefaultWANLink()
	}
	return o
}

// simPresence turns a node's presence on: it announces, and zero timings
// take the compat values (presence.DefaultConfig), so that checkers read
// the exact timings the nodes run with.
func simPresence(c presence.Config) presence.Config {
	d := presence.DefaultConfig()
	c.Announce = true
	if c.Heartbeat <= 0 {
		c.Heartbeat = d.Heartbeat
	}
	if c.TTL <= 0 {
		c.TTL = d.TTL
	}
	if c.Grace <= 0 {
		c.Grace = d.Grace
	}
	if c.MaxPeers <= 0 {
		c.MaxPeers = d.MaxPeers
	}
	if c.MaxClockSkew <= 0 {
		c.MaxClockSkew = d.MaxClockSkew
	}
	if c.RedialInterval <= 0 {
		c.RedialInterval = d.RedialInterval
	}
	return c
}

// PresenceStats count what discovery did in a world.
type PresenceStats struct {
	Published     uint64 `json:"published"`      // presence messages the nodes published
	Gossiped      uint64 `json:"gossiped"`       // GossipSub deliveries started on LAN connections
	Delivered     uint64 `json:"delivered"`      // presence messages handed to nodes (LAN and WAN)
	Refused       uint64 `json:"refused"`        // of which the node changed nothing for (stale, unverified, ...)
	Dropped       uint64 `json:"dropped"`        // presence lost to partitions, down peers or a down server
	MDNSSent      uint64 `json:"mdns_sent"`      // mDNS announcements and answers sent toward peers
	MDNSLost      uint64 `json:"mdns_lost"`      // of which lost (loss, partition, down)
	Found         uint64 `json:"found"`          // mDNS finds reported to nodes
	Dials         uint64 `json:"dials"`          // dial hints the nodes gave
	Connects      uint64 `json:"connects"`       // LAN connections made
	Joins         uint64 `json:"joins"`          // topic joins reported to nodes
	RdvPublishes  uint64 `json:"rdv_publishes"`  // publishes the rendezvous accepted
	RdvRefused    uint64 `json:"rdv_refused"`    // publishes it refused (a ts not newer)
	RdvEvents     uint64 `json:"rdv_events"`     // events it streamed toward subscribers
	RdvSubscribes uint64 `json:"rdv_subscribes"` // event streams opened
	RdvSwept      uint64 `json:"rdv_swept"`      // peers it dropped for silence
	RdvCrashes    uint64 `json:"rdv_crashes"`
}

func (a PresenceStats) add(b PresenceStats) PresenceStats {
	a.Published += b.Published
	a.Gossiped += b.Gossiped
	a.Delivered += b.Delivered
	a.Refused += b.Refused
	a.Dropped += b.Dropped
	a.MDNSSent += b.MDNSSent
	a.MDNSLost += b.MDNSLost
	a.Found += b.Found
	a.Dials += b.Dials
	a.Connects += b.Connects
	a.Joins += b.Joins
	a.RdvPublishes += b.RdvPublishes
	a.RdvRefused += b.RdvRefused
	a.RdvEvents += b.RdvEvents
	a.RdvSubscribes += b.RdvSubscribes
	a.RdvSwept += b.RdvSwept
	a.RdvCrashes += b.RdvCrashes
	return a
}

// peerDisc is a peer's discovery state in the world (it survives crashes).
type peerDisc struct {
	tag   string
	noWAN bool
	addrs []string
	lan   bitset // LAN connections (GossipSub), symmetric
	// sub: the peer's rendezvous event stream is open; subGen numbers its
	// streams, so that events of a broken stream are not delivered.
	sub    bool
	subGen uint32
	rdvAt  int64      // arrival of the last event streamed to it (order)
	rdvIn  *rand.Rand // the server's delays toward it
	r      *rand.Rand // its mDNS phase
}

// presenceStep is the presence message a step handles, for Step.Presence.
type presenceStep struct {
	msg *presence.Msg
	src presence.Source
	err error
}

type discovery struct {
	w      *World
	opts   DiscoveryOptions
	rdv    *rdvNode // nil without a rendezvous
	codecN int
}

type rdvNode struct {
	up      bool
	life    uint32
	entries []rdvEntry // by peer index
}

type rdvEntry struct {
	msg      *presence.Msg // latest presence, nil when none
	lastSeen int64
	lastTS   int64 // newest ts accepted (replays are refused)
}

// Actions of discovery on the timeline: arg is kind<<60 | life<<24 | peer.
const (
	discMDNS  = 1 // a peer's periodic mDNS query and announcement
	discSweep = 2 // the rendezvous' sweep
	discQuery = 3 // a repeated startup query and announcement
)

// mdnsRepeats are the delays of a peer's repeated startup announcements.
var mdnsRepeats = [...]time.Duration{time.Second, 3 * time.Second}

func discArg(kind int64, life uint32, idx int32) int64 {
	return kind<<60 | int64(life)<<24 | int64(idx)
}

func newDiscovery(w *World, o DiscoveryOptions) *discovery {
	d := &discovery{w: w, opts: o}
	if o.Rendezvous {
		d.rdv = &rdvNode{up: true, life: 1}
		w.q.push(w.now+int64(o.RendezvousSweep), event{kind: evAction, act: d, arg: discArg(discSweep, 0, 0)})
	}
	return d
}

// Fire implements Action: periodic mDNS announcements and rendezvous sweeps.
func (d *discovery) Fire(w *World, arg int64) {
	switch arg >> 60 {
	case discMDNS:
		p := w.peers[int32(arg&0xffffff)]
		if p.node == nil || p.life != uint32(arg>>24) {
			return // the next incarnation has its own announcements
		}
		d.announce(p, true)
		w.Schedule(w.Elapsed()+d.opts.MDNSInterval, d, arg)
	case discQuery:
		p := w.peers[int32(arg&0xffffff)]
		if p.node != nil && p.life == uint32(arg>>24) {
			d.announce(p, true)
		}
	case discSweep:
		d.sweep()
		w.Schedule(w.Elapsed()+d.opts.RendezvousSweep, d, arg)
	}
}

// place sets a new peer's discovery state from the layout.
func (d *discovery) place(p *peer) {
	w := d.w
	var pl PeerPlace
	if d.opts.Layout != nil {
		pl = d.opts.Layout(int(p.idx))
	}
	if pl.Tag == "" {
		pl.Tag = DefaultMDNSTag
	}
	p.disc = peerDisc{tag: pl.Tag, noWAN: pl.NoWAN, addrs: []string{fmt.Sprintf("/dns4/p%d.sim/tcp/4001", p.idx)},
		rdvIn: newStream(w.seed, streamRdv, uint64(p.idx)), r: newStream(w.seed, streamDisc, uint64(p.idx))}
	if d.rdv != nil {
		d.rdv.entries = append(d.rdv.entries, rdvEntry{})
	}
	if pl.Segment != "" {
		w.SetSegment(int(p.idx), pl.Segment) // before start: no announcement yet
	}
}

// started runs after a node (re)started and flushed its first Ready: it
// announces itself on mDNS with a query, and schedules its announcements.
func (d *discovery) started(p *peer) {
	d.burst(p)
	iv := int64(d.opts.MDNSInterval)
	at := d.w.now + iv/2 + p.disc.r.Int64N(iv/2+1)
	d.w.q.push(at, event{kind: evAction, act: d, arg: discArg(discMDNS, p.life, p.idx)})
}

// crashed forgets what dies with a node: its LAN connections and its
// rendezvous stream.
func (d *discovery) crashed(p *peer) {
	d.disconnect(p)
	d.unsubscribe(p)
	p.disc.rdvAt = 0
}

// moved runs when p's segment or tag changed: its LAN connections are gone,
// and a running node announces itself on its new LAN.
func (d *discovery) moved(p *peer) {
	d.disconnect(p)
	if p.node != nil {
		d.burst(p)
	}
}

// burst announces p with a query now and repeats it (mdnsRepeats).
func (d *discovery) burst(p *peer) {
	d.announce(p, true)
	for _, dt := range mdnsRepeats {
		d.w.q.push(d.w.now+int64(dt), event{kind: evAction, act: d, arg: discArg(discQuery, p.life, p.idx)})
	}
}

// partitioned breaks the rendezvous streams that a new partition cuts.
func (d *discovery) partitioned() {
	if d.rdv == nil {
		return
	}
	w := d.w
	for _, p := range w.peers {
		if p.disc.sub && (w.blocked(p.idx, rdvIdx) || w.blocked(rdvIdx, p.idx)) {
			d.unsubscribe(p)
		}
	}
}

func (d *discovery) unsubscribe(p *peer) {
	if p.disc.sub {
		p.disc.sub = false
		p.disc.subGen++
	}
}

// announce sends p's mDNS announcement (a query when query is set) to the
// running peers of its segment with its tag.
func (d *discovery) announce(p *peer, query bool) {
	w := d.w
	if p.segment == "" || p.node == nil {
		return
	}
	for _, j := range w.segs[p.segment] {
		q := w.peers[j]
		if j == p.idx || q.node == nil || q.disc.tag != p.disc.tag {
			continue
		}
		d.mdnsSend(p, q, query)
	}
}

func (d *discovery) mdnsSend(p, q *peer, query bool) {
	w := d.w
	st := &w.stats.Presence
	st.MDNSSent++
	if w.blocked(p.idx, q.idx) {
		st.MDNSLost++
		return
	}
	lp := w.link(p.idx, q.idx)
	if lp.Loss > 0 && p.net.Float64() < lp.Loss {
		st.MDNSLost++
		return
	}
	var arg int64
	if query {
		arg = 1
	}
	at := w.arrival(p.idx, q.idx, lp, p.net, 128)
	w.q.push(at, event{kind: evMDNS, to: q.idx, from: p.idx, toLife: q.life, fromLife: p.life, arg: arg})
}

// connect gives a and b a LAN connection when they can have one: both
// running, same segment and tag, nothing cutting them apart. Each learns
// after the link delay that the other joined the presence topic.
func (d *discovery) connect(a, b *peer) {
	w := d.w
	if a == b || a.node == nil || b.node == nil || a.disc.lan.has(b.idx) || a.segment == "" ||
		a.segment != b.segment || a.disc.tag != b.disc.tag || w.blocked(a.idx, b.idx) || w.blocked(b.idx, a.idx) {
		return
	}
	a.disc.lan.add(b.idx)
	b.disc.lan.add(a.idx)
	w.stats.Presence.Connects++
	w.topoLog = append(w.topoLog, pairKey(a.idx, b.idx))
	w.hashWord(0xc1<<56 | uint64(w.now))
	w.hashWord(pairKey(a.idx, b.idx))
	w.q.push(w.now+w.baseLatency(b.idx, a.idx, w.link(b.idx, a.idx)), event{kind: evJoined, to: a.idx, from: b.idx, toLife: a.life, fromLife: b.life})
	w.q.push(w.now+w.baseLatency(a.idx, b.idx, w.link(a.idx, b.idx)), event{kind: evJoined, to: b.idx, from: a.idx, toLife: b.life, fromLife: a.life})
}

func pairKey(a, b int32) uint64 { return uint64(uint32(min(a, b)))<<32 | uint64(uint32(max(a, b))) }

const (
	topoAllKey  = ^uint64(0)
	topoPeerBit = uint64(1) << 63
)

// topoAll records a change of reachability that may concern every pair.
func (w *World) topoAll() { w.topoLog = append(w.topoLog, topoAllKey) }

// topoPeer records a change of reachability of peer i (start, crash, place).
func (w *World) topoPeer(i int32) { w.topoLog = append(w.topoLog, topoPeerBit|uint64(uint32(i))) }

// disconnect drops every LAN connection of p.
func (d *discovery) disconnect(p *peer) {
	w := d.w
	for wi, word := range p.disc.lan {
		for word != 0 {
			bit := int32(wi*64 + bits.TrailingZeros64(word))
			word &= word - 1
			w.peers[bit].disc.lan.del(p.idx)
			w.topoLog = append(w.topoLog, pairKey(p.idx, bit))
		}
		p.disc.lan[wi] = 0
	}
}

// dial carries out a node's connect hint: counted, and a LAN connection
// when the two peers can have one.
func (d *discovery) dial(p *peer, h *presence.DialHint) {
	d.w.stats.Presence.Dials++
	if j, ok := d.w.index(h.Peer); ok {
		d.connect(p, d.w.peers[j])
	}
}

// publish carries a presence the node of p published: GossipSub on its LAN
// connections and a publish to the rendezvous.
func (d *discovery) publish(p *peer, pm *presence.Msg) {
	w := d.w
	st := &w.stats.Presence
	m := new(presence.Msg) // shared by every delivery, never modified
	*m = *pm
	st.Published++
	w.hashWord(0xc0<<56 | uint64(w.now))
	w.hashWord(uint64(p.idx)<<32 | uint64(m.TS)&0xffffffff)
	d.codec(m)
	size := 256 + len(m.Content)
	if p.segment != "" && len(p.disc.lan) > 0 {
		for _, j := range w.segs[p.segment] {
			q := w.peers[j]
			if j == p.idx || !p.disc.lan.has(j) || q.node == nil {
				continue
			}
			st.Gossiped++
			if w.blocked(p.idx, j) {
				st.Dropped++
				continue
			}
			at := w.arrival(p.idx, j, w.link(p.idx, j), p.net, size)
			w.q.push(at, event{kind: evGossip, to: j, from: p.idx, toLife: q.life, fromLife: p.life, pmsg: m})
		}
	}
	if r := d.rdv; r != nil && !p.disc.noWAN {
		if !r.up || w.blocked(p.idx, rdvIdx) {
			st.Dropped++
			return
		}
		at := w.arrival(p.idx, rdvIdx, d.link(p.idx, rdvIdx), p.net, size)
		w.q.push(at, event{kind: evRdvPublish, to: rdvIdx, from: p.idx, toLife: r.life, fromLife: p.life, pmsg: m})
	}
}

// codec makes every CodecEvery-th presence travel through Encode and Decode,
// as on the wire.
func (d *discovery) codec(m *presence.Msg) {
	w := d.w
	if w.opts.CodecEvery <= 0 {
		return
	}
	if d.codecN++; d.codecN < w.opts.CodecEvery {
		return
	}
	d.codecN = 0
	w.stats.CodecChecked++
	b := m.Encode()
	g, err := presence.Decode(b)
	if err == nil && !bytes.Equal(g.Encode(), b) {
		err = fmt.Errorf("decodes to %s", g.Encode())
	}
	if err != nil {
		w.violate(&Violation{Property: "sim/codec", Detail: fmt.Sprintf("presence %s of %s does not survive the codec: %v", m.Type, m.PeerID, err)})
	}
}

// link returns the model of a link between a peer and the rendezvous.
func (d *discovery) link(from, to int32) *LinkParams {
	if len(d.w.links) > 0 {
		if lp, ok := d.w.links[linkKey(from, to)]; ok {
			return &lp
		}
	}
	return &d.opts.WANLink
}

// handle processes a discovery event.
func (d *discovery) handle(ev *event) {
	w := d.w
	st := &w.stats.Presence
	switch ev.kind {
	case evGossip:
		p := w.peers[ev.to]
		if p.node == nil || p.life != ev.toLife || w.blocked(ev.from, ev.to) {
			st.Dropped++
			return
		}
		w.deliverPresence(p, int(ev.from), w.peers[ev.from].id, presence.SourceLAN, true, ev.pmsg)
	case evRdvEvent:
		p := w.peers[ev.to]
		if p.node == nil || p.life != ev.toLife || !p.disc.sub || p.disc.subGen != uint32(ev.arg) || w.blocked(rdvIdx, ev.to) {
			st.Dropped++
			return
		}
		subject := -1
		if i, ok := w.index(ev.pmsg.PeerID); ok {
			subject = int(i)
		}
		w.deliverPresence(p, subject, "", presence.SourceWAN, ev.arg>>32&1 == 1, ev.pmsg)
	case evRdvPublish:
		d.rdvPublish(ev)
	case evMDNS:
		q, p := w.peers[ev.to], w.peers[ev.from]
		if q.node == nil || q.life != ev.toLife || p.node == nil || p.life != ev.fromLife || w.blocked(ev.from, ev.to) ||
			p.segment != q.segment || p.disc.tag != q.disc.tag {
			st.MDNSLost++
			return
		}
		if ev.arg == 1 {
			d.mdnsSend(q, p, false) // the answer to p's query
		}
		st.Found++
		w.stats.Events++
		_ = q.node.Discovered(w.vt(), presence.SourceLAN, p.id, p.disc.addrs) // only ErrSelf or invalid addrs: neither here
		d.connect(q, p)                                                       // the adapter dials what mDNS finds
		w.flush(q, StepFound, int(p.idx), -1, nil)
	case evJoined:
		p, q := w.peers[ev.to], w.peers[ev.from]
		if p.node == nil || p.life != ev.toLife || q.life != ev.fromLife || !p.disc.lan.has(q.idx) {
			return
		}
		st.Joins++
		w.stats.Events++
		_ = p.node.HandleDiscovery(w.vt(), ports.DiscoveryEvent{Kind: ports.PeerJoined, Source: presence.SourceLAN, Peer: q.id})
		w.flush(p, StepJoined, int(q.idx), -1, nil)
	}
}

// deliverPresence hands m to p's node and carries out what it did.
func (w *World) deliverPresence(p *peer, subject int, from mq.PeerID, src presence.Source, verified bool, m *presence.Msg) error {
	st := &w.stats.Presence
	st.Delivered++
	w.stats.Events++
	err := p.node.HandlePresence(w.vt(), src, from, verified, *m)
	if err != nil {
		st.Refused++
	}
	w.pres = presenceStep{msg: m, src: src, err: err}
	w.flush(p, StepPresence, subject, -1, nil)
	w.pres = presenceStep{}
	return err
}

// rdvPublish is a publish reaching the rendezvous.
func (d *discovery) rdvPublish(ev *event) {
	w := d.w
	st := &w.stats.Presence
	r := d.rdv
	if !r.up || r.life != ev.toLife || w.blocked(ev.from, rdvIdx) {
		st.Dropped++
		return
	}
	p := w.peers[ev.from]
	m := ev.pmsg
	e := &r.entries[ev.from]
	if m.TS <= e.lastTS {
		st.RdvRefused++ // the real server answers 403 to a signed replay
		return
	}
	e.lastTS = m.TS
	st.RdvPublishes++
	w.hashWord(0xc2<<56 | uint64(w.now))
	w.hashWord(uint64(ev.from))
	current := p.node != nil && p.life == ev.fromLife
	if m.Type == presence.TypeOffline {
		if e.msg != nil {
			e.msg = nil
			d.fanout(ev.from, m, true)
		}
		if current {
			d.unsubscribe(p) // the client stops after its offline
		}
		return
	}
	e.msg, e.lastSeen = m, w.now
	d.fanout(ev.from, m, true)
	if current && !p.disc.sub && !p.disc.noWAN && !w.blocked(rdvIdx, p.idx) {
		d.subscribe(p)
	}
}

// subscribe opens p's event stream: the server's current peers come first.
func (d *discovery) subscribe(p *peer) {
	w := d.w
	p.disc.sub = true
	p.disc.subGen++
	w.stats.Presence.RdvSubscribes++
	at := d.streamAt(p)
	arg := int64(p.disc.subGen) | 1<<32
	for k := range d.rdv.entries {
		e := &d.rdv.entries[k]
		if e.msg == nil || int32(k) == p.idx {
			continue
		}
		w.stats.Presence.RdvEvents++
		w.q.push(at, event{kind: evRdvEvent, to: p.idx, from: rdvIdx, toLife: p.life, arg: arg, pmsg: e.msg})
	}
}

// streamAt draws when an event the server streams now reaches q: after the
// link delay, and not before the previous one (a stream keeps its order).
func (d *discovery) streamAt(q *peer) int64 {
	w := d.w
	at := w.arrival(rdvIdx, q.idx, d.link(rdvIdx, q.idx), q.disc.rdvIn, 256)
	if at < q.disc.rdvAt {
		at = q.disc.rdvAt
	}
	q.disc.rdvAt = at
	return at
}

// fanout streams m to every subscriber but its subject.
func (d *discovery) fanout(subject int32, m *presence.Msg, verified bool) {
	w := d.w
	st := &w.stats.Presence
	var v int64
	if verified {
		v = 1 << 32
	}
	for _, q := range w.peers {
		if !q.disc.sub || q.idx == subject {
			continue
		}
		st.RdvEvents++
		if w.blocked(rdvIdx, q.idx) {
			st.Dropped++
			continue
		}
		w.q.push(d.streamAt(q), event{kind: evRdvEvent, to: q.idx, from: rdvIdx, toLife: q.life, arg: int64(q.disc.subGen) | v, pmsg: m})
	}
}

// sweep drops the peers silent for RendezvousStale, with an offline each.
func (d *discovery) sweep() {
	r := d.rdv
	if r == nil || !r.up {
		return
	}
	w := d.w
	stale := int64(d.opts.RendezvousStale)
	for k := range r.entries {
		e := &r.entries[k]
		if e.msg == nil || w.now-e.lastSeen < stale {
			continue
		}
		e.msg = nil
		w.stats.Presence.RdvSwept++
		off := &presence.Msg{Type: presence.TypeOffline, PeerID: w.peers[k].id, TS: w.vt().UnixMilli()}
		d.fanout(int32(k), off, false)
	}
}

// Tag returns peer i's mDNS tag ("" without discovery).
func (w *World) Tag(i int) string { return w.peers[i].disc.tag }

// SetTag gives peer i the mDNS tag tag ("" for DefaultMDNSTag): its LAN
// connections are gone and a running peer announces itself with the new
// tag. No-op without discovery.
func (w *World) SetTag(i int, tag string) {
	p := w.peers[i]
	if w.disc == nil {
		return
	}
	if tag == "" {
		tag = DefaultMDNSTag
	}
	if tag == p.disc.tag {
		return
	}
	p.disc.tag = tag
	w.topoPeer(p.idx)
	w.disc.moved(p)
}

// WAN reports whether peer i uses the rendezvous of a world that has one.
func (w *World) WAN(i int) bool {
	return w.disc != nil && w.disc.rdv != nil && !w.peers[i].disc.noWAN
}

// SetWAN makes peer i use the rendezvous or not; off closes its event
// stream (what it published stays with the server until it is stale).
func (w *World) SetWAN(i int, on bool) {
	p := w.peers[i]
	if w.disc == nil || p.disc.noWAN == !on {
		return
	}
	p.disc.noWAN = !on
	w.topoPeer(p.idx)
	if !on {
		w.disc.unsubscribe(p)
	}
}

// LANConnected reports whether peers i and j have a LAN connection (GossipSub).
func (w *World) LANConnected(i, j int) bool { return w.peers[i].disc.lan.has(int32(j)) }

// HasRendezvous reports whether the world has a rendezvous node.
func (w *World) HasRendezvous() bool { return w.disc != nil && w.disc.rdv != nil }

// RendezvousUp reports whether the rendezvous node runs.
func (w *World) RendezvousUp() bool { return w.HasRendezvous() && w.disc.rdv.up }

// RendezvousPeers returns the peers whose presence the rendezvous holds and
// how many peers have an open event stream.
func (w *World) RendezvousPeers() (known []int, subscribed int) {
	if !w.HasRendezvous() {
		return nil, 0
	}
	for k, e := range w.disc.rdv.entries {
		if e.msg != nil {
			known = append(known, k)
		}
	}
	for _, p := range w.peers {
		if p.disc.sub {
			subscribed++
		}
	}
	return known, subscribed
}

// Subscribed reports whether peer i's rendezvous event stream is open.
func (w *World) Subscribed(i int) bool { return w.peers[i].disc.sub }

// CrashRendezvous stops the rendezvous node: it forgets every peer and every
// event stream breaks (the clients reconnect with their next publish).
func (w *World) CrashRendezvous() error {
	if !w.HasRendezvous() {
		return ErrNoRendezvous
	}
	r := w.disc.rdv
	if !r.up {
		return fmt.Errorf("crash the rendezvous: %w", ErrPeerDown)
	}
	r.up = false
	r.life++
	clear(r.entries)
	for _, p := range w.peers {
		w.disc.unsubscribe(p)
	}
	w.topoAll()
	w.stats.Presence.RdvCrashes++
	w.hashWord(0xc3<<56 | uint64(w.now))
	return nil
}

// RestartRendezvous starts the rendezvous node again, empty.
func (w *World) RestartRendezvous() error {
	if !w.HasRendezvous() {
		return ErrNoRendezvous
	}
	r := w.disc.rdv
	if r.up {
		return fmt.Errorf("restart the rendezvous: %w", ErrPeerUp)
	}
	r.up = true
	w.topoAll()
	w.hashWord(0xc4<<56 | uint64(w.now))
	return nil
}

// ErrNoRendezvous: the world has no rendezvous node.
var ErrNoRendezvous = fmt.Errorf("simnet: the world has no rendezvous node")

// Shutdown stops peer i gracefully: its node announces that it goes offline
// (Node.StopPresence, carried out like any step), then it crashes. Presence
// already sent still arrives.
func (w *World) Shutdown(i int) error {
	if i < 0 || i >= len(w.peers) {
		return ErrNoPeer
	}
	p := w.peers[i]
	if p.node == nil {
		return fmt.Errorf("shut down %s: %w", w.Name(i), ErrPeerDown)
	}
	w.stats.Events++
	p.node.StopPresence(w.vt())
	w.flush(p, StepStop, -1, -1, nil)
	return w.Crash(i)
}

// InjectPresence hands msg to peer to's node as if it arrived over src from
// sender (a forgery, for tests and scripts), and carries out what the node
// did. It returns the node's verdict (presence.ErrForged, ...).
func (w *World) InjectPresence(to int, src presence.Source, sender mq.PeerID, verified bool, msg presence.Msg) error {
	if to < 0 || to >= len(w.peers) {
		return ErrNoPeer
	}
	p := w.peers[to]
	if p.node == nil {
		return fmt.Errorf("inject presence at %s: %w", w.Name(to), ErrPeerDown)
	}
	subject := -1
	if i, ok := w.index(msg.PeerID); ok {
		subject = int(i)
	}
	return w.deliverPresence(p, subject, sender, src, verified, &msg)
}
