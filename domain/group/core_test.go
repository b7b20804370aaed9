package group

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/domain/mq"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// store applies Changes as a real store must.
type store struct {
	groups  map[string]Group
	members map[string]map[PeerID]Member
	invites map[string]map[PeerID]bool
	subs    map[string]Subscription
	// received invitations by host/group
	invitations map[string]Invitation
	history     []HistoryEntry
}

func newStore() *store {
	return &store{groups: map[string]Group{}, members: map[string]map[PeerID]Member{}, invites: map[string]map[PeerID]bool{},
		subs: map[string]Subscription{}, invitations: map[string]Invitation{}}
}

func (s *store) apply(cs []Change) {
	for _, c := range cs {
		switch c.Kind {
		case PutGroup:
			s.groups[c.GroupID] = *c.Group
		case DeleteGroup:
			delete(s.groups, c.GroupID)
			delete(s.members, c.GroupID)
			delete(s.invites, c.GroupID)
		case PutMember:
			if s.members[c.GroupID] == nil {
				s.members[c.GroupID] = map[PeerID]Member{}
			}
			s.members[c.GroupID][c.Peer] = *c.Member
		case DeleteMember:
			delete(s.members[c.GroupID], c.Peer)
		case PutInvite:
			if s.invites[c.GroupID] == nil {
				s.invites[c.GroupID] = map[PeerID]bool{}
			}
			s.invites[c.GroupID][c.Peer] = true
		case DeleteInvite:
			delete(s.invites[c.GroupID], c.Peer)
		case PutSubscription:
			s.subs[string(c.Peer)+"/"+c.GroupID] = *c.Sub
		case DeleteSubscription:
			delete(s.subs, string(c.Peer)+"/"+c.GroupID)
		case AppendHistory:
			s.history = append(s.history, *c.History)
		case PutInvitation:
			s.invitations[string(c.Peer)+"/"+c.GroupID] = *c.Invitation
		case DeleteInvitation:
			delete(s.invitations, string(c.Peer)+"/"+c.GroupID)
		}
	}
}

func (s *store) snapshot() Snapshot {
	snap := Snapshot{Members: map[string][]Member{}, Invites: map[string][]PeerID{}}
	for _, g := range s.groups {
		snap.Groups = append(snap.Groups, g)
	}
	for id, ms := range s.members {
		for _, m := range ms {
			snap.Members[id] = append(snap.Members[id], m)
		}
	}
	for id, inv := range s.invites {
		for p := range inv {
			snap.Invites[id] = append(snap.Invites[id], p)
		}
	}
	for _, sub := range s.subs {
		snap.Subscriptions = append(snap.Subscriptions, sub)
	}
	for _, inv := range s.invitations {
		snap.Invitations = append(snap.Invitations, inv)
	}
	return snap
}

type node struct {
	id     PeerID
	core   *Core
	store  *store
	events []Event
	asked  []HistoryRequest // members' history questions (Ready.History)
}

type world struct {
	t     *testing.T
	now   time.Time
	cfg   Config
	nodes map[PeerID]*node
	queue []Send
	from  []PeerID
	cut   map[PeerID]bool // peers whose traffic is dropped (partitioned)
	sent  []Send
}

func newWorld(t *testing.T, ids ...PeerID) *world {
	w := &world{t: t, now: t0, cfg: Config{PingInterval: 10 * time.Second, EvictAfter: 30 * time.Second,
		JoinTimeout: 5 * time.Second, RejoinInterval: 10 * time.Second}, nodes: map[PeerID]*node{}, cut: map[PeerID]bool{}}
	for _, id := range ids {
		n := &node{id: id, store: newStore()}
		n.core = NewCore(id, "name-"+string(id), Snapshot{}, w.cfg)
		n.core.Tick(w.now)
		w.nodes[id] = n
	}
	return w
}

func (w *world) restart(id PeerID) {
	n := w.nodes[id]
	n.core = NewCore(id, "name-"+string(id), n.store.snapshot(), w.cfg)
	at, ok := n.core.NextWake()
	require.True(w.t, ok && at.IsZero(), "a restored core asks for a tick at once")
	n.core.Tick(w.now)
	n.events = nil
}

// settle drains every core and delivers messages in FIFO order until quiet.
func (w *world) settle() {
	w.t.Helper()
	for i := 0; i < 100_000; i++ {
		for _, id := range sortedPeers(w.nodes) {
			n := w.nodes[id]
			r := n.core.Drain()
			n.store.apply(r.Changes)
			n.events = append(n.events, r.Events...)
			n.asked = append(n.asked, r.History...)
			for _, s := range r.Sends {
				w.queue = append(w.queue, s)
				w.from = append(w.from, id)
			}
		}
		if len(w.queue) == 0 {
			return
		}
		s, from := w.queue[0], w.from[0]
		w.queue, w.from = w.queue[1:], w.from[1:]
		w.sent = append(w.sent, s)
		if w.cut[from] || w.cut[s.To] {
			continue
		}
		if to := w.nodes[s.To]; to != nil {
			require.True(w.t, to.core.Receive(w.now, from, s.Topic, s.Payload, s.Origin), "topic %s", s.Topic)
		}
	}
	w.t.Fatal("no quiescence")
}

// advance moves time forward, firing ticks as the cores ask.
func (w *world) advance(d time.Duration) {
	end := w.now.Add(d)
	for {
		next := end
		for _, id := range sortedPeers(w.nodes) {
			if at, ok := w.nodes[id].core.NextWake(); ok && at.Before(next) {
				next = at
			}
		}
		if next.Before(w.now) {
			next = w.now
		}
		w.now = next
		for _, id := range sortedPeers(w.nodes) {
			w.nodes[id].core.Tick(w.now)
		}
		w.settle()
		if !w.now.Before(end) {
			return
		}
	}
}

func sortedPeers(m map[PeerID]*node) []PeerID {
	var out []PeerID
	for id := range m {
		out = append(out, id)
	}
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

func (n *node) eventsOf(typ string) []Event {
	var out []Event
	for _, e := range n.events {
		if e.Type == typ {
			out = append(out, e)
		}
	}
	return out
}

func peersOf(ms []Member) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.PeerID)
	}
	return out
}

const gid = "0123456789abcdef"

func (w *world) create(host PeerID, spec CreateSpec) Group {
	w.t.Helper()
	if spec.ID == "" {
		spec.ID = gid
	}
	if spec.Name == "" {
		spec.Name = "game"
	}
	g, err := w.nodes[host].core.Create(w.now, spec)
	require.NoError(w.t, err)
	w.settle()
	return g
}

func (w *world) join(member, host PeerID, id string) {
	w.t.Helper()
	require.NoError(w.t, w.nodes[member].core.Join(w.now, host, id))
	w.settle()
}

