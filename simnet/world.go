// Package simnet is the deterministic in-process simulator of Goop nodes.
//
// A World runs many peers, each built from the real app.Node with simulated
// ports (clock, randomness, storage, transport), on one scheduler and one
// goroutine. Events are ordered by (virtual time, sequence number); every
// random choice comes from a stream derived from the world's seed, so the same
// seed and the same commands give the same event trace, which the world folds
// into a trace hash. The network model has per-link latency, jitter, loss,
// duplication, reordering and bandwidth, partitions (symmetric or one-way),
// LAN segments for broadcasts, and crash/restart of peers where only what a
// peer durably stored survives. With Options.Discovery, nodes announce their
// presence: mDNS and GossipSub on their LAN segment (per mDNS tag) and a
// modelled rendezvous server (discovery.go). Checkers verify safety
// properties after every event; Converge heals everything and waits for
// liveness by a deadline.
//
// A World is not safe for concurrent use; separate worlds may run on separate
// goroutines.
package simnet

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/domain/presence"
	"github.com/goop-p2p/goop/ports"
)

// epoch is virtual time zero.
var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// Epoch returns the wall-clock instant of virtual time zero (2026-01-01 UTC).
func Epoch() time.Time { return epoch }

// Errors returned by World methods.
var (
	ErrPeerDown  = errors.New("simnet: peer is down")
	ErrPeerUp    = errors.New("simnet: peer is up")
	ErrNoPeer    = errors.New("simnet: no such peer")
	ErrNoSegment = errors.New("simnet: peer is on no LAN segment")
)

// LinkParams model one direction of a link between two peers.
type LinkParams struct {
	// Latency is the base one-way delay.
	Latency time.Duration `json:"latency"`
	// Jitter adds a uniform random delay in [0, Jitter).
	Jitter time.Duration `json:"jitter"`
	// Loss is the probability that a frame is dropped.
	Loss float64 `json:"loss"`
	// Dup is the probability that a frame arrives twice.
	Dup float64 `json:"dup"`
	// Reorder is the probability that a frame is held back by up to
	// ReorderDelay, so that later frames overtake it.
	Reorder      float64       `json:"reorder"`
	ReorderDelay time.Duration `json:"reorder_delay"`
	// Bandwidth in bytes per second; frames on one link queue behind each
	// other. Zero means unlimited.
	Bandwidth int64 `json:"bandwidth"`
}

// DefaultLink is a clean LAN-like link: 5 ms ± 2 ms, no loss.
func DefaultLink() LinkParams {
	return LinkParams{Latency: 5 * time.Millisecond, Jitter: 2 * time.Millisecond, ReorderDelay: 50 * time.Millisecond}
}

// SimBusOptions are bus settings sized for simulation: a 200 ms first
// retransmission timeout doubling to 2 s, and so many attempts that no message
// is given up within a scenario (a failed message is a liveness failure).
func SimBusOptions() mq.Options {
	o := mq.DefaultOptions()
	o.InitialRTO = 200 * time.Millisecond
	o.MaxRTO = 2 * time.Second
	o.MaxAttempts = 100_000
	return o
}

// Options configure a World.
type Options struct {
	// Peers is the number of peers created by New.
	Peers int
	// Link is the model of every link without an override (SetLink).
	Link LinkParams
	// LatencySpread adds to each link a fixed extra latency in
	// [0, LatencySpread), derived from the seed and the two peers (symmetric).
	LatencySpread time.Duration
	// Node configures every node; a zero Node.Bus means SimBusOptions, and
	// zero group timers take SimGroupConfig's values.
	Node app.NodeOptions
	// CodecEvery makes every n-th frame travel through mq.AppendFrame and
	// mq.DecodeFrame (0 means 64; negative disables).
	CodecEvery int
	// NoReceivedAcks turns off the transport's early received acks (on by
	// default, as on real 1.1.0 streams: every fourth message of World.Send
	// asks for one).
	NoReceivedAcks bool
	// Checkers verify properties after every step; nil means DefaultCheckers.
	// Checkers are stateful: give each world its own.
	Checkers []Checker
	// OnStep, if set, sees every step after the checkers (tracing, scripts).
	OnStep func(w *World, s *Step)
	// OnBroadcast, if set, is called when a LAN broadcast reaches a peer.
	OnBroadcast func(w *World, to, from int, payload []byte)
	// Discovery, if set, turns presence and discovery on (see
	// DiscoveryOptions): every node announces itself (Node.Presence.Announce
	// is forced on, zero timings take the compat values) and a nil Checkers
	// also gets a PresenceChecker. Without it, nodes announce nothing and
	// whatever presence they would publish goes nowhere.
	Discovery *DiscoveryOptions
}

// Action is work scheduled on the world's timeline (workloads, fault plans).
type Action interface {
	Fire(w *World, arg int64)
}

// ActionFunc adapts a function to Action.
type ActionFunc func(w *World, arg int64)

// Fire implements Action.
func (f ActionFunc) Fire(w *World, arg int64) { f(w, arg) }

// StepKind tells what caused a Step.
type StepKind uint8

// Step kinds.
const (
	StepStart      StepKind = iota + 1 // a node was created or restarted from its store
	StepFrame                          // a frame arrived (Frame, From)
	StepWake                           // the node's timers fired
	StepSend                           // the application queued a message (Frame, To)
	StepConnect                        // the node learnt a connection to From is up
	StepDisconnect                     // the node learnt its connection to From is gone
	StepCrash                          // the peer crashed; its node is gone
	StepBroadcast                      // a LAN broadcast from From reached the peer
	StepCommand                        // a group command ran on the peer's node (Command)
	StepPresence                       // a presence message reached the peer (Presence, Source; From is its subject)
	StepFound                          // mDNS: the peer found From on its segment
	StepJoined                         // GossipSub: From joined the presence topic on a LAN connection of the peer
	StepStop                           // the peer stopped its presence (graceful shutdown; a crash follows)
)

