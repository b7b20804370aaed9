package simnet

import (
	"errors"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/group"
)

const testGroup = "g"

// joinedWorld returns a quiet world of 5 peers where p0 hosts group "g" and
// p1 and p2 are joined members; p3 and p4 are not in it.
func joinedWorld(t *testing.T, checkers ...Checker) *World {
	t.Helper()
	if checkers == nil {
		checkers = []Checker{}
	}
	w := New(1, Options{Peers: 5, Link: DefaultLink(), Checkers: checkers})
	_, err := w.CreateGroup(0, group.CreateSpec{ID: testGroup, Name: "test"})
	require.NoError(t, err)
	require.NoError(t, w.JoinGroup(1, 0, testGroup))
	require.NoError(t, w.JoinGroup(2, 0, testGroup))
	require.NoError(t, w.RunFor(time.Second))
	for _, p := range []int{1, 2} {
		sv, ok := w.Node(p).Groups().Subscription(w.PeerID(0), testGroup)
		require.True(t, ok && sv.Joined, "p%d joined", p)
	}
	return w
}

// groupObs builds synthetic steps about group "g" hosted by p0.
type groupObs struct{ w *World }

func (o groupObs) ev(peer int, ge group.Event) *Step {
	ge.Group, ge.Host = testGroup, o.w.PeerID(0)
	return &Step{Kind: StepFrame, Peer: peer, From: -1, To: -1, Events: []app.Event{{Kind: app.EventGroup, Peer: ge.From, Group: &ge}}}
}

// accepted: the host relayed origin's payload.
func (o groupObs) accepted(origin int, payload string) *Step {
	return o.ev(0, group.Event{Type: group.EvMsg, From: o.w.PeerID(origin), Payload: []byte(payload)})
}

// received: peer got origin's payload from the host.
func (o groupObs) received(peer, origin int, payload string) *Step {
	return o.ev(peer, group.Event{Type: group.EvMsg, From: o.w.PeerID(origin), Payload: []byte(payload)})
}

// sent: peer's SendToGroup went through (host 0).
func (o groupObs) sent(peer int, payload string) *Step {
	return &Step{Kind: StepCommand, Peer: peer, From: -1, To: -1,
		Command: &GroupCommand{Op: GroupSend, Host: 0, Group: testGroup, Peer: -1, Kind: group.TypeMsg, Payload: []byte(payload)}}
}

func (o groupObs) memberLeft(peer int) *Step {
	return o.ev(0, group.Event{Type: group.EvMemberLeft, From: o.w.PeerID(peer), Reason: "timeout"})
}

func TestGroupCheckerCatchesEveryBrokenProperty(t *testing.T) {
	w := joinedWorld(t)
	o := groupObs{w}
	cases := []struct {
		name  string
		steps []*Step
		want  string // property broken by the last step; "" for none
	}{
		{"member's message reaches the others", []*Step{o.accepted(1, `{"a":1}`), o.received(2, 1, `{"a":1}`)}, ""},
		{"host's own message reaches every member", []*Step{o.sent(0, `{"h":1}`), o.received(1, 0, `{"h":1}`), o.received(2, 0, `{"h":1}`)}, ""},
		{"same payload from two origins", []*Step{o.accepted(1, `1`), o.accepted(2, `1`), o.received(2, 1, `1`), o.received(1, 2, `1`)}, ""},
		{"received twice", []*Step{o.accepted(1, `1`), o.received(2, 1, `1`), o.received(2, 1, `1`)}, PropGroupExactlyOnce},
		{"received but never accepted", []*Step{o.received(2, 1, `{"forged":1}`)}, PropGroupExactlyOnce},
		{"received with another origin", []*Step{o.accepted(1, `1`), o.received(2, 0, `1`)}, PropGroupExactlyOnce},
		{"received by a non-member", []*Step{o.accepted(1, `1`), o.received(3, 1, `1`)}, PropGroupExactlyOnce},
		{"sent back to its sender", []*Step{o.accepted(1, `1`), o.received(1, 1, `1`)}, PropGroupNoEcho},
		{"host's own message sent back to a member as its own", []*Step{o.sent(0, `1`), o.received(1, 1, `1`)}, PropGroupNoEcho},
		{"out of order", []*Step{o.accepted(1, `1`), o.accepted(1, `2`), o.received(2, 1, `2`), o.received(2, 1, `1`)}, PropGroupOrder},
		{"accepted twice", []*Step{o.accepted(1, `1`), o.accepted(1, `1`)}, PropGroupUniqueAccept},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := NewGroupChecker()
			var last *Violation
			for i, s := range tc.steps {
				last = c.Observe(w, s)
				if i < len(tc.steps)-1 {
					require.Nil(t, last, "step %d", i)
				}
			}
			if tc.want == "" {
				assert.Nil(t, last)
				assert.True(t, c.Converged(), c.Waiting(w))
				return
			}
			require.NotNil(t, last)
			assert.Equal(t, tc.want, last.Property)
			assert.NotEmpty(t, last.Detail)
		})
	}
}

