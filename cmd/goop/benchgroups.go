package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	rtrace "runtime/trace"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	ma "github.com/multiformats/go-multiaddr"
	"github.com/urfave/cli/v2"

	"github.com/goop-p2p/goop/adapters/p2p"
	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/cmd/goop/node"
	"github.com/goop-p2p/goop/domain/group"
	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/simnet/simcli"
)

// Limits and timeouts of `goop bench groups`.
const (
	// groupsMaxMembers bounds --members: every member is a full node in this process.
	groupsMaxMembers = 200
	// groupsStartParallel is how many nodes start at once.
	groupsStartParallel = 4
	// groupsWarmup is how many unrecorded messages, sent the same way,
	// precede each latency measure: a new node's first few hundred messages
	// are slower (its store, buffers and heap still growing) and are not
	// what a running group sees.
	groupsWarmup = 200
	// groupsTputWarmup is how many unrecorded messages precede the
	// throughput measures (sent pipelined, like them).
	groupsTputWarmup = 200
	// groupsSlowBlock is how many messages each block of the slow member's
	// latency comparison sends (blocks alternate between no delay and
	// --slow-ms).
	groupsSlowBlock = 50
	// groupsSendBatch and groupsSenders shape the pipelined sender of the
	// throughput measures: groupsSenders goroutines, each running one
	// Runtime.Do with groupsSendBatch SendToGroup calls at a time.
	groupsSendBatch = 16
	groupsSenders   = 4
	// groupsBootstrap is how many resamples estimate the interval of the
	// slow member's p99 ratio.
	groupsBootstrap = 200
	// groupsMsgWait bounds waiting for one message's deliveries (latency).
	groupsMsgWait = 30 * time.Second
	// groupsAllWait bounds waiting for all deliveries of a throughput measure
	// or for a slow member to catch up.
	groupsAllWait = 3 * time.Minute
)

func benchGroupsCommand(g *globals, stdout io.Writer) *cli.Command {
	return &cli.Command{
		Name:  "groups",
		Usage: "measure host-relayed group fan-out between real nodes on 127.0.0.1",
		Description: fmt.Sprintf("For each N in --members, starts a host node and N member nodes (plus one more\n"+
			"for the slow member measure) in this process (temporary folders, SQLite stores,\n"+
			"libp2p on 127.0.0.1), and stops them before the next N: a measure runs only the\n"+
			"nodes it measures (forty idle nodes of the N=50 set, their heaps in the same\n"+
			"garbage collector, added a third to the N=10 latencies). The host creates an open,\n"+
			"persistent realtime group that the N members join, and measures, with JSON\n"+
			"payloads of --payload-bytes:\n"+
			"  - latency: messages sent one after the other, each waiting for all its\n"+
			"    deliveries, after a warm-up of %d; one sample per (message, receiving member):\n"+
			"    from before the sender's Runtime.Do until the receiver's runtime published the\n"+
			"    group msg event. Once with a member sending (member -> host -> N-1 others), once\n"+
			"    with the host.\n"+
			"  - throughput: --messages sent pipelined (%d goroutines, %d sends per Runtime.Do),\n"+
			"    or more for at least --min-deliveries deliveries, after a warm-up of %d;\n"+
			"    deliveries per second at all receivers until the last one arrived.\n"+
			"  - slow member: one more member joins through a TCP proxy on 127.0.0.1 that\n"+
			"    delays every chunk by --slow-ms in each direction (a delay line: latency, not a\n"+
			"    bandwidth cap). The others' latency and throughput are measured with the proxy\n"+
			"    at 0 ms and at --slow-ms (the slow member's link is TCP; the others use\n"+
			"    --transport); the latency with --slow-messages at each delay, in alternating blocks\n"+
			"    of up to %d messages, so that the machine's drift weighs on both alike.\n"+
			"The nodes do not announce their presence: on one machine, the announcements of 51\n"+
			"nodes (all at start, then every 5 s, all at once) are 51 times one node's discovery\n"+
			"traffic on the same cores, and they landed in the latency measures' tails.",
			groupsWarmup, groupsSenders, groupsSendBatch, groupsTputWarmup, groupsSlowBlock),
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print the results as one JSON object"},
			&cli.StringFlag{Name: "members", Value: "10,50", Usage: "comma-separated group sizes N (members besides the host)"},
			&cli.IntFlag{Name: "messages", Value: 500, Usage: "messages per latency measure, and at least per throughput measure"},
			&cli.IntFlag{Name: "min-deliveries", Value: 100_000, Usage: "a throughput measure sends enough messages for at least this many deliveries"},
			&cli.IntFlag{Name: "payload-bytes", Value: 1024, Usage: "size of each message's JSON payload"},
			&cli.IntFlag{Name: "slow-ms", Value: 100, Usage: "delay of the slow member's link each way (0: skip the slow member measure)"},
			&cli.IntFlag{Name: "slow-messages", Value: 2000, Usage: "messages at each delay of the slow member's latency measure (a ratio of two p99s needs more samples than a p99)"},
			&cli.StringFlag{Name: "transport", Value: "any", Usage: "members reach the host over `T`: any (the node's choice: TCP on loopback, p2p.LANDialRanker), tcp or quic-v1"},
			&cli.StringFlag{Name: "cpuprofile", Usage: "write a CPU profile of the measures (not the start-up) to `FILE` (for each group size after the first: FILE.N)"},
			&cli.StringFlag{Name: "trace", Usage: "write a Go execution trace of the measures (not the start-up) to `FILE` (for each group size after the first: FILE.N), each latency message a task (see 'go tool trace')"},
			repeatFlag,
		},
		Action: func(c *cli.Context) error {
			opts := groupsBenchOptions{Messages: c.Int("messages"), MinDeliveries: c.Int("min-deliveries"), PayloadBytes: c.Int("payload-bytes"),
				SlowMS: c.Int("slow-ms"), SlowMessages: c.Int("slow-messages"), Transport: c.String("transport"), CPUProfile: c.String("cpuprofile"), Trace: c.String("trace"), Log: g.log}
			var err error
			if opts.Members, err = parseMemberCounts(c.String("members")); err != nil {
				return cli.Exit(err.Error(), exitUsage)
			}
			if err := checkRanges(c, intRange{"messages", 10, 100_000}, intRange{"min-deliveries", 0, 1_000_000},
				intRange{"payload-bytes", minGroupsPayload, mq.MaxPayloadBytes}, intRange{"slow-ms", 0, 10_000},
				intRange{"slow-messages", 10, 100_000}); err != nil {
				return err
			}
			if !slices.Contains([]string{"quic-v1", "tcp", "any"}, opts.Transport) {
				return cli.Exit("--transport must be quic-v1, tcp or any", exitUsage)
			}
			return benchRepeated(c, stdout, groupsFigures(opts.Members), func() (*groupsBenchResult, error) { return benchGroups(c.Context, opts) })
		},
	}
}

