package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/cmd/goop/node"
)

// runMainEnv makes the test binary behave as the goop command, so tests and
// the bench can run `goop peer` as a child process.
const runMainEnv = "GOOP_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
	}
	os.Exit(m.Run())
}

const waitFor = 15 * time.Second

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func runGoop(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb syncBuffer
	code = run(context.Background(), append([]string{"goop"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func TestHelpOnEveryCommand(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--help"}, "--log-level"},
		{[]string{"init", "--help"}, "goop init [command options] DIR"},
		{[]string{"peer", "--help"}, "goop peer [command options] DIR"},
		{[]string{"bench", "--help"}, "mq"},
		{[]string{"bench", "mq", "--help"}, "--count"},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, out, _ := runGoop(t, tc.args...)
			assert.Equal(t, 0, code)
			assert.Contains(t, out, tc.want)
		})
	}
}

func TestUsageErrors(t *testing.T) {
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"init without dir", []string{"init"}, exitUsage, "usage: goop init DIR"},
		{"peer with two dirs", []string{"peer", "a", "b"}, exitUsage, "usage: goop peer DIR"},
		{"flag after the arguments", []string{"groups", "history", "HOST", "GROUP", "--limit", "5"}, exitUsage,
			"usage: goop groups history [HOST_PEER_ID] GROUP_ID\n(flags go before the arguments: \"--limit\" came after them)"},
		{"bad log level", []string{"--log-level", "loud", "init", "x"}, exitUsage, `--log-level: "loud" is not debug, info, warn or error`},
		{"bench count", []string{"bench", "mq", "--count", "1"}, exitUsage, "--count must be between"},
		{"bench messages", []string{"bench", "mq", "--messages", "100001"}, exitUsage, "--messages must be between"},
		{"bench repeat 0", []string{"bench", "mq", "--repeat", "0"}, exitUsage, "--repeat must be between 1 and 20"},
		{"bench repeat 21", []string{"bench", "groups", "--repeat", "21"}, exitUsage, "--repeat must be between 1 and 20"},
		{"bench repeat with a profile", []string{"bench", "mq", "--repeat", "2", "--cpuprofile", "x.prof"}, exitUsage,
			"--cpuprofile profiles one run: drop --repeat or --cpuprofile"},
		{"bench repeat with a trace", []string{"bench", "groups", "--repeat", "2", "--trace", "x.trace"}, exitUsage,
			"--trace traces one run: drop --repeat or --trace"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := runGoop(t, tc.args...)
			assert.Equal(t, tc.code, code)
			assert.Contains(t, errOut, "goop: "+tc.want)
		})
	}
}

func TestInitCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "alice")
	code, out, errOut := runGoop(t, "init", dir)
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "initialized "+dir+": created")
	for _, f := range []struct {
		path string
		mode os.FileMode
	}{
		{"goop.json", 0o600},
		{"data/identity.key", 0o600},
		{"data/data.db", 0},
		{"site/index.html", 0o644},
	} {
		st, err := os.Stat(filepath.Join(dir, f.path))
		require.NoError(t, err, f.path)
		if f.mode != 0 {
			assert.Equal(t, f.mode, st.Mode().Perm(), f.path)
		}
	}
	cfg, err := app.LoadConfig(filepath.Join(dir, "goop.json"))
	require.NoError(t, err)
	assert.Equal(t, "alice", cfg.Profile.Label)

	code, out, _ = runGoop(t, "init", dir)
	assert.Equal(t, 0, code)
	assert.Contains(t, out, "already a peer folder; nothing changed")
}

func TestInitCommandLabelFlag(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "b")
	code, _, errOut := runGoop(t, "init", "--label", "Bob the peer", dir)
	require.Equal(t, 0, code, errOut)
	cfg, err := app.LoadConfig(filepath.Join(dir, "goop.json"))
	require.NoError(t, err)
	assert.Equal(t, "Bob the peer", cfg.Profile.Label)
}

// testMDNSTag is an mDNS tag of its own: a test's node must not find, nor be
// found by, the nodes of other tests or of people on this machine's LAN.
func testMDNSTag() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "goop-test-" + hex.EncodeToString(b[:])
}

