package simnet

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/group"
)

// ScenarioGroupStorm is the name of the built-in group storm scenario.
const ScenarioGroupStorm = "group-storm"

// PlannedGroup is one group of a group-storm plan, created at time zero.
type PlannedGroup struct {
	Host        int           `json:"host"`
	Lifecycle   string        `json:"lifecycle"`
	Access      string        `json:"access"`
	MaxMembers  int           `json:"max_members,omitempty"`
	IdleTimeout time.Duration `json:"idle_timeout,omitempty"`
	HostJoin    bool          `json:"host_join,omitempty"`
	// Invited are the peers an invite-only group's host invites at once.
	Invited []int `json:"invited,omitempty"`
	// CloseAt is when the host closes the group (0: never).
	CloseAt time.Duration `json:"close_at,omitempty"`
}

// GroupStormPlan is what a seed expands to for group-storm.
type GroupStormPlan struct {
	Link          LinkParams     `json:"link"`
	LatencySpread time.Duration  `json:"latency_spread"`
	Window        int            `json:"window"`
	Groups        []PlannedGroup `json:"groups"`
	// Joins lists, per peer, the groups it takes part in (a host takes part
	// in its own groups by sending to them).
	Joins      [][]int            `json:"joins"`
	Partitions []PlannedPartition `json:"partitions"`
	Crashes    []PlannedCrash     `json:"crashes"`
}

// String summarises the plan on one line.
func (pl *GroupStormPlan) String() string {
	var b strings.Builder
	l := pl.Link
	bw := "unlimited"
	if l.Bandwidth > 0 {
		bw = fmt.Sprintf("%dB/s", l.Bandwidth)
	}
	fmt.Fprintf(&b, "latency=%s+[0,%s) jitter=%s loss=%.3f dup=%.3f reorder=%.3f/%s bandwidth=%s window=%d",
		l.Latency, pl.LatencySpread, l.Jitter, l.Loss, l.Dup, l.Reorder, l.ReorderDelay, bw, pl.Window)
	fmt.Fprintf(&b, " groups=%d", len(pl.Groups))
	for _, g := range pl.Groups {
		fmt.Fprintf(&b, " [p%d %s %s", g.Host, g.Lifecycle, g.Access)
		if g.MaxMembers > 0 {
			fmt.Fprintf(&b, " max=%d", g.MaxMembers)
		}
		if g.IdleTimeout > 0 {
			fmt.Fprintf(&b, " idle=%s", g.IdleTimeout.Round(time.Millisecond))
		}
		if g.HostJoin {
			b.WriteString(" host-join")
		}
		if g.Access == group.InviteOnly {
			fmt.Fprintf(&b, " invited=%d", len(g.Invited))
		}
		if g.CloseAt > 0 {
			fmt.Fprintf(&b, " close@%s", g.CloseAt.Round(time.Millisecond))
		}
		b.WriteString("]")
	}
	fmt.Fprintf(&b, " partitions=%d", len(pl.Partitions))
	for _, p := range pl.Partitions {
		kind := "sym"
		if p.OneWay {
			kind = "one-way"
		}
		fmt.Fprintf(&b, " [%s@%s+%s |A|=%d]", kind, p.At.Round(time.Millisecond), p.For.Round(time.Millisecond), len(p.A))
	}
	fmt.Fprintf(&b, " crashes=%d", len(pl.Crashes))
	const show = 8
	for i, c := range pl.Crashes {
		if i == show {
			fmt.Fprintf(&b, " …+%d", len(pl.Crashes)-show)
			break
		}
		fmt.Fprintf(&b, " [p%d@%s+%s]", c.Peer, c.At.Round(time.Millisecond), c.For.Round(time.Millisecond))
	}
	return b.String()
}