// parseMemberCounts parses --members: distinct group sizes 2..groupsMaxMembers.
func parseMemberCounts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 2 || n > groupsMaxMembers {
			return nil, fmt.Errorf("--members: %q is not a list of group sizes between 2 and %d", s, groupsMaxMembers)
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out, nil
}

// groupsBenchOptions configure benchGroups.
type groupsBenchOptions struct {
	// Members are the group sizes to measure (members besides the host).
	Members  []int
	Messages int
	// MinDeliveries: a throughput measure sends more than Messages when
	// needed for at least this many deliveries (a short measure is at the
	// mercy of a single stall: a checkpoint, a collection).
	MinDeliveries int
	PayloadBytes  int
	// SlowMS is the slow member's delay each way; 0 skips that measure.
	SlowMS int
	// SlowMessages is how many messages the slow member's latency measure
	// sends at each delay (needed when SlowMS > 0).
	SlowMessages int
	// Transport is how members reach the host: quic-v1, tcp, or any (or
	// empty: the node's own choice, see p2p.LANDialRanker).
	Transport string
	// CPUProfile, if set, receives a CPU profile of the measures.
	CPUProfile string
	// Trace, if set, receives a Go execution trace of the measures, each
	// latency message a task.
	Trace string
	Log   *slog.Logger
}

// groupsBenchResult is the output of `goop bench groups` (its --json form).
type groupsBenchResult struct {
	GoVersion string `json:"go_version"`
	CPUs      int    `json:"cpus"`
	Messages  int    `json:"messages"`
	// MinDeliveries is the fewest deliveries a throughput measure counts.
	MinDeliveries int `json:"min_deliveries"`
	PayloadBytes  int `json:"payload_bytes"`
	// Nodes is the most nodes that ran at once in this process (host,
	// members, slow member): those of the largest group size.
	Nodes int `json:"nodes"`
	// StartMS is how long starting and connecting those nodes took.
	StartMS float64     `json:"start_ms"`
	Runs    []groupsRun `json:"runs"`
}

// groupsRun is the measures of one group size.
type groupsRun struct {
	Members int `json:"members"`
	// Nodes is how many nodes ran in this process for this size (host,
	// members, slow member), started for it alone.
	Nodes int `json:"nodes"`
	// StartMS is how long starting and connecting them took.
	StartMS float64 `json:"start_ms"`
	// Transport is the members' connection to the host (quic-v1, tcp, or
	// mixed with --transport any).
	Transport string `json:"transport"`
	// JoinMS is how long all members took to join (joins sent at once).
	JoinMS float64 `json:"join_ms"`
	// LatencyMemberSends: a member sends, the host relays to the N-1 others.
	LatencyMemberSends latency `json:"latency_member_sends"`
	// LatencyHostSends: the host sends to the N members.
	LatencyHostSends latency `json:"latency_host_sends"`
	// Deliveries per second at all receivers, messages pipelined.
	DeliveriesPerSecHostSends   float64 `json:"deliveries_per_sec_host_sends"`
	DeliveriesPerSecMemberSends float64 `json:"deliveries_per_sec_member_sends"`
	// CPUPerDeliveryUS is this process's CPU time (all nodes) per delivery
	// during each measure; 0 where /proc/self/stat is not available.
	CPUPerDeliveryUS groupsCPU `json:"cpu_us_per_delivery"`
	// Slow is the slow member measure (absent with --slow-ms 0).
	Slow *slowMemberRun `json:"slow_member,omitempty"`
}

// groupsCPU is CPU time per delivery, in microseconds, by measure.
type groupsCPU struct {
	LatencyMemberSends    float64 `json:"latency_member_sends"`
	LatencyHostSends      float64 `json:"latency_host_sends"`
	ThroughputHostSends   float64 `json:"throughput_host_sends"`
	ThroughputMemberSends float64 `json:"throughput_member_sends"`
}

// slowMemberRun compares the others' figures with one more member behind a
// delaying proxy at 0 ms (baseline) and at DelayMS each way (slowed).
type slowMemberRun struct {
	DelayMS int `json:"delay_ms"`
	// Others are the member-sends latency samples of the N-1 other members.
	OthersBaseline latency `json:"others_latency_baseline"`
	OthersSlowed   latency `json:"others_latency_slowed"`
	// OthersP99Ratio is slowed p99 / baseline p99.
	OthersP99Ratio float64 `json:"others_p99_ratio"`
	// OthersP99RatioCI95 is a 95% interval of OthersP99Ratio, from a
	// bootstrap over the pairs of blocks (see p99RatioInterval): how far a
	// run's ratio may stray by chance, its p99s being set by a few rare,
	// slow messages.
	OthersP99RatioCI95 [2]float64 `json:"others_p99_ratio_ci95"`
	// SlowMember is the slow member's own latency while slowed.
	SlowMember latency `json:"slow_member_latency"`
	// Deliveries per second at the N members (host sends, pipelined).
	OthersDeliveriesPerSecBaseline float64 `json:"others_deliveries_per_sec_baseline"`
	OthersDeliveriesPerSecSlowed   float64 `json:"others_deliveries_per_sec_slowed"`
}

// header describes the run.
func (r *groupsBenchResult) header() string {
	return fmt.Sprintf("goop bench groups: %d messages of %d payload bytes per latency measure, throughput measures of at least %d deliveries, on 127.0.0.1, a new set of nodes for each group size, %s, %d CPUs",
		r.Messages, r.PayloadBytes, r.MinDeliveries, r.GoVersion, r.CPUs)
}

