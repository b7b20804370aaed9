package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/urfave/cli/v2"

	"github.com/goop-p2p/goop/adapters/rendezvous"
	"github.com/goop-p2p/goop/simnet/simcli"
)

// Shape and limits of `goop bench rendezvous`.
const (
	rvMaxClients = 100_000
	// rvClientsPerSourceIP: clients are spread over loopback source addresses
	// (127.1.x.y) so that the server's default per-address caps apply.
	rvClientsPerSourceIP = 60
	rvConnectParallel    = 128
	// rvWaitAll bounds waiting for one publish to reach every client.
	rvWaitAll = 30 * time.Second
	// rvFdReserve is what a process keeps of its open-files limit for other files.
	rvFdReserve = 200
	// The flood phase: rvFlooders goroutines publish one peer id's presence as
	// fast as they can from one address, while rvHonestPeers peers publish
	// from another address every rvHonestInterval (the real heartbeat),
	// their first publishes spread over one interval.
	rvFlooders       = 16
	rvFloodBodies    = 1000
	rvHonestPeers    = 20
	rvHonestInterval = 5 * time.Second
	// rvFlooderIP and rvHonestIP are the two addresses (bound on loopback
	// when possible, else sent as X-Forwarded-For as a local proxy would).
	rvFlooderIP = "127.0.0.2"
	rvHonestIP  = "127.0.0.3"
)

func benchRendezvousCommand(g *globals, stdout io.Writer) *cli.Command {
	return &cli.Command{
		Name:  "rendezvous",
		Usage: "measure the rendezvous server: concurrent event streams, fan-out latency, memory, floods",
		Description: "Starts one rendezvous server on 127.0.0.1 in this process and --clients concurrent\n" +
			"GET /events streams (raw TCP clients spread over 127.1.x.y source addresses, 60 per\n" +
			"address, when the system allows binding them). The clients run in a child process\n" +
			"(this binary again) so that each process stays within the open-files limit and the\n" +
			"server's memory is measured alone; --in-process runs them as goroutines here (the\n" +
			"memory figure then includes the clients). It measures:\n" +
			"  - memory per client: the server process's Go heap+stacks and RSS growth from\n" +
			"    before the clients connect to when all are connected, divided by their number;\n" +
			"  - fan-out: --publishes signed publishes, one after the other, each waiting until\n" +
			"    every client received it; latency from before the POST to each client's read\n" +
			"    (p50/p99 over all deliveries) and to the last client's (per publish);\n" +
			"  - flood: for --flood-seconds one address floods publishes (16 goroutines, one peer\n" +
			"    id) while 20 honest peers on another address publish every 5 s: the flooder's\n" +
			"    answers (429 expected), the honest peers' (204 expected), and that every client\n" +
			"    still receives every accepted publish.\n" +
			"The open-files limit is raised to the hard limit; if --clients cannot be reached\n" +
			"the result says so.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print the results as one JSON object"},
			&cli.IntFlag{Name: "clients", Value: 10_000, Usage: "concurrent /events clients"},
			&cli.IntFlag{Name: "publishes", Value: 20, Usage: "publishes of the fan-out measure"},
			&cli.Float64Flag{Name: "flood-seconds", Value: 5, Usage: "duration of the flood measure (0: skip it)"},
			&cli.BoolFlag{Name: "in-process", Usage: "run the clients in this process instead of a child process"},
			&cli.StringFlag{Name: "cpuprofile", Usage: "write a CPU profile of this process's measures (after connecting) to `FILE`"},
			// The child process's role: a fleet of clients following URL.
			&cli.StringFlag{Name: "fleet", Hidden: true},
			&cli.BoolFlag{Name: "spread", Hidden: true},
		},
		Action: func(c *cli.Context) error {
			n, pubs := c.Int("clients"), c.Int("publishes")
			if err := checkRanges(c, intRange{"clients", 1, rvMaxClients}, intRange{"publishes", 1, 1000}); err != nil {
				return err
			}
			if u := c.String("fleet"); u != "" {
				return runFleetChild(c.Context, u, n, pubs, c.Bool("spread"), os.Stdin, stdout)
			}
			fs := c.Float64("flood-seconds")
			if fs < 0 || fs > 600 {
				return cli.Exit("--flood-seconds must be between 0 and 600", exitUsage)
			}
			o := rvBenchOptions{Clients: n, Publishes: pubs, Flood: time.Duration(fs * float64(time.Second)),
				CPUProfile: c.String("cpuprofile"), Log: g.log}
			if !c.Bool("in-process") {
				exe, err := os.Executable()
				if err != nil {
					return fmt.Errorf("bench: find own binary: %w", err)
				}
				o.Exe = exe
			}
			res, err := benchRendezvous(c.Context, o)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return json.NewEncoder(stdout).Encode(res)
			}
			return res.writeTable(stdout)
		},
	}
}

