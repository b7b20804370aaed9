// Package simcli is the `goop sim` command: it runs a simnet scenario (built
// in, or a script) for one or many seeds and prints a report.
package simcli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/goop-p2p/goop/simnet"
)

// Exit codes, as cmd/goop's.
const (
	exitFailed = 1 // a seed broke an invariant or did not converge
	exitUsage  = 2
)

// Command returns the `sim` command. It writes to the app's Writer and is
// safe to register in any urfave/cli/v2 app.
func Command() *cli.Command {
	d := simnet.DefaultParams()
	return &cli.Command{
		Name:      "sim",
		Usage:     "simulate many peers deterministically and check the invariants",
		ArgsUsage: " ",
		Description: "Runs a scenario in the deterministic simulator: N peers built from the real node code\n" +
			"on one seeded scheduler with virtual time, a faulty network (latency, loss, duplication,\n" +
			"reordering, bandwidth, partitions, crashes), invariant checks after every event and a\n" +
			"liveness phase. The same seed gives the same run; a failure prints the command that\n" +
			"replays it. --scenario takes a built-in name (mq-storm, group-storm, discovery), a script file, or the name of\n" +
			"an embedded script (simnet/testdata/NAME.txt); --list shows them.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "scenario", Value: simnet.ScenarioStorm, Usage: "scenario `NAME` or script file"},
			&cli.IntFlag{Name: "peers", Value: d.Peers, Usage: "number of peers (mq-storm, group-storm, discovery)"},
			&cli.Uint64Flag{Name: "seed", Value: 1, Usage: "first seed"},
			&cli.IntFlag{Name: "seeds", Value: 1, Usage: "number of seeds to run: seed, seed+1, ..."},
			&cli.DurationFlag{Name: "duration", Value: d.Duration, Usage: "virtual length of the fault phase (mq-storm, group-storm, discovery)"},
			&cli.Float64Flag{Name: "rate", Value: d.Rate, Usage: "messages per second each peer sends (mq-storm, group-storm)"},
			&cli.DurationFlag{Name: "deadline", Value: d.Deadline, Usage: "virtual time the liveness phase may take"},
			&cli.IntFlag{Name: "workers", Value: runtime.GOMAXPROCS(0), Usage: "seeds run in parallel"},
			&cli.BoolFlag{Name: "json", Usage: "print the report as one JSON object"},
			&cli.BoolFlag{Name: "list", Usage: "list the scenarios and script commands, then exit"},
			&cli.IntFlag{Name: "gc-percent", Usage: "Go GC target percent for the run; 0: 100 when one seed runs at a time, 400 when seeds run in parallel (GOGC in the environment wins unless set)"},
			&cli.IntFlag{Name: "mem-limit", Value: defaultMemLimitMiB, Usage: "soft memory limit in `MiB` for the run: the GC works harder near it (0: none; GOMEMLIMIT in the environment wins unless set)"},
			&cli.StringFlag{Name: "fault", Usage: "plant a fault in the code under test to prove the checks fail (self-test: " + simnet.FaultSkipDedupe + ")"},
			&cli.StringFlag{Name: "cpuprofile", Usage: "write a CPU profile of the run to `FILE` (go tool pprof)"},
			&cli.StringFlag{Name: "memprofile", Usage: "write a heap profile to `FILE` at the end of the run (go tool pprof; -sample_index=alloc_space for allocations)"},
		},
		Action: action,
	}
}

