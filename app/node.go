// Package app composes the domain cores into a node and runs it against ports.
//
// Node is a step function with no goroutines: inputs go in with the current
// time, and Ready hands back what to persist, send and publish. Runtime drives
// a Node with real adapters on one goroutine; simnet drives many Nodes on one
// seeded scheduler with virtual time.
package app

import (
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/goop-p2p/goop/domain/group"
	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/domain/presence"
	"github.com/goop-p2p/goop/ports"
)

// TopicReceipt is the application-level delivery receipt topic (SPEC §2):
// payload {"msg_id": "..."}.
const TopicReceipt = "mq.ack"

// EventKind tells what an Event reports.
type EventKind uint8

// Event kinds published by a node.
const (
	// EventMessage: Msg arrived from Peer (exactly once, in per-sender order).
	EventMessage EventKind = iota + 1
	// EventDelivered: the message MsgID we sent to Peer was acknowledged by its node.
	EventDelivered
	// EventFailed: the message MsgID we sent to Peer was given up; Reason says why.
	EventFailed
	// EventReceipt: Peer's application confirmed our message MsgID (topic mq.ack).
	EventReceipt
	// EventGroup: something happened in a group (Group holds it).
	EventGroup
	// EventPeer: the peer table changed (Presence holds it; Peer is its id).
	EventPeer
	// EventReceived: the transport of Peer received our message MsgID (the
	// early transport ack of a Goop 1.1.0 peer); EventDelivered follows once
	// the peer stored it.
	EventReceived
)

// Event is something the node publishes to its local subscribers (SSE, tests).
type Event struct {
	Kind EventKind
	Peer mq.PeerID
	// Msg is the message of an EventMessage (nil for other kinds), shared by
	// every subscriber: read it, never modify it.
	Msg    *mq.Frame
	MsgID  string
	Topic  string
	Reason string
	Group  *group.Event
	// Presence is the peer table event of an EventPeer.
	Presence *presence.Event
}

// Ready is the output of node steps since the previous Ready, to be carried
// out in order: send EarlyFrames (they depend on nothing in Batch), persist
// Batch, then send Frames, then publish Events. Events of kind
// EventDelivered depend on nothing in Batch either and may be published
// before it is persisted.
type Ready struct {
	Batch       ports.Batch
	EarlyFrames []mq.Outgoing
	Frames      []mq.Outgoing
	Events      []Event
	// Publish is our presence to publish (ports.Discovery), and Dial the
	// peers to connect to; both after Batch is persisted.
	Publish []presence.Msg
	Dial    []presence.DialHint
	// History holds members' questions about the history of groups this
	// node hosts: the runtime reads its store and answers each through
	// group.Core.AnswerHistory.
	History []HistoryQuestion
}

// HistoryQuestion is member From's question about hosted group Group (the
// group core's, handed to the runtime in Ready.History).
type HistoryQuestion = group.HistoryRequest

// Empty reports whether there is nothing to do.
func (r *Ready) Empty() bool {
	return r.Batch.Empty() && len(r.EarlyFrames) == 0 && len(r.Frames) == 0 && len(r.Events) == 0 &&
		len(r.Publish) == 0 && len(r.Dial) == 0 && len(r.History) == 0
}

// NodeOptions configure a Node.
type NodeOptions struct {
	Bus    mq.Options
	Groups group.Config
	// Label is this peer's display name (sent with group joins).
	Label string
	// TypeHandlers plug group app types in; their flags override the defaults.
	TypeHandlers []ports.GroupTypeHandler
	// Presence tunes the peer table and our own presence (zero: a table
	// with the compat timings; nothing announced).
	Presence presence.Config
	// Profile is what the node announces (its Label defaults to Label).
	Profile presence.Profile
}

// State is a node's durable state as loaded from its store.
type State struct {
	Bus    mq.Snapshot
	Groups group.Snapshot
	// Peers is the cached peer table.
	Peers []presence.Peer
}

// Node is one peer's composition of domain cores. Not safe for concurrent
// use: exactly one goroutine (Runtime) or scheduler (simnet) drives it.
type Node struct {
	self   mq.PeerID
	rnd    ports.Rand
	idBuf  [16]byte // newID's random bytes (a field: no allocation per id)
	bus    *mq.Bus
	groups *group.Core
	now    time.Time // time of the latest step, for outputs produced in Ready
	events []Event
	// spareEvents is an events array handed back by Reuse, for the next
	// Ready's events.
	spareEvents []Event
	history     []HistoryQuestion // for the next Ready
	stats       Stats
	handlers    map[string]ports.GroupTypeHandler
	presence    *presence.Core
	// presenceStarted: the first Tick started the presence core.
	presenceStarted bool
	// groupDelivered: a delivery went to the group core since the last
	// Ready. The messages that core sends then wait for the delivery's
	// cursor to be stored: a host that relayed a member's message and
	// crashed before storing its cursor would get it again and relay it
	// twice.
	groupDelivered bool
	// muted are the kinds of events (bit k: kind k) that nobody would
	// receive and that are therefore not built (see Mute).
	muted uint32
}