func (r *groupsBenchResult) writeTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "%s\n\n", r.header())
	cpu := func(us float64) string {
		if us <= 0 {
			return "-"
		}
		return fmt.Sprintf("%.0f µs", us)
	}
	for _, run := range r.Runs {
		fmt.Fprintf(tw, "N=%d members over %s (%d nodes started in %.0f ms, joined in %.0f ms)\tsamples\tmedian\tp99\tmean\tdeliveries/s\tCPU/delivery\t\n",
			run.Members, run.Transport, run.Nodes, run.StartMS, run.JoinMS)
		lat := func(name string, l latency, cpuUS float64) {
			fmt.Fprintf(tw, "  %s\t%d\t%s\t%s\t%s\t\t%s\t\n", name, l.N, fmtUS(l.MedianUS), fmtUS(l.P99US), fmtUS(l.MeanUS), cpu(cpuUS))
		}
		tput := func(name string, v, cpuUS float64) {
			fmt.Fprintf(tw, "  %s\t\t\t\t\t%.0f\t%s\t\n", name, v, cpu(cpuUS))
		}
		c := run.CPUPerDeliveryUS
		lat("latency, member sends (via host)", run.LatencyMemberSends, c.LatencyMemberSends)
		lat("latency, host sends", run.LatencyHostSends, c.LatencyHostSends)
		tput("throughput, host sends", run.DeliveriesPerSecHostSends, c.ThroughputHostSends)
		tput("throughput, member sends (via host)", run.DeliveriesPerSecMemberSends, c.ThroughputMemberSends)
		if s := run.Slow; s != nil {
			lat("others' latency, +1 member at 0 ms", s.OthersBaseline, 0)
			lat(fmt.Sprintf("others' latency, +1 member at %d ms", s.DelayMS), s.OthersSlowed, 0)
			fmt.Fprintf(tw, "  others' p99 slowed / baseline\t\t\t%.2fx\t\t\t\t\n", s.OthersP99Ratio)
			fmt.Fprintf(tw, "  others' p99 slowed / baseline, 95%% interval (bootstrap over blocks)\t\t\t%.2fx-%.2fx\t\t\t\t\n",
				s.OthersP99RatioCI95[0], s.OthersP99RatioCI95[1])
			lat(fmt.Sprintf("slow member's own latency (%d ms each way)", s.DelayMS), s.SlowMember, 0)
			tput("others' throughput, +1 member at 0 ms", s.OthersDeliveriesPerSecBaseline, 0)
			tput(fmt.Sprintf("others' throughput, +1 member at %d ms", s.DelayMS), s.OthersDeliveriesPerSecSlowed, 0)
		}
		fmt.Fprintln(tw, "\t\t\t\t\t\t\t")
	}
	return tw.Flush()
}

// groupsBench is one run of benchGroups: the nodes, their event collectors
// and the measure in progress.
type groupsBench struct {
	o     groupsBenchOptions
	root  string
	epoch time.Time
	proxy *delayProxy // the slow member's link, if any
	// transport is the members' connection to the host (quic-v1, tcp, or
	// mixed with --transport any).
	transport string
	host      *node.Running
	members   []*node.Running // the slow member, if any, is last
	subs      []*app.Subscription
	pad       string

	cur       atomic.Pointer[groupsMeasure]
	nextNonce uint64 // owned by the measuring goroutine
	closing   atomic.Bool
	lost      chan struct{} // closed when a collector's subscription ended
	lostOnce  sync.Once
	lostWho   atomic.Int64
	wg        sync.WaitGroup
}

// groupsMeasure tracks the deliveries of messages first..first+n-1 in group
// gid. Its fields are set before it is published to the collectors and not
// changed after, except the atomics.
type groupsMeasure struct {
	gid   string
	first uint64
	n     int
	slots int    // len(groupsBench.members)
	await []bool // by member: deliveries counted in left/total
	watch []bool // by member: deliveries counted in watchLeft
	sent  []time.Duration
	// at is each delivery's time since epoch, [msg*slots+member]; 0 = none yet.
	at        []atomic.Int64
	left      []atomic.Int32
	done      []chan struct{}
	total     atomic.Int64
	allDone   chan struct{}
	watchLeft atomic.Int64
	watchDone chan struct{}
	dups      atomic.Int64
	// cpu is the process's CPU time during the measure (0: unknown).
	cpu time.Duration
}

// cpuPerDeliveryUS is m's CPU time per delivery (awaited and watched), in µs.
func (m *groupsMeasure) cpuPerDeliveryUS() float64 {
	n := 0
	for i := range m.await {
		if m.await[i] || m.watch[i] {
			n += m.n
		}
	}
	if n == 0 || m.cpu <= 0 {
		return 0
	}
	return float64(m.cpu) / float64(time.Microsecond) / float64(n)
}

func (b *groupsBench) now() time.Duration { return time.Since(b.epoch) }

func (b *groupsBench) newMeasure(gid string, n int, await, watch []int) *groupsMeasure {
	m := &groupsMeasure{gid: gid, first: b.nextNonce, n: n, slots: len(b.members),
		await: make([]bool, len(b.members)), watch: make([]bool, len(b.members)),
		sent: make([]time.Duration, n), at: make([]atomic.Int64, n*len(b.members)),
		left: make([]atomic.Int32, n), done: make([]chan struct{}, n),
		allDone: make(chan struct{}), watchDone: make(chan struct{})}
	b.nextNonce += uint64(n)
	for _, i := range await {
		m.await[i] = true
	}
	for _, i := range watch {
		m.watch[i] = true
	}
	for k := range m.done {
		m.done[k] = make(chan struct{})
		m.left[k].Store(int32(len(await)))
	}
	m.total.Store(int64(n * len(await)))
	m.watchLeft.Store(int64(n * len(watch)))
	if len(watch) == 0 {
		close(m.watchDone)
	}
	return m
}

// deliver records that member i's runtime published message nonce.
func (m *groupsMeasure) deliver(i int, nonce uint64, at time.Duration) {
	if nonce < m.first || nonce >= m.first+uint64(m.n) || (!m.await[i] && !m.watch[i]) {
		return
	}
	k := int(nonce - m.first)
	if !m.at[k*m.slots+i].CompareAndSwap(0, int64(max(at, 1))) {
		m.dups.Add(1)
		return
	}
	if m.await[i] {
		if m.left[k].Add(-1) == 0 {
			close(m.done[k])
		}
		if m.total.Add(-1) == 0 {
			close(m.allDone)
		}
	}
	if m.watch[i] && m.watchLeft.Add(-1) == 0 {
		close(m.watchDone)
	}
}

// samples returns the delivery latencies of members (message by message).
func (m *groupsMeasure) samples(members []int) []time.Duration {
	out := make([]time.Duration, 0, m.n*len(members))
	for k := 0; k < m.n; k++ {
		for _, i := range members {
			if at := m.at[k*m.slots+i].Load(); at > 0 {
				out = append(out, time.Duration(at)-m.sent[k])
			}
		}
	}
	return out
}

// last returns the latest delivery time of members.
func (m *groupsMeasure) last(members []int) time.Duration {
	var last int64
	for k := 0; k < m.n; k++ {
		for _, i := range members {
			last = max(last, m.at[k*m.slots+i].Load())
		}
	}
	return time.Duration(last)
}