type rvBenchOptions struct {
	Clients   int
	Publishes int
	Flood     time.Duration
	// Exe runs the clients in a child process (empty: in this process).
	Exe string
	// CPUProfile is a file for a CPU profile of the measures (empty: none).
	CPUProfile string
	Log        *slog.Logger
}

// rvFloodResult is the flood measure.
type rvFloodResult struct {
	Seconds         float64 `json:"seconds"`
	FlooderRequests int     `json:"flooder_requests"`
	Flooder204      int     `json:"flooder_204"`
	Flooder429      int     `json:"flooder_429"`
	Flooder403      int     `json:"flooder_403"`
	FlooderOther    int     `json:"flooder_other"`
	HonestPublishes int     `json:"honest_publishes"`
	Honest204       int     `json:"honest_204"`
	// HonestLatency is the honest peers' publish round trip during the flood.
	HonestLatency rvLatency `json:"honest_publish_latency"`
	// Accepted is every publish the server accepted during the flood.
	Accepted int64 `json:"accepted"`
	// ClientsAfter are the /events clients still connected after it.
	ClientsAfter int `json:"clients_after"`
	// MinEvents and WantEvents: the fewest data events a client received in
	// the whole run, and how many were broadcast.
	MinEvents  int64 `json:"min_events_per_client"`
	WantEvents int64 `json:"events_broadcast"`
	// DrainMS is how long after the flood the last client had them all.
	DrainMS float64 `json:"drain_ms"`
}

// rvBenchResult is the output of `goop bench rendezvous` (its --json form).
type rvBenchResult struct {
	GoVersion string `json:"go_version"`
	CPUs      int    `json:"cpus"`
	// ClientsMode is "child process" or "in process".
	ClientsMode      string `json:"clients_mode"`
	OpenFilesLimit   uint64 `json:"open_files_limit"`
	ClientsRequested int    `json:"clients_requested"`
	// Clients are the streams the server held at once; Refused and Failed
	// the ones answered non-200 or not connected.
	Clients        int     `json:"clients"`
	ClientsRefused int     `json:"clients_refused"`
	ClientsFailed  int     `json:"clients_failed"`
	SourceIPs      int     `json:"source_ips"`
	ConnectSeconds float64 `json:"connect_seconds"`
	// ServerGoBytesPerClient is the growth of the server process's Go heap
	// in use plus goroutine stacks per client; ServerRSSBytesPerClient its
	// RSS growth per client (Linux). In process, both include the clients.
	ServerGoBytesPerClient  float64 `json:"server_go_bytes_per_client"`
	ServerRSSBytesPerClient float64 `json:"server_rss_bytes_per_client"`
	MemoryScope             string  `json:"memory_scope"`
	Publishes               int     `json:"publishes"`
	// Delivery is publish -> client latency over every (publish, client).
	Delivery rvLatency `json:"delivery_latency"`
	// AllReceived is, per publish, the latency until the last client had it.
	AllReceived rvLatency `json:"all_received_latency"`
	// DeliveredRatio is deliveries / (clients x publishes).
	DeliveredRatio float64        `json:"delivered_ratio"`
	Flood          *rvFloodResult `json:"flood,omitempty"`
	// ClientsAtEnd are the streams the server still held at the end.
	ClientsAtEnd int    `json:"clients_at_end"`
	Note         string `json:"note,omitempty"`
}