// Mutable are the event kinds Mute may silence: those a busy node makes
// one of per message it receives or per acknowledgement it gets.
const Mutable uint32 = 1<<EventMessage | 1<<EventDelivered | 1<<EventReceived

// Mute stops the node from building events of kinds (bit k: kind k; only
// those in Mutable count) until the next call: the runtime mutes the kinds
// that no subscriber and no waiter takes, so that a message or an ack
// nobody listens for costs no event. Stats count them all the same.
func (n *Node) Mute(kinds uint32) { n.muted = kinds & Mutable }

// wants reports whether events of kind k are built.
func (n *Node) wants(k EventKind) bool { return n.muted&(1<<k) == 0 }

// Stats counts what a node did since it started.
type Stats struct {
	Sent, Delivered, Acked, Failed, Received uint64
}

// NewNode restores a node from its durable state. rnd supplies message ids and
// the bus epoch of a new node. The driver calls Tick(now) once before any
// other step: restoring completes there (timers start, stored group
// subscriptions re-join their hosts).
func NewNode(self mq.PeerID, st State, rnd ports.Rand, opts NodeOptions) *Node {
	n := &Node{self: self, rnd: rnd}
	epoch := ""
	if st.Bus.Epoch == "" {
		epoch = n.newID()
	}
	n.bus = mq.NewBus(self, st.Bus, epoch, opts.Bus)
	gcfg := opts.Groups
	if gcfg.Types == nil {
		gcfg.Types = group.DefaultTypes()
	}
	gcfg.Types = maps.Clone(gcfg.Types)
	n.handlers = map[string]ports.GroupTypeHandler{}
	for _, h := range opts.TypeHandlers {
		n.handlers[h.Type()] = h
		gcfg.Types[h.Type()] = h.Flags()
	}
	n.groups = group.NewCore(self, opts.Label, st.Groups, gcfg)
	n.presence = newPresence(self, st, opts)
	return n
}

// dispatch hands a group event to the handler of its type.
func (n *Node) dispatch(ev group.Event) {
	h := n.handlers[ev.GroupType]
	if h == nil {
		return
	}
	switch ev.Type {
	case group.EvCreated:
		if v, ok := n.groups.HostedGroup(ev.Group); ok {
			h.OnCreate(v.Group)
		}
	case group.EvJoined:
		h.OnJoin(ev.Group, ev.Host, n.self)
	case group.EvMemberJoined:
		h.OnJoin(ev.Group, ev.Host, ev.From)
	case group.EvLeft:
		h.OnLeave(ev.Group, ev.Host, n.self, "left")
	case group.EvMemberLeft:
		h.OnLeave(ev.Group, ev.Host, ev.From, ev.Reason)
	case group.EvClosed, group.EvDissolved:
		reason := ev.Reason
		if ev.Err != nil {
			reason = ev.Err.Code
		}
		if reason == "" {
			reason = ev.Type
		}
		h.OnClose(ev.Group, ev.Host, reason)
	}
	h.OnEvent(ev)
}

// Groups returns the group core for queries (Hosted, Subscriptions, ...).
// For commands use Group(now).
func (n *Node) Groups() *group.Core { return n.groups }

// Group returns the group core for a command at time now (the same now must
// be passed to the command). Call it only from the goroutine that drives the
// node (Runtime.Do); the command's outputs go out with the next Ready.
func (n *Node) Group(now time.Time) *group.Core {
	n.now = now
	return n.groups
}

// NewGroupID returns a fresh group id: 16 hex characters, as Goop2's.
func (n *Node) NewGroupID() string {
	const hex = "0123456789abcdef"
	v := n.rnd.Uint64()
	b := make([]byte, 16)
	for i := range b {
		b[i] = hex[v>>(60-4*i)&0xf]
	}
	return string(b)
}

// Self is the node's peer id.
func (n *Node) Self() mq.PeerID { return n.self }

// Bus exposes the bus core for inspection (tests, stats). Do not mutate it.
func (n *Node) Bus() *mq.Bus { return n.bus }

