package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/goop-p2p/goop/adapters/p2p"
	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/cmd/goop/node"
	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/simnet/simcli"
)

// intRange is the allowed range of an int flag.
type intRange struct {
	name   string
	lo, hi int
}

// checkRanges returns a usage error naming the first int flag of c outside
// its range.
func checkRanges(c *cli.Context, rs ...intRange) error {
	for _, r := range rs {
		if v := c.Int(r.name); v < r.lo || v > r.hi {
			return cli.Exit(fmt.Sprintf("--%s must be between %d and %d", r.name, r.lo, r.hi), exitUsage)
		}
	}
	return nil
}

func benchCommand(g *globals, stdout io.Writer) *cli.Command {
	return &cli.Command{
		Name:  "bench",
		Usage: "measure the node on this machine",
		Subcommands: []*cli.Command{{
			Name:  "mq",
			Usage: "measure the message bus between real nodes on 127.0.0.1",
			Description: fmt.Sprintf("Starts three nodes in this process (temporary folders, SQLite stores; one speaks\n"+
				"only /goop/mq/1.0.0) and measures in the same run: the raw libp2p stream echo\n"+
				"round trip (baseline), the MQ 1.1.0 and 1.0.0 round trips (send until the peer's\n"+
				"transport ack, SPEC §2), the 1.1.0 send until the peer stored and delivered the\n"+
				"message, one-way messages per second with 1 and 8 concurrent senders, and the\n"+
				"start-up time (to a healthy viewer) and memory of 'goop peer' run as a child\n"+
				"process. The four round-trip measures take turns in blocks of %d, so that the\n"+
				"machine's drift weighs on the baseline and the bus alike.", latencyBlock),
			Flags: []cli.Flag{
				&cli.BoolFlag{Name: "json", Usage: "print the results as one JSON object"},
				&cli.IntFlag{Name: "count", Value: 1000, Usage: "round trips per latency measure"},
				&cli.IntFlag{Name: "messages", Value: 50_000, Usage: "messages per one-way throughput measure (long enough for a steady state)"},
				&cli.IntFlag{Name: "payload-bytes", Value: 64, Usage: "size of each message's payload"},
				&cli.BoolFlag{Name: "no-child", Usage: "skip the child-process start-up measure"},
				&cli.StringFlag{Name: "cpuprofile", Usage: "write a CPU profile of the measures (round trips, the echo's included, and throughput) to `FILE`"},
				repeatFlag,
			},
			Action: func(c *cli.Context) error {
				opts := benchOptions{Count: c.Int("count"), Messages: c.Int("messages"), PayloadBytes: c.Int("payload-bytes"),
					Log: g.log, CPUProfile: c.String("cpuprofile")}
				// --messages: the outbox holds at most 100,000 per destination.
				if err := checkRanges(c, intRange{"count", 10, 100_000}, intRange{"messages", 10, 100_000},
					intRange{"payload-bytes", 0, mq.MaxPayloadBytes - 2}); err != nil {
					return err
				}
				if !c.Bool("no-child") {
					exe, err := os.Executable()
					if err != nil {
						return fmt.Errorf("bench: find own binary: %w", err)
					}
					opts.Exe = exe
				}
				return benchRepeated(c, stdout, mqFigures, func() (*benchResult, error) { return benchMQ(c.Context, opts) })
			},
		}, benchGroupsCommand(g, stdout), benchRendezvousCommand(g, stdout)},
	}
}

type benchOptions struct {
	Count int
	// Messages is the number of messages of each throughput measure.
	Messages     int
	PayloadBytes int
	// Exe is the goop binary to measure `goop peer` start-up with (empty: skip).
	Exe string
	Log *slog.Logger
	// CPUProfile, if set, receives a CPU profile of the MQ measures.
	CPUProfile string
}