var stepNames = [...]string{"?", "start", "frame", "wake", "send", "connect", "disconnect", "crash", "broadcast", "command",
	"presence", "found", "joined", "stop"}

func (k StepKind) String() string {
	if int(k) < len(stepNames) {
		return stepNames[k]
	}
	return "?"
}

// Step is one thing that happened to one peer, with what its node published.
// It and everything it points to are only valid during the call that sees it.
type Step struct {
	Time time.Duration // virtual time since Epoch
	Kind StepKind
	Peer int // the peer that stepped
	// From is the other peer of a frame, connection or broadcast; To the
	// destination of a StepSend. -1 when not applicable.
	From, To int
	// Frame is the frame received (StepFrame) or queued (StepSend).
	Frame *mq.Frame
	// Events is what the node published in this step.
	Events []app.Event
	// Command is the group command of a StepCommand, with its result.
	Command *GroupCommand
	// Presence is the message of a StepPresence and Source how it came
	// (presence.SourceLAN: GossipSub on the segment; presence.SourceWAN:
	// the rendezvous). PresenceErr is why the node changed nothing for it
	// (presence.ErrStale, ...), nil when it was accepted.
	Presence    *presence.Msg
	Source      presence.Source
	PresenceErr error
}

// Stats count what happened in a world.
type Stats struct {
	Events           uint64        `json:"events"`
	MsgsSent         uint64        `json:"msgs_sent"`
	MsgsRejected     uint64        `json:"msgs_rejected"`
	MsgsDelivered    uint64        `json:"msgs_delivered"`
	MsgsAcked        uint64        `json:"msgs_acked"`
	MsgsFailed       uint64        `json:"msgs_failed"`
	FramesSent       uint64        `json:"frames_sent"`
	FramesDelivered  uint64        `json:"frames_delivered"`
	FramesDuplicated uint64        `json:"frames_duplicated"`
	DroppedLoss      uint64        `json:"dropped_loss"`
	DroppedPartition uint64        `json:"dropped_partition"`
	DroppedDown      uint64        `json:"dropped_down"`
	DroppedUnknown   uint64        `json:"dropped_unknown"`
	CodecChecked     uint64        `json:"codec_checked"`
	Crashes          uint64        `json:"crashes"`
	Restarts         uint64        `json:"restarts"`
	Partitions       uint64        `json:"partitions"`
	Heals            uint64        `json:"heals"`
	Broadcasts       uint64        `json:"broadcasts"`
	BroadcastsRecv   uint64        `json:"broadcasts_received"`
	Presence         PresenceStats `json:"presence"`
}

// FramesDropped is the number of frames the network did not deliver.
func (s Stats) FramesDropped() uint64 {
	return s.DroppedLoss + s.DroppedPartition + s.DroppedDown + s.DroppedUnknown
}

const noWake = int64(-1 << 63)

type peer struct {
	idx         int32
	id          mq.PeerID
	node        *app.Node // nil while down
	store       *Store
	life        uint32 // bumped at every crash and restart
	incarnation int
	net         *rand.Rand // network draws for frames this peer sends
	app         *rand.Rand // the peer's workload stream
	wakeAt      int64      // time of the live wake event, or noWake
	segment     string
	contacts    bitset // peers this peer ever sent a frame to (any incarnation)
	contactedBy bitset // peers that ever sent this peer a frame (the reverse of contacts)
	disc        peerDisc
}

// bitset is a growable set of peer indexes.
type bitset []uint64

func (b *bitset) add(i int32) {
	w := int(i >> 6)
	if w >= len(*b) {
		*b = append(*b, make([]uint64, w+1-len(*b))...)
	}
	(*b)[w] |= 1 << (uint(i) & 63)
}

func (b bitset) has(i int32) bool {
	w := int(i >> 6)
	return w < len(b) && b[w]&(1<<(uint(i)&63)) != 0
}

func (b bitset) del(i int32) {
	if w := int(i >> 6); w < len(b) {
		b[w] &^= 1 << (uint(i) & 63)
	}
}

type partition struct {
	id     int
	oneWay bool
	side   []int8 // per peer index: 0 outside, 1 side A, 2 side B
	rdv    int8   // the rendezvous node's side
}

func (p *partition) sideOf(i int32) int8 {
	if i < 0 {
		if i == rdvIdx {
			return p.rdv
		}
		return 0
	}
	if int(i) < len(p.side) {
		return p.side[i]
	}
	return 0
}

// World is a simulated network of Goop nodes. Not safe for concurrent use.
type World struct {
	seed     uint64
	opts     Options
	ctx      context.Context
	now      int64
	q        sched
	peers    []*peer
	byID     map[mq.PeerID]int32
	parts    []*partition
	partSeq  int
	segs     map[string][]int32
	links    map[uint64]LinkParams
	busy     map[uint64]int64
	checkers []Checker
	fail     *Violation
	hash     uint64
	stats    Stats
	step     Step
	codecN   int
	codecBuf []byte
	cur      mq.Frame      // the frame being received, for Step.Frame
	cmd      *GroupCommand // the group command being flushed, for Step.Command
	disc     *discovery    // nil without Options.Discovery
	// topoLog records changes of who can reach whom, for the presence
	// checker: topoAll (partitions, the rendezvous), a peer (1<<63 | index:
	// start, crash, segment, tag, WAN) or a pair (lo<<32 | hi: a LAN
	// connection made or lost).
	topoLog []uint64
	pres    presenceStep // the presence message being handled, for Step.Presence
}