func (r *rvBenchResult) writeTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "goop bench rendezvous: %d /events clients (%s, %d source addresses), %s, %d CPUs, open files %d\n",
		r.Clients, r.ClientsMode, r.SourceIPs, r.GoVersion, r.CPUs, r.OpenFilesLimit)
	if r.Note != "" {
		fmt.Fprintf(tw, "note: %s\n", r.Note)
	}
	fmt.Fprintln(tw)
	row := func(name, format string, args ...any) { fmt.Fprintf(tw, name+"\t"+format+"\n", args...) }
	lat := func(l rvLatency) string {
		return fmt.Sprintf("p50 %s, p99 %s, max %s", fmtUS(l.MedianUS), fmtUS(l.P99US), fmtUS(l.MaxUS))
	}
	row("clients held at once", "%d of %d (%d refused, %d failed), connected in %.1f s", r.Clients, r.ClientsRequested, r.ClientsRefused, r.ClientsFailed, r.ConnectSeconds)
	row("memory per client, Go heap+stacks", "%.1f KiB (%s)", r.ServerGoBytesPerClient/1024, r.MemoryScope)
	row("memory per client, RSS", "%.1f KiB (%s)", r.ServerRSSBytesPerClient/1024, r.MemoryScope)
	row("publish -> each client", "%s (%d publishes x %d clients)", lat(r.Delivery), r.Publishes, r.Clients)
	row("publish -> last client", "%s", lat(r.AllReceived))
	row("delivered", "%.4f of publishes x clients", r.DeliveredRatio)
	if f := r.Flood; f != nil {
		row(fmt.Sprintf("flood (%.0f s): flooder", f.Seconds), "%d requests: %d x 204, %d x 429, %d x 403 (stale ts), %d other",
			f.FlooderRequests, f.Flooder204, f.Flooder429, f.Flooder403, f.FlooderOther)
		row("flood: honest peers", "%d of %d publishes answered 204, round trip %s", f.Honest204, f.HonestPublishes, lat(f.HonestLatency))
		row("flood: clients", "%d still connected; fewest events received %d of %d broadcast (drained %.0f ms after)",
			f.ClientsAfter, f.MinEvents, f.WantEvents, f.DrainMS)
	}
	row("clients held at the end", "%d", r.ClientsAtEnd)
	return tw.Flush()
}

// rvLatency is a latency summary with its maximum.
type rvLatency struct {
	latency
	MaxUS float64 `json:"max_us"`
}