// Stats returns the node's counters.
func (n *Node) Stats() Stats { return n.stats }

// newID returns a new random (version 4) UUID for a message id. Its only
// allocation is the string.
func (n *Node) newID() string {
	if _, err := n.rnd.Read(n.idBuf[:]); err != nil {
		panic(fmt.Sprintf("app: uuid from rand: %v", err)) // Rand.Read never fails
	}
	u := uuid.UUID(n.idBuf)
	u[6] = u[6]&0x0f | 0x40 // version 4
	u[8] = u[8]&0x3f | 0x80 // RFC 4122 variant
	return u.String()
}

// Send queues an application message to peer to on topic. It returns the
// frame with its id; the message is durable once the next Ready is persisted.
func (n *Node) Send(now time.Time, to mq.PeerID, topic string, payload []byte, origin mq.PeerID) (mq.Frame, error) {
	return n.SendWant(now, to, topic, payload, origin, "")
}

// SendWant is Send asking the peer for want (see mq.Frame.Want):
// mq.StageReceived asks for the early received ack.
func (n *Node) SendWant(now time.Time, to mq.PeerID, topic string, payload []byte, origin mq.PeerID, want string) (mq.Frame, error) {
	n.now = now
	f, err := n.bus.SendWant(now, to, n.newID(), topic, payload, origin, want)
	if err != nil {
		return mq.Frame{}, fmt.Errorf("send to %s: %w", to, err)
	}
	n.stats.Sent++
	return f, nil
}

// SendReceipt confirms to peer from that our application handled msgID.
func (n *Node) SendReceipt(now time.Time, from mq.PeerID, msgID string) (mq.Frame, error) {
	payload, _ := json.Marshal(map[string]string{"msg_id": msgID})
	return n.Send(now, from, TopicReceipt, payload, "")
}

// Handle feeds one transport event into the node.
func (n *Node) Handle(now time.Time, ev ports.TransportEvent) {
	n.now = now
	switch ev.Kind {
	case ports.FrameReceived:
		if ev.Frame.IsMsg() {
			n.stats.Received++
		}
		n.bus.Receive(now, ev.From, ev.Frame)
	case ports.PeerConnected:
		n.bus.Connected(now, ev.From)
	case ports.PeerDisconnected:
		n.groups.HostDisconnected(now, ev.From)
	}
}

// Tick lets timers that are due by now fire.
func (n *Node) Tick(now time.Time) {
	n.bus.Tick(now)
	n.groups.Tick(now)
	n.tickPresence(now)
	n.now = now
}

// NextWake returns when Tick must next be called, if ever.
func (n *Node) NextWake() (time.Time, bool) {
	at, ok := n.bus.NextWake()
	if gat, gok := n.groups.NextWake(); gok && (!ok || gat.Before(at)) {
		at, ok = gat, true
	}
	if pat, pok := n.presence.NextWake(); pok && (!ok || pat.Before(at)) {
		at, ok = pat, true
	}
	return at, ok
}

// Ready collects the outputs of all steps since the last call. Deliveries on
// group topics go through the group core, whose messages go out on the bus
// in the same Ready (one atomic batch).
func (n *Node) Ready() Ready {
	var r Ready
	for round := 0; ; round++ {
		br := n.bus.Drain()
		// The bus hands over its slices: take them as they are when there is
		// nothing to append to (the common case: one round).
		r.Batch.Bus = appendOrTake(r.Batch.Bus, br.Changes)
		r.EarlyFrames = appendOrTake(r.EarlyFrames, br.EarlyFrames)
		r.Frames = appendOrTake(r.Frames, br.Frames)
		n.route(br)
		n.bus.Reuse(nil, nil, br.Results) // route made them events
		gr := n.groups.Drain()
		r.Batch.Groups = append(r.Batch.Groups, gr.Changes...)
		n.history = append(n.history, gr.History...)
		for i := range gr.Events {
			ev := &gr.Events[i]
			n.dispatch(*ev)
			n.events = append(n.events, Event{Kind: EventGroup, Peer: ev.From, Group: ev})
		}
		n.bus.Grow(len(gr.Sends))
		for _, s := range gr.Sends {
			if _, err := n.bus.Send(n.now, s.To, n.newID(), s.Topic, s.Payload, s.Origin); err != nil {
				n.stats.Failed++
				n.events = append(n.events, Event{Kind: EventFailed, Peer: s.To, Topic: s.Topic, Reason: err.Error()})
			} else {
				n.stats.Sent++
			}
		}
		if len(gr.Sends) == 0 || round > 8 {
			break
		}
	}
	if len(r.EarlyFrames) > 0 && (n.groupDelivered || announcesGroupState(r.Batch.Groups)) {
		r.Frames = append(r.EarlyFrames, r.Frames...)
		r.EarlyFrames = nil
	}
	n.groupDelivered = false
	n.drainPresence(&r)
	r.Events = n.events
	n.events, n.spareEvents = n.spareEvents, nil
	r.History, n.history = n.history, nil
	return r
}