// New builds a world of opts.Peers peers for seed.
func New(seed uint64, opts Options) *World {
	if opts.Node.Bus == (mq.Options{}) {
		opts.Node.Bus = SimBusOptions()
	}
	opts.Node.Groups = withSimGroupTimers(opts.Node.Groups)
	if opts.CodecEvery == 0 {
		opts.CodecEvery = 64
	}
	if opts.Checkers == nil {
		opts.Checkers = DefaultCheckers()
		if opts.Discovery != nil {
			opts.Checkers = append(opts.Checkers, NewPresenceChecker())
		}
	}
	if opts.Discovery != nil {
		opts.Node.Presence = simPresence(opts.Node.Presence)
		d := opts.Discovery.withDefaults(opts.Node.Presence.Heartbeat)
		opts.Discovery = &d
	}
	w := &World{
		seed:     seed,
		opts:     opts,
		ctx:      context.Background(),
		byID:     map[mq.PeerID]int32{},
		segs:     map[string][]int32{},
		links:    map[uint64]LinkParams{},
		busy:     map[uint64]int64{},
		checkers: opts.Checkers,
		hash:     fnvOffset,
	}
	w.hashWord(seed)
	if opts.Discovery != nil {
		w.disc = newDiscovery(w, *opts.Discovery)
	}
	for i := 0; i < opts.Peers; i++ {
		w.AddPeer()
	}
	return w
}

// Seed returns the world's seed.
func (w *World) Seed() uint64 { return w.seed }

// Options returns the options the world runs with (defaults filled in).
func (w *World) Options() Options { return w.opts }

// Elapsed returns the virtual time since Epoch.
func (w *World) Elapsed() time.Duration { return time.Duration(w.now) }

// Now returns the virtual wall-clock time.
func (w *World) Now() time.Time { return epoch.Add(time.Duration(w.now)) }

// NumPeers returns how many peers were ever added (up or down).
func (w *World) NumPeers() int { return len(w.peers) }

// PeerID returns peer i's id.
func (w *World) PeerID(i int) mq.PeerID { return w.peers[i].id }

// Name returns peer i's short name as used in reports and scripts ("p3";
// "rdv" for Rendezvous).
func (w *World) Name(i int) string {
	if i == Rendezvous {
		return "rdv"
	}
	return fmt.Sprintf("p%d", i)
}

// Index returns the index of the peer with id.
func (w *World) Index(id mq.PeerID) (int, bool) {
	i, ok := w.index(id)
	return int(i), ok
}

// index resolves a peer id. Sim ids start with "sim<index>-" ("sim<index>x"
// in worlds with discovery), so the index is parsed and confirmed instead of
// hashing the id into a map.
func (w *World) index(id mq.PeerID) (int32, bool) {
	if len(id) > 4 && id[0] == 's' && id[1] == 'i' && id[2] == 'm' {
		n := 0
		for k := 3; k < len(id) && k < 13; k++ {
			c := id[k]
			if c == '-' || c == 'x' {
				if n < len(w.peers) && w.peers[n].id == id {
					return int32(n), true
				}
				break
			}
			if c < '0' || c > '9' {
				break
			}
			n = n*10 + int(c-'0')
		}
	}
	i, ok := w.byID[id]
	return i, ok
}

// peerID implements peerIndex for the peers' stores.
func (w *World) peerID(i int32) mq.PeerID { return w.peers[i].id }

// Up reports whether peer i is running.
func (w *World) Up(i int) bool { return w.peers[i].node != nil }

// Node returns peer i's node, or nil while it is down. Inspect only: calling
// its step methods bypasses the world.
func (w *World) Node(i int) *app.Node { return w.peers[i].node }

// Incarnation returns how many times peer i's node was started.
func (w *World) Incarnation(i int) int { return w.peers[i].incarnation }

// Durable returns what peer i has durably stored: what a restart would load.
func (w *World) Durable(i int) mq.Snapshot {
	snap, _ := w.peers[i].store.LoadBus(w.ctx) // the memory store never fails to load
	return snap
}

// PeerRand returns peer i's workload stream, for scenario drivers: it depends
// only on the seed and i.
func (w *World) PeerRand(i int) *rand.Rand { return w.peers[i].app }

// ScenarioRand returns a fresh stream for a scenario plan named by tag.
func (w *World) ScenarioRand(tag uint64) *rand.Rand { return newStream(w.seed, streamScenario, tag) }

// Stats returns the world's counters.
func (w *World) Stats() Stats { return w.stats }

// TraceHash returns the running hash of every event processed so far.
func (w *World) TraceHash() uint64 { return w.hash }

// Checkers returns the world's checkers.
func (w *World) Checkers() []Checker { return w.checkers }

// Err returns the first broken invariant, or nil.
func (w *World) Err() error {
	if w.fail == nil {
		return nil
	}
	return w.fail
}

// Violation returns the first broken invariant, or nil.
func (w *World) Violation() *Violation { return w.fail }

func (w *World) vt() time.Time { return epoch.Add(time.Duration(w.now)) }