// benchRendezvous runs the benchmark; see the bench rendezvous command.
func benchRendezvous(ctx context.Context, o rvBenchOptions) (*rvBenchResult, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	res := &rvBenchResult{GoVersion: runtime.Version(), CPUs: runtime.NumCPU(), ClientsRequested: o.Clients, Publishes: o.Publishes}
	limit := raiseOpenFiles()
	res.OpenFilesLimit = limit
	n := o.Clients
	perProcess := 2 // in process: the client's and the server's end
	res.ClientsMode, res.MemoryScope = "in process", "server and clients"
	if o.Exe != "" {
		perProcess = 1
		res.ClientsMode, res.MemoryScope = "child process", "server only"
	}
	if limit > 0 {
		if room := (int(limit) - rvFdReserve) / perProcess; room < n {
			n = max(room, 1)
			res.Note = fmt.Sprintf("%d clients requested but the open-files limit (%d, the hard limit) allows %d %s",
				o.Clients, limit, n, res.ClientsMode)
		}
	}
	spread := canBind("127.1.0.1") && canBind(rvFlooderIP) && canBind(rvHonestIP)
	res.SourceIPs = 1
	if spread {
		res.SourceIPs = (n + rvClientsPerSourceIP - 1) / rvClientsPerSourceIP
	}

	sc := rendezvous.ServerConfig{Log: o.Log, MaxClients: max(rendezvous.DefaultMaxClients, n+16)}
	if !spread {
		// All clients share 127.0.0.1: lift the per-address limits for them.
		sc.MaxClientsPerIP, sc.IPBurst = n+16, n+rendezvous.DefaultIPBurst
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("bench: listen: %w", err)
	}
	srv := rendezvous.NewServer(sc)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() {
		_ = srv.Close()
		<-served
	}()
	base := "http://" + ln.Addr().String()

	keys := make([]crypto.PrivKey, o.Publishes)
	for i := range keys {
		if keys[i], _, err = crypto.GenerateEd25519Key(nil); err != nil {
			return nil, fmt.Errorf("bench: key: %w", err)
		}
	}
	pub := newPublisher(spread, "")

	go0, rss0 := memNow()
	t0 := time.Now()
	var fl fleetDriver
	var cr fleetConnect
	if o.Exe != "" {
		fl, cr, err = startChildFleet(ctx, o.Exe, base, n, o.Publishes, spread)
	} else {
		fl, cr, err = startLocalFleet(ctx, base, n, o.Publishes, spread)
	}
	if err != nil {
		return nil, fmt.Errorf("bench: clients: %w", err)
	}
	defer fl.close()
	res.ConnectSeconds = time.Since(t0).Seconds()
	res.Clients, res.ClientsRefused, res.ClientsFailed = cr.Connected, cr.Refused, cr.Failed
	if cr.Connected == 0 {
		return nil, fmt.Errorf("bench: no client connected: %s", cr.FirstErr)
	}
	if cr.Failed+cr.Refused > 0 && res.Note == "" {
		res.Note = fmt.Sprintf("%d clients did not connect: %s", cr.Failed+cr.Refused, cr.FirstErr)
	}
	if held := srv.Stats().Clients; held != cr.Connected {
		return nil, fmt.Errorf("bench: the server holds %d streams, the clients report %d", held, cr.Connected)
	}
	go1, rss1 := memNow()
	res.ServerGoBytesPerClient = float64(go1-go0) / float64(cr.Connected)
	if rss0 > 0 && rss1 > 0 {
		res.ServerRSSBytesPerClient = float64(rss1-rss0) / float64(cr.Connected)
	}

	stopProfile, err := simcli.StartCPUProfile(o.CPUProfile)
	if err != nil {
		return nil, fmt.Errorf("bench: --cpuprofile: %w", err)
	}
	defer func() { _ = stopProfile() }()

	// Fan-out.
	var all, last []time.Duration
	delivered := 0
	for k, key := range keys {
		body, err := signedBody(key, "bench publisher "+strconv.Itoa(k), time.Now())
		if err != nil {
			return nil, err
		}
		start := time.Now()
		if code, err := pub.post(ctx, base, body); err != nil || code != http.StatusNoContent {
			return nil, fmt.Errorf("bench: publish %d: status %d: %v", k+1, code, err)
		}
		lats, got, err := fl.wait(k+1, start)
		if err != nil {
			return nil, fmt.Errorf("bench: publish %d: %w", k+1, err)
		}
		all = append(all, lats...)
		delivered += got
		if got == cr.Connected && len(lats) > 0 {
			last = append(last, slices.Max(lats))
		}
	}
	res.Delivery = summarizeMax(all)
	res.AllReceived = summarizeMax(last)
	res.DeliveredRatio = float64(delivered) / float64(cr.Connected*o.Publishes)

	if o.Flood > 0 {
		f, err := floodMeasure(ctx, srv, base, spread, o.Flood, fl, int64(o.Publishes))
		if err != nil {
			return nil, err
		}
		res.Flood = f
	}
	res.ClientsAtEnd = srv.Stats().Clients
	return res, nil
}

func summarizeMax(ds []time.Duration) rvLatency {
	l := rvLatency{latency: summarize(ds)}
	if len(ds) > 0 {
		l.MaxUS = float64(slices.Max(ds)) / float64(time.Microsecond)
	}
	return l
}