func writeConfig(t *testing.T, dir string, cfg app.Config) {
	t.Helper()
	require.NoError(t, os.MkdirAll(dir, 0o755))
	require.NoError(t, app.SaveConfig(filepath.Join(dir, "goop.json"), cfg))
}

func TestPeerCommandBadConfigNamesTheKey(t *testing.T) {
	cases := []struct {
		name, doc, want string
	}{
		{"unknown key", `{"p2p":{"listen_prot":1}}`, `goop.json: unknown key "p2p.listen_prot" (did you mean "p2p.listen_port"?)`},
		{"invalid port", `{"p2p":{"listen_port":70000}}`, `goop.json: p2p.listen_port: 70000 is not a port (0-65535)`},
		{"non-loopback viewer", `{"viewer":{"http_addr":"0.0.0.0:8080"}}`, `goop.json: viewer.http_addr: "0.0.0.0:8080" is not a loopback address`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			require.NoError(t, os.WriteFile(filepath.Join(dir, "goop.json"), []byte(tc.doc), 0o600))
			code, out, errOut := runGoop(t, "peer", dir)
			assert.Equal(t, exitError, code)
			assert.Empty(t, out)
			assert.Contains(t, errOut, tc.want)
		})
	}
}

func TestPeerCommandViewerPortInUse(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	dir := t.TempDir()
	cfg := app.DefaultConfig()
	cfg.Viewer.HTTPAddr = busy.Addr().String()
	writeConfig(t, dir, cfg)
	code, _, errOut := runGoop(t, "peer", dir)
	assert.Equal(t, exitError, code)
	assert.Equal(t, "goop: viewer.http_addr: "+busy.Addr().String()+" is in use\n", errOut)
}

// TestPeerCommandRunsUntilCancelled runs `goop peer` in-process: it prints
// the ready line, serves the viewer, and on cancellation (as on SIGINT)
// stops cleanly with status 0 and no goroutine left behind.
func TestPeerCommandRunsUntilCancelled(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "p")
	cfg := app.DefaultConfig()
	cfg.Profile.Label = "p"
	cfg.Viewer.HTTPAddr = "127.0.0.1:0"
	cfg.P2P.MDNSTag = testMDNSTag() // no other node on this machine finds it
	writeConfig(t, dir, cfg)
	// A first node warms up libp2p's process-wide goroutines.
	warm, err := node.Start(context.Background(), filepath.Join(t.TempDir(), "warm"), node.Options{ListenIP: "127.0.0.1", NoAutoConnect: true,
		Init: node.InitOptions{Configure: func(c *app.Config) { c.Viewer.HTTPAddr = "127.0.0.1:0" }}})
	require.NoError(t, err)
	require.NoError(t, warm.Close())
	base := runtime.NumGoroutine()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	outR, outW := io.Pipe()
	var errb syncBuffer
	codeC := make(chan int, 1)
	go func() {
		code := run(ctx, []string{"goop", "peer", dir}, outW, &errb)
		outW.Close()
		codeC <- code
	}()
	lineC := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			lineC <- sc.Text()
		}
		close(lineC)
	}()
	var ready map[string]string
	select {
	case line, ok := <-lineC:
		require.True(t, ok, "no ready line; stderr: %s", errb.String())
		var good bool
		ready, good = parseReadyLine(line)
		require.True(t, good, line)
	case <-time.After(waitFor):
		t.Fatalf("no ready line; stderr: %s", errb.String())
	}
	assert.NotEmpty(t, ready["addrs"])

	resp, err := http.Get(ready["viewer"] + "healthz")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	var self map[string]any
	resp, err = http.Get(ready["viewer"] + "api/self")
	require.NoError(t, err)
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&self))
	resp.Body.Close()
	assert.Equal(t, ready["peer_id"], self["id"])
	assert.Equal(t, "p", self["label"])

	cancel()
	select {
	case code := <-codeC:
		assert.Equal(t, 0, code, errb.String())
	case <-time.After(waitFor):
		t.Fatal("peer did not stop")
	}
	http.DefaultClient.CloseIdleConnections()
	waitGoroutines(t, base)
}