// AddPeer adds a new peer, starts its node and returns its index. Its id and
// random streams depend only on the seed and its index.
func (w *World) AddPeer() int {
	idx := int32(len(w.peers))
	r := newStream(w.seed, streamPeerID, uint64(idx))
	sep := '-'
	if w.opts.Discovery != nil {
		sep = 'x' // presence accepts only letters and digits in peer ids
	}
	id := mq.PeerID(fmt.Sprintf("sim%d%c%012x", idx, sep, r.Uint64()>>16))
	p := &peer{
		idx:    idx,
		id:     id,
		store:  newStore(w),
		net:    newStream(w.seed, streamNet, uint64(idx)),
		app:    newStream(w.seed, streamApp, uint64(idx)),
		wakeAt: noWake,
	}
	w.peers = append(w.peers, p)
	w.byID[id] = idx
	if w.disc != nil {
		w.disc.place(p)
	}
	w.start(p)
	return int(idx)
}

// start creates p's node from its durable store, completes its restore with
// a first Tick (as app.Runtime does) and flushes its first Ready.
func (w *World) start(p *peer) {
	bus, _ := p.store.LoadBus(w.ctx) // the sim store never fails to load
	groups, _ := p.store.LoadGroups(w.ctx)
	peers, _ := p.store.LoadPeers(w.ctx)
	p.incarnation++
	p.life++
	p.wakeAt = noWake
	w.topoPeer(p.idx)
	rnd := &nodeRand{newStream(w.seed, streamNode, uint64(p.idx), uint64(p.incarnation))}
	opts := w.opts.Node
	if w.disc != nil {
		opts.Profile.Label = w.Name(int(p.idx))
		opts.Profile.Addrs = p.disc.addrs
	}
	p.node = app.NewNode(p.id, app.State{Bus: bus, Groups: groups, Peers: peers}, rnd, opts)
	p.node.Tick(w.vt())
	w.stats.Events++
	w.flush(p, StepStart, -1, -1, nil)
	if w.disc != nil {
		w.disc.started(p)
	}
}

// Send makes peer from's application queue a message to peer to, durably,
// as the real runtime's Send does. It returns the frame as queued.
func (w *World) Send(from, to int, topic string, payload []byte) (mq.Frame, error) {
	if from < 0 || from >= len(w.peers) || to < 0 || to >= len(w.peers) {
		return mq.Frame{}, ErrNoPeer
	}
	p := w.peers[from]
	if p.node == nil {
		w.stats.MsgsRejected++
		return mq.Frame{}, fmt.Errorf("send from %s: %w", w.Name(from), ErrPeerDown)
	}
	// Every fourth message asks for the early received ack, as a caller
	// waiting for a round trip does (the others get the final ack alone).
	want := ""
	if w.stats.MsgsSent%4 == 0 && !w.opts.NoReceivedAcks {
		want = mq.StageReceived
	}
	f, err := p.node.SendWant(w.vt(), w.peers[to].id, topic, payload, "", want)
	if err != nil {
		w.stats.MsgsRejected++
		return mq.Frame{}, err
	}
	w.stats.MsgsSent++
	w.stats.Events++
	w.flush(p, StepSend, -1, to, &f)
	return f, nil
}

// flush carries out p's Ready the way app.Runtime does: send the early
// frames, persist the batch, then send the other frames, then publish the
// events (to the checkers).
func (w *World) flush(p *peer, kind StepKind, from, to int, f *mq.Frame) {
	rd := p.node.Ready()
	for i := range rd.EarlyFrames {
		w.transmit(p, &rd.EarlyFrames[i])
	}
	if !rd.Batch.Empty() {
		if err := p.store.Apply(w.ctx, rd.Batch); err != nil {
			w.violate(&Violation{Property: "sim/store", Time: time.Duration(w.now), Detail: err.Error()})
		}
	}
	for i := range rd.Frames {
		w.transmit(p, &rd.Frames[i])
	}
	if w.disc != nil {
		for i := range rd.Publish {
			w.disc.publish(p, &rd.Publish[i])
		}
		for i := range rd.Dial {
			w.disc.dial(p, &rd.Dial[i])
		}
	}
	w.observe(kind, int(p.idx), from, to, f, rd.Events)
	w.rearm(p)
}

func (w *World) observe(kind StepKind, peer, from, to int, f *mq.Frame, evs []app.Event) {
	w.hashWord(uint64(w.now))
	w.hashWord(uint64(kind)<<56 | uint64(uint32(peer))<<24 | uint64(uint32(from))&0xffffff)
	if f != nil {
		w.hashWord(uint64(f.Seq))
		w.hashString(f.ID)
	}
	for i := range evs {
		ev := &evs[i]
		switch ev.Kind {
		case app.EventMessage:
			w.stats.MsgsDelivered++
		case app.EventDelivered:
			w.stats.MsgsAcked++
		case app.EventFailed:
			w.stats.MsgsFailed++
		}
		var seq int64
		if ev.Msg != nil {
			seq = ev.Msg.Seq
		}
		w.hashWord(uint64(ev.Kind)<<56 | uint64(seq))
		w.hashString(ev.MsgID)
		if ev.Group != nil {
			w.hashString(ev.Group.Type)
			w.hashString(ev.Group.Group)
			w.hashString(string(ev.Group.From))
		}
		if pe := ev.Presence; pe != nil {
			w.hashString(pe.Type)
			w.hashString(string(pe.Peer.ID))
			w.hashString(string(pe.Peer.Source))
		}
	}
	if c := w.cmd; c != nil {
		w.hashWord(uint64(c.Op)<<32 | uint64(uint32(c.Peer)))
		w.hashString(c.Group)
	}
	if m := w.pres.msg; m != nil {
		w.hashWord(uint64(m.TS))
		w.hashString(m.Type)
		w.hashString(string(w.pres.src))
	}
	s := &w.step
	*s = Step{Time: time.Duration(w.now), Kind: kind, Peer: peer, From: from, To: to, Frame: f, Events: evs, Command: w.cmd,
		Presence: w.pres.msg, Source: w.pres.src, PresenceErr: w.pres.err}
	if w.fail == nil {
		for _, c := range w.checkers {
			if v := c.Observe(w, s); v != nil {
				w.violate(v)
				break
			}
		}
	}
	if w.opts.OnStep != nil {
		w.opts.OnStep(w, s)
	}
	*s = Step{}
}

