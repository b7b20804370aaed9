package simnet

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/group"
)

// Safety properties of host-relayed groups (SPEC §3) checked by GroupChecker
// after every step.
const (
	// PropGroupExactlyOnce: a member receives a relayed message only if the
	// host accepted it while the member was in the host's member list, and at
	// most once.
	PropGroupExactlyOnce = "group/exactly-once"
	// PropGroupNoEcho: a relayed message never comes back to its sender.
	PropGroupNoEcho = "group/no-echo"
	// PropGroupOrder: per group, origin and receiver, messages arrive in the
	// order the host accepted them.
	PropGroupOrder = "group/origin-order"
	// PropGroupUniqueAccept: the host accepts each message once. Messages are
	// told apart by group, origin, kind and payload, so a scenario gives every
	// message of an origin a distinct payload (scripts and group-storm put a
	// counter in it).
	PropGroupUniqueAccept = "group/unique-accept"
)

// Liveness conditions of GroupChecker.Converged, named in Waiting.
const (
	LiveGroupDelivered  = "group/delivered"             // every accepted message reached every member that stayed joined
	LiveGroupAccepted   = "group/accepted"              // every message a member sent while joined was accepted, or its membership ended
	LiveGroupViews      = "group/views-agree"           // every member's member list equals its host's
	LiveGroupStaleSub   = "group/no-stale-subscription" // no subscription to a group its host no longer hosts
	LiveGroupMembership = "group/membership"            // every subscription is joined and listed by the host, and back
)

// gkey names a group: its host and id.
type gkey struct {
	host int32
	id   string
}

// msgKey names one accepted message.
type msgKey struct {
	g      gkey
	origin int32
	state  bool
	sum    uint64
}

// gmsg is a message the host accepted, with the members it was relayed to.
type gmsg struct {
	key   msgKey
	seq   int64         // acceptance number per (group, origin), from 1
	at    time.Duration // when the host accepted it
	recv  []int32       // the members it was relayed to, sorted
	epoch []uint32      // each receiver's membership epoch at acceptance
	got   []bool
}

func (m *gmsg) index(p int32) int {
	k, ok := slices.BinarySearch(m.recv, p)
	if !ok {
		return -1
	}
	return k
}

// gsend is a message a member sent to its host, not yet accepted.
type gsend struct {
	key  msgKey
	at   time.Duration
	done bool // accepted, or discharged because the membership ended
}

// gmember is what the checker knows of one peer in one group.
type gmember struct {
	peer int32
	// epoch counts the ends of this peer's membership: a message must reach
	// the peer only while the epoch it was accepted in lasts.
	epoch   uint32
	pending []*gmsg // messages accepted for this peer in the current epoch
	open    int     // of pending, not yet received
	sends   []*gsend
	last    map[int32]int64 // per origin: the latest acceptance number received
	// delivery delays (acceptance at the host → receipt here)
	recvd    int
	maxDelay time.Duration
	sumDelay time.Duration
}

// gstate is what the checker knows of one group.
type gstate struct {
	key      gkey
	members  map[int32]*gmember
	seq      map[int32]int64 // per origin: acceptance numbers handed out
	accepted int
	receipts int
}

func (gs *gstate) member(p int32) *gmember {
	m := gs.members[p]
	if m == nil {
		m = &gmember{peer: p, last: map[int32]int64{}}
		gs.members[p] = m
	}
	return m
}

func (gs *gstate) sortedMembers() []*gmember {
	out := make([]*gmember, 0, len(gs.members))
	for _, m := range gs.members {
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b *gmember) int { return int(a.peer - b.peer) })
	return out
}