// PlanGroupStorm expands a seed into group-storm's groups and fault mix for p.
// Peers 0..H-1 host the groups (H is 1 to 3); everybody takes part in one or
// two groups.
func PlanGroupStorm(seed uint64, p Params) *GroupStormPlan {
	p = p.withDefaults()
	r := newStream(seed, streamScenario, 2)
	pl := &GroupStormPlan{}
	pl.Link = LinkParams{
		Latency:      uniformDur(r, time.Millisecond, 20*time.Millisecond),
		Jitter:       uniformDur(r, 0, 10*time.Millisecond),
		Loss:         r.Float64() * 0.1,
		Dup:          r.Float64() * 0.05,
		Reorder:      r.Float64() * 0.2,
		ReorderDelay: uniformDur(r, 10*time.Millisecond, 200*time.Millisecond),
	}
	if r.IntN(3) == 0 {
		pl.Link.Bandwidth = 64<<10 + r.Int64N(1<<20)
	}
	pl.LatencySpread = uniformDur(r, 0, 30*time.Millisecond)
	pl.Window = []int{4, 64, 1024}[r.IntN(3)]
	hosts := max(1, min(1+r.IntN(3), p.Peers/4))
	ngroups := hosts + r.IntN(2)
	for g := 0; g < ngroups; g++ {
		pg := PlannedGroup{Host: g % hosts, Lifecycle: group.Persistent, Access: group.Open, HostJoin: r.IntN(2) == 0}
		if r.IntN(4) == 0 {
			pg.Lifecycle = group.Ephemeral
			if r.IntN(2) == 0 {
				pg.IdleTimeout = uniformDur(r, 10*time.Second, 30*time.Second)
			}
		}
		if r.IntN(3) == 0 {
			pg.Access = group.InviteOnly
		}
		if r.IntN(5) == 0 {
			pg.MaxMembers = 3 + r.IntN(max(1, p.Peers/3))
		}
		if r.IntN(6) == 0 {
			pg.CloseAt = uniformDur(r, p.Duration/2, p.Duration)
		}
		pl.Groups = append(pl.Groups, pg)
	}
	pl.Joins = make([][]int, p.Peers)
	for i := 0; i < p.Peers; i++ {
		var js []int
		if i < hosts {
			for g, pg := range pl.Groups {
				if pg.Host == i {
					js = append(js, g)
				}
			}
			if hosts > 1 && r.IntN(2) == 0 {
				if g := r.IntN(ngroups); pl.Groups[g].Host != i {
					js = append(js, g)
				}
			}
		} else {
			js = append(js, r.IntN(ngroups))
			if ngroups > 1 && r.IntN(3) == 0 {
				if g := r.IntN(ngroups); !slices.Contains(js, g) {
					js = append(js, g)
				}
			}
		}
		pl.Joins[i] = js
	}
	for g := range pl.Groups {
		pg := &pl.Groups[g]
		if pg.Access != group.InviteOnly {
			continue
		}
		for i := 0; i < p.Peers; i++ {
			if i != pg.Host && slices.Contains(pl.Joins[i], g) && r.IntN(3) != 0 {
				pg.Invited = append(pg.Invited, i)
			}
		}
	}
	for n := r.IntN(4); n > 0; n-- {
		pp := PlannedPartition{
			At:     uniformDur(r, 0, p.Duration),
			For:    uniformDur(r, time.Second, 30*time.Second),
			OneWay: r.IntN(4) == 0,
		}
		if r.IntN(3) == 0 {
			pp.A = []int{r.IntN(hosts)}
		} else {
			size := 1 + r.IntN(max(1, p.Peers/3))
			pp.A = sortedInts(r.Perm(p.Peers)[:size])
		}
		pl.Partitions = append(pl.Partitions, pp)
	}
	for n := r.IntN(max(3, p.Peers/10) + 1); n > 0; n-- {
		c := PlannedCrash{Peer: r.IntN(p.Peers), At: uniformDur(r, 0, p.Duration), For: uniformDur(r, 200*time.Millisecond, 25*time.Second)}
		if r.IntN(4) == 0 {
			c.Peer = r.IntN(hosts)
		}
		pl.Crashes = append(pl.Crashes, c)
	}
	return pl
}