func (w *World) violate(v *Violation) {
	if w.fail == nil {
		v.Time = time.Duration(w.now)
		w.fail = v
	}
}

// rearm makes sure a wake event exists no later than the node's NextWake.
func (w *World) rearm(p *peer) {
	at, ok := p.node.NextWake()
	if !ok {
		return // a pending wake event, if any, finds nothing due and lapses
	}
	t := max(int64(at.Sub(epoch)), w.now)
	if p.wakeAt == noWake || t < p.wakeAt {
		p.wakeAt = t
		w.q.push(t, event{kind: evWake, to: p.idx, toLife: p.life})
	}
}

// transmit puts one outgoing frame of peer p on the simulated network.
func (w *World) transmit(p *peer, o *mq.Outgoing) {
	w.stats.FramesSent++
	ti, ok := w.index(o.To)
	if !ok {
		w.stats.DroppedUnknown++
		return
	}
	from := p.idx
	if !p.contacts.has(ti) {
		p.contacts.add(ti)
		w.peers[ti].contactedBy.add(from)
	}
	if w.blocked(from, ti) {
		w.stats.DroppedPartition++
		return
	}
	lp := w.link(from, ti)
	r := p.net
	if lp.Loss > 0 && r.Float64() < lp.Loss {
		w.stats.DroppedLoss++
		return
	}
	copies := 1
	if lp.Dup > 0 && r.Float64() < lp.Dup {
		copies = 2
		w.stats.FramesDuplicated++
	}
	f := o.Frame
	if len(f.Payload) > 0 {
		f.Payload = slices.Clone(f.Payload) // the wire shares no memory with the sender
	}
	if w.opts.CodecEvery > 0 {
		w.codecN++
		if w.codecN >= w.opts.CodecEvery {
			w.codecN = 0
			f = w.roundTrip(f)
		}
	}
	size := 64 + len(f.ID) + len(f.Topic) + len(f.Payload) + len(f.Epoch) + len(f.Origin)
	q := w.peers[ti]
	for c := 0; c < copies; c++ {
		at := w.arrival(from, ti, lp, r, size)
		w.q.push(at, event{kind: evFrame, to: ti, from: from, toLife: q.life, fromLife: p.life, frame: f})
	}
}

// roundTrip encodes and decodes f as the real transport would.
func (w *World) roundTrip(f mq.Frame) mq.Frame {
	w.stats.CodecChecked++
	w.codecBuf = mq.AppendFrame(w.codecBuf[:0], &f)
	g, err := mq.DecodeFrame(w.codecBuf[:len(w.codecBuf)-1])
	if err != nil {
		w.violate(&Violation{Property: "sim/codec", Detail: fmt.Sprintf("frame %s seq %d does not survive the codec: %v", f.ID, f.Seq, err)})
		return f
	}
	return g
}

func linkKey(from, to int32) uint64 { return uint64(uint32(from))<<32 | uint64(uint32(to)) }

// link returns the model of the link from → to.
func (w *World) link(from, to int32) *LinkParams {
	if len(w.links) > 0 {
		if lp, ok := w.links[linkKey(from, to)]; ok {
			return &lp
		}
	}
	return &w.opts.Link
}

// SetLink overrides the model of the link from → to (one direction).
func (w *World) SetLink(from, to int, lp LinkParams) {
	w.links[linkKey(int32(from), int32(to))] = lp
}

// Link returns the model of the link from → to.
func (w *World) Link(from, to int) LinkParams { return *w.link(int32(from), int32(to)) }

// baseLatency is the link's fixed latency: Latency plus its seeded spread.
func (w *World) baseLatency(from, to int32, lp *LinkParams) int64 {
	d := int64(lp.Latency)
	if s := int64(w.opts.LatencySpread); s > 0 {
		a, b := min(from, to), max(from, to)
		d += int64(derive(w.seed, streamLink, uint64(a), uint64(b)) % uint64(s))
	}
	return d
}

// arrival draws when a frame of size bytes sent now from → to arrives.
func (w *World) arrival(from, to int32, lp *LinkParams, r *rand.Rand, size int) int64 {
	depart := w.now
	if lp.Bandwidth > 0 {
		k := linkKey(from, to)
		if b := w.busy[k]; b > depart {
			depart = b
		}
		depart += int64(size) * int64(time.Second) / lp.Bandwidth
		w.busy[k] = depart
	}
	d := w.baseLatency(from, to, lp)
	if lp.Jitter > 0 {
		d += r.Int64N(int64(lp.Jitter))
	}
	if lp.Reorder > 0 && r.Float64() < lp.Reorder {
		d += r.Int64N(int64(lp.ReorderDelay) + 1)
	}
	return depart + d
}

// blocked reports whether an active partition cuts from → to.
func (w *World) blocked(from, to int32) bool {
	for _, p := range w.parts {
		a, b := p.sideOf(from), p.sideOf(to)
		if a == 1 && b == 2 || !p.oneWay && a == 2 && b == 1 {
			return true
		}
	}
	return false
}