// GroupChecker checks host-relayed groups (SPEC §3).
//
// Safety, after every step: every message the host accepted (the host's
// EvMsg/EvState for a member's message, or the host's own SendToGroup through
// World.SendToGroup) reaches each member at most once, only members that were
// in the host's list when it accepted it, never its sender, and per origin in
// acceptance order; the host accepts each message once.
//
// Liveness, for Converged: every accepted message reached every member that
// was joined when the host accepted it and stayed joined (its membership did
// not end: left, kicked, evicted, closed, dissolved, dropped by a restart),
// exactly once; every message a member sent while joined was accepted unless
// its membership ended; and once quiet every member of every live group is
// joined with the host's member list (peer ids), every peer the host lists has
// a joined subscription, and no peer keeps a subscription to a group its host
// no longer hosts.
//
// Not safe for concurrent use; give each world its own.
type GroupChecker struct {
	w           *World
	groups      map[gkey]*gstate
	order       []*gstate // in the order the checker met them
	msgs        map[msgKey]*gmsg
	sent        map[msgKey]*gsend
	outstanding int // required receipts not yet seen
	inflight    int // sends not yet accepted nor discharged
	dirty       bool
	problems    []string // the membership problems found by the last view check
	nproblems   int
	checked     [4]uint64
}

// NewGroupChecker returns an empty group checker.
func NewGroupChecker() *GroupChecker {
	return &GroupChecker{groups: map[gkey]*gstate{}, msgs: map[msgKey]*gmsg{}, sent: map[msgKey]*gsend{}, dirty: true}
}

// Name implements Checker.
func (c *GroupChecker) Name() string { return "group" }

// Properties implements Checker.
func (c *GroupChecker) Properties() []PropertyCount {
	names := [...]string{PropGroupExactlyOnce, PropGroupNoEcho, PropGroupOrder, PropGroupUniqueAccept}
	out := make([]PropertyCount, len(names))
	for i, n := range names {
		out[i] = PropertyCount{Name: n, Checked: c.checked[i]}
	}
	return out
}

func (c *GroupChecker) group(k gkey) *gstate {
	gs := c.groups[k]
	if gs == nil {
		gs = &gstate{key: k, members: map[int32]*gmember{}, seq: map[int32]int64{}}
		c.groups[k] = gs
		c.order = append(c.order, gs)
	}
	return gs
}

// end ends peer p's membership of gs: messages accepted so far need no longer
// reach it, and its sends in flight need no longer be accepted. With
// sendsOnly, only the sends are discharged (a new session began at the member).
func (c *GroupChecker) end(gs *gstate, p int32, sendsOnly bool) {
	m := gs.members[p]
	if m == nil {
		return
	}
	for _, s := range m.sends {
		if !s.done {
			s.done = true
			c.inflight--
			if c.sent[s.key] == s {
				delete(c.sent, s.key)
			}
		}
	}
	m.sends = m.sends[:0]
	if sendsOnly {
		return
	}
	m.epoch++
	c.outstanding -= m.open
	m.open = 0
	m.pending = m.pending[:0]
}

func (c *GroupChecker) endAll(gs *gstate) {
	for _, m := range gs.sortedMembers() {
		c.end(gs, m.peer, false)
	}
}

// Observe implements Checker.
func (c *GroupChecker) Observe(w *World, s *Step) *Violation {
	c.w = w
	switch s.Kind {
	case StepStart:
		c.dirty = true
		c.resync(w, int32(s.Peer))
	case StepCrash:
		c.dirty = true
	case StepCommand:
		c.dirty = true
		if v := c.command(w, s); v != nil {
			return v
		}
	}
	self := w.PeerID(s.Peer)
	for i := range s.Events {
		ev := &s.Events[i]
		switch ev.Kind {
		case app.EventMessage:
			if groupControlTopic(ev.Topic) {
				c.dirty = true
			}
		case app.EventGroup:
			ge := ev.Group
			if ge == nil {
				continue
			}
			hi, ok := w.Index(ge.Host)
			if !ok {
				continue
			}
			gs := c.group(gkey{int32(hi), ge.Group})
			var v *Violation
			if ge.Host == self {
				v = c.hostEvent(w, s, gs, ge)
			} else {
				v = c.memberEvent(w, s, gs, ge)
			}
			if v != nil {
				return v
			}
		}
	}
	return nil
}

// groupControlTopic reports whether topic carries group membership traffic
// (not msg, state, ping or pong).
func groupControlTopic(topic string) bool {
	if topic == group.TopicInvite {
		return false
	}
	_, typ, ok := group.ParseTopic(topic)
	if !ok {
		return false
	}
	switch typ {
	case group.TypeMsg, group.TypeState, group.TypePing, group.TypePong:
		return false
	}
	return true
}