// collect follows member i's events until its subscription ends.
func (b *groupsBench) collect(i int, sub *app.Subscription) {
	defer b.wg.Done()
	for ev := range sub.C {
		if ev.Kind != app.EventGroup || ev.Group == nil || ev.Group.Type != group.EvMsg {
			continue
		}
		at := b.now()
		m := b.cur.Load()
		if m == nil || ev.Group.Group != m.gid {
			continue
		}
		if nonce, ok := parseNonce(ev.Group.Payload); ok {
			m.deliver(i, nonce, at)
		}
	}
	if !b.closing.Load() {
		b.lostOnce.Do(func() {
			b.lostWho.Store(int64(i))
			close(b.lost)
		})
	}
}

// minGroupsPayload is the smallest --payload-bytes: room for the nonce.
const minGroupsPayload = 32

// payload is message nonce's JSON payload: {"n":nonce,"p":"xx…"} padded to
// o.PayloadBytes (longer only if the nonce does not fit).
func (b *groupsBench) payload(nonce uint64) []byte {
	p := make([]byte, 0, b.o.PayloadBytes)
	p = append(p, `{"n":`...)
	p = strconv.AppendUint(p, nonce, 10)
	p = append(p, `,"p":"`...)
	if pad := b.o.PayloadBytes - len(p) - 2; pad > 0 {
		p = append(p, b.pad[:pad]...)
	}
	return append(p, `"}`...)
}

// parseNonce reads the nonce of a payload made by groupsBench.payload.
func parseNonce(p []byte) (uint64, bool) {
	rest, ok := strings.CutPrefix(string(p[:min(len(p), 32)]), `{"n":`)
	if !ok {
		return 0, false
	}
	end := strings.IndexByte(rest, ',')
	if end < 0 {
		return 0, false
	}
	n, err := strconv.ParseUint(rest[:end], 10, 64)
	return n, err == nil
}

// benchGroups runs the group fan-out benchmark; see the bench groups command.
func benchGroups(ctx context.Context, o groupsBenchOptions) (_ *groupsBenchResult, err error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	if len(o.Members) == 0 || o.Messages < 1 || o.PayloadBytes < minGroupsPayload {
		return nil, errors.New("bench groups: need group sizes, messages and a payload of at least 32 bytes")
	}
	if o.SlowMS > 0 && o.SlowMessages < 1 {
		return nil, errors.New("bench groups: the slow member measure needs SlowMessages")
	}
	res := &groupsBenchResult{GoVersion: runtime.Version(), CPUs: runtime.NumCPU(), Messages: o.Messages,
		MinDeliveries: o.MinDeliveries, PayloadBytes: o.PayloadBytes}
	for _, n := range o.Members {
		run, err := benchGroupSize(ctx, o, n)
		if err != nil {
			return nil, err
		}
		if run.Nodes > res.Nodes {
			res.Nodes, res.StartMS = run.Nodes, run.StartMS
		}
		res.Runs = append(res.Runs, *run)
	}
	return res, nil
}

// benchGroupSize starts the nodes of one group size, measures it and stops
// them. The CPU profile and the execution trace (--cpuprofile, --trace, a
// file per size after the first: FILE.N) cover the measures, not the
// start-up.
func benchGroupSize(ctx context.Context, o groupsBenchOptions, n int) (_ *groupsRun, err error) {
	// What the previous size's nodes left is collected now, not during
	// this size's measures.
	runtime.GC()
	t0 := time.Now()
	b, err := startGroupsBench(ctx, o, n)
	if err != nil {
		return nil, fmt.Errorf("bench groups: N=%d: %w", n, err)
	}
	defer func() {
		if cerr := b.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	startMS := msSince(t0)
	perSize := func(path string) string {
		if path != "" && n != o.Members[0] {
			return fmt.Sprintf("%s.%d", path, n)
		}
		return path
	}
	// Each recording stops (in reverse order) when the measures are done;
	// a failure to stop is the size's error if it has none.
	for _, rec := range []struct {
		flag, path string
		start      func(string) (func() error, error)
	}{{"trace", o.Trace, simcli.StartTrace}, {"cpuprofile", o.CPUProfile, simcli.StartCPUProfile}} {
		stop, serr := rec.start(perSize(rec.path))
		if serr != nil {
			return nil, fmt.Errorf("bench groups: --%s: %w", rec.flag, serr)
		}
		defer func() {
			if serr := stop(); serr != nil && err == nil {
				err = fmt.Errorf("bench groups: --%s: %w", rec.flag, serr)
			}
		}()
	}
	run, err := b.runSize(ctx, n)
	if err != nil {
		return nil, fmt.Errorf("bench groups: N=%d: %w", n, err)
	}
	run.Nodes, run.StartMS = 1+len(b.members), startMS
	return run, nil
}

// startGroupsBench starts the host and maxN member nodes (plus the slow
// member behind its proxy when o.SlowMS > 0) in a temporary folder, and
// connects them to the host. Close stops them and removes the folder.
func startGroupsBench(ctx context.Context, o groupsBenchOptions, maxN int) (_ *groupsBench, err error) {
	root, err := os.MkdirTemp("", "goop-bench-groups-*")
	if err != nil {
		return nil, fmt.Errorf("bench groups: %w", err)
	}
	slots := maxN
	if o.SlowMS > 0 {
		slots++
	}
	b := &groupsBench{o: o, root: root, epoch: time.Now(), lost: make(chan struct{}), pad: strings.Repeat("x", o.PayloadBytes)}
	defer func() {
		if err != nil {
			_ = b.Close()
		}
	}()
	if err := b.startNodes(ctx, slots); err != nil {
		return nil, fmt.Errorf("bench groups: %w", err)
	}
	// Members reach the host directly; the slow member through its proxy.
	var addrs []string
	for _, a := range b.host.Addrs() {
		if o.Transport == "" || o.Transport == "any" || p2p.TransportName(a) == o.Transport {
			addrs = append(addrs, a)
		}
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("bench groups: the host has no %s address (%v)", o.Transport, b.host.Addrs())
	}
	errs := make([]error, maxN)
	var wg sync.WaitGroup
	for i, m := range b.members[:maxN] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = p2p.ConnectPeers(ctx, m.Host, addrs)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("bench groups: connect members to the host: %w", err)
	}
	for i, m := range b.members[:maxN] {
		// p2p.ConnectPeers dials again a connection the host dropped
		// right after accepting it (many handshakes at once).
		conns := m.Host.Network().ConnsToPeer(b.host.PeerID)
		if len(conns) == 0 {
			return nil, fmt.Errorf("bench groups: member %d is not connected to the host", i)
		}
		for _, c := range conns {
			got := p2p.TransportName(c.RemoteMultiaddr().String())
			switch {
			case b.transport == "":
				b.transport = got
			case got == b.transport:
			case o.Transport == "" || o.Transport == "any":
				b.transport = "mixed"
			default:
				return nil, fmt.Errorf("bench groups: member %d reaches the host over %s, not %s", i, got, o.Transport)
			}
		}
	}
	if o.SlowMS > 0 {
		if b.proxy, err = b.connectSlow(ctx); err != nil {
			return nil, fmt.Errorf("bench groups: slow member: %w", err)
		}
	}
	return b, nil
}