// Blocked reports whether an active partition cuts the link from → to.
func (w *World) Blocked(from, to int) bool { return w.blocked(int32(from), int32(to)) }

// Partition cuts the links from every peer of a to every peer of b and, unless
// oneWay, back. A nil b means every peer not in a (and the rendezvous node,
// unless a holds it). Either list may hold Rendezvous, which names the
// rendezvous node of a world with one. Frames and presence in flight on a
// cut link are lost; a rendezvous event stream across the cut breaks. It
// returns the partition's id for Heal.
func (w *World) Partition(a, b []int, oneWay bool) (int, error) {
	p := &partition{oneWay: oneWay, side: make([]int8, len(w.peers))}
	hasRdv := w.disc != nil && w.disc.rdv != nil
	for _, i := range a {
		if i == Rendezvous && hasRdv {
			p.rdv = 1
			continue
		}
		if i < 0 || i >= len(w.peers) {
			return 0, ErrNoPeer
		}
		p.side[i] = 1
	}
	if b == nil {
		for i := range p.side {
			if p.side[i] == 0 {
				p.side[i] = 2
			}
		}
		if p.rdv == 0 && hasRdv {
			p.rdv = 2
		}
	} else {
		for _, i := range b {
			if i == Rendezvous && hasRdv {
				if p.rdv == 1 {
					return 0, fmt.Errorf("simnet: the rendezvous is on both sides of a partition")
				}
				p.rdv = 2
				continue
			}
			if i < 0 || i >= len(w.peers) {
				return 0, ErrNoPeer
			}
			if p.side[i] == 1 {
				return 0, fmt.Errorf("simnet: %s is on both sides of a partition", w.Name(i))
			}
			p.side[i] = 2
		}
	}
	w.partSeq++
	p.id = w.partSeq
	w.parts = append(w.parts, p)
	w.topoAll()
	if w.disc != nil {
		w.disc.partitioned()
	}
	w.stats.Partitions++
	w.hashWord(0xa1<<56 | uint64(w.now))
	w.hashWord(uint64(p.id))
	// Peers with traffic outstanding across the cut notice the connection drop.
	w.acrossCut(p, func(x, y *peer) { w.notify(x, y, evDisconnect) })
	return p.id, nil
}

// acrossCut calls fn(x, y) for every live pair with x on one side of p, y on
// the other, and x holding unacknowledged messages for y, in index order:
// for each live x of side A, for each live y of side B, (x, y) then (y, x).
func (w *World) acrossCut(p *partition, fn func(x, y *peer)) {
	// A peer can only have messages outstanding for a peer it sent frames
	// to, so only x's contacts in either direction need a look.
	for i, s := range p.side {
		x := w.peers[i]
		if s != 1 || x.node == nil {
			continue
		}
		x.eachContact(func(y *peer) {
			if int(y.idx) >= len(p.side) || p.side[y.idx] != 2 || y.node == nil {
				return
			}
			if x.contacts.has(y.idx) && x.node.Bus().Pending(y.id) > 0 {
				fn(x, y)
			}
			if y.contacts.has(x.idx) && y.node.Bus().Pending(x.id) > 0 {
				fn(y, x)
			}
		}, w.peers)
	}
}

// eachContact calls fn for every peer p sent a frame to or got one from,
// in index order.
func (p *peer) eachContact(fn func(q *peer), peers []*peer) {
	a, b := p.contacts, p.contactedBy
	for wi := 0; wi < max(len(a), len(b)); wi++ {
		var m uint64
		if wi < len(a) {
			m = a[wi]
		}
		if wi < len(b) {
			m |= b[wi]
		}
		for m != 0 {
			fn(peers[wi*64+bits.TrailingZeros64(m)])
			m &= m - 1
		}
	}
}

// notify schedules a connectivity event for x about y, after the link delay.
func (w *World) notify(x, y *peer, kind eventKind) {
	at := w.now + w.baseLatency(y.idx, x.idx, w.link(y.idx, x.idx))
	w.q.push(at, event{kind: kind, to: x.idx, from: y.idx, toLife: x.life, fromLife: y.life})
}

// Heal ends partition id. Peers with traffic outstanding across it learn
// that the connection is up again.
func (w *World) Heal(id int) error {
	i := slices.IndexFunc(w.parts, func(p *partition) bool { return p.id == id })
	if i < 0 {
		return fmt.Errorf("simnet: no active partition %d", id)
	}
	p := w.parts[i]
	w.parts = slices.Delete(w.parts, i, i+1)
	w.topoAll()
	w.stats.Heals++
	w.hashWord(0xa2<<56 | uint64(w.now))
	w.hashWord(uint64(id))
	w.acrossCut(p, func(x, y *peer) {
		if !w.blocked(x.idx, y.idx) && !w.blocked(y.idx, x.idx) {
			w.notify(x, y, evConnect)
		}
	})
	return nil
}

// HealAll ends every partition.
func (w *World) HealAll() {
	for len(w.parts) > 0 {
		_ = w.Heal(w.parts[0].id)
	}
}

// Partitions returns the ids of the active partitions.
func (w *World) Partitions() []int {
	ids := make([]int, len(w.parts))
	for i, p := range w.parts {
		ids[i] = p.id
	}
	return ids
}