// floodMeasure runs the flood phase and checks the clients got every accepted publish.
func floodMeasure(ctx context.Context, srv *rendezvous.Server, base string, spread bool, d time.Duration, fl fleetDriver, before int64) (*rvFloodResult, error) {
	flooderKey, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		return nil, err
	}
	bodies := make([][]byte, rvFloodBodies)
	now := time.Now()
	for i := range bodies {
		if bodies[i], err = signedBody(flooderKey, "flooder", now.Add(time.Duration(i)*time.Millisecond)); err != nil {
			return nil, err
		}
	}
	honestKeys := make([]crypto.PrivKey, rvHonestPeers)
	for i := range honestKeys {
		if honestKeys[i], _, err = crypto.GenerateEd25519Key(nil); err != nil {
			return nil, err
		}
	}
	flooder := newPublisher(spread, rvFlooderIP)
	honest := newPublisher(spread, rvHonestIP)
	acceptedBefore := srv.Stats().Published

	f := &rvFloodResult{Seconds: d.Seconds()}
	fctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var (
		mu      sync.Mutex
		wg      sync.WaitGroup
		next    atomic.Int64
		honLat  []time.Duration
		codesFl = map[int]int{}
	)
	for range rvFlooders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := map[int]int{}
			// A post started before the end completes (under ctx, not fctx):
			// one cancelled in flight might still be accepted by the server
			// after the count below was taken, and reach the clients as an
			// event nobody expects.
			for fctx.Err() == nil {
				code, err := flooder.post(ctx, base, bodies[int(next.Add(1)-1)%len(bodies)])
				if err != nil {
					if ctx.Err() != nil {
						break
					}
					code = -1
				}
				local[code]++
			}
			mu.Lock()
			for c, k := range local {
				codesFl[c] += k
			}
			mu.Unlock()
		}()
	}
	for i, key := range honestKeys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTimer(rvHonestInterval * time.Duration(i) / rvHonestPeers)
			defer t.Stop()
			select {
			case <-fctx.Done():
				return
			case <-t.C:
			}
			for {
				body, err := signedBody(key, "honest "+strconv.Itoa(i), time.Now())
				if err != nil {
					return
				}
				start := time.Now()
				// Each honest publish completes even if the flood ends meanwhile.
				pctx, pcancel := context.WithTimeout(ctx, 30*time.Second)
				code, err := honest.post(pctx, base, body)
				pcancel()
				lat := time.Since(start)
				mu.Lock()
				f.HonestPublishes++
				if err == nil && code == http.StatusNoContent {
					f.Honest204++
					honLat = append(honLat, lat)
				}
				mu.Unlock()
				t.Reset(rvHonestInterval)
				select {
				case <-fctx.Done():
					return
				case <-t.C:
				}
			}
		}()
	}
	wg.Wait()
	for c, k := range codesFl {
		f.FlooderRequests += k
		switch c {
		case http.StatusNoContent:
			f.Flooder204 += k
		case http.StatusTooManyRequests:
			f.Flooder429 += k
		case http.StatusForbidden:
			f.Flooder403 += k
		default:
			f.FlooderOther += k
		}
	}
	f.HonestLatency = summarizeMax(honLat)
	f.Accepted = srv.Stats().Published - acceptedBefore
	f.WantEvents = before + f.Accepted

	// Every client should receive every accepted publish.
	end := time.Now()
	deadline := end.Add(rvWaitAll)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		minEv, err := fl.minEvents()
		if err != nil {
			return nil, fmt.Errorf("bench: count events: %w", err)
		}
		f.MinEvents = minEv
		if minEv >= f.WantEvents || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
		}
	}
	f.DrainMS = float64(time.Since(end)) / float64(time.Millisecond)
	f.ClientsAfter = srv.Stats().Clients
	return f, nil
}

// publisher posts presence from one address: a bound loopback source
// address, or (when binding is not possible) 127.0.0.1 with X-Forwarded-For,
// as a local reverse proxy would send.
type publisher struct {
	hc  *http.Client
	xff string
}

func newPublisher(spread bool, ip string) *publisher {
	d := &net.Dialer{Timeout: 10 * time.Second}
	p := &publisher{}
	if ip != "" {
		if spread {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(ip)}
		} else {
			p.xff = ip
		}
	}
	p.hc = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: d.DialContext, MaxIdleConnsPerHost: 64, MaxIdleConns: 64, IdleConnTimeout: 30 * time.Second,
	}}
	return p
}

func (p *publisher) post(ctx context.Context, base string, body []byte) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/publish", bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	if p.xff != "" {
		req.Header.Set("X-Forwarded-For", p.xff)
	}
	resp, err := p.hc.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	return resp.StatusCode, nil
}

func signedBody(key crypto.PrivKey, label string, ts time.Time) ([]byte, error) {
	m := rendezvous.PresenceMsg{Type: rendezvous.TypeOnline, Content: label, Addrs: []string{"/ip4/192.0.2.1/tcp/4001"}, TS: ts.UnixMilli()}
	if err := rendezvous.Sign(&m, key); err != nil {
		return nil, err
	}
	return json.Marshal(&m)
}