func TestGroupCheckerLiveness(t *testing.T) {
	w := joinedWorld(t)
	o := groupObs{w}
	cases := []struct {
		name    string
		steps   []*Step
		waiting string // what Waiting says; "" when converged
	}{
		{"a receipt outstanding", []*Step{o.accepted(1, `1`)}, `group/delivered: 1 receipts outstanding: g msg #1 from p1 accepted at 0.000s not at p2`},
		{"the host's own message not received", []*Step{o.sent(0, `1`), o.received(1, 0, `1`)}, `not at p2`},
		{"a member that left is not waited for", []*Step{o.accepted(1, `1`), o.ev(2, group.Event{Type: group.EvLeft})}, ""},
		{"a kicked member is not waited for", []*Step{o.accepted(1, `1`), o.ev(2, group.Event{Type: group.EvClosed, Err: &group.Error{Code: group.CodeKicked}})}, ""},
		{"an evicted member is not waited for", []*Step{o.accepted(1, `1`), o.memberLeft(2)}, ""},
		{"a closed group owes nothing", []*Step{o.accepted(1, `1`), o.ev(0, group.Event{Type: group.EvClosed})}, ""},
		{"a message accepted after a re-join is owed again", []*Step{o.memberLeft(2), o.accepted(1, `1`)}, `not at p2`},
		{"a send not accepted", []*Step{o.sent(1, `1`)}, `group/accepted: 1 sends not accepted: p1's msg to g@p0 sent at 0.000s`},
		{"a send accepted and relayed", []*Step{o.sent(1, `1`), o.accepted(1, `1`), o.received(2, 1, `1`)}, ""},
		{"a send of an evicted member", []*Step{o.sent(1, `1`), o.memberLeft(1)}, ""},
		{"a send settled by a new session", []*Step{o.sent(1, `1`), o.ev(1, group.Event{Type: group.EvJoined})}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := NewGroupChecker()
			for i, s := range tc.steps {
				require.Nil(t, c.Observe(w, s), "step %d", i)
			}
			if tc.waiting == "" {
				assert.True(t, c.Converged(), c.Waiting(w))
				assert.Equal(t, "group: nothing outstanding", c.Waiting(w))
				return
			}
			assert.False(t, c.Converged())
			assert.Contains(t, c.Waiting(w), tc.waiting)
		})
	}
}