// latency summarises a series of round trips, in microseconds.
type latency struct {
	N        int     `json:"n"`
	MedianUS float64 `json:"median_us"`
	P99US    float64 `json:"p99_us"`
	MeanUS   float64 `json:"mean_us"`
}

func summarize(ds []time.Duration) latency {
	if len(ds) == 0 {
		return latency{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	return latency{N: len(s), MedianUS: us(median(s)), P99US: us(s[p99Index(len(s))]), MeanUS: us(sum) / float64(len(s))}
}

// median returns the median of s, which is sorted and not empty: with an
// even count, the mean of the middle two.
func median[T ~int64 | ~float64](s []T) T {
	if len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[len(s)/2]
}

// benchResult is the output of `goop bench mq` (its --json form).
type benchResult struct {
	GoVersion    string `json:"go_version"`
	CPUs         int    `json:"cpus"`
	Count        int    `json:"count"`
	Messages     int    `json:"messages"`
	PayloadBytes int    `json:"payload_bytes"`
	// Transport is the connection the round trips ran on (tcp or quic-v1).
	Transport string  `json:"transport"`
	Echo      latency `json:"echo"`
	// MQ11 and MQ10 are msg -> ack round trips, the ack being the transport
	// ack of SPEC §2: the msg asks for it ("want"), and the peer's transport
	// sends it as soon as it decodes the msg, on 1.1.0 and on 1.0.0 (there on
	// the msg's stream, before the final ack).
	MQ11 latency `json:"mq_1_1_0"`
	MQ10 latency `json:"mq_1_0_0"`
	// MQ11Stored is msg -> final ack on 1.1.0: the peer stored its cursor
	// and delivered the message to its application.
	MQ11Stored latency `json:"mq_1_1_0_stored"`
	// RatioMQ11ToEcho is the MQ 1.1.0 median round trip over the echo median.
	RatioMQ11ToEcho float64 `json:"ratio_mq_1_1_0_to_echo_median"`
	Throughput1     float64 `json:"msgs_per_sec_1_sender"`
	Throughput8     float64 `json:"msgs_per_sec_8_senders"`
	// InProcessStartMS is how long node.Start took for the first bench node.
	InProcessStartMS float64 `json:"in_process_start_ms"`
	// PeerStartupMS: `goop peer` child process, from exec to a 200 from /healthz.
	PeerStartupMS float64 `json:"peer_startup_ms,omitempty"`
	// PeerRSSKiB is the child's VmRSS right after that.
	PeerRSSKiB int64 `json:"peer_rss_kib,omitempty"`
}

func (r *benchResult) writeTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "%s\n\n", r.header())
	fmt.Fprintln(tw, "measure\tmedian\tp99\tmean\t")
	row := func(name string, l latency) {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", name, fmtUS(l.MedianUS), fmtUS(l.P99US), fmtUS(l.MeanUS))
	}
	row("libp2p stream echo round trip (baseline)", r.Echo)
	row("MQ 1.1.0 round trip (msg -> ack)", r.MQ11)
	row("MQ 1.0.0 round trip (msg -> ack)", r.MQ10)
	row("MQ 1.1.0 msg -> stored and delivered", r.MQ11Stored)
	fmt.Fprintln(tw, "\t\t\t\t")
	fmt.Fprintf(tw, "MQ 1.1.0 median / echo median\t%.1fx\t\t\t\n", r.RatioMQ11ToEcho)
	fmt.Fprintf(tw, "one-way messages/s, 1 sender\t%.0f\t\t\t\n", r.Throughput1)
	fmt.Fprintf(tw, "one-way messages/s, 8 senders\t%.0f\t\t\t\n", r.Throughput8)
	fmt.Fprintf(tw, "node start in-process\t%.0f ms\t\t\t\n", r.InProcessStartMS)
	if r.PeerStartupMS > 0 {
		fmt.Fprintf(tw, "'goop peer' start to healthy viewer\t%.0f ms\t\t\t\n", r.PeerStartupMS)
		fmt.Fprintf(tw, "'goop peer' RSS after start\t%.1f MiB\t\t\t\n", float64(r.PeerRSSKiB)/1024)
	}
	return tw.Flush()
}