// memNow returns the process's Go heap in use plus stacks, and its RSS (0
// where /proc is missing), after a garbage collection.
func memNow() (goBytes, rssBytes int64) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if kib, err := readRSS(os.Getpid()); err == nil {
		rssBytes = kib * 1024
	}
	return int64(ms.HeapInuse + ms.StackInuse), rssBytes
}

func canBind(ip string) bool {
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return false
	}
	_ = ln.Close()
	return true
}

// sourceIP is the loopback source address of client i when spreading.
func sourceIP(i int) net.IP {
	j := i / rvClientsPerSourceIP
	return net.IPv4(127, 1, byte(j/250), byte(j%250+1))
}

// fleetConnect is the outcome of connecting the clients.
type fleetConnect struct {
	Connected, Refused, Failed int
	FirstErr                   string
}

// fleetDriver is a set of /events clients, in this process or a child.
type fleetDriver interface {
	// wait waits until every client received the k-th data event (1-based)
	// or rvWaitAll passed, and returns each receiving client's latency from start.
	wait(k int, start time.Time) (lats []time.Duration, got int, err error)
	// minEvents is the fewest data events any connected client received.
	minEvents() (int64, error)
	close() error
}

// fleet is the in-process set of clients: raw TCP connections, one goroutine
// each, counting `data:` events as they arrive.
type fleet struct {
	n, pubs   int
	connected atomic.Int32
	recvAt    []atomic.Int64 // (k-1)*n + i: when client i got event k (unix ns)
	got       []atomic.Int32 // per event: clients that got it
	all       []chan struct{}
	events    []atomic.Int64 // per client
	alive     []atomic.Bool
	conns     []net.Conn
	wg        sync.WaitGroup
	closeOnce sync.Once
}

func startLocalFleet(ctx context.Context, base string, n, pubs int, spread bool) (*fleet, fleetConnect, error) {
	u, err := url.Parse(base)
	if err != nil {
		return nil, fleetConnect{}, err
	}
	f := &fleet{n: n, pubs: pubs, recvAt: make([]atomic.Int64, n*pubs), got: make([]atomic.Int32, pubs),
		all: make([]chan struct{}, pubs), events: make([]atomic.Int64, n), alive: make([]atomic.Bool, n), conns: make([]net.Conn, n)}
	for k := range f.all {
		f.all[k] = make(chan struct{})
	}
	var (
		mu  sync.Mutex
		cr  fleetConnect
		wg  sync.WaitGroup
		sem = make(chan struct{}, rvConnectParallel)
	)
	req := []byte("GET /events HTTP/1.1\r\nHost: " + u.Host + "\r\nAccept: text/event-stream\r\n\r\n")
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			refused, err := f.dial(ctx, i, u.Host, req, spread)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				cr.Connected++
			case refused:
				cr.Refused++
			default:
				cr.Failed++
			}
			if err != nil && cr.FirstErr == "" {
				cr.FirstErr = err.Error()
			}
		}()
	}
	wg.Wait()
	f.connected.Store(int32(cr.Connected))
	return f, cr, nil
}

// dial connects client i and starts its reader. refused: the server answered non-200.
func (f *fleet) dial(ctx context.Context, i int, addr string, req []byte, spread bool) (refused bool, err error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	if spread {
		d.LocalAddr = &net.TCPAddr{IP: sourceIP(i)}
	}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false, err
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(16 << 10)
	}
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write(req); err != nil {
		conn.Close()
		return false, err
	}
	buf := make([]byte, 1024)
	var head []byte
	for {
		k, err := conn.Read(buf)
		if err != nil {
			conn.Close()
			return false, fmt.Errorf("read response: %w", err)
		}
		head = append(head, buf[:k]...)
		if bytes.Contains(head, []byte("\r\n\r\n")) {
			break
		}
		if len(head) > 8192 {
			conn.Close()
			return false, errors.New("response header too large")
		}
	}
	end := bytes.Index(head, []byte("\r\n\r\n"))
	if !bytes.HasPrefix(head, []byte("HTTP/1.1 200 ")) {
		conn.Close()
		line, _, _ := bytes.Cut(head, []byte("\r\n"))
		return true, fmt.Errorf("server answered %q", line)
	}
	_ = conn.SetDeadline(time.Time{})
	f.conns[i] = conn
	f.alive[i].Store(true)
	f.wg.Add(1)
	go f.read(i, conn, head[end+4:])
	return false, nil
}