func (c *GroupChecker) command(w *World, s *Step) *Violation {
	cmd := s.Command
	if cmd == nil || cmd.Err != nil || cmd.Op != GroupSend {
		return nil
	}
	gs := c.group(gkey{int32(cmd.Host), cmd.Group})
	key := msgKey{g: gs.key, origin: int32(s.Peer), state: cmd.Kind == group.TypeState, sum: payloadSum(cmd.Payload)}
	if cmd.Host == s.Peer {
		return c.accept(w, s, gs, key)
	}
	if c.sent[key] != nil {
		return nil // the same payload again: its second acceptance breaks unique-accept
	}
	snd := &gsend{key: key, at: s.Time}
	c.sent[key] = snd
	m := gs.member(int32(s.Peer))
	m.sends = append(m.sends, snd)
	c.inflight++
	return nil
}

func (c *GroupChecker) hostEvent(w *World, s *Step, gs *gstate, ge *group.Event) *Violation {
	switch ge.Type {
	case group.EvMsg, group.EvState:
		oi, ok := w.Index(ge.From)
		if !ok {
			return nil
		}
		key := msgKey{g: gs.key, origin: int32(oi), state: ge.Type == group.EvState, sum: payloadSum(ge.Payload)}
		return c.accept(w, s, gs, key)
	case group.EvMemberLeft:
		if p, ok := w.Index(ge.From); ok {
			c.end(gs, int32(p), false)
		}
		c.dirty = true
	case group.EvClosed, group.EvDissolved, group.EvCreated:
		c.endAll(gs)
		c.dirty = true
	case group.EvInvite:
	default:
		c.dirty = true
	}
	return nil
}

// accept records that the host accepted a message and relayed it to the
// members it lists now (the only members whose list can have changed within
// the step are the origin and the host, which never receive it).
func (c *GroupChecker) accept(w *World, s *Step, gs *gstate, key msgKey) *Violation {
	c.checked[3]++
	if prev := c.msgs[key]; prev != nil {
		return &Violation{Property: PropGroupUniqueAccept, Detail: fmt.Sprintf("%s accepted %s from %s in group %s again (first at %s as #%d)",
			w.Name(int(gs.key.host)), kindName(key.state), w.Name(int(key.origin)), gs.key.id, fmtTime(prev.at), prev.seq)}
	}
	if snd := c.sent[key]; snd != nil {
		if !snd.done {
			snd.done = true
			c.inflight--
		}
		delete(c.sent, key)
	}
	gs.seq[key.origin]++
	gs.accepted++
	msg := &gmsg{key: key, seq: gs.seq[key.origin], at: s.Time}
	c.msgs[key] = msg
	host := w.Node(int(gs.key.host))
	if host == nil {
		return nil
	}
	hv, ok := host.Groups().HostedGroup(gs.key.id)
	if !ok {
		return nil
	}
	for _, mb := range hv.Members {
		p, ok := w.Index(group.PeerID(mb.PeerID))
		if !ok || int32(p) == gs.key.host || int32(p) == key.origin {
			continue
		}
		msg.recv = append(msg.recv, int32(p))
	}
	slices.Sort(msg.recv)
	msg.recv = slices.Compact(msg.recv)
	msg.epoch = make([]uint32, len(msg.recv))
	msg.got = make([]bool, len(msg.recv))
	for k, p := range msg.recv {
		m := gs.member(p)
		msg.epoch[k] = m.epoch
		m.pending = append(m.pending, msg)
		m.open++
		c.outstanding++
	}
	return nil
}

func kindName(state bool) string {
	if state {
		return "state"
	}
	return "msg"
}

func (c *GroupChecker) memberEvent(w *World, s *Step, gs *gstate, ge *group.Event) *Violation {
	self := int32(s.Peer)
	switch ge.Type {
	case group.EvMsg, group.EvState:
		return c.receive(w, s, gs, ge)
	case group.EvLeft, group.EvClosed, group.EvJoinFailed:
		c.end(gs, self, false)
	case group.EvJoined:
		// A new session: what it sent before was settled by the host
		// (accepted, or refused because the host had dropped it).
		c.end(gs, self, true)
	case group.EvMembers:
		if !slices.ContainsFunc(ge.Members, func(m group.Member) bool { return m.PeerID == string(w.PeerID(s.Peer)) }) {
			c.end(gs, self, false)
		}
	case group.EvInvite, group.EvMeta:
		return nil
	}
	c.dirty = true
	return nil
}