func TestJoinFlowWelcomeThenMembersToOthers(t *testing.T) {
	w := newWorld(t, "H", "A", "B")
	w.create("H", CreateSpec{HostJoin: true})
	w.join("A", "H", gid)
	w.join("B", "H", gid)

	a, b, h := w.nodes["A"], w.nodes["B"], w.nodes["H"]
	joined := a.eventsOf(EvJoined)
	require.Len(t, joined, 1)
	assert.Equal(t, []string{"H", "A"}, peersOf(joined[0].Members), "welcome carries the current member list")
	assert.Equal(t, []string{"H", "A", "B"}, peersOf(a.eventsOf(EvMembers)[0].Members), "others get the update")
	assert.Len(t, b.eventsOf(EvJoined), 1)
	assert.Len(t, h.eventsOf(EvMemberJoined), 2)

	sa, ok := a.core.Subscription("H", gid)
	require.True(t, ok)
	assert.True(t, sa.Joined)
	assert.Equal(t, DefaultRoleName, sa.Sub.Role)
	assert.Equal(t, "game", sa.Sub.GroupName)
	hv, _ := h.core.HostedGroup(gid)
	assert.Equal(t, RoleOwner, hv.Members[0].Role)
	assert.Equal(t, "name-A", hv.Members[1].Name)
	assert.Len(t, h.store.members[gid], 3)
	assert.Len(t, a.store.subs, 1, "subscription stored for re-join after restart")
}

func TestRelayReachesOthersWithOriginalSender(t *testing.T) {
	w := newWorld(t, "H", "A", "B", "C")
	w.create("H", CreateSpec{})
	for _, p := range []PeerID{"A", "B", "C"} {
		w.join(p, "H", gid)
	}
	require.NoError(t, w.nodes["A"].core.SendToGroup(w.now, "H", gid, TypeMsg, []byte(`{"move":"e2e4"}`)))
	w.settle()
	for _, p := range []PeerID{"B", "C"} {
		msgs := w.nodes[p].eventsOf(EvMsg)
		require.Len(t, msgs, 1, "peer %s", p)
		assert.Equal(t, PeerID("A"), msgs[0].From, "the event names the original sender, not the host")
		assert.JSONEq(t, `{"move":"e2e4"}`, string(msgs[0].Payload))
	}
	assert.Empty(t, w.nodes["A"].eventsOf(EvMsg), "no echo to the sender")
	hostMsgs := w.nodes["H"].eventsOf(EvMsg)
	require.Len(t, hostMsgs, 1)
	assert.Equal(t, PeerID("A"), hostMsgs[0].From)
	require.Len(t, w.nodes["H"].store.history, 1, "the host keeps the history")

	// The host's own message goes to every member.
	require.NoError(t, w.nodes["H"].core.SendToGroup(w.now, "H", gid, TypeMsg, []byte(`1`)))
	w.settle()
	for _, p := range []PeerID{"A", "B", "C"} {
		assert.Len(t, w.nodes[p].eventsOf(EvMsg), map[PeerID]int{"A": 1, "B": 2, "C": 2}[p])
	}
}

func TestHostRelaysOnlyMembersMessages(t *testing.T) {
	w := newWorld(t, "H", "A", "X")
	w.create("H", CreateSpec{})
	w.join("A", "H", gid)
	// X is not a member but sends a msg anyway.
	require.True(t, w.nodes["H"].core.Receive(w.now, "X", Topic(gid, TypeMsg), []byte(`{"spam":1}`), ""))
	w.settle()
	assert.Empty(t, w.nodes["A"].eventsOf(EvMsg), "nothing relayed from a non-member")
	assert.Empty(t, w.nodes["H"].eventsOf(EvMsg))
	// X was told it is not a member (it had no subscription, so it just ignores it).
	var errs []Send
	for _, s := range w.sent {
		if s.To == "X" && s.Topic == Topic(gid, TypeError) {
			errs = append(errs, s)
		}
	}
	require.Len(t, errs, 1)
	assert.Contains(t, string(errs[0].Payload), CodeNotMember)
}

func TestJoinErrorsReachCallerIntact(t *testing.T) {
	cases := []struct {
		name  string
		spec  CreateSpec
		setup func(w *world)
		code  string
		msg   string
	}{
		{"invite-only rejects the uninvited", CreateSpec{Access: InviteOnly}, nil, CodeNotInvited, "invite-only"},
		{"full", CreateSpec{MaxMembers: 1}, func(w *world) { w.join("B", "H", gid) }, CodeFull, "group is full"},
		{"unknown group", CreateSpec{ID: "ffffffffffffffff"}, nil, CodeNotFound, "does not exist"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, "H", "A", "B")
			w.create("H", tc.spec)
			if tc.setup != nil {
				tc.setup(w)
			}
			w.join("A", "H", gid)
			failed := w.nodes["A"].eventsOf(EvJoinFailed)
			require.Len(t, failed, 1)
			assert.Equal(t, tc.code, failed[0].Err.Code)
			assert.Contains(t, failed[0].Err.Message, tc.msg)
			_, ok := w.nodes["A"].core.Subscription("H", gid)
			assert.False(t, ok)
		})
	}
}

func TestInviteLetsPeerJoinInviteOnlyGroup(t *testing.T) {
	w := newWorld(t, "H", "A")
	w.create("H", CreateSpec{Access: InviteOnly})
	require.NoError(t, w.nodes["H"].core.Invite(w.now, gid, "A"))
	w.settle()
	inv := w.nodes["A"].eventsOf(EvInvite)
	require.Len(t, inv, 1)
	var payload Invite
	require.NoError(t, json.Unmarshal(inv[0].Payload, &payload))
	assert.Equal(t, "H", payload.HostPeerID)
	assert.Equal(t, InviteOnly, payload.Access)
	w.join("A", "H", gid)
	assert.Len(t, w.nodes["A"].eventsOf(EvJoined), 1)
	assert.True(t, w.nodes["H"].store.invites[gid]["A"], "invites are durable")
}

// An invitation is kept (durably) until it is accepted or declined, so a
// user who was not watching when it came still finds it.
func TestInvitationIsKeptUntilAcceptedOrDeclined(t *testing.T) {
	w := newWorld(t, "H", "A")
	w.create("H", CreateSpec{Access: InviteOnly, Lifecycle: Ephemeral, Context: "chess"})
	w.create("H", CreateSpec{ID: "1111111111111111", Name: "second"})
	require.NoError(t, w.nodes["H"].core.Invite(w.now, gid, "A"))
	w.settle()
	w.now = w.now.Add(time.Second)
	require.NoError(t, w.nodes["H"].core.Invite(w.now, "1111111111111111", "A"))
	w.settle()

	a := w.nodes["A"]
	want := []Invitation{
		{Host: "H", GroupID: "1111111111111111", GroupName: "second", GroupType: AppGeneral, Lifecycle: Persistent,
			Access: Open, ReceivedAt: w.now},
		{Host: "H", GroupID: gid, GroupName: "game", GroupType: AppGeneral, GroupContext: "chess", Lifecycle: Ephemeral,
			Access: InviteOnly, ReceivedAt: t0},
	}
	assert.Equal(t, want, a.core.Invitations(), "newest first")
	w.restart("A")
	assert.Equal(t, want, a.core.Invitations(), "kept across a restart")

	w.join("A", "H", gid)
	assert.Equal(t, want[:1], a.core.Invitations(), "joining accepts it")
	assert.Len(t, a.store.invitations, 1)

	require.NoError(t, a.core.DeclineInvitation(w.now, "H", "1111111111111111"))
	w.settle()
	assert.Empty(t, a.core.Invitations())
	assert.Empty(t, a.store.invitations)
	assert.Len(t, a.eventsOf(EvDeclined), 1)
	var ge *Error
	require.ErrorAs(t, a.core.DeclineInvitation(w.now, "H", "1111111111111111"), &ge)
	assert.Equal(t, CodeNotFound, ge.Code)

	// An invitation to a group we are in already is not kept.
	require.NoError(t, w.nodes["H"].core.Invite(w.now, gid, "A"))
	w.settle()
	assert.Len(t, a.eventsOf(EvInvite), 1, "(events since the restart)")
	assert.Empty(t, a.core.Invitations())
}

