package main

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
)

// maxRepeat bounds --repeat.
const maxRepeat = 20

// repeatFlag is the --repeat flag of bench mq and bench groups.
var repeatFlag = &cli.IntFlag{Name: "repeat", Value: 1, Usage: "run the whole benchmark `K` times, each with new nodes, and " +
	"summarize each headline figure over the runs (median, lowest, highest): one run's figures " +
	"move with the machine's load"}

// benchRepeated runs a benchmark --repeat times (checked first, with its
// use beside --cpuprofile or --trace, which cover a single run) and prints its
// results (see writeRuns). With several runs each one's end is reported
// on stderr, and an error names the run that failed.
func benchRepeated[T any, P benchTable[T]](c *cli.Context, stdout io.Writer, fs []figureOf[T], run func() (*T, error)) error {
	if err := checkRanges(c, intRange{"repeat", 1, maxRepeat}); err != nil {
		return err
	}
	k := c.Int("repeat")
	for _, one := range []struct{ flag, verb string }{{"cpuprofile", "profiles"}, {"trace", "traces"}} {
		if k > 1 && c.String(one.flag) != "" {
			return cli.Exit(fmt.Sprintf("--%s %s one run: drop --repeat or --%s", one.flag, one.verb, one.flag), exitUsage)
		}
	}
	results := make([]*T, 0, k)
	start := time.Now()
	for i := range k {
		res, err := run()
		if err != nil {
			if k > 1 {
				err = fmt.Errorf("run %d of %d: %w", i+1, k, err)
			}
			return err
		}
		results = append(results, res)
		if k > 1 {
			fmt.Fprintf(c.App.ErrWriter, "goop bench: run %d of %d done (%s)\n", i+1, k, time.Since(start).Round(time.Second))
		}
	}
	return writeRuns[T, P](stdout, c.Bool("json"), results, fs)
}

// Units of a figure, which also choose its format.
const (
	unitUS      = "µs"
	unitMS      = "ms"
	unitMiB     = "MiB"
	unitRatio   = "x"
	unitPerSec  = "/s"
	unitUSDeliv = "µs/delivery"
)