// header describes the run.
func (r *benchResult) header() string {
	return fmt.Sprintf("goop bench mq: %d round trips per latency measure, %d messages per throughput measure, %d payload bytes, 127.0.0.1 over %s, %s, %d CPUs",
		r.Count, r.Messages, r.PayloadBytes, r.Transport, r.GoVersion, r.CPUs)
}

func fmtUS(us float64) string {
	if us >= 10_000 {
		return fmt.Sprintf("%.1f ms", us/1000)
	}
	return fmt.Sprintf("%.0f µs", us)
}

// latencyBlock is how many round trips a latency measure of bench mq takes
// before the next one has its turn: about a millisecond. The scheduler's
// ways (the whole chain of a round trip on one thread, or each hop handed
// between two) last a few milliseconds each; in longer blocks one measure
// could catch a way the other did not, and the ratio of a run strayed
// (0.94x to 1.46x in 10 runs with blocks of 250, against 1.20x to 1.24x
// with blocks of 50), while its median over runs stayed the same.
const latencyBlock = 50

// benchMQ runs the bus benchmark; see the bench mq command.
func benchMQ(ctx context.Context, o benchOptions) (*benchResult, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	root, err := os.MkdirTemp("", "goop-bench-*")
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer os.RemoveAll(root)

	res := &benchResult{GoVersion: runtime.Version(), CPUs: runtime.NumCPU(), Count: o.Count, Messages: o.Messages,
		PayloadBytes: o.PayloadBytes}
	start := func(name string, mqOpts p2p.MQOptions) (*node.Running, error) {
		return node.Start(ctx, filepath.Join(root, name), node.Options{
			NoAutoConnect: true, // measure only the nodes of this run
			Log:           o.Log,
			ListenIP:      "127.0.0.1",
			MQ:            mqOpts,
			Init:          node.InitOptions{Configure: func(c *app.Config) { c.Viewer.HTTPAddr = "127.0.0.1:0" }},
		})
	}
	t0 := time.Now()
	a, err := start("a", p2p.MQOptions{})
	if err != nil {
		return nil, fmt.Errorf("bench: start node a: %w", err)
	}
	res.InProcessStartMS = float64(time.Since(t0)) / float64(time.Millisecond)
	defer a.Close()
	b, err := start("b", p2p.MQOptions{})
	if err != nil {
		return nil, fmt.Errorf("bench: start node b: %w", err)
	}
	defer b.Close()
	c, err := start("c", p2p.MQOptions{Only10: true})
	if err != nil {
		return nil, fmt.Errorf("bench: start node c (1.0.0 only): %w", err)
	}
	defer c.Close()
	if err := p2p.ConnectPeers(ctx, a.Host, append(b.Addrs(), c.Addrs()...)); err != nil {
		return nil, fmt.Errorf("bench: connect: %w", err)
	}
	if conns := a.Host.Network().ConnsToPeer(b.PeerID); len(conns) > 0 {
		res.Transport = p2p.TransportName(conns[0].RemoteMultiaddr().String())
	}

	payload := benchPayload(o.PayloadBytes)
	// The echo line is as long as the msg frame the bus sends.
	frame := mq.AppendFrame(nil, &mq.Frame{Type: mq.TypeMsg, ID: "00000000-0000-4000-8000-000000000000", Seq: 1,
		Topic: "bench.rtt", Payload: payload, Epoch: "00000000-0000-4000-8000-000000000000"})
	echoLine := bytes.Repeat([]byte("e"), len(frame)-1)

	p2p.RegisterEcho(b.Host)
	if _, err := p2p.EchoRoundTrip(ctx, a.Host, b.PeerID, min(50, o.Count), echoLine); err != nil {
		return nil, fmt.Errorf("bench: echo warm-up: %w", err)
	}
	for _, tc := range []struct {
		to  *node.Running
		ver string
	}{{b, "1.1.0"}, {c, "1.0.0"}} {
		if _, err := roundTrips(ctx, a, tc.to, min(50, o.Count), payload, true); err != nil {
			return nil, fmt.Errorf("bench: MQ %s warm-up: %w", tc.ver, err)
		}
	}

	stopProfile, err := simcli.StartCPUProfile(o.CPUProfile)
	if err != nil {
		return nil, fmt.Errorf("bench: --cpuprofile: %w", err)
	}
	defer func() { _ = stopProfile() }()

	var echo, mq11, mq10, stored []time.Duration
	for done := 0; done < o.Count; {
		k := min(latencyBlock, o.Count-done)
		// One more echo, dropped: a new stream's first round trip also
		// negotiates its protocol.
		e, err := p2p.EchoRoundTrip(ctx, a.Host, b.PeerID, k+1, echoLine)
		if err != nil {
			return nil, fmt.Errorf("bench: echo: %w", err)
		}
		echo = append(echo, e[1:]...)
		for _, tc := range []struct {
			to    *node.Running
			early bool
			out   *[]time.Duration
			what  string
		}{{b, true, &mq11, "MQ 1.1.0 round trips"}, {c, true, &mq10, "MQ 1.0.0 round trips"},
			{b, false, &stored, "MQ 1.1.0 stored round trips"}} {
			ds, err := roundTrips(ctx, a, tc.to, k, payload, tc.early)
			if err != nil {
				return nil, fmt.Errorf("bench: %s: %w", tc.what, err)
			}
			*tc.out = append(*tc.out, ds...)
		}
		done += k
	}
	res.Echo, res.MQ11, res.MQ10, res.MQ11Stored = summarize(echo), summarize(mq11), summarize(mq10), summarize(stored)
	if res.Echo.MedianUS > 0 {
		res.RatioMQ11ToEcho = res.MQ11.MedianUS / res.Echo.MedianUS
	}

	if res.Throughput1, err = throughput(ctx, a, b, 1, o.Messages, payload); err != nil {
		return nil, fmt.Errorf("bench: throughput, 1 sender: %w", err)
	}
	if res.Throughput8, err = throughput(ctx, a, b, 8, o.Messages, payload); err != nil {
		return nil, fmt.Errorf("bench: throughput, 8 senders: %w", err)
	}

	if o.Exe != "" {
		ms, rss, err := measureChild(ctx, o.Exe, filepath.Join(root, "child"))
		if err != nil {
			return nil, fmt.Errorf("bench: goop peer start-up: %w", err)
		}
		res.PeerStartupMS, res.PeerRSSKiB = ms, rss
	}
	return res, nil
}