// A refused join drops the invitation when the group is gone or the host
// revoked it; a join that times out keeps it.
func TestInvitationDroppedWhenTheHostRefuses(t *testing.T) {
	w := newWorld(t, "H", "A")
	w.create("H", CreateSpec{Access: InviteOnly})
	require.NoError(t, w.nodes["H"].core.Invite(w.now, gid, "A"))
	w.settle()
	w.cut["H"] = true
	w.join("A", "H", gid)
	w.advance(6 * time.Second)
	require.Len(t, w.nodes["A"].eventsOf(EvJoinFailed), 1)
	assert.Len(t, w.nodes["A"].core.Invitations(), 1, "a timeout says nothing of the invitation")

	delete(w.cut, "H")
	require.NoError(t, w.nodes["H"].core.Close(w.now, gid))
	w.settle()
	w.join("A", "H", gid)
	f := w.nodes["A"].eventsOf(EvJoinFailed)
	require.Len(t, f, 2)
	assert.Equal(t, CodeNotFound, f[1].Err.Code)
	assert.Empty(t, w.nodes["A"].core.Invitations())
	assert.Empty(t, w.nodes["A"].store.invitations)
}

// A peer that invites us again and again replaces its own oldest
// invitations, never other hosts'; the total is bounded too.
func TestInvitationsAreBounded(t *testing.T) {
	w := newWorld(t, "A")
	a := w.nodes["A"].core
	invite := func(host PeerID, i int) {
		w.now = w.now.Add(time.Millisecond)
		inv := mustJSON(Invite{GroupID: fmt.Sprintf("%016x", i), GroupName: "g", HostPeerID: string(host)})
		a.Receive(w.now, host, TopicInvite, inv, "")
	}
	invite("GOOD", 0)
	for i := 1; i <= 3*MaxInvitationsPerHost; i++ {
		invite("SPAM", i)
	}
	w.settle()
	byHost := map[PeerID]int{}
	for _, inv := range a.Invitations() {
		byHost[inv.Host]++
	}
	assert.Equal(t, map[PeerID]int{"GOOD": 1, "SPAM": MaxInvitationsPerHost}, byHost)
	assert.Equal(t, fmt.Sprintf("%016x", 3*MaxInvitationsPerHost), a.Invitations()[0].GroupID, "the newest are kept")
	assert.Len(t, w.nodes["A"].store.invitations, 1+MaxInvitationsPerHost, "the store holds what the core holds")

	for i := 0; i < 2*MaxInvitations; i++ {
		invite(PeerID(fmt.Sprintf("H%03d", i)), i)
	}
	w.settle()
	assert.Len(t, a.Invitations(), MaxInvitations)
	assert.Len(t, w.nodes["A"].store.invitations, MaxInvitations)
	assert.Equal(t, PeerID(fmt.Sprintf("H%03d", 2*MaxInvitations-1)), a.Invitations()[0].Host)
}

func TestForgedInviteIgnored(t *testing.T) {
	w := newWorld(t, "A")
	inv := mustJSON(Invite{GroupID: gid, GroupName: "x", HostPeerID: "SOMEONE-ELSE"})
	w.nodes["A"].core.Receive(w.now, "M", TopicInvite, inv, "")
	w.settle()
	assert.Empty(t, w.nodes["A"].eventsOf(EvInvite), "a peer can only invite to its own groups")
	assert.Empty(t, w.nodes["A"].core.Invitations())
}

func TestLeaveUpdatesMembersAndEphemeralDissolves(t *testing.T) {
	w := newWorld(t, "H", "A", "B")
	w.create("H", CreateSpec{Lifecycle: Ephemeral})
	w.join("A", "H", gid)
	w.join("B", "H", gid)
	require.NoError(t, w.nodes["A"].core.Leave(w.now, "H", gid))
	w.settle()
	w.advance(DefaultConfig().MembersInterval) // B got a list at its own join, just now
	last := w.nodes["B"].eventsOf(EvMembers)
	assert.Equal(t, []string{"B"}, peersOf(last[len(last)-1].Members))
	require.NoError(t, w.nodes["B"].core.Leave(w.now, "H", gid))
	w.settle()
	d := w.nodes["H"].eventsOf(EvDissolved)
	require.Len(t, d, 1, "the last member gone dissolves an ephemeral group")
	assert.Equal(t, "last member left", d[0].Reason)
	assert.Empty(t, w.nodes["H"].store.groups)
}

func TestEphemeralDissolvesWhenIdleAndHistoryStays(t *testing.T) {
	w := newWorld(t, "H", "A")
	w.create("H", CreateSpec{Lifecycle: Ephemeral, IdleTimeout: time.Minute, HostJoin: true})
	w.join("A", "H", gid)
	require.NoError(t, w.nodes["A"].core.SendToGroup(w.now, "H", gid, TypeMsg, []byte(`{"move":"e4"}`)))
	w.settle()
	w.advance(50 * time.Second)
	assert.Empty(t, w.nodes["H"].eventsOf(EvDissolved), "still active")
	w.advance(20 * time.Second)
	require.Len(t, w.nodes["H"].eventsOf(EvDissolved), 1)
	assert.Len(t, w.nodes["A"].eventsOf(EvClosed), 1, "members are told")
	assert.Len(t, w.nodes["H"].store.history, 1, "what the application stored stays")
	_, ok := w.nodes["A"].core.Subscription("H", gid)
	assert.False(t, ok)
}

func TestPersistentGroupSurvivesIdleAndEmpty(t *testing.T) {
	w := newWorld(t, "H", "A")
	w.create("H", CreateSpec{})
	w.join("A", "H", gid)
	require.NoError(t, w.nodes["A"].core.Leave(w.now, "H", gid))
	w.settle()
	w.advance(2 * time.Hour)
	_, ok := w.nodes["H"].core.HostedGroup(gid)
	assert.True(t, ok)
}