func (c *GroupChecker) receive(w *World, s *Step, gs *gstate, ge *group.Event) *Violation {
	self := int32(s.Peer)
	oi, ok := w.Index(ge.From)
	origin := int32(oi)
	if !ok {
		origin = -1
	}
	state := ge.Type == group.EvState
	c.checked[1]++
	if origin == self {
		return &Violation{Property: PropGroupNoEcho, Detail: fmt.Sprintf("%s received its own %s %s back from %s in group %s",
			w.Name(s.Peer), kindName(state), ge.Payload, w.Name(int(gs.key.host)), gs.key.id)}
	}
	key := msgKey{g: gs.key, origin: origin, state: state, sum: payloadSum(ge.Payload)}
	msg := c.msgs[key]
	c.checked[0]++
	if msg == nil {
		return &Violation{Property: PropGroupExactlyOnce, Detail: fmt.Sprintf("%s received %s %s from %s in group %s@%s, which the host never accepted",
			w.Name(s.Peer), kindName(state), ge.Payload, peerName(w, origin), gs.key.id, w.Name(int(gs.key.host)))}
	}
	k := msg.index(self)
	if k < 0 {
		return &Violation{Property: PropGroupExactlyOnce, Detail: fmt.Sprintf("%s received %s #%d %s from %s in group %s@%s, but was not a member when the host accepted it at %s",
			w.Name(s.Peer), kindName(state), msg.seq, ge.Payload, peerName(w, origin), gs.key.id, w.Name(int(gs.key.host)), fmtTime(msg.at))}
	}
	if msg.got[k] {
		return &Violation{Property: PropGroupExactlyOnce, Detail: fmt.Sprintf("%s received %s #%d %s from %s in group %s@%s twice",
			w.Name(s.Peer), kindName(state), msg.seq, ge.Payload, peerName(w, origin), gs.key.id, w.Name(int(gs.key.host)))}
	}
	msg.got[k] = true
	gs.receipts++
	m := gs.member(self)
	if msg.epoch[k] == m.epoch {
		m.open--
		c.outstanding--
		if m.open == 0 {
			m.pending = m.pending[:0]
		}
	}
	d := s.Time - msg.at
	m.recvd++
	m.sumDelay += d
	m.maxDelay = max(m.maxDelay, d)
	c.checked[2]++
	if last := m.last[origin]; msg.seq <= last {
		return &Violation{Property: PropGroupOrder, Detail: fmt.Sprintf("%s received %s's #%d in group %s@%s after its #%d",
			w.Name(s.Peer), peerName(w, origin), msg.seq, gs.key.id, w.Name(int(gs.key.host)), last)}
	}
	m.last[origin] = msg.seq
	return nil
}

// resync catches up with what a (re)started node lost without an event: a
// host that reloads fewer members (volatile groups keep none), a member whose
// subscription was not durable.
func (c *GroupChecker) resync(w *World, p int32) {
	n := w.Node(int(p))
	if n == nil {
		return
	}
	for _, gs := range c.order {
		if gs.key.host == p {
			hv, ok := n.Groups().HostedGroup(gs.key.id)
			if !ok {
				c.endAll(gs)
				continue
			}
			listed := map[string]bool{}
			for _, m := range hv.Members {
				listed[m.PeerID] = true
			}
			for _, m := range gs.sortedMembers() {
				if !listed[string(w.PeerID(int(m.peer)))] {
					c.end(gs, m.peer, false)
				}
			}
			continue
		}
		if gs.members[p] == nil {
			continue
		}
		if _, ok := n.Groups().Subscription(w.PeerID(int(gs.key.host)), gs.key.id); !ok {
			c.end(gs, p, false)
		}
	}
}

// Converged implements Checker. The counters are kept as steps go; the member
// lists are compared only when something that changes them happened.
func (c *GroupChecker) Converged() bool {
	if c.outstanding > 0 || c.inflight > 0 {
		return false
	}
	if c.dirty && c.w != nil {
		c.checkViews(c.w, true)
	}
	return c.nproblems == 0
}