// benchPayload is a JSON string of n bytes in total (n >= 2), or null.
func benchPayload(n int) []byte {
	if n < 2 {
		return []byte("null")
	}
	return []byte(`"` + strings.Repeat("x", n-2) + `"`)
}

// roundTrips sends n messages from a to b one after the other, each waiting
// for b's transport ack (early) or its final ack, and returns each round
// trip. All of them are bounded by 30 s, as a caller sending many messages
// bounds them with one context: a context of its own for each round trip
// would add its timer to the time measured.
func roundTrips(ctx context.Context, a, b *node.Running, n int, payload []byte, early bool) ([]time.Duration, error) {
	to := mq.PeerID(b.PeerID.String())
	out := make([]time.Duration, 0, n)
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for i := 0; i < n; i++ {
		t0 := time.Now()
		var err error
		if early {
			_, _, err = a.Runtime.SendRoundTrip(ctx, to, "bench.rtt", payload)
		} else {
			_, _, err = a.Runtime.SendWait(ctx, to, "bench.rtt", payload)
		}
		d := time.Since(t0)
		if err != nil {
			return out, err
		}
		out = append(out, d)
	}
	return out, nil
}

// throughput sends count one-way messages from a to b with `senders`
// goroutines calling Runtime.Post (pipelined: each message is stored with the
// node's next batch), and returns messages per second until b's application
// received them all.
func throughput(ctx context.Context, a, b *node.Running, senders, count int, payload []byte) (float64, error) {
	topic := "bench.tput." + strconv.Itoa(senders)
	from := mq.PeerID(a.PeerID.String())
	to := mq.PeerID(b.PeerID.String())
	sub := b.Runtime.SubscribeKinds(count+64, app.EventMessage)
	defer sub.Close()
	all := make(chan error, 1)
	go func() {
		n := 0
		for ev := range sub.C {
			if ev.Kind == app.EventMessage && ev.Peer == from && ev.Topic == topic {
				if n++; n == count {
					all <- nil
					return
				}
			}
		}
		all <- fmt.Errorf("event subscription closed after %d of %d messages", n, count)
	}()

	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, senders)
	for s := 0; s < senders; s++ {
		n := count / senders
		if s == 0 {
			n += count % senders
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < n; i++ {
				if err := a.Runtime.Post(ctx, to, topic, payload); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	wait := time.NewTimer(2 * time.Minute)
	defer wait.Stop()
	select {
	case err := <-all:
		if err != nil {
			return 0, err
		}
	case <-wait.C:
		return 0, errors.New("not all messages arrived within 2 minutes")
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return float64(count) / time.Since(start).Seconds(), nil
}

// measureChild runs `exe peer dir` and returns the time from exec to a 200
// from the viewer's /healthz, and the child's VmRSS then. It stops the child
// with SIGTERM and requires a clean exit.
func measureChild(ctx context.Context, exe, dir string) (float64, int64, error) {
	if _, err := node.Init(ctx, dir, node.InitOptions{Configure: func(c *app.Config) { c.Viewer.HTTPAddr = "127.0.0.1:0" }}); err != nil {
		return 0, 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "peer", dir)
	cmd.WaitDelay = 5 * time.Second
	stderr := &limitedWriter{n: 64 << 10}
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, 0, err
	}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, 0, fmt.Errorf("start %s: %w", exe, err)
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}()
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if _, ok := parseReadyLine(sc.Text()); ok {
				lines <- sc.Text()
				break
			}
		}
		_, _ = io.Copy(io.Discard, out)
		close(lines)
	}()
	var ready map[string]string
	select {
	case line, ok := <-lines:
		if !ok {
			return 0, 0, fmt.Errorf("child exited without a ready line: %s", strings.TrimSpace(stderr.String()))
		}
		ready, _ = parseReadyLine(line)
	case <-ctx.Done():
		return 0, 0, fmt.Errorf("no ready line: %w", ctx.Err())
	}
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get(strings.TrimSuffix(ready["viewer"], "/") + "/healthz")
	if err != nil {
		return 0, 0, fmt.Errorf("healthz: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("healthz: status %d", resp.StatusCode)
	}
	ms := float64(time.Since(t0)) / float64(time.Millisecond)
	rss, err := readRSS(cmd.Process.Pid)
	if err != nil {
		return 0, 0, err
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return 0, 0, err
	}
	stopped = true
	if err := cmd.Wait(); err != nil {
		return 0, 0, fmt.Errorf("child did not stop cleanly on SIGTERM: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return ms, rss, nil
}

// readRSS returns VmRSS of process pid in KiB (Linux /proc).
func readRSS(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read RSS: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, errors.New("read RSS: no VmRSS line")
}

// limitedWriter keeps the first n bytes written to it and drops the rest.
// Safe for concurrent use.
type limitedWriter struct {
	mu  sync.Mutex
	buf bytes.Buffer
	n   int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if k := min(len(p), l.n-l.buf.Len()); k > 0 {
		l.buf.Write(p[:k])
	}
	return len(p), nil
}

func (l *limitedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}
