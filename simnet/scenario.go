package simnet

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/metrics"
	"slices"
	"strings"
	"sync"
	"time"
)

// ScenarioStorm is the name of the built-in bus storm scenario.
const ScenarioStorm = "mq-storm"

// Scenario is something `goop sim` can run for a seed.
type Scenario struct {
	Name        string
	Description string
	// Run runs the scenario for one seed. It must be deterministic in seed
	// and p, and safe to call from several goroutines at once.
	Run func(seed uint64, p Params) *Report
}

// builtins lists the built-in scenarios; later cores add theirs here.
var builtins = []Scenario{
	{Name: ScenarioStorm, Description: "every peer sends to random peers under loss, duplication, reordering, bandwidth limits, partitions and crashes; then heal and converge",
		Run: RunStorm},
	{Name: ScenarioGroupStorm, Description: "1-3 hosts' groups; members join, chat, leave, re-join, get kicked under loss, duplication, reordering, partitions and crashes of members and hosts; then heal and converge (every member re-joined or left, every accepted message delivered exactly once, member lists agree)",
		Run: RunGroupStorm},
	{Name: ScenarioDiscovery, Description: "peers on 4 LAN segments with 2 mDNS tags and a rendezvous discover each other (mDNS, GossipSub presence, rendezvous); peers, segments and the rendezvous are cut off or crash past the TTL; then heal and converge within 4 heartbeats (every table lists its segment+tag online via lan and every rendezvous user via wan)",
		Run: RunDiscovery},
}

// Builtins returns the built-in scenarios.
func Builtins() []Scenario { return slices.Clone(builtins) }

// Lookup finds a scenario: a built-in name, the path of a script file, or the
// name of an embedded script (simnet/testdata/NAME.txt).
func Lookup(name string) (Scenario, error) {
	for _, s := range builtins {
		if s.Name == name {
			return s, nil
		}
	}
	src, err := os.ReadFile(name)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			return Scenario{}, fmt.Errorf("read scenario %s: %w", name, err)
		}
		src, err = scriptFS.ReadFile("testdata/" + strings.TrimSuffix(name, ".txt") + ".txt")
		if err != nil {
			return Scenario{}, fmt.Errorf("unknown scenario %q: not built in (%s), not a file, not an embedded script (%s)",
				name, strings.Join(builtinNames(), ", "), strings.Join(EmbeddedScripts(), ", "))
		}
	}
	script, err := ParseScript(name, string(src))
	if err != nil {
		return Scenario{}, err
	}
	return Scenario{Name: name, Description: "script " + name, Run: func(seed uint64, p Params) *Report {
		return RunScript(script, seed, p)
	}}, nil
}

func builtinNames() []string {
	var out []string
	for _, s := range builtins {
		out = append(out, s.Name)
	}
	return out
}

// InvariantResult is the outcome of one safety property.
type InvariantResult struct {
	Name    string `json:"name"`
	Checked uint64 `json:"checked"`
	OK      bool   `json:"ok"`
	Detail  string `json:"detail,omitempty"`
}

// LivenessResult is the outcome of the liveness phase.
type LivenessResult struct {
	Ran       bool          `json:"ran"`
	Converged bool          `json:"converged"`
	At        time.Duration `json:"at_ns"`
	Waiting   []string      `json:"waiting,omitempty"`
	Error     string        `json:"error,omitempty"`
}

// Report is the outcome of one scenario run for one seed.
type Report struct {
	Scenario string `json:"scenario"`
	Seed     uint64 `json:"seed"`
	Peers    int    `json:"peers"`
	Params   Params `json:"params"`
	// Options is what the seed expanded to (a storm's fault mix), on one line.
	Options string `json:"options"`
	// Plan is the same in structured form (scenario specific).
	Plan       any               `json:"plan,omitempty"`
	Stats      Stats             `json:"stats"`
	Invariants []InvariantResult `json:"invariants"`
	// Violation is the first broken invariant, if any.
	Violation   *Violation     `json:"violation,omitempty"`
	Liveness    LivenessResult `json:"liveness"`
	VirtualTime time.Duration  `json:"virtual_ns"`
	WallTime    time.Duration  `json:"wall_ns"`
	TraceHash   string         `json:"trace_hash"`
	// Replay is the one command that replays this run.
	Replay string `json:"replay"`
	// Error is a failure outside the world (a bad script).
	Error string `json:"error,omitempty"`
	// Transcript is a script's output.
	Transcript string `json:"transcript,omitempty"`
	// Metrics are figures a scenario measures (name → value), e.g.
	// discovery's full_discovery_heartbeats.
	Metrics map[string]float64 `json:"metrics,omitempty"`
}

// Ratio is virtual time over wall time.
func (r *Report) Ratio() float64 {
	if r.WallTime <= 0 {
		return 0
	}
	return float64(r.VirtualTime) / float64(r.WallTime)
}