// A burst of joins costs each member a member list per MembersInterval,
// not one per join (O(N) lists, not O(N²)); once quiet, every member has
// the host's list. A change after a quiet interval goes out at once.
func TestMemberListsOfABurstOfJoinsAreCoalesced(t *testing.T) {
	ids := []PeerID{"H"}
	for i := range 20 {
		ids = append(ids, PeerID(fmt.Sprintf("M%02d", i)))
	}
	w := newWorld(t, ids...)
	w.create("H", CreateSpec{})
	for _, m := range ids[1:] {
		w.join(m, "H", gid)
	}
	lists := func() int {
		n := 0
		for _, m := range ids[1:] {
			n += len(w.nodes[m].eventsOf(EvMembers))
		}
		return n
	}
	assert.Equal(t, 1, lists(), "the second join's list went out at once (to the first member); the rest wait")
	assert.Len(t, w.nodes["H"].eventsOf(EvMembers), 20, "the host's application hears of every join at once")
	w.advance(DefaultConfig().MembersInterval)
	assert.Equal(t, 1+20, lists(), "then one list to every member (without coalescing: 190)")
	hv, _ := w.nodes["H"].core.HostedGroup(gid)
	for _, m := range ids[1:] {
		got := w.nodes[m].eventsOf(EvMembers)
		assert.Equal(t, peersOf(hv.Members), peersOf(got[len(got)-1].Members), "%s has the host's list", m)
	}

	w.advance(time.Second)
	require.NoError(t, w.nodes["M00"].core.Leave(w.now, "H", gid))
	w.settle()
	assert.Equal(t, 1+20+19, lists(), "after a quiet interval a change goes out at once")
}

func TestKickAndClose(t *testing.T) {
	w := newWorld(t, "H", "A", "B")
	w.create("H", CreateSpec{Access: InviteOnly})
	for _, p := range []PeerID{"A", "B"} {
		require.NoError(t, w.nodes["H"].core.Invite(w.now, gid, p))
		w.settle()
		w.join(p, "H", gid)
	}
	require.NoError(t, w.nodes["H"].core.Kick(w.now, gid, "A"))
	w.settle()
	w.advance(DefaultConfig().MembersInterval) // B got a list at its own join, just now
	closed := w.nodes["A"].eventsOf(EvClosed)
	require.Len(t, closed, 1)
	assert.Equal(t, CodeKicked, closed[0].Err.Code)
	last := w.nodes["B"].eventsOf(EvMembers)
	assert.Equal(t, []string{"B"}, peersOf(last[len(last)-1].Members))
	w.join("A", "H", gid)
	assert.Equal(t, CodeNotInvited, w.nodes["A"].eventsOf(EvJoinFailed)[0].Err.Code, "a kick revokes the invite")

	require.NoError(t, w.nodes["H"].core.Close(w.now, gid))
	w.settle()
	assert.Len(t, w.nodes["B"].eventsOf(EvClosed), 1)
	assert.Empty(t, w.nodes["B"].store.subs)
	assert.Error(t, w.nodes["H"].core.Kick(w.now, gid, "B"))
}

func TestSilentMemberEvictedAndRejoinsAfterHeal(t *testing.T) {
	w := newWorld(t, "H", "A", "B")
	w.create("H", CreateSpec{})
	w.join("A", "H", gid)
	w.join("B", "H", gid)
	w.cut["A"] = true
	w.advance(45 * time.Second)
	left := w.nodes["H"].eventsOf(EvMemberLeft)
	require.Len(t, left, 1, "the silent member is evicted with a real leave")
	assert.Equal(t, PeerID("A"), left[0].From)
	assert.Equal(t, "timeout", left[0].Reason)
	last := w.nodes["B"].eventsOf(EvMembers)
	assert.Equal(t, []string{"B"}, peersOf(last[len(last)-1].Members))

	delete(w.cut, "A")
	w.advance(30 * time.Second)
	hv, _ := w.nodes["H"].core.HostedGroup(gid)
	assert.ElementsMatch(t, []string{"A", "B"}, peersOf(hv.Members), "the member came back by itself")
	sa, _ := w.nodes["A"].core.Subscription("H", gid)
	assert.True(t, sa.Joined)
	assert.ElementsMatch(t, peersOf(hv.Members), peersOf(sa.Members), "member sees the host's list")
}

func TestHostRestartReloadsGroupsAndMembers(t *testing.T) {
	w := newWorld(t, "H", "A")
	w.create("H", CreateSpec{Access: InviteOnly, Roles: []string{"player"}})
	require.NoError(t, w.nodes["H"].core.Invite(w.now, gid, "A"))
	w.settle()
	w.join("A", "H", gid)
	w.restart("H")
	hv, ok := w.nodes["H"].core.HostedGroup(gid)
	require.True(t, ok)
	assert.Equal(t, []string{"A"}, peersOf(hv.Members))
	assert.Equal(t, []string{"player"}, hv.Group.Roles)
	require.NoError(t, w.nodes["A"].core.SendToGroup(w.now, "H", gid, TypeMsg, []byte(`1`)))
	w.settle()
	assert.Len(t, w.nodes["H"].eventsOf(EvMsg), 1, "a member's message is relayed after the host restarted")
	w.advance(time.Minute)
	hv, _ = w.nodes["H"].core.HostedGroup(gid)
	assert.Len(t, hv.Members, 1, "the member answers pings: not evicted")
}

// A member that loses its connection to the host sends a join at once (the
// bus dials the host and delivers it once the host is back: what finds a
// restarted host, cmd/goop's TestGroupSurvivesHostRestartOverLibp2p)
// instead of waiting for the host to go quiet for EvictAfter; the host,
// which still counts it, welcomes it, and nothing changes for the others.
// Other peers' disconnections do nothing.
func TestHostDisconnectedRejoinsAtOnce(t *testing.T) {
	w := newWorld(t, "H", "A", "B")
	w.create("H", CreateSpec{})
	w.join("A", "H", gid)
	w.join("B", "H", gid)
	joins := func() int {
		n := 0
		for _, s := range w.sent {
			if s.To == "H" && s.Topic == Topic(gid, TypeJoin) {
				n++
			}
		}
		return n
	}
	before := joins()
	w.nodes["A"].events = nil

	w.nodes["A"].core.HostDisconnected(w.now, "B") // not A's host
	w.settle()
	assert.Equal(t, before, joins(), "a non-host's disconnection sends nothing")

	w.nodes["A"].core.HostDisconnected(w.now, "H")
	w.settle()
	assert.Equal(t, before+1, joins(), "one join, at once")
	sa, _ := w.nodes["A"].core.Subscription("H", gid)
	assert.True(t, sa.Joined, "still joined meanwhile")
	hv, _ := w.nodes["H"].core.HostedGroup(gid)
	assert.ElementsMatch(t, []string{"A", "B"}, peersOf(hv.Members), "the host still counts A, once")
	assert.Empty(t, w.nodes["H"].eventsOf(EvMemberLeft))
	assert.Empty(t, w.nodes["B"].eventsOf(EvMemberLeft))
}