// figure is one headline figure of a benchmark, over its runs.
type figure struct {
	Name string `json:"name"`
	Unit string `json:"unit"`
	// Median, Min and Max summarize Values, one per run that has the
	// figure (in run order).
	Median float64   `json:"median"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
	Values []float64 `json:"values"`
}

// figureOf names a figure of a result of type T: get returns it, or false
// when that run does not have it.
type figureOf[T any] struct {
	name, unit string
	get        func(*T) (float64, bool)
}

// summarizeRuns returns each figure of fs over runs, in the order of fs;
// a figure that no run has is left out.
func summarizeRuns[T any](runs []*T, fs []figureOf[T]) []figure {
	var out []figure
	for _, f := range fs {
		var vs []float64
		for _, r := range runs {
			if v, ok := f.get(r); ok {
				vs = append(vs, v)
			}
		}
		if len(vs) == 0 {
			continue
		}
		s := slices.Clone(vs)
		slices.Sort(s)
		out = append(out, figure{Name: f.name, Unit: f.unit, Median: median(s), Min: s[0], Max: s[len(s)-1], Values: vs})
	}
	return out
}

// format renders v in the figure's unit.
func (f *figure) format(v float64) string {
	switch f.Unit {
	case unitUS:
		return fmtUS(v)
	case unitMS:
		return fmt.Sprintf("%.0f ms", v)
	case unitMiB:
		return fmt.Sprintf("%.1f MiB", v)
	case unitRatio:
		return fmt.Sprintf("%.2fx", v)
	case unitPerSec:
		return fmt.Sprintf("%.0f", v)
	case unitUSDeliv:
		return fmt.Sprintf("%.0f µs", v)
	}
	return fmt.Sprintf("%g %s", v, f.Unit)
}

// writeFigures prints figures as a table under header: median, lowest,
// highest, then each run's value.
func writeFigures(w io.Writer, header string, figs []figure) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "%s\n\n", header)
	fmt.Fprintln(tw, "figure\tmedian\tlowest\thighest\teach run\t")
	for i := range figs {
		f := &figs[i]
		each := make([]string, len(f.Values))
		for j, v := range f.Values {
			each[j] = f.format(v)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t\n", f.Name, f.format(f.Median), f.format(f.Min), f.format(f.Max), strings.Join(each, ", "))
	}
	return tw.Flush()
}

// positive reports v as a figure when it was measured (above 0).
func positive(v float64) (float64, bool) { return v, v > 0 }

// mqFigures are the headline figures of bench mq.
var mqFigures = []figureOf[benchResult]{
	{"libp2p stream echo round trip, median (baseline)", unitUS, func(r *benchResult) (float64, bool) { return positive(r.Echo.MedianUS) }},
	{"MQ 1.1.0 round trip, median", unitUS, func(r *benchResult) (float64, bool) { return positive(r.MQ11.MedianUS) }},
	{"MQ 1.1.0 median / echo median", unitRatio, func(r *benchResult) (float64, bool) { return positive(r.RatioMQ11ToEcho) }},
	{"MQ 1.1.0 round trip, p99", unitUS, func(r *benchResult) (float64, bool) { return positive(r.MQ11.P99US) }},
	{"MQ 1.0.0 round trip, median", unitUS, func(r *benchResult) (float64, bool) { return positive(r.MQ10.MedianUS) }},
	{"MQ 1.1.0 msg -> stored and delivered, median", unitUS, func(r *benchResult) (float64, bool) { return positive(r.MQ11Stored.MedianUS) }},
	{"one-way messages/s, 1 sender", unitPerSec, func(r *benchResult) (float64, bool) { return positive(r.Throughput1) }},
	{"one-way messages/s, 8 senders", unitPerSec, func(r *benchResult) (float64, bool) { return positive(r.Throughput8) }},
	{"'goop peer' start to healthy viewer", unitMS, func(r *benchResult) (float64, bool) { return positive(r.PeerStartupMS) }},
	{"'goop peer' RSS after start", unitMiB, func(r *benchResult) (float64, bool) { return positive(float64(r.PeerRSSKiB) / 1024) }},
}

// groupsFigures are the headline figures of bench groups for each group
// size of sizes (a run lacking a size lacks its figures).
func groupsFigures(sizes []int) []figureOf[groupsBenchResult] {
	var fs []figureOf[groupsBenchResult]
	for _, n := range sizes {
		of := func(name, unit string, get func(*groupsRun) float64) figureOf[groupsBenchResult] {
			return figureOf[groupsBenchResult]{fmt.Sprintf("N=%d %s", n, name), unit, func(r *groupsBenchResult) (float64, bool) {
				for i := range r.Runs {
					if r.Runs[i].Members == n {
						return positive(get(&r.Runs[i]))
					}
				}
				return 0, false
			}}
		}
		slow := func(get func(*slowMemberRun) float64) func(*groupsRun) float64 {
			return func(run *groupsRun) float64 {
				if run.Slow == nil {
					return 0
				}
				return get(run.Slow)
			}
		}
		fs = append(fs,
			of("latency, member sends (via host), median", unitUS, func(r *groupsRun) float64 { return r.LatencyMemberSends.MedianUS }),
			of("latency, member sends (via host), p99", unitUS, func(r *groupsRun) float64 { return r.LatencyMemberSends.P99US }),
			of("latency, host sends, median", unitUS, func(r *groupsRun) float64 { return r.LatencyHostSends.MedianUS }),
			of("latency, host sends, p99", unitUS, func(r *groupsRun) float64 { return r.LatencyHostSends.P99US }),
			of("throughput, host sends", unitPerSec, func(r *groupsRun) float64 { return r.DeliveriesPerSecHostSends }),
			of("throughput, member sends (via host)", unitPerSec, func(r *groupsRun) float64 { return r.DeliveriesPerSecMemberSends }),
			of("CPU per delivery, latency, host sends", unitUSDeliv, func(r *groupsRun) float64 { return r.CPUPerDeliveryUS.LatencyHostSends }),
			of("others' p99 slowed / baseline", unitRatio, slow(func(s *slowMemberRun) float64 { return s.OthersP99Ratio })),
			of("others' p99 ratio, 95% interval, low", unitRatio, slow(func(s *slowMemberRun) float64 { return s.OthersP99RatioCI95[0] })),
			of("others' p99 ratio, 95% interval, high", unitRatio, slow(func(s *slowMemberRun) float64 { return s.OthersP99RatioCI95[1] })),
		)
	}
	return fs
}

// benchTable is a benchmark result's one-run output.
type benchTable[T any] interface {
	*T
	header() string
	writeTable(w io.Writer) error
}

// writeRuns prints a benchmark's results: one run's table (or its JSON
// object), or with several runs the summary of figures fs over them.
func writeRuns[T any, P benchTable[T]](w io.Writer, asJSON bool, results []*T, fs []figureOf[T]) error {
	if len(results) == 1 {
		if asJSON {
			return json.NewEncoder(w).Encode(results[0])
		}
		return P(results[0]).writeTable(w)
	}
	figs := summarizeRuns(results, fs)
	if asJSON {
		return json.NewEncoder(w).Encode(repeated[T]{Repeat: len(results), Summary: figs, Results: results})
	}
	return writeFigures(w, fmt.Sprintf("%s, %d runs", P(results[0]).header(), len(results)), figs)
}

// repeated is the --json output of a benchmark run more than once.
type repeated[T any] struct {
	Repeat  int      `json:"repeat"`
	Summary []figure `json:"summary"`
	Results []*T     `json:"results"`
}