// maxReusedEvents bounds the events array Reuse keeps.
const maxReusedEvents = 1024

// Reuse hands back the arrays of rd, a Ready of this node, once the caller
// is done with them: the bus changes were stored or copied, the frames
// sent and the events published, and nothing holds on to the arrays or
// their elements any more. Any of them may be nil (one the caller still
// holds). The next steps' outputs go in them: a step in a steady state
// allocates none.
func (n *Node) Reuse(rd *Ready) {
	n.bus.Reuse(rd.Batch.Bus, rd.Frames, nil)
	n.bus.Reuse(nil, rd.EarlyFrames, nil)
	if c := cap(rd.Events); c > cap(n.spareEvents) && c <= maxReusedEvents {
		clear(rd.Events) // past its length the array holds nothing
		n.spareEvents = rd.Events[:0]
	}
}

// announcesGroupState reports whether the group messages of a step must
// wait for its group changes to be stored: they announce group state (a
// welcome announces a member row, a state message the group's state), and
// a host that crashed before storing it would have told its members what
// it no longer knows. History alone does not hold them back: a message the
// host sends to its group records itself there, and if the host crashed
// before storing that row the members would have a message its history
// lacks — as a message of ours whose outbox row was not yet stored is
// delivered and forgotten — but nothing they were told would be wrong.
func announcesGroupState(cs []group.Change) bool {
	for i := range cs {
		if cs[i].Kind != group.AppendHistory {
			return true
		}
	}
	return false
}

// appendOrTake appends b to a, or returns b itself when a is empty (b is
// owned by the caller: a slice handed over by a Drain).
func appendOrTake[T any](a, b []T) []T {
	if len(a) == 0 {
		return b
	}
	return append(a, b...)
}

// route turns bus outputs into events, feeding group topics to the group core.
func (n *Node) route(br mq.Ready) {
	if cap(n.events) == 0 {
		// A delivery is an event, and on a group topic its group event
		// usually follows: room for both.
		k := 0
		if n.wants(EventMessage) {
			k += len(br.Deliveries)
		}
		for i := range br.Deliveries {
			if strings.HasPrefix(br.Deliveries[i].Msg.Topic, group.TopicPrefix) {
				k++
			}
		}
		for i := range br.Results {
			if n.wants(resultKind(&br.Results[i])) {
				k++
			}
		}
		if k > 0 {
			n.events = make([]Event, 0, k)
		}
	}
	for i := range br.Deliveries {
		d := &br.Deliveries[i]
		n.stats.Delivered++
		if n.groups.Receive(n.now, d.From, d.Msg.Topic, d.Msg.Payload, d.Msg.Origin) {
			n.groupDelivered = true
		}
		if d.Msg.Topic == TopicReceipt {
			var rc struct {
				MsgID string `json:"msg_id"`
			}
			if json.Unmarshal(d.Msg.Payload, &rc) == nil && rc.MsgID != "" {
				n.events = append(n.events, Event{Kind: EventReceipt, Peer: d.From, MsgID: rc.MsgID, Topic: d.Msg.Topic})
			}
			continue
		}
		if n.wants(EventMessage) {
			n.events = append(n.events, Event{Kind: EventMessage, Peer: d.From, Msg: &d.Msg, MsgID: d.Msg.ID, Topic: d.Msg.Topic})
		}
	}
	for i := range br.Results {
		res := &br.Results[i]
		kind := resultKind(res)
		switch kind {
		case EventFailed:
			n.stats.Failed++
		case EventDelivered:
			n.stats.Acked++
		}
		if n.wants(kind) {
			n.events = append(n.events, Event{Kind: kind, Peer: res.To, MsgID: res.ID, Topic: res.Topic, Reason: res.Reason})
		}
	}
}

// resultKind is the kind of event a bus result makes.
func resultKind(res *mq.Result) EventKind {
	switch {
	case res.Received:
		return EventReceived
	case res.Failed:
		return EventFailed
	}
	return EventDelivered
}