func TestMemberRestartRejoinsStoredSubscriptions(t *testing.T) {
	w := newWorld(t, "H", "A")
	w.create("H", CreateSpec{})
	w.join("A", "H", gid)
	w.restart("A")
	w.settle()
	sa, ok := w.nodes["A"].core.Subscription("H", gid)
	require.True(t, ok)
	assert.True(t, sa.Joined)
	hv, _ := w.nodes["H"].core.HostedGroup(gid)
	assert.Len(t, hv.Members, 1, "re-join is idempotent at the host")
}

func TestJoinTimesOut(t *testing.T) {
	w := newWorld(t, "A")
	require.NoError(t, w.nodes["A"].core.Join(w.now, "GONE", gid))
	w.advance(6 * time.Second)
	f := w.nodes["A"].eventsOf(EvJoinFailed)
	require.Len(t, f, 1)
	assert.Equal(t, CodeTimeout, f[0].Err.Code)
}

func TestWelcomeCarriesState(t *testing.T) {
	w := newWorld(t, "H", "A", "B")
	w.create("H", CreateSpec{})
	w.join("A", "H", gid)
	require.NoError(t, w.nodes["A"].core.SendToGroup(w.now, "H", gid, TypeState, []byte(`{"board":"rnbqkbnr"}`)))
	w.settle()
	w.join("B", "H", gid)
	j := w.nodes["B"].eventsOf(EvJoined)
	require.Len(t, j, 1)
	assert.JSONEq(t, `{"board":"rnbqkbnr"}`, string(j[0].Payload))
}

// The largest state a member may set, made of the characters JSON encoders
// like to escape, still fits the welcome in one bus message: otherwise one
// member could keep everyone else from joining.
func TestWelcomeWithTheLargestStateFitsTheBus(t *testing.T) {
	w := newWorld(t, "H", "A", "B")
	w.create("H", CreateSpec{})
	w.join("A", "H", gid)
	state := []byte(`"` + strings.Repeat("<&>", (MaxStateBytes-2)/3) + `"`)
	require.LessOrEqual(t, len(state), MaxStateBytes)
	require.NoError(t, w.nodes["A"].core.SendToGroup(w.now, "H", gid, TypeState, state))
	w.settle()
	w.join("B", "H", gid)
	var welcome []byte
	for _, s := range w.sent {
		if s.To == "B" && s.Topic == Topic(gid, TypeWelcome) {
			welcome = s.Payload
		}
	}
	require.NotNil(t, welcome)
	assert.LessOrEqual(t, len(welcome), mq.MaxPayloadBytes)
	j := w.nodes["B"].eventsOf(EvJoined)
	require.Len(t, j, 1)
	assert.JSONEq(t, string(state), string(j[0].Payload))
}

func TestRolesAndMeta(t *testing.T) {
	w := newWorld(t, "H", "A")
	w.create("H", CreateSpec{Roles: []string{"player", "judge"}, HostJoin: true})
	w.join("A", "H", gid)
	h := w.nodes["H"].core
	require.NoError(t, h.SetRole(w.now, gid, "A", "player"))
	w.settle()
	sa, _ := w.nodes["A"].core.Subscription("H", gid)
	assert.Equal(t, "player", sa.Sub.Role)
	assert.Equal(t, CodeInvalid, CodeOf(h.SetRole(w.now, gid, "A", "emperor")))
	assert.Equal(t, CodeNotMember, CodeOf(h.SetRole(w.now, gid, "Z", "player")))
	require.NoError(t, h.SetDefaultRole(w.now, gid, "judge"))
	assert.Equal(t, CodeInvalid, CodeOf(h.SetDefaultRole(w.now, gid, "bad role!")))
	require.NoError(t, h.SetRoles(w.now, gid, []string{"a", "b", "a"}))
	hv, _ := h.HostedGroup(gid)
	assert.Equal(t, []string{"a", "b"}, hv.Group.Roles)
	assert.Equal(t, "judge", hv.Group.DefaultRole)

	name, max := "renamed", 5
	require.NoError(t, h.SetMeta(w.now, gid, &name, &max))
	w.settle()
	meta := w.nodes["A"].eventsOf(EvMeta)
	require.Len(t, meta, 1)
	assert.JSONEq(t, `{"group_name":"renamed","group_type":"general","max_members":5}`, string(meta[0].Payload))
	sa, _ = w.nodes["A"].core.Subscription("H", gid)
	assert.Equal(t, "renamed", sa.Sub.GroupName)
	neg := -1
	assert.Equal(t, CodeInvalid, CodeOf(h.SetMeta(w.now, gid, nil, &neg)))
}

func TestCreateValidation(t *testing.T) {
	w := newWorld(t, "H")
	c := w.nodes["H"].core
	cases := []struct {
		name string
		spec CreateSpec
		code string
	}{
		{"bad id", CreateSpec{ID: "a:b", Name: "x"}, CodeInvalid},
		{"empty name", CreateSpec{ID: gid, Name: "  "}, CodeInvalid},
		{"bad lifecycle", CreateSpec{ID: gid, Name: "x", Lifecycle: "forever"}, CodeInvalid},
		{"bad access", CreateSpec{ID: gid, Name: "x", Access: "secret"}, CodeInvalid},
		{"negative max", CreateSpec{ID: gid, Name: "x", MaxMembers: -1}, CodeInvalid},
		{"bad role", CreateSpec{ID: gid, Name: "x", Roles: []string{"ok", "not ok"}}, CodeInvalid},
		{"cluster host cannot join", CreateSpec{ID: gid, Name: "x", Type: AppCluster, HostJoin: true}, CodeHostCantJoin},
		{"control chars in name", CreateSpec{ID: gid, Name: "a\x00b"}, CodeInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Create(w.now, tc.spec)
			assert.Equal(t, tc.code, CodeOf(err), "%v", err)
		})
	}
	assert.Empty(t, c.Drain().Changes, "a refused create changes nothing")
}

func TestHostedLimitAndVolatileCluster(t *testing.T) {
	w := newWorld(t, "H", "A")
	c := w.nodes["H"].core
	for i := 0; i < 50; i++ {
		_, err := c.Create(w.now, CreateSpec{ID: fmt.Sprintf("%016x", i), Name: "g"})
		require.NoError(t, err)
	}
	_, err := c.Create(w.now, CreateSpec{ID: "ffffffffffffff00", Name: "one too many"})
	assert.Equal(t, CodeLimit, CodeOf(err))
	g, err := c.Create(w.now, CreateSpec{ID: "ffffffffffffff01", Name: "compute", Type: AppCluster})
	require.NoError(t, err, "volatile groups do not count")
	assert.True(t, g.Volatile)
	w.settle()
	w.join("A", "H", "ffffffffffffff01")
	assert.Empty(t, w.nodes["H"].store.members["ffffffffffffff01"], "volatile: no member persistence")
	assert.Equal(t, CodeHostCantJoin, CodeOf(c.Join(w.now, "H", "ffffffffffffff01")))
}