// read counts client i's data events: each starts right after a newline.
func (f *fleet) read(i int, conn net.Conn, first []byte) {
	defer f.wg.Done()
	defer f.alive[i].Store(false)
	const pat = "\ndata:"
	m := 1 // the header's final newline precedes the stream
	var count int64
	scan := func(b []byte) {
		for _, c := range b {
			switch {
			case c == pat[m]:
				if m++; m == len(pat) {
					m = 0
					count++
					f.event(i, count)
				}
			case c == '\n':
				m = 1
			default:
				m = 0
			}
		}
	}
	scan(first)
	buf := make([]byte, 2048)
	for {
		k, err := conn.Read(buf)
		scan(buf[:k])
		if err != nil {
			return
		}
	}
}

func (f *fleet) event(i int, count int64) {
	f.events[i].Store(count)
	if count > int64(f.pubs) {
		return
	}
	k := int(count - 1)
	f.recvAt[k*f.n+i].Store(time.Now().UnixNano())
	if f.got[k].Add(1) == f.connected.Load() {
		close(f.all[k])
	}
}

func (f *fleet) wait(k int, start time.Time) ([]time.Duration, int, error) {
	if k < 1 || k > f.pubs {
		return nil, 0, fmt.Errorf("no event %d", k)
	}
	t := time.NewTimer(rvWaitAll)
	defer t.Stop()
	select {
	case <-f.all[k-1]:
	case <-t.C:
	}
	lats := make([]time.Duration, 0, f.n)
	s := start.UnixNano()
	for i := range f.n {
		if at := f.recvAt[(k-1)*f.n+i].Load(); at != 0 {
			lats = append(lats, time.Duration(at-s))
		}
	}
	return lats, len(lats), nil
}

func (f *fleet) minEvents() (int64, error) {
	var minEv int64 = -1
	for i := range f.n {
		if f.conns[i] == nil {
			continue
		}
		if e := f.events[i].Load(); minEv < 0 || e < minEv {
			minEv = e
		}
	}
	return max(minEv, 0), nil
}

func (f *fleet) close() error {
	f.closeOnce.Do(func() {
		for _, c := range f.conns {
			if c != nil {
				_ = c.Close()
			}
		}
		f.wg.Wait()
	})
	return nil
}