const maxProblems = 5

// checkViews compares every subscription with its host's member list; with
// firstOnly it stops at the first problem (enough for Converged).
func (c *GroupChecker) checkViews(w *World, firstOnly bool) {
	c.dirty = false
	c.problems = c.problems[:0]
	c.nproblems = 0
	stop := false
	problem := func(format string, args ...any) {
		c.nproblems++
		stop = firstOnly
		if len(c.problems) < maxProblems {
			c.problems = append(c.problems, fmt.Sprintf(format, args...))
		}
	}
	type hostedList struct {
		key   gkey
		peers []int32 // sorted
	}
	var hosted []hostedList
	byKey := map[gkey][]int32{}
	for i := 0; i < w.NumPeers(); i++ {
		n := w.Node(i)
		if n == nil {
			continue
		}
		for _, hv := range n.Groups().Hosted() {
			hl := hostedList{key: gkey{int32(i), hv.Group.ID}, peers: c.peerList(w, hv.Members)}
			hosted = append(hosted, hl)
			byKey[hl.key] = hl.peers
		}
	}
	type subKey struct {
		g gkey
		p int32
	}
	seen := map[subKey]bool{} // subscriptions found, in whatever state
	for i := 0; i < w.NumPeers() && !stop; i++ {
		n := w.Node(i)
		if n == nil {
			continue
		}
		for _, sv := range n.Groups().Subscriptions() {
			hi, ok := w.Index(sv.Sub.Host)
			if !ok {
				problem("%s: %s is subscribed to %s at unknown host %s", LiveGroupStaleSub, w.Name(i), sv.Sub.GroupID, sv.Sub.Host)
				continue
			}
			k := gkey{int32(hi), sv.Sub.GroupID}
			seen[subKey{k, int32(i)}] = true
			list, isHosted := byKey[k]
			switch {
			case !w.Up(hi):
				problem("%s: %s is subscribed to %s@%s, whose host is down", LiveGroupMembership, w.Name(i), k.id, w.Name(hi))
			case !isHosted:
				problem("%s: %s is still subscribed to %s@%s, which %s no longer hosts", LiveGroupStaleSub, w.Name(i), k.id, w.Name(hi), w.Name(hi))
			case !sv.Joined:
				problem("%s: %s is still joining %s@%s", LiveGroupMembership, w.Name(i), k.id, w.Name(hi))
			case !slices.Contains(list, int32(i)):
				problem("%s: %s is subscribed to %s@%s, but the host does not list it", LiveGroupMembership, w.Name(i), k.id, w.Name(hi))
			default:
				if got := c.peerList(w, sv.Members); !slices.Equal(got, list) {
					problem("%s: %s sees %s in %s@%s, the host lists %s", LiveGroupViews, w.Name(i), compactPeers(w, got), k.id, w.Name(hi), compactPeers(w, list))
				}
			}
		}
	}
	for _, hl := range hosted {
		if stop {
			break
		}
		for _, p := range hl.peers {
			if p == hl.key.host || seen[subKey{hl.key, p}] {
				continue
			}
			if p < 0 || !w.Up(int(p)) {
				problem("%s: %s lists %s in %s, which is down", LiveGroupMembership, w.Name(int(hl.key.host)), peerName(w, p), hl.key.id)
				continue
			}
			problem("%s: %s lists %s in %s, which has no subscription to it", LiveGroupMembership, w.Name(int(hl.key.host)), w.Name(int(p)), hl.key.id)
		}
	}
}

// peerList returns the sorted peer indexes of a member list (unknown peers as -1).
func (c *GroupChecker) peerList(w *World, ms []group.Member) []int32 {
	out := make([]int32, 0, len(ms))
	for _, m := range ms {
		p, ok := w.Index(group.PeerID(m.PeerID))
		if !ok {
			p = -1
		}
		out = append(out, int32(p))
	}
	slices.Sort(out)
	return out
}