func TestMalformedPayloadsAreIgnored(t *testing.T) {
	w := newWorld(t, "H", "A")
	w.create("H", CreateSpec{})
	w.join("A", "H", gid)
	for _, typ := range []string{TypeJoin, TypeWelcome, TypeMembers, TypeMsg, TypeState, TypeMeta, TypeError, TypeClose, TypePing, "bogus"} {
		for _, payload := range [][]byte{nil, []byte("{"), []byte(`"x"`), []byte(`{"members":"no"}`)} {
			w.nodes["H"].core.Receive(w.now, "A", Topic(gid, typ), payload, "")
			w.nodes["A"].core.Receive(w.now, "H", Topic(gid, typ), payload, "")
		}
	}
	w.nodes["A"].core.Receive(w.now, "H", TopicInvite, []byte("garbage"), "")
	assert.False(t, w.nodes["A"].core.Receive(w.now, "H", "chat", nil, ""), "not a group topic")
	w.settle()
}

func TestParseTopic(t *testing.T) {
	id, typ, ok := ParseTopic("group:0123456789abcdef:msg")
	assert.True(t, ok)
	assert.Equal(t, gid, id)
	assert.Equal(t, "msg", typ)
	for _, bad := range []string{"group:", "group::msg", "group:id", "chat", "group:a b:msg"} {
		_, _, ok := ParseTopic(bad)
		assert.False(t, ok, bad)
	}
}

func TestHostJoinsAndLeavesItsOwnGroup(t *testing.T) {
	w := newWorld(t, "H", "A")
	w.create("H", CreateSpec{Lifecycle: Ephemeral})
	w.join("A", "H", gid)
	h := w.nodes["H"].core
	require.NoError(t, h.Join(w.now, "H", gid))
	require.NoError(t, h.Join(w.now, "H", gid), "joining twice is a no-op")
	w.settle()
	assert.Len(t, w.nodes["H"].eventsOf(EvJoined), 1)
	last := w.nodes["A"].eventsOf(EvMembers)
	assert.Equal(t, []string{"A", "H"}, peersOf(last[len(last)-1].Members))
	assert.True(t, w.nodes["H"].store.groups[gid].HostJoined)

	require.NoError(t, w.nodes["A"].core.Leave(w.now, "H", gid))
	w.settle()
	_, ok := h.HostedGroup(gid)
	assert.True(t, ok, "the host is still a member: not dissolved")
	require.NoError(t, h.Leave(w.now, "H", gid))
	w.settle()
	assert.Len(t, w.nodes["H"].eventsOf(EvDissolved), 1)
	assert.Equal(t, CodeNotFound, CodeOf(h.Leave(w.now, "H", gid)))
	assert.Equal(t, CodeNotMember, CodeOf(w.nodes["A"].core.Leave(w.now, "H", gid)))
}

func TestListings(t *testing.T) {
	w := newWorld(t, "H", "A")
	w.create("H", CreateSpec{ID: "bbbbbbbbbbbbbbbb", Name: "second"})
	w.now = w.now.Add(time.Second)
	w.create("H", CreateSpec{ID: "aaaaaaaaaaaaaaaa", Name: "third"})
	require.NoError(t, w.nodes["H"].core.Invite(w.now, "aaaaaaaaaaaaaaaa", "A"))
	w.settle()
	w.join("A", "H", "aaaaaaaaaaaaaaaa")
	hv := w.nodes["H"].core.Hosted()
	require.Len(t, hv, 2)
	assert.Equal(t, "second", hv[0].Group.Name, "sorted by creation time")
	assert.Equal(t, []PeerID{"A"}, hv[1].Invited)
	subs := w.nodes["A"].core.Subscriptions()
	require.Len(t, subs, 1)
	assert.Equal(t, "third", subs[0].Sub.GroupName)
	assert.Equal(t, []string{"A"}, peersOf(subs[0].Members))
}

func TestSendToGroupValidates(t *testing.T) {
	w := newWorld(t, "H", "A")
	w.create("H", CreateSpec{})
	a := w.nodes["A"].core
	assert.Equal(t, CodeNotMember, CodeOf(a.SendToGroup(w.now, "H", gid, TypeMsg, []byte(`1`))))
	w.join("A", "H", gid)
	assert.Equal(t, CodeInvalid, CodeOf(a.SendToGroup(w.now, "H", gid, "join", []byte(`1`))))
	assert.Equal(t, CodeInvalid, CodeOf(a.SendToGroup(w.now, "H", gid, TypeMsg, []byte(`{bad`))))
	big := []byte(`"` + string(make([]byte, 0)) + `"`)
	assert.NoError(t, a.SendToGroup(w.now, "H", gid, TypeMsg, big))
	huge := append([]byte(`"`), append(bytesOf('x', MaxStateBytes), '"')...)
	assert.Equal(t, CodeInvalid, CodeOf(w.nodes["H"].core.SendToGroup(w.now, "H", gid, TypeState, huge)))
}

func bytesOf(c byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = c
	}
	return b
}

func TestRemoteTextIsSanitisedBeforeStoring(t *testing.T) {
	w := newWorld(t, "A")
	a := w.nodes["A"].core
	require.NoError(t, a.Join(w.now, "EVIL", gid))
	w.settle()
	welcome := []byte(`{"group_name":"bad\u0000name\u0007","group_type":"x\u0000","role":"r\u0000",` +
		`"lifecycle":"\u0000","access":"weird","max_members":-5,"members":[{"peer_id":"A","name":"n\u0000","role":"ok"},{"peer_id":"\u0000"}]}`)
	require.True(t, a.Receive(w.now, "EVIL", Topic(gid, TypeWelcome), welcome, ""))
	meta := []byte(`{"group_name":"m\u0000","group_type":"\u0001","max_members":-1}`)
	require.True(t, a.Receive(w.now, "EVIL", Topic(gid, TypeMeta), meta, ""))
	r := a.Drain()
	for _, c := range r.Changes {
		if c.Sub == nil {
			continue
		}
		for _, s := range []string{c.Sub.GroupName, c.Sub.GroupType, c.Sub.Role, c.Sub.Lifecycle, c.Sub.Access} {
			assert.NotContains(t, s, "\x00")
			assert.NotContains(t, s, "\x07")
		}
		assert.GreaterOrEqual(t, c.Sub.MaxMembers, 0)
	}
	sv, ok := a.Subscription("EVIL", gid)
	require.True(t, ok)
	assert.Equal(t, "m", sv.Sub.GroupName, "control characters removed")
	assert.Len(t, sv.Members, 1, "a member without a usable peer id is dropped")
	assert.Equal(t, "n", sv.Members[0].Name)
	for _, ev := range r.Events {
		if ev.Type == EvMeta {
			assert.NotContains(t, string(ev.Payload), "\\u0000")
		}
	}
}