// gstorm drives the group-storm workload and fault plan.
type gstorm struct {
	p       Params
	plan    *GroupStormPlan
	ids     []string // group ids, by planned group
	partIDs []int
	counter []int64
	mean    float64 // mean gap between a peer's actions, in ns
	buf     []byte
}

const (
	gsChat int64 = iota
	gsJoin
	gsClose
	gsPartition
	gsHeal
	gsCrash
	gsRestart
)

func gsArg(kind int64, g, i int) int64 { return kind<<48 | int64(g)<<32 | int64(i) }

func (s *gstorm) Fire(w *World, arg int64) {
	kind, g, i := arg>>48, int(arg>>32&0xffff), int(arg&0xffffffff)
	switch kind {
	case gsChat:
		s.act(w, i)
		next := w.Elapsed() + time.Duration(w.PeerRand(i).ExpFloat64()*s.mean) + 1
		if next < s.p.Duration {
			w.Schedule(next, s, arg)
		}
	case gsJoin:
		pg := s.plan.Groups[g]
		if n := w.Node(i); n != nil {
			if _, ok := n.Groups().Subscription(w.PeerID(pg.Host), s.ids[g]); !ok {
				_ = w.JoinGroup(i, pg.Host, s.ids[g]) // refused: not_invited, full, gone
			}
		}
	case gsClose:
		_ = w.CloseGroup(s.plan.Groups[g].Host, s.ids[g]) // down or dissolved already
	case gsPartition:
		pp := s.plan.Partitions[g]
		if id, err := w.Partition(pp.A, nil, pp.OneWay); err == nil {
			s.partIDs[g] = id
		}
	case gsHeal:
		if id := s.partIDs[g]; id != 0 {
			_ = w.Heal(id)
		}
	case gsCrash:
		_ = w.Crash(s.plan.Crashes[g].Peer)
	case gsRestart:
		_ = w.Restart(s.plan.Crashes[g].Peer)
	}
}

// act is one random action of peer i: mostly a message to one of its
// groups; sometimes a leave (and a later re-join), or, for a host, a kick.
func (s *gstorm) act(w *World, i int) {
	n := w.Node(i)
	js := s.plan.Joins[i]
	if n == nil || len(js) == 0 {
		return
	}
	r := w.PeerRand(i)
	g := js[r.IntN(len(js))]
	pg := s.plan.Groups[g]
	id := s.ids[g]
	roll := r.IntN(100)
	if pg.Host == i {
		hv, ok := n.Groups().HostedGroup(id)
		if !ok {
			return
		}
		if roll < 3 {
			var remote []int
			for _, m := range hv.Members {
				if j, ok := w.Index(group.PeerID(m.PeerID)); ok && j != i {
					remote = append(remote, j)
				}
			}
			if len(remote) > 0 {
				j := remote[r.IntN(len(remote))]
				_ = w.KickFromGroup(i, id, j)
				if r.IntN(2) == 0 {
					w.After(uniformDur(r, time.Second, 10*time.Second), s, gsArg(gsJoin, g, j))
				}
				return
			}
		}
		_ = w.SendToGroup(i, i, id, s.kind(r), s.payload(r, i))
		return
	}
	sv, ok := n.Groups().Subscription(w.PeerID(pg.Host), id)
	if !ok || !sv.Joined {
		return
	}
	if roll < 4 {
		_ = w.LeaveGroup(i, pg.Host, id)
		if r.IntN(10) < 7 {
			w.After(uniformDur(r, time.Second, 10*time.Second), s, gsArg(gsJoin, g, i))
		}
		return
	}
	_ = w.SendToGroup(i, pg.Host, id, s.kind(r), s.payload(r, i))
}

func (s *gstorm) kind(r interface{ IntN(int) int }) string {
	if r.IntN(10) == 0 {
		return group.TypeState
	}
	return group.TypeMsg
}

