package simnet

import (
	"fmt"

	"github.com/goop-p2p/goop/app"
	"strconv"
	"strings"
	"time"
)

// Faults that a scenario can plant in the code under test, to prove that the
// checkers catch them. Never used outside self-tests.
const (
	// FaultSkipDedupe sets mq.Options.UnsafeSkipDedupe on every node.
	FaultSkipDedupe = "skip-dedupe"
)

// Params are the knobs common to scenarios (the flags of `goop sim`).
type Params struct {
	// Peers is the number of peers (mq-storm, group-storm; default 100).
	Peers int `json:"peers"`
	// Duration is the length of the fault phase before liveness (default 30 s).
	Duration time.Duration `json:"-"`
	// Rate is the messages per second each peer sends (default 1); in
	// group-storm, the actions per second (mostly messages to its groups).
	Rate float64 `json:"rate"`
	// Deadline bounds the liveness phase (default 120 s of virtual time).
	Deadline time.Duration `json:"-"`
	// Fault plants a fault in the code under test ("" for none).
	Fault string `json:"fault,omitempty"`
}

// DefaultParams are the mq-storm defaults.
func DefaultParams() Params {
	return Params{Peers: 100, Duration: 30 * time.Second, Rate: 1, Deadline: 120 * time.Second}
}

func (p Params) withDefaults() Params {
	d := DefaultParams()
	if p.Peers <= 0 {
		p.Peers = d.Peers
	}
	if p.Duration <= 0 {
		p.Duration = d.Duration
	}
	if p.Rate <= 0 {
		p.Rate = d.Rate
	}
	if p.Deadline <= 0 {
		p.Deadline = d.Deadline
	}
	return p
}

// PlannedPartition is one partition of a storm plan: side A is cut from the
// rest (and the rest from A unless OneWay) from At for For.
type PlannedPartition struct {
	At     time.Duration `json:"at"`
	For    time.Duration `json:"for"`
	OneWay bool          `json:"one_way"`
	A      []int         `json:"a"`
}

// PlannedCrash is one crash of a storm plan: Peer is down from At for For.
type PlannedCrash struct {
	Peer int           `json:"peer"`
	At   time.Duration `json:"at"`
	For  time.Duration `json:"for"`
}

// StormPlan is what a seed expands to for mq-storm: its own fault mix.
type StormPlan struct {
	// MaxAttempts bounds retries in a quarter of the seeds (0: unbounded).
	// Bounded seeds may fail messages; liveness then requires every message
	// to have exactly one fate (delivered and acknowledged, or failed).
	MaxAttempts int `json:"max_attempts,omitempty"`
	// Window and ReorderBuffer vary the bus's flow control per seed.
	Window        int                `json:"window"`
	ReorderBuffer int                `json:"reorder_buffer"`
	Link          LinkParams         `json:"link"`
	LatencySpread time.Duration      `json:"latency_spread"`
	Partitions    []PlannedPartition `json:"partitions"`
	Crashes       []PlannedCrash     `json:"crashes"`
}

// String summarises the plan on one line.
func (pl *StormPlan) String() string {
	var b strings.Builder
	l := pl.Link
	bw := "unlimited"
	if l.Bandwidth > 0 {
		bw = fmt.Sprintf("%dB/s", l.Bandwidth)
	}
	fmt.Fprintf(&b, "latency=%s+[0,%s) jitter=%s loss=%.3f dup=%.3f reorder=%.3f/%s bandwidth=%s",
		l.Latency, pl.LatencySpread, l.Jitter, l.Loss, l.Dup, l.Reorder, l.ReorderDelay, bw)
	fmt.Fprintf(&b, " window=%d reorder-buffer=%d", pl.Window, pl.ReorderBuffer)
	if pl.MaxAttempts > 0 {
		fmt.Fprintf(&b, " attempts=%d", pl.MaxAttempts)
	}
	const show = 8 // the full lists are in the JSON plan, and the seed replays them
	fmt.Fprintf(&b, " partitions=%d", len(pl.Partitions))
	for _, p := range pl.Partitions {
		kind := "sym"
		if p.OneWay {
			kind = "one-way"
		}
		fmt.Fprintf(&b, " [%s@%s+%s |A|=%d]", kind, p.At.Round(time.Millisecond), p.For.Round(time.Millisecond), len(p.A))
	}
	fmt.Fprintf(&b, " crashes=%d", len(pl.Crashes))
	for i, c := range pl.Crashes {
		if i == show {
			fmt.Fprintf(&b, " …+%d", len(pl.Crashes)-show)
			break
		}
		fmt.Fprintf(&b, " [p%d@%s+%s]", c.Peer, c.At.Round(time.Millisecond), c.For.Round(time.Millisecond))
	}
	return b.String()
}

func uniformDur(r interface{ Int64N(int64) int64 }, lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(r.Int64N(int64(hi-lo)))
}