// Passed reports whether every invariant held and liveness converged.
func (r *Report) Passed() bool {
	return r.Violation == nil && r.Error == "" && (!r.Liveness.Ran || r.Liveness.Converged)
}

// Failure explains a failed run: seed, the options the seed expanded to, the
// first broken invariant (or what liveness waited for) and the replay command.
func (r *Report) Failure() string {
	if r.Passed() {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "FAIL %s seed %d (%d peers)\n", r.Scenario, r.Seed, r.Peers)
	fmt.Fprintf(&b, "  options:   %s\n", r.Options)
	switch {
	case r.Error != "":
		fmt.Fprintf(&b, "  error:     %s\n", r.Error)
	case r.Violation != nil:
		fmt.Fprintf(&b, "  invariant: %s at %s: %s\n", r.Violation.Property, r.Violation.Time, r.Violation.Detail)
	default:
		fmt.Fprintf(&b, "  liveness:  %s\n", r.Liveness.Error)
	}
	fmt.Fprintf(&b, "  replay:    %s\n", r.Replay)
	return b.String()
}

// ReplayCommand is the command line that replays scenario name for seed.
func ReplayCommand(name string, seed uint64, p Params) string {
	p = p.withDefaults()
	d := DefaultParams()
	var b strings.Builder
	fmt.Fprintf(&b, "go run ./cmd/goop sim --scenario %s --seed %d", name, seed)
	if name == ScenarioStorm || name == ScenarioGroupStorm || name == ScenarioDiscovery {
		fmt.Fprintf(&b, " --peers %d --duration %s", p.Peers, p.Duration)
		if p.Rate != d.Rate && name != ScenarioDiscovery {
			fmt.Fprintf(&b, " --rate %g", p.Rate)
		}
	}
	if p.Deadline != d.Deadline {
		fmt.Fprintf(&b, " --deadline %s", p.Deadline)
	}
	if p.Fault != "" {
		fmt.Fprintf(&b, " --fault %s", p.Fault)
	}
	return b.String()
}

// runPhases runs a built world through the fault phase (until p.Duration)
// and then the liveness phase (Converge within deadline), and reports it
// with its plan. healAt is when the liveness phase began (-1 if the fault
// phase failed).
func runPhases(name string, seed uint64, p Params, start time.Time, w *World, plan fmt.Stringer,
	deadline time.Duration) (rep *Report, healAt time.Duration) {
	var lerr error
	healAt = -1
	if err := w.RunUntil(p.Duration); err == nil {
		healAt = w.Elapsed()
		lerr = w.Converge(deadline)
	}
	rep = newReport(name, seed, p, w, lerr, time.Since(start))
	rep.Options = plan.String()
	rep.Plan = plan
	return rep, healAt
}

func newReport(name string, seed uint64, p Params, w *World, lerr error, wall time.Duration) *Report {
	p = p.withDefaults()
	r := &Report{
		Scenario:    name,
		Seed:        seed,
		Peers:       w.NumPeers(),
		Params:      p,
		Stats:       w.Stats(),
		Violation:   w.Violation(),
		VirtualTime: w.Elapsed(),
		WallTime:    wall,
		TraceHash:   fmt.Sprintf("%016x", w.TraceHash()),
		Replay:      ReplayCommand(name, seed, p),
	}
	r.Invariants = invariantResults(w)
	if r.Violation == nil {
		r.Liveness.Ran = true
		var le *LivenessError
		switch {
		case lerr == nil:
			r.Liveness.Converged = true
			r.Liveness.At = w.Elapsed()
		case errors.As(lerr, &le):
			r.Liveness.Waiting = le.Waiting
			r.Liveness.Error = le.Error()
		default:
			r.Liveness.Error = lerr.Error()
		}
	}
	return r
}

func invariantResults(w *World) []InvariantResult {
	var out []InvariantResult
	v := w.Violation()
	for _, c := range w.Checkers() {
		for _, pc := range c.Properties() {
			ir := InvariantResult{Name: pc.Name, Checked: pc.Checked, OK: true}
			if v != nil && v.Property == pc.Name {
				ir.OK, ir.Detail = false, v.Detail
			}
			out = append(out, ir)
		}
	}
	if v != nil && !slices.ContainsFunc(out, func(ir InvariantResult) bool { return ir.Name == v.Property }) {
		out = append(out, InvariantResult{Name: v.Property, Detail: v.Detail})
	}
	return out
}

// Summary aggregates the runs of one scenario over many seeds.
type Summary struct {
	Scenario  string    `json:"scenario"`
	Params    Params    `json:"params"`
	FirstSeed uint64    `json:"first_seed"`
	Seeds     int       `json:"seeds"`
	Passed    int       `json:"passed"`
	Failed    int       `json:"failed"`
	Reports   []*Report `json:"reports"`
	// Elapsed is the wall time of the whole run (seeds run in parallel).
	Elapsed time.Duration `json:"elapsed_ns"`
	Workers int           `json:"workers"`
}