// Crash stops peer i at once: its node and everything not durably stored are
// gone, frames in flight to and from it are lost, and peers with messages
// outstanding for it notice the connection drop.
func (w *World) Crash(i int) error {
	if i < 0 || i >= len(w.peers) {
		return ErrNoPeer
	}
	p := w.peers[i]
	if p.node == nil {
		return fmt.Errorf("crash %s: %w", w.Name(i), ErrPeerDown)
	}
	p.node = nil
	p.life++
	p.wakeAt = noWake
	w.topoPeer(p.idx)
	if w.disc != nil {
		w.disc.crashed(p)
	}
	p.eachContact(func(q *peer) { // the peers q with q.contacts.has(p.idx), in index order
		if q != p && q.node != nil && q.contacts.has(p.idx) && q.node.Bus().Pending(p.id) > 0 {
			w.notify(q, p, evDisconnect)
		}
	}, w.peers)
	w.stats.Crashes++
	w.stats.Events++
	w.observe(StepCrash, i, -1, -1, nil, nil)
	return nil
}

// Restart starts peer i again from what it durably stored, with a fresh
// random stream for this incarnation. Peers that have messages outstanding
// for it, and it for them, learn that the connection is up.
func (w *World) Restart(i int) error {
	if i < 0 || i >= len(w.peers) {
		return ErrNoPeer
	}
	p := w.peers[i]
	if p.node != nil {
		return fmt.Errorf("restart %s: %w", w.Name(i), ErrPeerUp)
	}
	w.stats.Restarts++
	w.start(p)
	p.eachContact(func(q *peer) { // in index order; only contacts can have messages outstanding
		if q == p || q.node == nil || w.blocked(p.idx, q.idx) || w.blocked(q.idx, p.idx) {
			return
		}
		if q.contacts.has(p.idx) && q.node.Bus().Pending(p.id) > 0 {
			w.notify(q, p, evConnect)
		}
		if p.contacts.has(q.idx) && p.node.Bus().Pending(q.id) > 0 {
			w.notify(p, q, evConnect)
		}
	}, w.peers)
	return nil
}

// SetSegment puts peer i on LAN segment name ("" for none).
func (w *World) SetSegment(i int, name string) {
	p := w.peers[i]
	if p.segment != "" {
		m := w.segs[p.segment]
		m = slices.DeleteFunc(m, func(x int32) bool { return x == p.idx })
		w.segs[p.segment] = m
	}
	old := p.segment
	p.segment = name
	if name != "" {
		m := append(w.segs[name], p.idx)
		slices.Sort(m)
		w.segs[name] = m
	}
	w.topoPeer(p.idx)
	if w.disc != nil && old != name {
		w.disc.moved(p)
	}
}

// Segment returns peer i's LAN segment.
func (w *World) Segment(i int) string { return w.peers[i].segment }

// SegmentPeers returns the peers on LAN segment name, in index order.
func (w *World) SegmentPeers(name string) []int {
	m := w.segs[name]
	out := make([]int, len(m))
	for i, x := range m {
		out[i] = int(x)
	}
	return out
}

// Broadcast sends payload from peer from to every other running peer on its
// LAN segment, after each link's delay and subject to its loss and to
// partitions (a generic LAN hook; Options.Discovery models mDNS and
// GossipSub itself). Arrivals are reported to Options.OnBroadcast. It
// returns how many peers it was sent toward.
func (w *World) Broadcast(from int, payload []byte) (int, error) {
	if from < 0 || from >= len(w.peers) {
		return 0, ErrNoPeer
	}
	p := w.peers[from]
	if p.node == nil {
		return 0, fmt.Errorf("broadcast from %s: %w", w.Name(from), ErrPeerDown)
	}
	if p.segment == "" {
		return 0, fmt.Errorf("broadcast from %s: %w", w.Name(from), ErrNoSegment)
	}
	w.stats.Broadcasts++
	w.hashWord(0xb0<<56 | uint64(w.now))
	w.hashWord(uint64(from))
	payload = slices.Clone(payload)
	n := 0
	for _, j := range w.segs[p.segment] {
		q := w.peers[j]
		if j == p.idx || q.node == nil {
			continue
		}
		n++
		if w.blocked(p.idx, j) {
			w.stats.DroppedPartition++
			continue
		}
		lp := w.link(p.idx, j)
		if lp.Loss > 0 && p.net.Float64() < lp.Loss {
			w.stats.DroppedLoss++
			continue
		}
		at := w.arrival(p.idx, j, lp, p.net, 64+len(payload))
		w.q.push(at, event{kind: evBroadcast, to: j, from: p.idx, toLife: q.life, fromLife: p.life, payload: payload})
	}
	return n, nil
}

// Schedule runs a.Fire(w, arg) at virtual time at (not before now).
func (w *World) Schedule(at time.Duration, a Action, arg int64) {
	w.q.push(max(int64(at), w.now), event{kind: evAction, act: a, arg: arg})
}

// After runs a.Fire(w, arg) after d of virtual time.
func (w *World) After(d time.Duration, a Action, arg int64) { w.Schedule(w.Elapsed()+d, a, arg) }

// Scheduled returns the number of events on the timeline (some may be stale
// timer wake-ups that will lapse).
func (w *World) Scheduled() int { return w.q.len() }