func TestStaleNotMemberDoesNotFailAPendingJoin(t *testing.T) {
	w := newWorld(t, "H", "A")
	w.create("H", CreateSpec{})
	w.join("A", "H", gid)
	a := w.nodes["A"].core
	// A was evicted while away; its leave and new join cross a not_member
	// answering a message it had sent before.
	require.NoError(t, a.Leave(w.now, "H", gid))
	require.NoError(t, a.Join(w.now, "H", gid))
	stale := mustJSON(control{Type: TypeError, Group: gid, Payload: &Error{Code: CodeNotMember, Message: "A is not a member"}})
	a.Receive(w.now, "H", Topic(gid, TypeError), stale, "")
	w.settle()
	assert.Empty(t, w.nodes["A"].eventsOf(EvJoinFailed), "a stale not_member is not the join's answer")
	sv, ok := a.Subscription("H", gid)
	require.True(t, ok)
	assert.True(t, sv.Joined)
}

func TestTimedOutRejoinRemovesStoredSubscription(t *testing.T) {
	w := newWorld(t, "H", "A")
	w.create("H", CreateSpec{})
	w.join("A", "H", gid)
	require.Len(t, w.nodes["A"].store.subs, 1)
	w.cut["H"] = true
	// The host is gone for good: the member's own explicit re-join times out.
	a := w.nodes["A"].core
	require.NoError(t, a.Leave(w.now, "H", gid))
	w.settle()
	w.restart("A")
	assert.Empty(t, w.nodes["A"].store.subs, "leave removed the row")
	w2 := newWorld(t, "H2", "B")
	w2.create("H2", CreateSpec{})
	w2.join("B", "H2", gid)
	b := w2.nodes["B"].core
	// Lost membership (host forgot us), then a user join that times out.
	b.Receive(w2.now, "H2", Topic(gid, TypeMembers), mustJSON(membersPayload{Members: []Member{}}), "")
	w2.cut["H2"] = true
	w2.settle()
	require.NoError(t, b.Join(w2.now, "H2", gid))
	w2.advance(10 * time.Second)
	require.Len(t, w2.nodes["B"].eventsOf(EvJoinFailed), 1)
	assert.Empty(t, w2.nodes["B"].store.subs, "the stored row goes with the failed join, so a restart does not revive it")
}

// A member asks the host for the group's newest messages; the host's
// application reads its store and answers through AnswerHistory.
func TestMemberAsksTheHostForHistory(t *testing.T) {
	w := newWorld(t, "H", "A", "B")
	w.create("H", CreateSpec{HostJoin: true})
	w.join("A", "H", gid)
	for i := range 3 {
		require.NoError(t, w.nodes["H"].core.SendToGroup(w.now, "H", gid, TypeMsg, []byte(fmt.Sprintf(`{"n":%d}`, i))))
	}
	w.settle()
	require.Len(t, w.nodes["H"].store.history, 3)

	require.NoError(t, w.nodes["A"].core.RequestHistory(w.now, "H", gid, "req1", 2))
	w.settle()
	q := w.nodes["H"].asked
	require.Len(t, q, 1)
	assert.Equal(t, PeerID("A"), q[0].From)
	assert.Equal(t, HistoryQuestion{Req: "req1", Limit: 2}, q[0].Q)

	hist := w.nodes["H"].store.history
	require.NoError(t, w.nodes["H"].core.AnswerHistory(w.now, gid, "A", "req1", hist[len(hist)-2:]))
	w.settle()
	ans := w.nodes["A"].eventsOf(EvHistory)
	require.Len(t, ans, 1)
	var a HistoryAnswer
	require.NoError(t, json.Unmarshal(ans[0].Payload, &a))
	assert.Equal(t, "req1", a.Req)
	assert.Nil(t, a.Error)
	require.Len(t, a.Items, 2)
	assert.JSONEq(t, `{"n":1}`, string(a.Items[0].Payload), "oldest first")
	assert.JSONEq(t, `{"n":2}`, string(a.Items[1].Payload))
	assert.Equal(t, "H", a.Items[1].From)
	assert.Equal(t, TypeMsg, a.Items[1].Type)
	assert.Equal(t, t0.UnixMilli(), a.Items[1].At)

	// Only members ask, and only members are answered.
	var ge *Error
	require.ErrorAs(t, w.nodes["B"].core.RequestHistory(w.now, "H", gid, "req2", 5), &ge)
	assert.Equal(t, CodeNotMember, ge.Code)
	w.nodes["B"].core.Receive(w.now, "H", Topic(gid, TypeHistory), []byte(`{"type":"history","req":"x","items":[]}`), "")
	w.nodes["H"].core.Receive(w.now, "B", Topic(gid, TypeHistory), []byte(`{"type":"history","group":"`+gid+`","req":"req3","limit":5}`), "")
	w.settle()
	assert.Len(t, w.nodes["H"].asked, 1, "a non-member's question reaches no application")
	assert.Empty(t, w.nodes["B"].eventsOf(EvHistory), "an answer to a group we are not in is ignored")
	require.NoError(t, w.nodes["H"].core.Leave(w.now, "H", gid))
	require.NoError(t, w.nodes["A"].core.Leave(w.now, "H", gid))
	w.settle()
	require.NoError(t, w.nodes["H"].core.AnswerHistory(w.now, gid, "A", "req1", hist))
	sends := w.nodes["H"].core.Drain().Sends
	require.Len(t, sends, 1)
	assert.Contains(t, string(sends[0].Payload), `"code":"not_member"`, "a peer that left meanwhile gets no history")

	require.ErrorAs(t, w.nodes["A"].core.RequestHistory(w.now, "H", gid, "bad id!", 5), &ge)
	assert.Equal(t, CodeInvalid, ge.Code)
}