// Totals sums the stats of every run.
func (s *Summary) Totals() Stats {
	var t Stats
	for _, r := range s.Reports {
		t = addStats(t, r.Stats)
	}
	return t
}

// Ratio is the total virtual time over the total per-run wall time: how much
// faster than real time one core simulates.
func (s *Summary) Ratio() float64 {
	var v, w time.Duration
	for _, r := range s.Reports {
		v += r.VirtualTime
		w += r.WallTime
	}
	if w <= 0 {
		return 0
	}
	return float64(v) / float64(w)
}

// FirstFailure returns the failed report with the lowest seed, or nil.
func (s *Summary) FirstFailure() *Report {
	for _, r := range s.Reports {
		if !r.Passed() {
			return r
		}
	}
	return nil
}

func addStats(a, b Stats) Stats {
	a.Events += b.Events
	a.MsgsSent += b.MsgsSent
	a.MsgsRejected += b.MsgsRejected
	a.MsgsDelivered += b.MsgsDelivered
	a.MsgsAcked += b.MsgsAcked
	a.MsgsFailed += b.MsgsFailed
	a.FramesSent += b.FramesSent
	a.FramesDelivered += b.FramesDelivered
	a.FramesDuplicated += b.FramesDuplicated
	a.DroppedLoss += b.DroppedLoss
	a.DroppedPartition += b.DroppedPartition
	a.DroppedDown += b.DroppedDown
	a.DroppedUnknown += b.DroppedUnknown
	a.CodecChecked += b.CodecChecked
	a.Crashes += b.Crashes
	a.Restarts += b.Restarts
	a.Partitions += b.Partitions
	a.Heals += b.Heals
	a.Broadcasts += b.Broadcasts
	a.BroadcastsRecv += b.BroadcastsRecv
	a.Presence = a.Presence.add(b.Presence)
	return a
}

// RunSeeds runs sc for seeds first..first+n-1 on workers goroutines (0 means
// GOMAXPROCS) and returns the reports in seed order. It blocks until all are done.
func RunSeeds(sc Scenario, first uint64, n int, p Params, workers int) *Summary {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	workers = max(1, min(workers, n))
	start := time.Now()
	reports := make([]*Report, n)
	var wg sync.WaitGroup
	next := make(chan int)
	for k := 0; k < workers; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				reports[i] = sc.Run(first+uint64(i), p)
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	s := &Summary{Scenario: sc.Name, Params: p.withDefaults(), FirstSeed: first, Seeds: n, Reports: reports,
		Elapsed: time.Since(start), Workers: workers}
	for _, r := range reports {
		if r.Passed() {
			s.Passed++
		} else {
			s.Failed++
		}
	}
	return s
}

// MarshalJSON encodes durations in Params as strings.
func (p Params) MarshalJSON() ([]byte, error) {
	type alias Params
	return json.Marshal(struct {
		alias
		Duration string `json:"duration"`
		Deadline string `json:"deadline"`
	}{alias(p), p.Duration.String(), p.Deadline.String()})
}

// MemPeak is the peak memory seen by a MemSampler.
type MemPeak struct {
	HeapInuse uint64 `json:"heap_inuse_bytes"`
	Sys       uint64 `json:"sys_bytes"`
}

// MemSampler samples runtime.MemStats on its own goroutine and keeps peaks.
type MemSampler struct {
	mu      sync.Mutex
	peak    MemPeak
	samples []metrics.Sample
	stop    chan struct{}
	done    chan struct{}
}

// StartMemSampler samples every interval until Stop.
func StartMemSampler(interval time.Duration) *MemSampler {
	m := &MemSampler{stop: make(chan struct{}), done: make(chan struct{})}
	m.sample()
	go func() {
		defer close(m.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-m.stop:
				return
			case <-t.C:
				m.sample()
			}
		}
	}()
	return m
}

// Memory figures read by MemSampler through runtime/metrics, which, unlike
// runtime.ReadMemStats, does not stop the world: sampling every few
// milliseconds must not slow the simulation it measures.
var memMetrics = [...]string{
	"/memory/classes/heap/objects:bytes", // + unused: MemStats.HeapInuse
	"/memory/classes/heap/unused:bytes",
	"/memory/classes/total:bytes", // MemStats.Sys
}

func (m *MemSampler) sample() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.samples == nil {
		m.samples = make([]metrics.Sample, len(memMetrics))
		for i, n := range memMetrics {
			m.samples[i].Name = n
		}
	}
	metrics.Read(m.samples)
	var v [len(memMetrics)]uint64
	for i, s := range m.samples {
		if s.Value.Kind() == metrics.KindUint64 {
			v[i] = s.Value.Uint64()
		}
	}
	m.peak.HeapInuse = max(m.peak.HeapInuse, v[0]+v[1])
	m.peak.Sys = max(m.peak.Sys, v[2])
}

// Stop ends sampling, takes a last sample and returns the peaks. Call once.
func (m *MemSampler) Stop() MemPeak {
	close(m.stop)
	<-m.done
	m.sample()
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.peak
}