// TestGroupCheckerViews drives real nodes into states where members' views
// and the host's differ: the checker does not converge until they agree.
func TestGroupCheckerViews(t *testing.T) {
	t.Run("a member missed a member list", func(t *testing.T) {
		gc := NewGroupChecker()
		w := joinedWorld(t, gc)
		require.True(t, gc.Converged(), gc.Waiting(w))
		_, err := w.Partition([]int{0}, []int{2}, false)
		require.NoError(t, err)
		require.NoError(t, w.JoinGroup(3, 0, testGroup))
		require.NoError(t, w.RunFor(time.Second))
		assert.False(t, gc.Converged())
		assert.Contains(t, gc.Waiting(w), "group/views-agree: p2 sees p1,p2 in g@p0, the host lists p1..p3")
		require.NoError(t, w.Converge(time.Minute))
	})
	t.Run("the host still lists a member that left", func(t *testing.T) {
		gc := NewGroupChecker()
		w := joinedWorld(t, gc)
		require.NoError(t, w.LeaveGroup(2, 0, testGroup))
		assert.False(t, gc.Converged())
		assert.Contains(t, gc.Waiting(w), "group/membership: p0 lists p2 in g, which has no subscription to it")
		require.NoError(t, w.RunFor(time.Second))
		assert.True(t, gc.Converged(), gc.Waiting(w))
	})
	t.Run("a joiner not answered yet", func(t *testing.T) {
		gc := NewGroupChecker()
		w := joinedWorld(t, gc)
		require.NoError(t, w.JoinGroup(4, 0, testGroup))
		assert.False(t, gc.Converged())
		assert.Contains(t, gc.Waiting(w), "group/membership: p4 is still joining g@p0")
		require.NoError(t, w.Converge(time.Minute))
	})
	t.Run("a member still subscribed to a closed group", func(t *testing.T) {
		gc := NewGroupChecker()
		w := joinedWorld(t, gc)
		_, err := w.Partition([]int{2}, nil, false)
		require.NoError(t, err)
		require.NoError(t, w.CloseGroup(0, testGroup))
		require.NoError(t, w.RunFor(time.Second))
		assert.False(t, gc.Converged())
		assert.Contains(t, gc.Waiting(w), "group/no-stale-subscription: p2 is still subscribed to g@p0, which p0 no longer hosts")
		require.NoError(t, w.Converge(time.Minute))
		_, ok := w.Node(2).Groups().Subscription(w.PeerID(0), testGroup)
		assert.False(t, ok, "the close reached p2 after the heal")
	})
}

func TestGroupCheckerDelaysAndTotals(t *testing.T) {
	gc := NewGroupChecker()
	w := joinedWorld(t, gc)
	require.NoError(t, w.SendToGroup(1, 0, testGroup, group.TypeMsg, []byte(`{"n":1}`)))
	require.NoError(t, w.SendToGroup(0, 0, testGroup, group.TypeState, []byte(`{"n":2}`)))
	require.NoError(t, w.Converge(time.Minute))
	assert.Equal(t, GroupTotals{Groups: 1, Accepted: 2, Receipts: 3}, gc.Totals())
	d := gc.Delays(0, testGroup, true)
	require.Len(t, d, 2)
	assert.Equal(t, 1, d[0].Peer)
	assert.Equal(t, 1, d[0].Received)
	assert.Equal(t, 2, d[1].Received)
	assert.Greater(t, d[1].Max, time.Duration(0))
	assert.LessOrEqual(t, d[1].Max, 7*time.Millisecond, "one hop of 5ms+2ms")
	assert.Empty(t, gc.Delays(0, testGroup, false), "reset")
	assert.Nil(t, gc.Delays(0, "nope", false))
}

func TestGroupCheckerResyncsOnRestart(t *testing.T) {
	// A volatile (cluster) group keeps no members across its host's restart:
	// the checker learns it from the restarted node, without any event.
	gc := NewGroupChecker()
	w := New(1, Options{Peers: 3, Link: DefaultLink(), Checkers: []Checker{gc}})
	_, err := w.CreateGroup(0, group.CreateSpec{ID: testGroup, Name: "c", Type: group.AppCluster})
	require.NoError(t, err)
	require.NoError(t, w.JoinGroup(1, 0, testGroup))
	require.NoError(t, w.JoinGroup(2, 0, testGroup))
	require.NoError(t, w.RunFor(time.Second))
	_, err = w.Partition([]int{2}, nil, false)
	require.NoError(t, err)
	require.NoError(t, w.SendToGroup(1, 0, testGroup, group.TypeMsg, []byte(`1`)))
	require.NoError(t, w.RunFor(time.Second))
	require.Equal(t, 1, gc.Totals().Outstanding, "p2 is owed the message")
	require.NoError(t, w.Crash(0))
	require.NoError(t, w.Restart(0))
	assert.Zero(t, gc.Totals().Outstanding, "the restarted host lists nobody: nothing is owed")
	require.NoError(t, w.Converge(2*time.Minute))
}