func action(c *cli.Context) error {
	out := c.App.Writer
	if out == nil {
		out = os.Stdout
	}
	if c.Bool("list") {
		printList(out)
		return nil
	}
	if c.NArg() > 0 {
		return cli.Exit(fmt.Sprintf("sim takes no arguments (got %q)", c.Args().First()), exitUsage)
	}
	p := simnet.Params{
		Peers: c.Int("peers"), Duration: c.Duration("duration"), Rate: c.Float64("rate"),
		Deadline: c.Duration("deadline"), Fault: c.String("fault"),
	}
	switch {
	case p.Peers < 2:
		return cli.Exit("--peers must be at least 2", exitUsage)
	case c.Int("seeds") < 1:
		return cli.Exit("--seeds must be at least 1", exitUsage)
	case p.Duration <= 0 || p.Deadline <= 0 || p.Rate <= 0:
		return cli.Exit("--duration, --deadline and --rate must be positive", exitUsage)
	case c.Int("mem-limit") < 0:
		return cli.Exit("--mem-limit must not be negative", exitUsage)
	case p.Fault != "" && p.Fault != simnet.FaultSkipDedupe:
		return cli.Exit(fmt.Sprintf("unknown --fault %q (known: %s)", p.Fault, simnet.FaultSkipDedupe), exitUsage)
	}
	sc, err := simnet.Lookup(c.String("scenario"))
	if err != nil {
		return cli.Exit(err.Error(), exitUsage)
	}
	if os.Getenv("GOGC") == "" || c.IsSet("gc-percent") {
		defer debug.SetGCPercent(debug.SetGCPercent(gcPercent(c.Int("gc-percent"), c.Int("seeds"), c.Int("workers"))))
	}
	if lim := c.Int("mem-limit"); lim > 0 && (os.Getenv("GOMEMLIMIT") == "" || c.IsSet("mem-limit")) {
		defer debug.SetMemoryLimit(debug.SetMemoryLimit(int64(lim) << 20))
	}

	stopProfile, err := StartCPUProfile(c.String("cpuprofile"))
	if err != nil {
		return cli.Exit("--cpuprofile: "+err.Error(), exitUsage)
	}
	mem := simnet.StartMemSampler(10 * time.Millisecond)
	sum := simnet.RunSeeds(sc, c.Uint64("seed"), c.Int("seeds"), p, c.Int("workers"))
	peak := mem.Stop()
	if err := stopProfile(); err != nil {
		return fmt.Errorf("--cpuprofile: %w", err)
	}
	if err := WriteHeapProfile(c.String("memprofile")); err != nil {
		return fmt.Errorf("--memprofile: %w", err)
	}

	rep := buildReport(sum, peak)
	if c.Bool("json") {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
	} else {
		printText(out, sum, rep)
	}
	if sum.Failed > 0 {
		return cli.Exit(fmt.Sprintf("%d of %d seeds failed; first: %s", sum.Failed, sum.Seeds, sum.FirstFailure().Replay), exitFailed)
	}
	return nil
}

// defaultMemLimitMiB is the default soft memory limit: under the 512 MiB a
// 1,000-peer run may use, above what any built-in scenario keeps live.
const defaultMemLimitMiB = 448

// gcPercent returns the GC target percent for a run: set (non-zero; negative
// turns the GC off, as GOGC=off), or chosen.
// One seed at a time leaves a core to the concurrent GC, and a small heap
// means fewer fresh pages to fault in (costly in VMs): Go's default 100.
// Seeds in parallel keep every core busy, so the GC's own work counts: 400.
func gcPercent(set, seeds, workers int) int {
	switch {
	case set != 0:
		return set
	case seeds == 1 || workers == 1:
		return 100
	default:
		return 400
	}
}

// Report is the JSON form of a `goop sim` run.
type Report struct {
	Scenario       string             `json:"scenario"`
	Params         simnet.Params      `json:"params"`
	FirstSeed      uint64             `json:"first_seed"`
	Seeds          int                `json:"seeds"`
	Workers        int                `json:"workers"`
	Passed         int                `json:"passed"`
	Failed         int                `json:"failed"`
	Peers          int                `json:"peers"`
	Totals         simnet.Stats       `json:"totals"`
	FramesDropped  uint64             `json:"frames_dropped"`
	Invariants     []InvariantSummary `json:"invariants"`
	Converged      int                `json:"converged"`
	VirtualSeconds float64            `json:"virtual_seconds"`
	WallSeconds    float64            `json:"wall_seconds"`
	ElapsedSeconds float64            `json:"elapsed_seconds"`
	Ratio          float64            `json:"virtual_per_wall"`
	SeedsPerSecond float64            `json:"seeds_per_second"`
	PeakMemory     simnet.MemPeak     `json:"peak_memory"`
	Failures       []Failure          `json:"failures"`
	Runs           []Run              `json:"runs"`
	// Metrics summarise the scenario's figures over the seeds.
	Metrics []MetricSummary `json:"metrics,omitempty"`
	Result  string          `json:"result"`
}

// MetricSummary is one scenario figure over the seeds that measured it.
type MetricSummary struct {
	Name  string  `json:"name"`
	Seeds int     `json:"seeds"`
	Min   float64 `json:"min"`
	Mean  float64 `json:"mean"`
	Max   float64 `json:"max"`
}

// InvariantSummary is one property over all seeds.
type InvariantSummary struct {
	Name       string `json:"name"`
	Checked    uint64 `json:"checked"`
	Violations int    `json:"violations"`
}