// PlanStorm expands a seed into mq-storm's fault mix for p.
func PlanStorm(seed uint64, p Params) *StormPlan {
	p = p.withDefaults()
	r := newStream(seed, streamScenario, 1)
	pl := &StormPlan{}
	pl.Link = LinkParams{
		Latency:      uniformDur(r, time.Millisecond, 20*time.Millisecond),
		Jitter:       uniformDur(r, 0, 10*time.Millisecond),
		Loss:         r.Float64() * 0.2,
		Dup:          r.Float64() * 0.1,
		Reorder:      r.Float64() * 0.3,
		ReorderDelay: uniformDur(r, 10*time.Millisecond, 200*time.Millisecond),
	}
	if r.IntN(2) == 0 {
		pl.Link.Bandwidth = 16<<10 + r.Int64N(1<<20)
	}
	pl.LatencySpread = uniformDur(r, 0, 50*time.Millisecond)
	pl.Window = []int{1, 4, 64, 1024}[r.IntN(4)]
	pl.ReorderBuffer = []int{1, 8, 4096}[r.IntN(3)]
	if r.IntN(4) == 0 {
		pl.MaxAttempts = 3 + r.IntN(6)
	}
	for n := r.IntN(4); n > 0; n-- {
		pp := PlannedPartition{
			At:     uniformDur(r, 0, p.Duration),
			For:    uniformDur(r, time.Second, 20*time.Second),
			OneWay: r.IntN(3) == 0,
		}
		size := 1 + r.IntN(max(1, p.Peers/2))
		perm := r.Perm(p.Peers)[:size]
		pp.A = sortedInts(perm)
		pl.Partitions = append(pl.Partitions, pp)
	}
	for n := r.IntN(max(3, p.Peers/10) + 1); n > 0; n-- {
		pl.Crashes = append(pl.Crashes, PlannedCrash{
			Peer: r.IntN(p.Peers),
			At:   uniformDur(r, 0, p.Duration),
			For:  uniformDur(r, 200*time.Millisecond, 15*time.Second),
		})
	}
	return pl
}

func sortedInts(a []int) []int {
	out := append([]int(nil), a...)
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// storm drives the mq-storm workload and fault plan.
type storm struct {
	p       Params
	plan    *StormPlan
	partIDs []int
	counter []int64
	buf     []byte
	mean    float64 // mean gap between sends, in ns
}

const (
	stormSend int64 = iota
	stormPartition
	stormHeal
	stormCrash
	stormRestart
)

func (s *storm) Fire(w *World, arg int64) {
	kind, i := arg>>32, int(arg&0xffffffff)
	switch kind {
	case stormSend:
		r := w.PeerRand(i)
		if w.Up(i) {
			j := r.IntN(w.NumPeers() - 1)
			if j >= i {
				j++
			}
			s.counter[i]++
			b := append(s.buf[:0], `{"n":`...)
			b = strconv.AppendInt(b, s.counter[i], 10)
			b = append(b, `,"pad":"`...)
			for k := r.IntN(128); k > 0; k-- {
				b = append(b, 'x')
			}
			b = append(b, `"}`...)
			s.buf = b
			_, _ = w.Send(i, j, "storm", append([]byte(nil), b...))
		}
		next := w.Elapsed() + time.Duration(r.ExpFloat64()*s.mean) + 1
		if next < s.p.Duration {
			w.Schedule(next, s, arg)
		}
	case stormPartition:
		pp := s.plan.Partitions[i]
		id, err := w.Partition(pp.A, nil, pp.OneWay)
		if err == nil {
			s.partIDs[i] = id
		}
	case stormHeal:
		if id := s.partIDs[i]; id != 0 {
			_ = w.Heal(id) // Converge may have healed it already
		}
	case stormCrash:
		_ = w.Crash(s.plan.Crashes[i].Peer) // already down: overlapping crashes
	case stormRestart:
		_ = w.Restart(s.plan.Crashes[i].Peer) // already up
	}
}

// NewStormWorld builds the mq-storm world for seed with its plan scheduled:
// every peer sends to random peers at p.Rate during p.Duration under the
// seed's loss, duplication, reordering, bandwidth, partitions and crashes.
func NewStormWorld(seed uint64, p Params) (*World, *StormPlan) {
	p = p.withDefaults()
	plan := PlanStorm(seed, p)
	bus := SimBusOptions()
	bus.UnsafeSkipDedupe = p.Fault == FaultSkipDedupe
	bus.Window, bus.ReorderBuffer = plan.Window, plan.ReorderBuffer
	mq := NewMQChecker()
	if plan.MaxAttempts > 0 {
		bus.MaxAttempts = plan.MaxAttempts
		mq.AllowFailures = true
	}
	w := New(seed, Options{Peers: p.Peers, Link: plan.Link, LatencySpread: plan.LatencySpread,
		Node: app.NodeOptions{Bus: bus}, Checkers: []Checker{mq}})
	s := &storm{p: p, plan: plan, partIDs: make([]int, len(plan.Partitions)), counter: make([]int64, p.Peers),
		mean: float64(time.Second) / p.Rate}
	for i := 0; i < p.Peers; i++ {
		first := time.Duration(w.PeerRand(i).ExpFloat64() * s.mean)
		if first < p.Duration {
			w.Schedule(first, s, stormSend<<32|int64(i))
		}
	}
	for k, pp := range plan.Partitions {
		w.Schedule(pp.At, s, stormPartition<<32|int64(k))
		w.Schedule(pp.At+pp.For, s, stormHeal<<32|int64(k))
	}
	for k, c := range plan.Crashes {
		w.Schedule(c.At, s, stormCrash<<32|int64(k))
		w.Schedule(c.At+c.For, s, stormRestart<<32|int64(k))
	}
	return w, plan
}

// RunStorm runs mq-storm for one seed: the fault phase, then the liveness
// phase (heal everything, require convergence by p.Deadline).
func RunStorm(seed uint64, p Params) *Report {
	p = p.withDefaults()
	start := time.Now()
	w, plan := NewStormWorld(seed, p)
	rep, _ := runPhases(ScenarioStorm, seed, p, start, w, plan, p.Deadline)
	return rep
}