func TestWorldGroupCommands(t *testing.T) {
	var cmds []GroupCommand
	w := New(7, Options{Peers: 3, Link: DefaultLink(), Checkers: []Checker{NewGroupChecker()}, OnStep: func(_ *World, s *Step) {
		if s.Kind == StepCommand {
			require.NotNil(t, s.Command)
			cmds = append(cmds, *s.Command)
		}
	}})
	assert.Equal(t, SimGroupConfig().PingInterval, w.Options().Node.Groups.PingInterval)
	assert.Equal(t, SimGroupConfig().EvictAfter, w.Options().Node.Groups.EvictAfter)

	g, err := w.CreateGroup(0, group.CreateSpec{Name: "auto id", Access: group.InviteOnly})
	require.NoError(t, err)
	assert.Regexp(t, regexp.MustCompile(`^[0-9a-f]{16}$`), g.ID)
	require.NoError(t, w.InviteToGroup(0, g.ID, 1))
	require.NoError(t, w.JoinGroup(1, 0, g.ID))
	require.NoError(t, w.RunFor(time.Second))
	require.NoError(t, w.SendToGroup(1, 0, g.ID, group.TypeMsg, []byte(`{"x":1}`)))
	require.NoError(t, w.KickFromGroup(0, g.ID, 1))
	err = w.KickFromGroup(0, g.ID, 2)
	assert.Equal(t, group.CodeNotMember, group.CodeOf(err))
	require.NoError(t, w.CloseGroup(0, g.ID))
	assert.Equal(t, group.CodeNotFound, group.CodeOf(w.LeaveGroup(0, 0, g.ID)))

	var ops []string
	for _, c := range cmds {
		ops = append(ops, c.Op.String())
	}
	assert.Equal(t, []string{"create", "invite", "join", "send", "kick", "kick", "close", "leave"}, ops)
	assert.Equal(t, group.CodeNotMember, group.CodeOf(cmds[5].Err), "the step carries the command's result")
	assert.Equal(t, 2, cmds[5].Peer)

	require.NoError(t, w.Crash(2))
	assert.True(t, errors.Is(w.JoinGroup(2, 0, g.ID), ErrPeerDown))
	assert.True(t, errors.Is(w.JoinGroup(9, 0, g.ID), ErrNoPeer))
	assert.True(t, errors.Is(w.JoinGroup(1, 9, g.ID), ErrNoPeer))
	_, err = w.CreateGroup(-1, group.CreateSpec{})
	assert.True(t, errors.Is(err, ErrNoPeer))
	assert.Len(t, cmds, 8, "refused before running: no step")

	custom := group.Config{PingInterval: time.Second}
	w2 := New(1, Options{Peers: 1, Node: app.NodeOptions{Groups: custom}, Checkers: []Checker{}})
	assert.Equal(t, time.Second, w2.Options().Node.Groups.PingInterval, "a given timer is kept")
	assert.Equal(t, SimGroupConfig().RejoinInterval, w2.Options().Node.Groups.RejoinInterval)
}

func TestCompactPeers(t *testing.T) {
	w := New(1, Options{Peers: 12, Checkers: []Checker{}})
	cases := []struct {
		in   []int32
		want string
	}{
		{nil, "none"},
		{[]int32{3}, "p3"},
		{[]int32{1, 2}, "p1,p2"},
		{[]int32{0, 1, 2, 3, 7, 9, 10, 11}, "p0..p3,p7,p9..p11"},
		{[]int32{-1, 4}, "?,p4"},
	}
	for _, tc := range cases {
		assert.Equal(t, tc.want, compactPeers(w, tc.in))
	}
}