// Failure is one failed seed: what broke and how to replay it.
type Failure struct {
	Seed      uint64   `json:"seed"`
	Options   string   `json:"options"`
	Invariant string   `json:"invariant,omitempty"`
	Detail    string   `json:"detail"`
	At        float64  `json:"at_seconds,omitempty"`
	Waiting   []string `json:"waiting,omitempty"`
	Replay    string   `json:"replay"`
}

// Run is one seed's outcome.
type Run struct {
	Seed           uint64  `json:"seed"`
	Passed         bool    `json:"passed"`
	Options        string  `json:"options"`
	Events         uint64  `json:"events"`
	VirtualSeconds float64 `json:"virtual_seconds"`
	WallSeconds    float64 `json:"wall_seconds"`
	TraceHash      string  `json:"trace_hash"`
	Transcript     string  `json:"transcript,omitempty"`
}

func buildReport(sum *simnet.Summary, peak simnet.MemPeak) *Report {
	r := &Report{
		Scenario: sum.Scenario, Params: sum.Params, FirstSeed: sum.FirstSeed, Seeds: sum.Seeds,
		Workers: sum.Workers, Passed: sum.Passed, Failed: sum.Failed, Totals: sum.Totals(),
		ElapsedSeconds: sum.Elapsed.Seconds(), Ratio: sum.Ratio(), PeakMemory: peak,
		Failures: []Failure{}, Result: "PASS",
	}
	r.FramesDropped = r.Totals.FramesDropped()
	if sum.Elapsed > 0 {
		r.SeedsPerSecond = float64(sum.Seeds) / sum.Elapsed.Seconds()
	}
	if sum.Failed > 0 {
		r.Result = "FAIL"
	}
	inv := map[string]*InvariantSummary{}
	var order []string
	for _, rep := range sum.Reports {
		r.Peers = max(r.Peers, rep.Peers)
		r.VirtualSeconds += rep.VirtualTime.Seconds()
		r.WallSeconds += rep.WallTime.Seconds()
		if rep.Liveness.Converged {
			r.Converged++
		}
		for _, ir := range rep.Invariants {
			s := inv[ir.Name]
			if s == nil {
				s = &InvariantSummary{Name: ir.Name}
				inv[ir.Name] = s
				order = append(order, ir.Name)
			}
			s.Checked += ir.Checked
			if !ir.OK {
				s.Violations++
			}
		}
		run := Run{Seed: rep.Seed, Passed: rep.Passed(), Options: rep.Options, Events: rep.Stats.Events,
			VirtualSeconds: rep.VirtualTime.Seconds(), WallSeconds: rep.WallTime.Seconds(), TraceHash: rep.TraceHash}
		if sum.Seeds == 1 {
			run.Transcript = rep.Transcript
		}
		r.Runs = append(r.Runs, run)
		if !rep.Passed() {
			f := Failure{Seed: rep.Seed, Options: rep.Options, Replay: rep.Replay}
			switch {
			case rep.Error != "":
				f.Detail = rep.Error
			case rep.Violation != nil:
				f.Invariant, f.Detail, f.At = rep.Violation.Property, rep.Violation.Detail, rep.Violation.Time.Seconds()
			default:
				f.Invariant, f.Detail, f.Waiting = "liveness", rep.Liveness.Error, rep.Liveness.Waiting
			}
			r.Failures = append(r.Failures, f)
		}
	}
	for _, n := range order {
		r.Invariants = append(r.Invariants, *inv[n])
	}
	r.Metrics = summariseMetrics(sum.Reports)
	return r
}