// TestPeerProcessStopsOnSIGTERM runs `goop peer` as a real child process and
// stops it with SIGTERM: exit status 0.
func TestPeerProcessStopsOnSIGTERM(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "child")
	_, err := node.Init(context.Background(), dir, node.InitOptions{Configure: func(c *app.Config) {
		c.Viewer.HTTPAddr = "127.0.0.1:0"
		c.P2P.MDNSTag = testMDNSTag()
	}})
	require.NoError(t, err)
	exe, err := os.Executable()
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitFor)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "peer", dir)
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	var errb syncBuffer
	cmd.Stderr = &errb
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	sc := bufio.NewScanner(out)
	require.True(t, sc.Scan(), "no ready line; stderr: %s", errb.String())
	ready, ok := parseReadyLine(sc.Text())
	require.True(t, ok, sc.Text())
	resp, err := http.Get(ready["viewer"] + "healthz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)

	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	err = cmd.Wait()
	assert.NoError(t, err, "stderr: %s", errb.String())
	assert.Equal(t, 0, cmd.ProcessState.ExitCode())
}

func TestBenchMQ(t *testing.T) {
	if testing.Short() {
		t.Skip("starts four nodes")
	}
	exe, err := os.Executable()
	require.NoError(t, err)
	t.Setenv(runMainEnv, "1") // the child `goop peer` is this test binary
	res, err := benchMQ(context.Background(), benchOptions{Count: 20, Messages: 300, PayloadBytes: 64, Exe: exe})
	require.NoError(t, err)
	assert.Equal(t, 300, res.Messages)
	assert.Equal(t, 20, res.Echo.N)
	assert.Equal(t, 20, res.MQ11.N)
	assert.Equal(t, 20, res.MQ10.N)
	assert.Positive(t, res.Echo.MedianUS)
	assert.Positive(t, res.RatioMQ11ToEcho)
	assert.Positive(t, res.Throughput1)
	assert.Positive(t, res.Throughput8)
	assert.Positive(t, res.PeerStartupMS)
	assert.Positive(t, res.PeerRSSKiB)
	assert.NotEmpty(t, res.Transport)

	var table bytes.Buffer
	require.NoError(t, res.writeTable(&table))
	assert.Contains(t, table.String(), "MQ 1.1.0 median / echo median")
	b, err := json.Marshal(res)
	require.NoError(t, err)
	assert.Contains(t, string(b), `"ratio_mq_1_1_0_to_echo_median"`)
}

func TestSummarize(t *testing.T) {
	ds := make([]time.Duration, 0, 100)
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Microsecond)
	}
	l := summarize(ds)
	assert.Equal(t, 100, l.N)
	assert.InDelta(t, 50.5, l.MedianUS, 0.001)
	assert.InDelta(t, 99, l.P99US, 0.001)
	assert.InDelta(t, 50.5, l.MeanUS, 0.001)
	assert.Equal(t, latency{}, summarize(nil))
	assert.Equal(t, 7.0, summarize([]time.Duration{7 * time.Microsecond}).P99US)
}

func TestParseReadyLine(t *testing.T) {
	f, ok := parseReadyLine("ready peer_id=12D3 viewer=http://127.0.0.1:1/ addrs=/ip4/1/tcp/2,/ip4/1/udp/2/quic-v1\n")
	require.True(t, ok)
	assert.Equal(t, map[string]string{"peer_id": "12D3", "viewer": "http://127.0.0.1:1/", "addrs": "/ip4/1/tcp/2,/ip4/1/udp/2/quic-v1"}, f)
	_, ok = parseReadyLine("starting")
	assert.False(t, ok)
}

// waitGoroutines waits until no more than base goroutines run. It polls on
// the test goroutine itself (assert.Eventually would add goroutines of its
// own to the count) and dumps the stacks on timeout.
func waitGoroutines(t *testing.T, base int) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(waitFor)
	for runtime.NumGoroutine() > base {
		select {
		case <-tick.C:
		case <-deadline:
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines still running, %d before:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
	}
}