// runFleetChild is the child process of the bench: it connects n clients to
// base, prints "connected <ok> <refused> <failed> <first error>", then answers
// the parent's lines on stdin:
//
//	wait <k> <start unix ns>  ->  got <k> <n> <latency µs>...
//	min                       ->  min <events>
//	quit (or EOF)             ->  closes the clients and exits
func runFleetChild(ctx context.Context, base string, n, pubs int, spread bool, stdin io.Reader, stdout io.Writer) error {
	raiseOpenFiles()
	f, cr, err := startLocalFleet(ctx, base, n, pubs, spread)
	if err != nil {
		return err
	}
	defer f.close()
	w := bufio.NewWriterSize(stdout, 64<<10)
	errText := strings.ReplaceAll(cr.FirstErr, "\n", " ")
	if errText == "" {
		errText = "-"
	}
	fmt.Fprintf(w, "connected %d %d %d %s\n", cr.Connected, cr.Refused, cr.Failed, errText)
	if err := w.Flush(); err != nil {
		return err
	}
	sc := bufio.NewScanner(stdin)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		switch fields[0] {
		case "wait":
			if len(fields) != 3 {
				return fmt.Errorf("fleet: bad command %q", sc.Text())
			}
			k, err1 := strconv.Atoi(fields[1])
			ns, err2 := strconv.ParseInt(fields[2], 10, 64)
			if err1 != nil || err2 != nil {
				return fmt.Errorf("fleet: bad command %q", sc.Text())
			}
			lats, got, err := f.wait(k, time.Unix(0, ns))
			if err != nil {
				return err
			}
			fmt.Fprintf(w, "got %d %d", k, got)
			for _, l := range lats {
				w.WriteByte(' ')
				w.WriteString(strconv.FormatInt(l.Microseconds(), 10))
			}
			w.WriteByte('\n')
		case "min":
			m, _ := f.minEvents()
			fmt.Fprintf(w, "min %d\n", m)
		case "quit":
			return w.Flush()
		default:
			return fmt.Errorf("fleet: unknown command %q", fields[0])
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
	return sc.Err()
}

// childFleet drives the clients of a child process.
type childFleet struct {
	cmd    *exec.Cmd
	in     io.WriteCloser
	out    *bufio.Reader
	stderr *limitedWriter
	done   chan error
	once   sync.Once
}

func startChildFleet(ctx context.Context, exe, base string, n, pubs int, spread bool) (*childFleet, fleetConnect, error) {
	args := []string{"bench", "rendezvous", "--fleet", base, "--clients", strconv.Itoa(n), "--publishes", strconv.Itoa(pubs)}
	if spread {
		args = append(args, "--spread")
	}
	cmd := exec.CommandContext(ctx, exe, args...)
	cf := &childFleet{cmd: cmd, stderr: &limitedWriter{n: 4096}, done: make(chan error, 1)}
	cmd.Stderr = cf.stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, fleetConnect{}, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fleetConnect{}, err
	}
	cf.in, cf.out = in, bufio.NewReaderSize(out, 1<<20)
	if err := cmd.Start(); err != nil {
		return nil, fleetConnect{}, fmt.Errorf("start %s: %w", exe, err)
	}
	go func() { cf.done <- cmd.Wait() }()
	line, err := cf.line("connected")
	if err != nil {
		cf.close()
		return nil, fleetConnect{}, err
	}
	f := strings.SplitN(line, " ", 5)
	var cr fleetConnect
	if len(f) < 5 {
		cf.close()
		return nil, fleetConnect{}, fmt.Errorf("child: bad line %q", line)
	}
	cr.Connected, _ = strconv.Atoi(f[1])
	cr.Refused, _ = strconv.Atoi(f[2])
	cr.Failed, _ = strconv.Atoi(f[3])
	if f[4] != "-" {
		cr.FirstErr = f[4]
	}
	return cf, cr, nil
}

// line reads the child's next line, which must start with want.
func (c *childFleet) line(want string) (string, error) {
	s, err := c.out.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("child: %w (stderr: %s)", err, strings.TrimSpace(c.stderr.String()))
	}
	s = strings.TrimSuffix(s, "\n")
	if !strings.HasPrefix(s, want+" ") {
		return "", fmt.Errorf("child: got %q, want %q", trimLine(s), want)
	}
	return s, nil
}

func trimLine(s string) string {
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return s
}

func (c *childFleet) wait(k int, start time.Time) ([]time.Duration, int, error) {
	if _, err := fmt.Fprintf(c.in, "wait %d %d\n", k, start.UnixNano()); err != nil {
		return nil, 0, err
	}
	line, err := c.line("got")
	if err != nil {
		return nil, 0, err
	}
	f := strings.Fields(line)
	if len(f) < 3 {
		return nil, 0, fmt.Errorf("child: bad line %q", trimLine(line))
	}
	got, _ := strconv.Atoi(f[2])
	lats := make([]time.Duration, 0, len(f)-3)
	for _, s := range f[3:] {
		us, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return nil, 0, fmt.Errorf("child: bad latency %q", s)
		}
		lats = append(lats, time.Duration(us)*time.Microsecond)
	}
	return lats, got, nil
}

func (c *childFleet) minEvents() (int64, error) {
	if _, err := io.WriteString(c.in, "min\n"); err != nil {
		return 0, err
	}
	line, err := c.line("min")
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimPrefix(line, "min "), 10, 64)
}

func (c *childFleet) close() error {
	var err error
	c.once.Do(func() {
		_, _ = io.WriteString(c.in, "quit\n")
		_ = c.in.Close()
		select {
		case err = <-c.done:
		case <-time.After(30 * time.Second):
			_ = c.cmd.Process.Kill()
			err = <-c.done
		}
		if err != nil {
			err = fmt.Errorf("child: %w (stderr: %s)", err, strings.TrimSpace(c.stderr.String()))
		}
	})
	return err
}