// compactPeers names peers with runs shortened: p0,p2..p5.
func compactPeers(w *World, ps []int32) string {
	var b strings.Builder
	for i := 0; i < len(ps); {
		j := i
		for j+1 < len(ps) && ps[j+1] == ps[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(peerName(w, ps[i]))
		if j > i {
			if j == i+1 {
				b.WriteString("," + peerName(w, ps[j]))
			} else {
				b.WriteString(".." + peerName(w, ps[j]))
			}
		}
		i = j + 1
	}
	if b.Len() == 0 {
		return "none"
	}
	return b.String()
}

// Waiting implements Checker.
func (c *GroupChecker) Waiting(w *World) string {
	var parts []string
	if c.outstanding > 0 {
		var ex []string
		for _, gs := range c.order {
			for _, m := range gs.sortedMembers() {
				for _, msg := range m.pending {
					k := msg.index(m.peer)
					if len(ex) < 3 && k >= 0 && !msg.got[k] && msg.epoch[k] == m.epoch {
						ex = append(ex, fmt.Sprintf("%s %s #%d from %s accepted at %s not at %s", gs.key.id, kindName(msg.key.state),
							msg.seq, peerName(w, msg.key.origin), fmtTime(msg.at), w.Name(int(m.peer))))
					}
				}
			}
		}
		parts = append(parts, fmt.Sprintf("%s: %d receipts outstanding: %s", LiveGroupDelivered, c.outstanding, strings.Join(ex, ", ")))
	}
	if c.inflight > 0 {
		var ex []string
		for _, gs := range c.order {
			for _, m := range gs.sortedMembers() {
				for _, snd := range m.sends {
					if len(ex) < 3 && !snd.done {
						ex = append(ex, fmt.Sprintf("%s's %s to %s@%s sent at %s", w.Name(int(m.peer)), kindName(snd.key.state), gs.key.id,
							w.Name(int(gs.key.host)), fmtTime(snd.at)))
					}
				}
			}
		}
		parts = append(parts, fmt.Sprintf("%s: %d sends not accepted: %s", LiveGroupAccepted, c.inflight, strings.Join(ex, ", ")))
	}
	if c.outstanding == 0 && c.inflight == 0 {
		c.checkViews(w, false)
		if c.nproblems > 0 {
			more := ""
			if c.nproblems > len(c.problems) {
				more = fmt.Sprintf(" (+%d more)", c.nproblems-len(c.problems))
			}
			parts = append(parts, strings.Join(c.problems, "; ")+more)
		}
	}
	if len(parts) == 0 {
		return "group: nothing outstanding"
	}
	return "group: " + strings.Join(parts, "; ")
}

// GroupTotals are a GroupChecker's counters.
type GroupTotals struct {
	Groups      int `json:"groups"`
	Accepted    int `json:"accepted"`    // messages the hosts accepted
	Receipts    int `json:"receipts"`    // relayed messages members received
	Outstanding int `json:"outstanding"` // receipts still required
	InFlight    int `json:"in_flight"`   // members' sends not yet accepted
}

// Totals returns the checker's counters.
func (c *GroupChecker) Totals() GroupTotals {
	t := GroupTotals{Groups: len(c.order), Outstanding: c.outstanding, InFlight: c.inflight}
	for _, gs := range c.order {
		t.Accepted += gs.accepted
		t.Receipts += gs.receipts
	}
	return t
}

// MemberDelay is how long relayed messages took to reach one member: from
// the host's acceptance to the member's receipt.
type MemberDelay struct {
	Peer     int
	Received int
	Max      time.Duration
	Mean     time.Duration
}

// Delays returns the delivery delays of group id hosted by host, per member
// in peer order. reset clears them afterwards.
func (c *GroupChecker) Delays(host int, id string, reset bool) []MemberDelay {
	gs := c.groups[gkey{int32(host), id}]
	if gs == nil {
		return nil
	}
	var out []MemberDelay
	for _, m := range gs.sortedMembers() {
		if m.recvd == 0 {
			continue
		}
		out = append(out, MemberDelay{Peer: int(m.peer), Received: m.recvd, Max: m.maxDelay, Mean: m.sumDelay / time.Duration(m.recvd)})
		if reset {
			m.recvd, m.maxDelay, m.sumDelay = 0, 0, 0
		}
	}
	return out
}