// An answer holds at most MaxHistoryItems messages, the newest that fit in
// MaxHistoryBytes; a member drops malformed items; a volatile group answers
// at once with nothing.
func TestHistoryAnswerIsBounded(t *testing.T) {
	w := newWorld(t, "H", "A")
	w.create("H", CreateSpec{})
	w.join("A", "H", gid)
	var many []HistoryEntry
	for i := range MaxHistoryItems + 50 {
		many = append(many, HistoryEntry{GroupID: gid, From: "A", Type: TypeMsg, Payload: json.RawMessage(fmt.Sprint(i)), At: t0})
	}
	answer := func(entries []HistoryEntry) HistoryAnswer {
		t.Helper()
		require.NoError(t, w.nodes["H"].core.AnswerHistory(w.now, gid, "A", "r", entries))
		w.settle()
		evs := w.nodes["A"].eventsOf(EvHistory)
		var a HistoryAnswer
		require.NoError(t, json.Unmarshal(evs[len(evs)-1].Payload, &a))
		return a
	}
	a := answer(many)
	require.Len(t, a.Items, MaxHistoryItems)
	assert.Equal(t, json.RawMessage("50"), a.Items[0].Payload, "the newest are kept")

	big := json.RawMessage(`"` + strings.Repeat("<", 300<<10) + `"`)
	a = answer([]HistoryEntry{{From: "A", Type: TypeMsg, Payload: big}, {From: "A", Type: TypeMsg, Payload: big},
		{From: "A", Type: TypeMsg, Payload: big}, {From: "A", Type: TypeMsg, Payload: json.RawMessage(`1`)}})
	assert.Len(t, a.Items, 3, "within MaxHistoryBytes")
	last := w.sent[len(w.sent)-1]
	require.Equal(t, Topic(gid, TypeHistory), last.Topic)
	assert.LessOrEqual(t, len(last.Payload), mq.MaxPayloadBytes, "'<' is not escaped into six bytes: the answer fits the bus")

	bad := `{"type":"history","req":"r","items":[{"from":"A","type":"msg","payload":1},{"from":"A","type":"join","payload":1},` +
		`{"from":"A","type":"msg"}]}`
	w.nodes["A"].core.Receive(w.now, "H", Topic(gid, TypeHistory), []byte(bad), "")
	w.settle()
	evs := w.nodes["A"].eventsOf(EvHistory)
	require.NoError(t, json.Unmarshal(evs[len(evs)-1].Payload, &a))
	assert.Len(t, a.Items, 1, "items of other types, or without payload, are dropped")
	for _, junk := range []string{`nope`, `{"req":"bad id!"}`, `{"req":"r","items":` + strings.Repeat(`{},`, MaxHistoryItems) + `{}]}`} {
		w.nodes["A"].core.Receive(w.now, "H", Topic(gid, TypeHistory), []byte(junk), "")
	}
	w.settle()
	assert.Len(t, w.nodes["A"].eventsOf(EvHistory), len(evs), "malformed answers are ignored")

	w2 := newWorld(t, "H", "A")
	w2.create("H", CreateSpec{Type: AppCluster, ID: "2222222222222222"})
	w2.join("A", "H", "2222222222222222")
	require.NoError(t, w2.nodes["A"].core.RequestHistory(w2.now, "H", "2222222222222222", "r", 10))
	w2.settle()
	assert.Empty(t, w2.nodes["H"].asked)
	require.Len(t, w2.nodes["A"].eventsOf(EvHistory), 1, "a volatile group keeps no history")
	assert.JSONEq(t, `{"req":"r","items":[]}`, string(w2.nodes["A"].eventsOf(EvHistory)[0].Payload))
}

// A group whose member list would no longer fit one bus message beside the
// largest state refuses the next joiner with `full`, instead of adding a
// member that no welcome or member list could ever reach.
func TestMemberListMustFitOneMessage(t *testing.T) {
	g := Group{ID: gid, Name: "huge", Owner: "H", Type: AppChat, CreatedAt: t0, DefaultRole: DefaultRoleName,
		Lifecycle: Persistent, Access: Open}
	long := strings.Repeat("n", MaxNameBytes)
	member := func(i int) Member {
		return Member{PeerID: fmt.Sprintf("12D3KooW%044d", i), Name: long, Role: DefaultRoleName, JoinedAt: 1_700_000_000_000 + int64(i)}
	}
	each := len(mustJSON(member(0))) + 1
	var members []Member
	for i := 0; i < (mq.MaxPayloadBytes-MaxStateBytes)/each; i++ { // just short of the limit
		members = append(members, member(i))
	}
	require.Less(t, len(mustJSON(membersPayload{Members: members})), mq.MaxPayloadBytes-MaxStateBytes)
	w := newWorld(t, "H", "A")
	w.nodes["H"].core = NewCore("H", "host", Snapshot{Groups: []Group{g}, Members: map[string][]Member{gid: members}}, w.cfg)
	w.nodes["H"].core.Tick(w.now)
	w.settle()

	require.NoError(t, w.nodes["A"].core.Join(w.now, "H", gid))
	w.nodes["A"].core.SetName(long)
	w.settle()
	f := w.nodes["A"].eventsOf(EvJoinFailed)
	require.Len(t, f, 1)
	assert.Equal(t, CodeFull, f[0].Err.Code)
	assert.Contains(t, f[0].Err.Message, "would no longer fit in one message")
	hv, _ := w.nodes["H"].core.HostedGroup(gid)
	assert.Len(t, hv.Members, len(members), "the refused joiner was not added")

	// With a short list there is room, and the welcome fits.
	w2 := newWorld(t, "H", "A")
	w2.nodes["H"].core = NewCore("H", "host", Snapshot{Groups: []Group{g}, Members: map[string][]Member{gid: members[:len(members)/2]}}, w2.cfg)
	w2.nodes["H"].core.Tick(w2.now)
	w2.join("A", "H", gid)
	assert.Len(t, w2.nodes["A"].eventsOf(EvJoined), 1)
}

// Closing (or dissolving) a group tells the peers invited and not joined,
// whose invitations then go; members are told as before.
func TestClosingAGroupWithdrawsItsInvitations(t *testing.T) {
	w := newWorld(t, "H", "A", "B", "C")
	w.create("H", CreateSpec{Access: InviteOnly})
	for _, p := range []PeerID{"A", "B"} {
		require.NoError(t, w.nodes["H"].core.Invite(w.now, gid, p))
	}
	w.settle()
	w.join("B", "H", gid)
	require.Len(t, w.nodes["A"].core.Invitations(), 1)
	require.NoError(t, w.nodes["H"].core.Close(w.now, gid))
	w.settle()
	assert.Empty(t, w.nodes["A"].core.Invitations())
	assert.Empty(t, w.nodes["A"].store.invitations)
	closed := w.nodes["A"].eventsOf(EvClosed)
	require.Len(t, closed, 1)
	assert.Equal(t, CodeClosed, closed[0].Err.Code)
	assert.Len(t, w.nodes["B"].eventsOf(EvClosed), 1, "the member hears of it once")
	assert.Empty(t, w.nodes["C"].eventsOf(EvClosed), "nobody else hears of it")
	// A close for a group we were neither in nor invited to changes nothing.
	w.nodes["C"].core.Receive(w.now, "H", Topic(gid, TypeClose), controlPayload(TypeClose, gid), "")
	w.settle()
	assert.Empty(t, w.nodes["C"].eventsOf(EvClosed))
}

// maxMemberJSON bounds any member's encoding, so that roomFor may skip
// encoding the list of a group far from the bus's bound.
func TestMaxMemberJSONBoundsAnyMember(t *testing.T) {
	worst := Member{PeerID: strings.Repeat("\x01", mq.MaxPeerIDBytes), Name: strings.Repeat("\x01", MaxNameBytes),
		Role: strings.Repeat("\x01", MaxRoleBytes), JoinedAt: math.MinInt64}
	list := mustJSON([]Member{worst, worst})
	assert.LessOrEqual(t, len(list), 2*maxMemberJSON, "two members with a comma and brackets")
}