// Close stops the proxy and every node, and removes the temporary folder.
func (b *groupsBench) Close() error {
	b.closing.Store(true)
	if b.proxy != nil {
		b.proxy.Close()
	}
	err := b.closeNodes()
	b.wg.Wait()
	if rerr := os.RemoveAll(b.root); rerr != nil && err == nil {
		err = rerr
	}
	if err != nil {
		return fmt.Errorf("bench groups: stop nodes: %w", err)
	}
	return nil
}

func msSince(t time.Time) float64 { return float64(time.Since(t)) / float64(time.Millisecond) }

// startNodes starts the host and `slots` member nodes, and a collector per member.
func (b *groupsBench) startNodes(ctx context.Context, slots int) error {
	start := func(name string) (*node.Running, error) {
		r, err := node.Start(ctx, filepath.Join(b.root, name), node.Options{
			NoAutoConnect: true, // only the connections this bench makes
			NoPresence:    true, // see the command's description
			Log:           b.o.Log,
			ListenIP:      "127.0.0.1",
			Init: node.InitOptions{Label: name, Configure: func(c *app.Config) {
				c.Viewer.HTTPAddr = "127.0.0.1:0"
			}},
		})
		if err != nil {
			return nil, fmt.Errorf("start node %s: %w", name, err)
		}
		return r, nil
	}
	var err error
	if b.host, err = start("host"); err != nil {
		return err
	}
	b.members = make([]*node.Running, slots)
	errs := make([]error, slots)
	sem := make(chan struct{}, groupsStartParallel)
	var wg sync.WaitGroup
	for i := range slots {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			b.members[i], errs[i] = start(fmt.Sprintf("member%03d", i))
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	// Each delivery publishes one group event (the subscriptions take no
	// other kind), and a node publishes a stored batch's events at once:
	// thousands while pipelined, whatever --messages is (a throughput
	// measure sends at least --min-deliveries/N messages). A subscription
	// that overflows is closed and the run fails. Not much more: 51 buffers
	// of 16,384 events (4 MB each) cost a quarter of the N=10 throughput
	// measure.
	buf := min(max(4*b.o.Messages+4096, 8192), 1<<16)
	b.subs = make([]*app.Subscription, slots)
	for i, m := range b.members {
		b.subs[i] = m.Runtime.SubscribeKinds(buf, app.EventGroup)
		b.wg.Add(1)
		go b.collect(i, b.subs[i])
	}
	return nil
}

// closeNodes stops every started node, in parallel.
func (b *groupsBench) closeNodes() error {
	for _, s := range b.subs {
		if s != nil {
			s.Close()
		}
	}
	nodes := append([]*node.Running{b.host}, b.members...)
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, r := range nodes {
		if r == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = r.Close()
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// connectSlow connects the last member to the host through a delaying TCP
// proxy (at 0 ms until a slow measure) and checks it has no other connection.
func (b *groupsBench) connectSlow(ctx context.Context) (*delayProxy, error) {
	target, err := tcpAddr(b.host)
	if err != nil {
		return nil, err
	}
	p, err := newDelayProxy("127.0.0.1:0", target)
	if err != nil {
		return nil, err
	}
	slow := b.members[len(b.members)-1]
	addr := fmt.Sprintf("/ip4/127.0.0.1/tcp/%d/p2p/%s", p.Port(), b.host.PeerID)
	if err := p2p.ConnectPeers(ctx, slow.Host, []string{addr}); err != nil {
		p.Close()
		return nil, fmt.Errorf("connect through the proxy: %w", err)
	}
	if err := b.checkSlowConn(p); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// checkSlowConn verifies that the slow member reaches the host only through the proxy.
func (b *groupsBench) checkSlowConn(p *delayProxy) error {
	slow := b.members[len(b.members)-1]
	conns := slow.Host.Network().ConnsToPeer(b.host.PeerID)
	if len(conns) == 0 {
		return errors.New("the slow member is not connected to the host")
	}
	want := "/tcp/" + strconv.Itoa(p.Port())
	for _, c := range conns {
		if !strings.HasSuffix(c.RemoteMultiaddr().String(), want) {
			return fmt.Errorf("the slow member reaches the host at %s, not through the proxy", c.RemoteMultiaddr())
		}
	}
	return nil
}

// tcpAddr returns r's TCP listen address on 127.0.0.1 as host:port.
func tcpAddr(r *node.Running) (string, error) {
	for _, a := range r.Host.Addrs() {
		ip, err1 := a.ValueForProtocol(ma.P_IP4)
		port, err2 := a.ValueForProtocol(ma.P_TCP)
		if err1 == nil && err2 == nil && ip == "127.0.0.1" {
			return net.JoinHostPort(ip, port), nil
		}
	}
	return "", fmt.Errorf("host has no TCP address on 127.0.0.1 (%v)", r.Host.Addrs())
}

// runSize creates a group with the first n members and measures it.
func (b *groupsBench) runSize(ctx context.Context, n int) (*groupsRun, error) {
	proxy := b.proxy
	run := &groupsRun{Members: n}
	hostID := mq.PeerID(b.host.PeerID.String())
	gid, err := b.createGroup(ctx, fmt.Sprintf("bench %d", n))
	if err != nil {
		return nil, err
	}
	members := make([]int, n)
	for i := range members {
		members[i] = i
	}
	t0 := time.Now()
	if err := b.join(ctx, gid, members); err != nil {
		return nil, err
	}
	run.JoinMS = msSince(t0)
	run.Transport = b.transport
	sender := b.members[0]
	others := members[1:]

	// Warm up both paths, then measure.
	if _, err := b.latency(ctx, sender, hostID, gid, others, nil, min(groupsWarmup, b.o.Messages)); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	if _, err := b.latency(ctx, b.host, hostID, gid, members, nil, min(groupsWarmup, b.o.Messages)); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	m, err := b.latency(ctx, sender, hostID, gid, others, nil, b.o.Messages)
	if err != nil {
		return nil, fmt.Errorf("latency, member sends: %w", err)
	}
	run.LatencyMemberSends = summarize(m.samples(others))
	run.CPUPerDeliveryUS.LatencyMemberSends = m.cpuPerDeliveryUS()
	if m, err = b.latency(ctx, b.host, hostID, gid, members, nil, b.o.Messages); err != nil {
		return nil, fmt.Errorf("latency, host sends: %w", err)
	}
	run.LatencyHostSends = summarize(m.samples(members))
	run.CPUPerDeliveryUS.LatencyHostSends = m.cpuPerDeliveryUS()
	// The pipelined paths warm up too (the streams' flow-control windows
	// grow with the first bursts, buffers are allocated once).
	if _, _, err := b.throughput(ctx, b.host, hostID, gid, members, nil, min(groupsTputWarmup, b.o.Messages)); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	if _, _, err := b.throughput(ctx, sender, hostID, gid, others, nil, min(groupsTputWarmup, b.o.Messages)); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	tput := b.tputMessages(n)
	if run.DeliveriesPerSecHostSends, m, err = b.throughput(ctx, b.host, hostID, gid, members, nil, tput); err != nil {
		return nil, fmt.Errorf("throughput, host sends: %w", err)
	}
	run.CPUPerDeliveryUS.ThroughputHostSends = m.cpuPerDeliveryUS()
	if run.DeliveriesPerSecMemberSends, m, err = b.throughput(ctx, sender, hostID, gid, others, nil, b.tputMessages(n-1)); err != nil {
		return nil, fmt.Errorf("throughput, member sends: %w", err)
	}
	run.CPUPerDeliveryUS.ThroughputMemberSends = m.cpuPerDeliveryUS()
	if proxy == nil {
		return run, nil
	}

	// One more member, behind the proxy.
	slowIdx := len(b.members) - 1
	slow := []int{slowIdx}
	proxy.SetDelay(0)
	if err := b.join(ctx, gid, slow); err != nil {
		return nil, fmt.Errorf("slow member join: %w", err)
	}
	s := &slowMemberRun{DelayMS: b.o.SlowMS}
	delay := time.Duration(b.o.SlowMS) * time.Millisecond
	proxy.SetDelay(delay)
	if _, err := b.latency(ctx, sender, hostID, gid, others, slow, min(groupsWarmup, b.o.Messages)); err != nil {
		return nil, fmt.Errorf("slow member: warm-up: %w", err)
	}
	// The latency with and without the delay, in alternating blocks: drift
	// of the machine (other processes, frequency) then weighs on both alike
	// instead of on whichever ran second.
	var base, slowed, own []time.Duration
	var pairs []blockPair
	total := b.o.SlowMessages
	block := max(1, min(groupsSlowBlock, total/4)) // at least 4 blocks each
	for done := 0; done < total; {
		n := min(block, total-done)
		var pair blockPair
		for _, d := range []time.Duration{0, delay} {
			proxy.SetDelay(d)
			if m, err = b.latency(ctx, sender, hostID, gid, others, slow, n); err != nil {
				return nil, fmt.Errorf("slow member at %s: latency: %w", d, err)
			}
			if d == 0 {
				pair.base = m.samples(others)
				base = append(base, pair.base...)
			} else {
				pair.slowed = m.samples(others)
				slowed = append(slowed, pair.slowed...)
				own = append(own, m.samples(slow)...)
			}
		}
		pairs = append(pairs, pair)
		done += n
	}
	s.OthersBaseline, s.OthersSlowed, s.SlowMember = summarize(base), summarize(slowed), summarize(own)
	s.OthersP99RatioCI95 = p99RatioInterval(pairs, groupsBootstrap)
	proxy.SetDelay(0)
	if s.OthersDeliveriesPerSecBaseline, _, err = b.throughput(ctx, b.host, hostID, gid, members, slow, tput); err != nil {
		return nil, fmt.Errorf("slow member at 0 ms: throughput: %w", err)
	}
	proxy.SetDelay(delay)
	if s.OthersDeliveriesPerSecSlowed, _, err = b.throughput(ctx, b.host, hostID, gid, members, slow, tput); err != nil {
		return nil, fmt.Errorf("slow member: throughput: %w", err)
	}
	proxy.SetDelay(0)
	if err := b.checkSlowConn(proxy); err != nil {
		return nil, err
	}
	if s.OthersBaseline.P99US > 0 {
		s.OthersP99Ratio = s.OthersSlowed.P99US / s.OthersBaseline.P99US
	}
	run.Slow = s
	return run, nil
}

// tputMessages is how many messages a throughput measure with `receivers`
// receivers sends: --messages, or more for at least --min-deliveries
// deliveries (at most 100,000 messages: the outbox bound per destination).
func (b *groupsBench) tputMessages(receivers int) int {
	return min(max(b.o.Messages, (b.o.MinDeliveries+receivers-1)/max(receivers, 1)), 100_000)
}

// createGroup creates an open, persistent realtime group on the host (the
// host does not join it) and returns its id.
func (b *groupsBench) createGroup(ctx context.Context, name string) (string, error) {
	var gid string
	var cerr error
	err := b.host.Runtime.Do(ctx, func(now time.Time, n *app.Node) {
		gid = n.NewGroupID()
		_, cerr = n.Group(now).Create(now, group.CreateSpec{ID: gid, Name: name, Type: group.AppRealtime,
			Lifecycle: group.Persistent, Access: group.Open})
	})
	if err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("create group: %w", err)
	}
	return gid, nil
}

// join has members join gid (all at once) and waits for each one's EvJoined.
func (b *groupsBench) join(ctx context.Context, gid string, members []int) error {
	rs := make([]*node.Running, len(members))
	for j, i := range members {
		rs[j] = b.members[i]
	}
	return joinAll(ctx, rs, members, mq.PeerID(b.host.PeerID.String()), gid)
}

// joinAll has each node of rs join group gid at host, all at once, and waits
// (up to a minute) for each one's EvJoined; errors name rs[j] "member
// names[j]".
func joinAll(ctx context.Context, rs []*node.Running, names []int, host mq.PeerID, gid string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	errs := make([]error, len(rs))
	var wg sync.WaitGroup
	for j, r := range rs {
		i := names[j]
		wg.Add(1)
		go func() {
			defer wg.Done()
			sub := r.Runtime.SubscribeKinds(1024, app.EventGroup)
			defer sub.Close()
			var jerr error
			if err := r.Runtime.Do(ctx, func(now time.Time, n *app.Node) { jerr = n.Group(now).Join(now, host, gid) }); err != nil || jerr != nil {
				errs[j] = fmt.Errorf("member %d: join: %w", i, errors.Join(err, jerr))
				return
			}
			for {
				select {
				case ev, ok := <-sub.C:
					if !ok {
						errs[j] = fmt.Errorf("member %d: event subscription ended before joining", i)
						return
					}
					if ev.Kind != app.EventGroup || ev.Group == nil || ev.Group.Group != gid {
						continue
					}
					switch ev.Group.Type {
					case group.EvJoined:
						return
					case group.EvJoinFailed:
						errs[j] = fmt.Errorf("member %d: join failed: %v", i, ev.Group.Err)
						return
					}
				case <-ctx.Done():
					errs[j] = fmt.Errorf("member %d: no welcome: %w", i, ctx.Err())
					return
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// send sends messages first..first+count-1 of m from r to group gid in one
// Runtime.Do (returns once they are stored on r).
func (b *groupsBench) send(ctx context.Context, r *node.Running, host mq.PeerID, m *groupsMeasure, first, count int) error {
	payloads := make([][]byte, count)
	for j := range payloads {
		payloads[j] = b.payload(m.first + uint64(first+j))
	}
	var serr error
	err := r.Runtime.Do(ctx, func(now time.Time, n *app.Node) {
		g := n.Group(now)
		for _, p := range payloads {
			if err := g.SendToGroup(now, host, m.gid, group.TypeMsg, p); err != nil && serr == nil {
				serr = err
			}
		}
	})
	if err == nil {
		err = serr
	}
	return err
}

// senderName names a latency measure's sender in its trace tasks.
func senderName(host bool) string {
	if host {
		return "host sends"
	}
	return "member sends"
}

// latency sends count messages from r one after the other, each once all
// of await received it; watch members' deliveries are recorded too and
// waited for at the end.
func (b *groupsBench) latency(ctx context.Context, r *node.Running, host mq.PeerID, gid string, await, watch []int, count int) (*groupsMeasure, error) {
	m := b.newMeasure(gid, count, await, watch)
	b.cur.Store(m)
	defer b.cur.Store(nil)
	cpu0, cpuOK := processCPU()
	timer := time.NewTimer(groupsMsgWait)
	defer timer.Stop()
	// Traced (--trace): each message is a task, from before its send until
	// its last delivery, named after its sender and receivers.
	traced := rtrace.IsEnabled()
	taskName := fmt.Sprintf("message to %d members (%s)", len(await), senderName(r == b.host))
	for k := 0; k < count; k++ {
		var task *rtrace.Task
		if traced {
			_, task = rtrace.NewTask(ctx, taskName)
		}
		m.sent[k] = b.now()
		if err := b.send(ctx, r, host, m, k, 1); err != nil {
			return nil, fmt.Errorf("message %d: %w", k, err)
		}
		timer.Reset(groupsMsgWait)
		select {
		case <-m.done[k]:
			if task != nil {
				task.End()
			}
		case <-timer.C:
			return nil, fmt.Errorf("message %d: %d of %d deliveries missing after %s", k, m.left[k].Load(), len(await), groupsMsgWait)
		case <-b.lost:
			return nil, b.lostErr()
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if err := b.waitWatched(ctx, m); err != nil {
		return nil, err
	}
	if cpu1, ok := processCPU(); ok && cpuOK {
		m.cpu = cpu1 - cpu0
	}
	return m, nil
}

// throughput sends count messages from r pipelined and returns the
// deliveries per second at await (until the last one arrived).
func (b *groupsBench) throughput(ctx context.Context, r *node.Running, host mq.PeerID, gid string, await, watch []int, count int) (float64, *groupsMeasure, error) {
	m := b.newMeasure(gid, count, await, watch)
	b.cur.Store(m)
	defer b.cur.Store(nil)
	cpu0, cpuOK := processCPU()
	start := b.now()
	var next atomic.Int64
	errs := make(chan error, groupsSenders)
	for range groupsSenders {
		go func() {
			for {
				k := int(next.Add(groupsSendBatch) - groupsSendBatch)
				if k >= count {
					errs <- nil
					return
				}
				sent := b.now()
				for j := k; j < min(k+groupsSendBatch, count); j++ {
					m.sent[j] = sent
				}
				if err := b.send(ctx, r, host, m, k, min(groupsSendBatch, count-k)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var err error
	for range groupsSenders {
		err = errors.Join(err, <-errs)
	}
	if err != nil {
		return 0, nil, err
	}
	wait := time.NewTimer(groupsAllWait)
	defer wait.Stop()
	select {
	case <-m.allDone:
	case <-wait.C:
		return 0, nil, fmt.Errorf("%d of %d deliveries missing after %s", m.total.Load(), count*len(await), groupsAllWait)
	case <-b.lost:
		return 0, nil, b.lostErr()
	case <-ctx.Done():
		return 0, nil, ctx.Err()
	}
	elapsed := m.last(await) - start
	if err := b.waitWatched(ctx, m); err != nil {
		return 0, nil, err
	}
	if cpu1, ok := processCPU(); ok && cpuOK {
		m.cpu = cpu1 - cpu0
	}
	return float64(count*len(await)) / elapsed.Seconds(), m, nil
}

// waitWatched waits until the watched members received every message of m,
// and fails on duplicates.
func (b *groupsBench) waitWatched(ctx context.Context, m *groupsMeasure) error {
	wait := time.NewTimer(groupsAllWait)
	defer wait.Stop()
	select {
	case <-m.watchDone:
	case <-wait.C:
		return fmt.Errorf("the slow member misses %d deliveries after %s", m.watchLeft.Load(), groupsAllWait)
	case <-b.lost:
		return b.lostErr()
	case <-ctx.Done():
		return ctx.Err()
	}
	if d := m.dups.Load(); d > 0 {
		return fmt.Errorf("%d messages were delivered twice", d)
	}
	return nil
}

func (b *groupsBench) lostErr() error {
	return fmt.Errorf("member %d's event subscription ended (its node stopped, or its collector fell behind)", b.lostWho.Load())
}

// delayProxy forwards TCP connections from a listener on loopback to a
// target, holding every chunk read in either direction for a settable delay
// before writing it on (a delay line: each chunk's delay starts when it is
// read, so throughput is not capped by the delay). Each direction buffers
// at most delayProxyChunks chunks; beyond that it stops reading. Safe for
// concurrent use.
type delayProxy struct {
	ln     net.Listener
	target string
	delay  atomic.Int64 // nanoseconds

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// Bounds of delayProxy.
const (
	delayProxyChunk   = 32 << 10
	delayProxyChunks  = 64
	delayProxyTimeout = 30 * time.Second // dial, and each write
)

// newDelayProxy listens on listen (e.g. 127.0.0.1:0) and forwards to target
// with no delay until SetDelay. Close it to stop.
func newDelayProxy(listen, target string) (*delayProxy, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("delay proxy: %w", err)
	}
	p := &delayProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

// Port is the proxy's listening port.
func (p *delayProxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// SetDelay sets the delay of chunks read from now on, in both directions.
func (p *delayProxy) SetDelay(d time.Duration) { p.delay.Store(int64(d)) }

// Close stops accepting, closes every proxied connection and waits for the
// proxy's goroutines.
func (p *delayProxy) Close() {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	_ = p.ln.Close()
	p.wg.Wait()
}

// track registers c to be closed by Close; false if the proxy is closed.
func (p *delayProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *delayProxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

func (p *delayProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			_ = c.Close()
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.untrack(c)
			t, err := net.DialTimeout("tcp", p.target, delayProxyTimeout)
			if err != nil {
				return
			}
			if !p.track(t) {
				_ = t.Close()
				return
			}
			defer p.untrack(t)
			var wg sync.WaitGroup
			wg.Add(2)
			go func() { defer wg.Done(); p.pipe(t, c) }()
			go func() { defer wg.Done(); p.pipe(c, t) }()
			wg.Wait()
		}()
	}
}

type delayedChunk struct {
	b  []byte
	at time.Time
}

// pipe copies src to dst through the delay line. On EOF it half-closes dst
// once everything read was written; on any error it closes both.
func (p *delayProxy) pipe(dst, src net.Conn) {
	ch := make(chan delayedChunk, delayProxyChunks)
	stop := make(chan struct{})
	var readErr error
	go func() {
		defer close(ch)
		for {
			buf := make([]byte, delayProxyChunk)
			n, err := src.Read(buf)
			if n > 0 {
				select {
				case ch <- delayedChunk{b: buf[:n], at: time.Now().Add(time.Duration(p.delay.Load()))}:
				case <-stop:
					return
				}
			}
			if err != nil {
				readErr = err
				return
			}
		}
	}()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for c := range ch {
		if d := time.Until(c.at); d > 0 {
			timer.Reset(d)
			<-timer.C
		}
		_ = dst.SetWriteDeadline(time.Now().Add(delayProxyTimeout))
		if _, err := dst.Write(c.b); err != nil {
			close(stop)
			_ = dst.Close()
			_ = src.Close()
			for range ch {
			}
			return
		}
	}
	if errors.Is(readErr, io.EOF) {
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
			return
		}
	}
	_ = dst.Close()
	_ = src.Close()
}

// processCPU returns this process's CPU time (user and system, all threads)
// from /proc/self/stat, with a resolution of 10 ms; false where that file is
// not available (not Linux).
func processCPU() (time.Duration, bool) {
	data, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0, false
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(data[i+1:]))
	// f[0] is field 3; utime and stime are fields 14 and 15, in USER_HZ (100 on Linux).
	if len(f) < 13 {
		return 0, false
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(ut+st) * (time.Second / 100), true
}

// blockPair is the others' latency samples of one block of the slow member
// measure without the delay (base) and of the block with it that followed.
type blockPair struct{ base, slowed []time.Duration }

// p99RatioInterval returns a 95% interval of p99(slowed) / p99(base) over
// pairs, by a bootstrap: `resamples` times, len(pairs) pairs are drawn with
// replacement and the ratio of the p99s of their pooled samples is taken;
// the interval runs from the 2.5th to the 97.5th percentile of those
// ratios. Pairs are drawn whole, so that each keeps its two blocks,
// run next to each other under the same conditions of the machine. The
// draws come from a fixed seed: the same samples give the same interval.
// Zero when there are no pairs or a block has no samples.
func p99RatioInterval(pairs []blockPair, resamples int) [2]float64 {
	if len(pairs) == 0 || resamples < 1 {
		return [2]float64{}
	}
	for _, p := range pairs {
		if len(p.base) == 0 || len(p.slowed) == 0 {
			return [2]float64{}
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var base, slowed []time.Duration
	ratios := make([]float64, resamples)
	for r := range ratios {
		base, slowed = base[:0], slowed[:0]
		for range pairs {
			p := pairs[rng.IntN(len(pairs))]
			base = append(base, p.base...)
			slowed = append(slowed, p.slowed...)
		}
		ratios[r] = float64(selectP99(slowed)) / float64(selectP99(base))
	}
	slices.Sort(ratios)
	at := func(q float64) float64 { return ratios[min(int(q*float64(len(ratios))), len(ratios)-1)] }
	return [2]float64{at(0.025), at(0.975)}
}

// p99Index is the index in sorted order of the p99 of n samples (n > 0), as
// summarize reports it.
func p99Index(n int) int { return max((n*99+99)/100-1, 0) }

// selectP99 returns the p99 of s (not empty), s[p99Index(len(s))] once s
// is sorted, reordering s in place without sorting it: a selection (quickselect, median-of-three pivots)
// takes linear time, where a bootstrap's hundreds of sorts of a hundred
// thousand samples took seconds.
func selectP99(s []time.Duration) time.Duration {
	k := p99Index(len(s))
	lo, hi := 0, len(s)-1
	for lo < hi {
		// Median of three as the pivot, then a Hoare partition of [lo, hi].
		mid := lo + (hi-lo)/2
		if s[mid] < s[lo] {
			s[mid], s[lo] = s[lo], s[mid]
		}
		if s[hi] < s[lo] {
			s[hi], s[lo] = s[lo], s[hi]
		}
		if s[hi] < s[mid] {
			s[hi], s[mid] = s[mid], s[hi]
		}
		pivot := s[mid]
		i, j := lo, hi
		for i <= j {
			for s[i] < pivot {
				i++
			}
			for s[j] > pivot {
				j--
			}
			if i <= j {
				s[i], s[j] = s[j], s[i]
				i++
				j--
			}
		}
		// Now s[lo..j] <= pivot <= s[i..hi], and s[j+1..i-1] == pivot.
		switch {
		case k <= j:
			hi = j
		case k >= i:
			lo = i
		default:
			return s[k]
		}
	}
	return s[k]
}