// next processes the next scheduled event.
func (w *World) next() {
	at, _, ev := w.q.pop()
	w.now = at
	switch ev.kind {
	case evFrame:
		p, src := w.peers[ev.to], w.peers[ev.from]
		if p.node == nil || p.life != ev.toLife || src.life != ev.fromLife {
			w.stats.DroppedDown++
			return
		}
		if w.blocked(ev.from, ev.to) {
			w.stats.DroppedPartition++
			return
		}
		w.stats.FramesDelivered++
		w.stats.Events++
		w.cur = ev.frame
		if ev.frame.AsksReceived() && !w.opts.NoReceivedAcks {
			// As the real 1.1.0 transport does: a received ack, when asked,
			// goes back the moment the msg is decoded, before the node has
			// stored anything.
			w.transmit(p, &mq.Outgoing{To: src.id, Frame: mq.ReceivedAckFor(&ev.frame)})
		}
		p.node.Handle(w.vt(), ports.TransportEvent{Kind: ports.FrameReceived, From: src.id, Frame: ev.frame})
		w.flush(p, StepFrame, int(ev.from), -1, &w.cur)
		w.cur = mq.Frame{}
	case evWake:
		p := w.peers[ev.to]
		if p.node == nil || p.life != ev.toLife || p.wakeAt != at {
			return // stale: superseded by an earlier wake, or the node restarted
		}
		p.wakeAt = noWake
		nw, ok := p.node.NextWake()
		if !ok {
			return
		}
		if t := int64(nw.Sub(epoch)); t > w.now {
			w.rearm(p)
			return
		}
		w.stats.Events++
		p.node.Tick(w.vt())
		w.flush(p, StepWake, -1, -1, nil)
	case evConnect, evDisconnect:
		p, q := w.peers[ev.to], w.peers[ev.from]
		if p.node == nil || p.life != ev.toLife || q.life != ev.fromLife {
			return
		}
		kind, tk := StepConnect, ports.PeerConnected
		if ev.kind == evDisconnect {
			kind, tk = StepDisconnect, ports.PeerDisconnected
		}
		w.stats.Events++
		p.node.Handle(w.vt(), ports.TransportEvent{Kind: tk, From: q.id})
		w.flush(p, kind, int(ev.from), -1, nil)
	case evBroadcast:
		p, q := w.peers[ev.to], w.peers[ev.from]
		if p.node == nil || p.life != ev.toLife || q.life != ev.fromLife {
			w.stats.DroppedDown++
			return
		}
		if w.blocked(ev.from, ev.to) {
			w.stats.DroppedPartition++
			return
		}
		w.stats.Events++
		w.stats.BroadcastsRecv++
		if w.opts.OnBroadcast != nil {
			w.opts.OnBroadcast(w, int(ev.to), int(ev.from), ev.payload)
		}
		w.observe(StepBroadcast, int(ev.to), int(ev.from), -1, nil, nil)
	case evAction:
		ev.act.Fire(w, ev.arg)
	default:
		w.disc.handle(&ev)
	}
}

// RunUntil processes events up to virtual time t (since Epoch) and then sets
// the clock to t. It stops early at the first broken invariant and returns it.
func (w *World) RunUntil(t time.Duration) error {
	for w.fail == nil && w.q.len() > 0 && w.q.peekAt() <= int64(t) {
		w.next()
	}
	if w.fail == nil && w.now < int64(t) {
		w.now = int64(t)
	}
	return w.Err()
}

// RunFor processes events for d of virtual time.
func (w *World) RunFor(d time.Duration) error { return w.RunUntil(w.Elapsed() + d) }

// Converge is the liveness phase: it heals every partition, restarts every
// crashed peer (and a crashed rendezvous node) and runs until every checker has converged, or fails when
// virtual time passes now+within (or nothing is left to happen) first. Link
// loss, duplication and reordering stay as they are.
func (w *World) Converge(within time.Duration) error {
	deadline := w.now + int64(within)
	w.HealAll()
	if w.disc != nil && w.disc.rdv != nil && !w.disc.rdv.up {
		_ = w.RestartRendezvous() // it is down: cannot fail
	}
	for i, p := range w.peers {
		if p.node == nil {
			if err := w.Restart(i); err != nil {
				return err
			}
		}
	}
	for {
		if w.fail != nil {
			return w.fail
		}
		if w.converged() {
			return nil
		}
		if w.q.len() == 0 || w.q.peekAt() > deadline {
			if w.q.len() > 0 {
				w.now = deadline
			}
			return &LivenessError{Deadline: time.Duration(deadline), Time: time.Duration(w.now), Waiting: w.waiting()}
		}
		w.next()
	}
}

func (w *World) converged() bool {
	for _, c := range w.checkers {
		if !c.Converged() {
			return false
		}
	}
	return true
}

func (w *World) waiting() []string {
	var out []string
	for _, c := range w.checkers {
		if !c.Converged() {
			out = append(out, c.Waiting(w))
		}
	}
	return out
}

// LivenessError reports that the world did not converge by its deadline.
type LivenessError struct {
	Deadline time.Duration
	Time     time.Duration
	Waiting  []string // what each unconverged checker still waits for
}

func (e *LivenessError) Error() string {
	return fmt.Sprintf("liveness: not converged by %s: %v", e.Deadline, e.Waiting)
}

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

// The trace hash is FNV-1a applied to 64-bit words instead of bytes (one
// multiply per word keeps it cheap on the hot path), over a canonical record
// of every event: time, kind, peers, frame seq and id, published events.
func (w *World) hashWord(x uint64) {
	w.hash = (w.hash ^ x) * fnvPrime
	w.hash ^= w.hash >> 29
}

func (w *World) hashString(s string) {
	var x uint64
	n := 0
	for i := 0; i < len(s); i++ {
		x = x<<8 | uint64(s[i])
		if n++; n == 8 {
			w.hashWord(x)
			x, n = 0, 0
		}
	}
	w.hashWord(x<<8 | uint64(len(s)&0xff))
}