// payload is unique per peer: the checker tells messages apart by it.
func (s *gstorm) payload(r interface{ IntN(int) int }, i int) []byte {
	s.counter[i]++
	b := append(s.buf[:0], `{"o":`...)
	b = strconv.AppendInt(b, int64(i), 10)
	b = append(b, `,"n":`...)
	b = strconv.AppendInt(b, s.counter[i], 10)
	b = append(b, `,"pad":"`...)
	for k := r.IntN(64); k > 0; k-- {
		b = append(b, 'x')
	}
	b = append(b, `"}`...)
	s.buf = b
	return append([]byte(nil), b...)
}

// NewGroupStormWorld builds the group-storm world for seed with its plan
// scheduled: the hosts create their groups and send their invitations at
// time zero; members join in the first quarter of p.Duration, then every
// peer acts at p.Rate (send to a group, sometimes leave and re-join, kick)
// under the seed's loss, duplication, reordering, partitions and crashes of
// members and hosts. Both the bus and the group checker are active.
func NewGroupStormWorld(seed uint64, p Params) (*World, *GroupStormPlan) {
	return newGroupStormWorld(seed, p, []Checker{NewMQChecker(), NewGroupChecker()})
}

func newGroupStormWorld(seed uint64, p Params, checkers []Checker) (*World, *GroupStormPlan) {
	p = p.withDefaults()
	plan := PlanGroupStorm(seed, p)
	bus := SimBusOptions()
	bus.UnsafeSkipDedupe = p.Fault == FaultSkipDedupe
	bus.Window = plan.Window
	w := New(seed, Options{Peers: p.Peers, Link: plan.Link, LatencySpread: plan.LatencySpread,
		Node: app.NodeOptions{Bus: bus, Groups: SimGroupConfig()}, Checkers: checkers})
	s := &gstorm{p: p, plan: plan, ids: make([]string, len(plan.Groups)), partIDs: make([]int, len(plan.Partitions)),
		counter: make([]int64, p.Peers), mean: float64(time.Second) / p.Rate}
	for g, pg := range plan.Groups {
		created, err := w.CreateGroup(pg.Host, group.CreateSpec{Name: fmt.Sprintf("storm %d", g), Lifecycle: pg.Lifecycle,
			Access: pg.Access, MaxMembers: pg.MaxMembers, IdleTimeout: pg.IdleTimeout, HostJoin: pg.HostJoin})
		if err != nil {
			panic(fmt.Sprintf("simnet: group-storm seed %d: create group %d: %v", seed, g, err)) // the plan only asks for valid groups
		}
		s.ids[g] = created.ID
		for _, j := range pg.Invited {
			_ = w.InviteToGroup(pg.Host, created.ID, j)
		}
		if pg.CloseAt > 0 {
			w.Schedule(pg.CloseAt, s, gsArg(gsClose, g, 0))
		}
	}
	for i := 0; i < p.Peers; i++ {
		r := w.PeerRand(i)
		for _, g := range plan.Joins[i] {
			if plan.Groups[g].Host != i {
				w.Schedule(uniformDur(r, 0, p.Duration/4), s, gsArg(gsJoin, g, i))
			}
		}
		first := time.Duration(r.ExpFloat64() * s.mean)
		if first < p.Duration {
			w.Schedule(first, s, gsArg(gsChat, 0, i))
		}
	}
	for k, pp := range plan.Partitions {
		w.Schedule(pp.At, s, gsArg(gsPartition, k, 0))
		w.Schedule(pp.At+pp.For, s, gsArg(gsHeal, k, 0))
	}
	for k, c := range plan.Crashes {
		w.Schedule(c.At, s, gsArg(gsCrash, k, 0))
		w.Schedule(c.At+c.For, s, gsArg(gsRestart, k, 0))
	}
	return w, plan
}

// RunGroupStorm runs group-storm for one seed: the fault phase, then the
// liveness phase (heal everything, restart every crashed peer, and require by
// p.Deadline that every member re-joined or left, every accepted message
// reached every member that stayed, and every member sees its host's list).
func RunGroupStorm(seed uint64, p Params) *Report {
	p = p.withDefaults()
	start := time.Now()
	w, plan := NewGroupStormWorld(seed, p)
	rep, _ := runPhases(ScenarioGroupStorm, seed, p, start, w, plan, p.Deadline)
	return rep
}