func summariseMetrics(reps []*simnet.Report) []MetricSummary {
	by := map[string]*MetricSummary{}
	for _, rep := range reps {
		for name, v := range rep.Metrics {
			m := by[name]
			if m == nil {
				m = &MetricSummary{Name: name, Min: v, Max: v}
				by[name] = m
			}
			m.Seeds++
			m.Min, m.Max = min(m.Min, v), max(m.Max, v)
			m.Mean += v
		}
	}
	out := make([]MetricSummary, 0, len(by))
	for _, m := range by {
		m.Mean /= float64(m.Seeds)
		out = append(out, *m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

func printText(w io.Writer, sum *simnet.Summary, r *Report) {
	if sum.Seeds == 1 && sum.Reports[0].Transcript != "" {
		fmt.Fprintf(w, "%s\n", strings.TrimRight(sum.Reports[0].Transcript, "\n"))
		fmt.Fprintln(w, "----")
	}
	seeds := fmt.Sprintf("seed %d", r.FirstSeed)
	if r.Seeds > 1 {
		seeds = fmt.Sprintf("seeds %d..%d on %d workers", r.FirstSeed, r.FirstSeed+uint64(r.Seeds)-1, r.Workers)
	}
	fmt.Fprintf(w, "scenario      %s, %s\n", r.Scenario, seeds)
	if r.Seeds == 1 {
		fmt.Fprintf(w, "options       %s\n", sum.Reports[0].Options)
	}
	t := r.Totals
	fmt.Fprintf(w, "peers         %d\n", r.Peers)
	fmt.Fprintf(w, "events        %d\n", t.Events)
	fmt.Fprintf(w, "messages      sent %d, delivered %d, acknowledged %d, failed %d, refused %d\n",
		t.MsgsSent, t.MsgsDelivered, t.MsgsAcked, t.MsgsFailed, t.MsgsRejected)
	fmt.Fprintf(w, "frames        sent %d, delivered %d, duplicated %d, dropped %d (loss %d, partition %d, peer down %d)\n",
		t.FramesSent, t.FramesDelivered, t.FramesDuplicated, r.FramesDropped, t.DroppedLoss, t.DroppedPartition, t.DroppedDown)
	fmt.Fprintf(w, "faults        crashes %d, restarts %d, partitions %d, heals %d\n", t.Crashes, t.Restarts, t.Partitions, t.Heals)
	if ps := t.Presence; ps.Published > 0 {
		fmt.Fprintf(w, "presence      published %d, delivered %d (refused %d), dropped %d; mDNS finds %d (lost %d); rendezvous publishes %d, events %d, swept %d\n",
			ps.Published, ps.Delivered, ps.Refused, ps.Dropped, ps.Found, ps.MDNSLost, ps.RdvPublishes, ps.RdvEvents, ps.RdvSwept)
	}
	fmt.Fprintln(w, "invariants")
	for _, inv := range r.Invariants {
		status := "ok"
		if inv.Violations > 0 {
			status = fmt.Sprintf("BROKEN in %d seeds", inv.Violations)
		}
		fmt.Fprintf(w, "  %-22s %s (%d checks)\n", inv.Name, status, inv.Checked)
	}
	fmt.Fprintf(w, "liveness      %d of %d seeds converged\n", r.Converged, r.Seeds)
	if len(r.Metrics) > 0 {
		fmt.Fprintln(w, "metrics       min / mean / max over the seeds")
		for _, m := range r.Metrics {
			fmt.Fprintf(w, "  %-32s %.3f / %.3f / %.3f\n", m.Name, m.Min, m.Mean, m.Max)
		}
	}
	fmt.Fprintf(w, "virtual time  %.3fs\n", r.VirtualSeconds)
	fmt.Fprintf(w, "wall time     %.3fs (elapsed %.3fs, %.1f seeds/s)\n", r.WallSeconds, r.ElapsedSeconds, r.SeedsPerSecond)
	fmt.Fprintf(w, "speed         %.0f× real time (per core)\n", r.Ratio)
	fmt.Fprintf(w, "peak memory   heap in use %.1f MiB, from the OS %.1f MiB\n", mib(r.PeakMemory.HeapInuse), mib(r.PeakMemory.Sys))
	if r.Seeds == 1 {
		fmt.Fprintf(w, "trace hash    %s\n", sum.Reports[0].TraceHash)
	}
	fmt.Fprintf(w, "result        %s\n", r.Result)
	for _, rep := range sum.Reports {
		if !rep.Passed() {
			fmt.Fprint(w, rep.Failure())
		}
	}
}

func printList(w io.Writer) {
	fmt.Fprintln(w, "built-in scenarios:")
	for _, s := range simnet.Builtins() {
		fmt.Fprintf(w, "  %-14s %s\n", s.Name, s.Description)
	}
	fmt.Fprintln(w, "embedded scripts (simnet/testdata):")
	scripts := simnet.EmbeddedScripts()
	sort.Strings(scripts)
	for _, s := range scripts {
		fmt.Fprintf(w, "  %s\n", s)
	}
	fmt.Fprintln(w, "script commands:")
	for _, c := range simnet.ScriptCommands() {
		fmt.Fprintf(w, "  %s\n", c.Usage)
	}
}
