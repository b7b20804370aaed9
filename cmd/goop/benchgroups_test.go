package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/domain/mq"
)

// TestBenchGroupsTinyRun runs `goop bench groups` end to end on 3 members
// (plus the slow one) and checks the shape of its JSON and table output.
// Timings are only required to be present, never compared to targets.
func TestBenchGroupsTinyRun(t *testing.T) {
	if testing.Short() {
		t.Skip("starts five nodes")
	}
	const members, messages = 3, 10
	code, out, errOut := runGoop(t, "bench", "groups", "--json", "--members", "3", "--messages", "10",
		"--min-deliveries", "60", "--payload-bytes", "256", "--slow-ms", "5", "--slow-messages", "12")
	require.Equal(t, 0, code, errOut)

	var res groupsBenchResult
	require.NoError(t, json.Unmarshal([]byte(out), &res), out)
	assert.Equal(t, messages, res.Messages)
	assert.Equal(t, 60, res.MinDeliveries)
	assert.Equal(t, 256, res.PayloadBytes)
	assert.Equal(t, 1+members+1, res.Nodes, "host, members and the slow member")
	assert.Positive(t, res.StartMS)
	require.Len(t, res.Runs, 1)
	run := res.Runs[0]
	assert.Equal(t, members, run.Members)
	assert.NotEmpty(t, run.Transport)
	assert.Equal(t, messages*(members-1), run.LatencyMemberSends.N, "one sample per message and other member")
	assert.Equal(t, messages*members, run.LatencyHostSends.N, "one sample per message and member")
	for name, l := range map[string]latency{"member sends": run.LatencyMemberSends, "host sends": run.LatencyHostSends} {
		assert.Positive(t, l.MedianUS, name)
		assert.GreaterOrEqual(t, l.P99US, l.MedianUS, name)
	}
	assert.Positive(t, run.DeliveriesPerSecHostSends)
	assert.Positive(t, run.DeliveriesPerSecMemberSends)

	require.NotNil(t, run.Slow)
	assert.Equal(t, 5, run.Slow.DelayMS)
	const slowMessages = 12
	assert.Equal(t, slowMessages*(members-1), run.Slow.OthersBaseline.N)
	assert.Equal(t, slowMessages*(members-1), run.Slow.OthersSlowed.N)
	assert.Equal(t, slowMessages, run.Slow.SlowMember.N, "the slow member got every message")
	assert.Positive(t, run.Slow.OthersP99Ratio)
	ci := run.Slow.OthersP99RatioCI95
	assert.Positive(t, ci[0], "the ratio's interval")
	assert.LessOrEqual(t, ci[0], ci[1])
	assert.Positive(t, run.Slow.OthersDeliveriesPerSecBaseline)
	assert.Positive(t, run.Slow.OthersDeliveriesPerSecSlowed)
	for _, key := range []string{`"latency_member_sends"`, `"deliveries_per_sec_host_sends"`, `"others_p99_ratio"`, `"others_p99_ratio_ci95"`, `"cpu_us_per_delivery"`} {
		assert.Contains(t, out, key)
	}

	var table bytes.Buffer
	require.NoError(t, res.writeTable(&table))
	for _, row := range []string{"N=3 members over", "latency, member sends (via host)", "throughput, host sends",
		"others' p99 slowed / baseline", "others' p99 slowed / baseline, 95% interval (bootstrap over blocks)",
		"slow member's own latency (5 ms each way)"} {
		assert.Contains(t, table.String(), row)
	}
}

// The interval of the slow member measure's p99 ratio: exact when every
// block pair shows the same ratio, wide when the p99 of one side hangs on a
// single block's rare slow messages, the same for the same samples, and
// zero without samples.
func TestP99RatioInterval(t *testing.T) {
	ms := func(vs ...int) []time.Duration {
		ds := make([]time.Duration, len(vs))
		for i, v := range vs {
			ds[i] = time.Duration(v) * time.Millisecond
		}
		return ds
	}
	block := func(scale, outliers int) []time.Duration {
		var vs []int
		for v := 1; v <= 100; v++ {
			vs = append(vs, v*scale)
		}
		for i := 0; i < outliers; i++ {
			vs[i] = 10_000
		}
		return ms(vs...)
	}
	var doubled, steady []blockPair
	for range 40 {
		doubled = append(doubled, blockPair{base: block(1, 0), slowed: block(2, 0)})
		steady = append(steady, blockPair{base: block(1, 0), slowed: block(1, 0)})
	}
	assert.Equal(t, [2]float64{2, 2}, p99RatioInterval(doubled, 200), "every pair doubles")
	assert.Equal(t, [2]float64{1, 1}, p99RatioInterval(steady, 200))

	// 40 pairs of 100 samples: the pooled p99 is the 40th largest of 4,000.
	// One baseline block holds 60 slow messages: the baseline's p99 is one
	// of them whenever that block is drawn, and the ratio falls far below 1.
	steady[7].base = block(1, 60)
	ci := p99RatioInterval(steady, 200)
	assert.Less(t, ci[0], 0.1, "draws holding the slow block")
	assert.Equal(t, 1.0, ci[1], "draws without it")
	assert.Equal(t, ci, p99RatioInterval(steady, 200), "a fixed seed")

	assert.Equal(t, [2]float64{}, p99RatioInterval(nil, 200))
	assert.Equal(t, [2]float64{}, p99RatioInterval([]blockPair{{base: ms(1)}}, 200))
}

// selectP99 finds what sorting finds, whatever the order and repeats.
func TestSelectP99(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, n := range []int{1, 2, 3, 7, 100, 101, 1000, 4999} {
		for _, spread := range []int{1, 3, 1000, 1 << 30} {
			s := make([]time.Duration, n)
			for i := range s {
				s[i] = time.Duration(rng.IntN(spread))
			}
			sorted := slices.Clone(s)
			slices.Sort(sorted)
			want := sorted[p99Index(n)]
			assert.Equal(t, want, selectP99(s), "n=%d spread=%d", n, spread)
			slices.Sort(s)
			assert.Equal(t, want, selectP99(s), "n=%d spread=%d, sorted", n, spread)
			slices.Reverse(s)
			assert.Equal(t, want, selectP99(s), "n=%d spread=%d, reversed", n, spread)
		}
	}
}

// TestBenchGroupsHundredMembers: a host's group holds a hundred real member
// nodes over libp2p on loopback (in one process). All join, and every
// message, whoever sends it, reaches every other member exactly once (the
// bench fails on a missing or duplicated delivery; the sample counts are
// one per delivery). ~5 s and ~1 GB.
func TestBenchGroupsHundredMembers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 101 nodes")
	}
	if n := raiseOpenFiles(); n != 0 && n < 4096 {
		t.Skipf("open-files limit %d: 101 nodes need more", n)
	}
	const members, messages = 100, 10
	code, out, errOut := runGoop(t, "bench", "groups", "--json", "--members", strconv.Itoa(members),
		"--messages", strconv.Itoa(messages), "--min-deliveries", "1000", "--payload-bytes", "256", "--slow-ms", "0")
	require.Equal(t, 0, code, errOut)
	var res groupsBenchResult
	require.NoError(t, json.Unmarshal([]byte(out), &res), out)
	assert.Equal(t, 1+members, res.Nodes)
	require.Len(t, res.Runs, 1)
	run := res.Runs[0]
	assert.Equal(t, members, run.Members)
	assert.Equal(t, messages*(members-1), run.LatencyMemberSends.N)
	assert.Equal(t, messages*members, run.LatencyHostSends.N)
	assert.Positive(t, run.DeliveriesPerSecHostSends)
	assert.Positive(t, run.DeliveriesPerSecMemberSends)
}

func TestBenchGroupsUsageErrors(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"one member", []string{"--members", "1"}, "--members"},
		{"not a number", []string{"--members", "10,x"}, "--members"},
		{"too many members", []string{"--members", "100000"}, "--members"},
		{"too few slow messages", []string{"--slow-messages", "9"}, "--slow-messages"},
		{"few messages", []string{"--messages", "5"}, "--messages must be between"},
		{"tiny payload", []string{"--payload-bytes", "8"}, "--payload-bytes must be between"},
		{"negative min deliveries", []string{"--min-deliveries", "-1"}, "--min-deliveries must be between"},
		{"negative delay", []string{"--slow-ms", "-1"}, "--slow-ms must be between"},
		{"unknown transport", []string{"--transport", "udp"}, "--transport must be"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := runGoop(t, append([]string{"bench", "groups"}, tc.args...)...)
			assert.Equal(t, exitUsage, code)
			assert.Contains(t, errOut, "goop: "+tc.want)
		})
	}
}

func TestBenchGroupsHelp(t *testing.T) {
	code, out, _ := runGoop(t, "bench", "--help")
	require.Equal(t, 0, code)
	assert.Contains(t, out, "groups")
	code, out, _ = runGoop(t, "bench", "groups", "--help")
	require.Equal(t, 0, code)
	for _, flag := range []string{"--members", "--messages", "--payload-bytes", "--slow-ms", "--transport", "--cpuprofile", "--trace", "--json"} {
		assert.Contains(t, out, flag)
	}
}

// --trace writes a Go execution trace of the measures, a file per group
// size after the first, in which each latency message is a task; beside it,
// --cpuprofile writes a CPU profile per size the same way.
func TestBenchGroupsTrace(t *testing.T) {
	if testing.Short() {
		t.Skip("starts nodes")
	}
	dir := t.TempDir()
	path, prof := filepath.Join(dir, "groups.trace"), filepath.Join(dir, "groups.prof")
	code, _, errOut := runGoop(t, "bench", "groups", "--members", "2,3", "--messages", "10",
		"--min-deliveries", "20", "--slow-ms", "0", "--trace", path, "--cpuprofile", prof)
	require.Equal(t, 0, code, errOut)
	for _, p := range []string{prof, prof + ".3"} {
		b, err := os.ReadFile(p)
		require.NoError(t, err)
		assert.True(t, bytes.HasPrefix(b, []byte{0x1f, 0x8b}), "%s is a (gzipped) pprof profile", p)
	}
	for _, f := range []struct{ path, task string }{
		{path, "message to 2 members (host sends)"},
		{path + ".3", "message to 3 members (host sends)"},
	} {
		b, err := os.ReadFile(f.path)
		require.NoError(t, err)
		require.True(t, bytes.HasPrefix(b, []byte("go 1.")), "a Go execution trace: %q", b[:min(16, len(b))])
		assert.True(t, bytes.Contains(b, []byte(f.task)), "%s names its tasks %q", f.path, f.task)
		assert.True(t, bytes.Contains(b, []byte("message to 1 members (member sends)")) || f.path != path,
			"the member-sends measure's messages are tasks too")
	}
}

func TestParseMemberCounts(t *testing.T) {
	got, err := parseMemberCounts(" 10, 50,10")
	require.NoError(t, err)
	assert.Equal(t, []int{10, 50}, got, "trimmed, duplicates dropped, order kept")
	for _, bad := range []string{"", "1", "a", "10,,50", "201"} {
		_, err := parseMemberCounts(bad)
		assert.Error(t, err, bad)
	}
}

func TestGroupsBenchPayloadCarriesItsNonce(t *testing.T) {
	cases := []struct {
		name  string
		size  int
		nonce uint64
	}{
		{"minimum size", minGroupsPayload, 7},
		{"1 KB", 1024, 123456},
		{"large nonce", 64, 1<<63 + 5},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := &groupsBench{o: groupsBenchOptions{PayloadBytes: tc.size}, pad: strings.Repeat("x", tc.size)}
			p := b.payload(tc.nonce)
			assert.True(t, json.Valid(p), string(p))
			assert.Len(t, p, tc.size)
			n, ok := parseNonce(p)
			require.True(t, ok)
			assert.Equal(t, tc.nonce, n)
		})
	}
	for _, bad := range []string{``, `{"x":1}`, `{"n":12`, `{"n":-1,"p":""}`, `{"n":abc,"p":""}`} {
		_, ok := parseNonce([]byte(bad))
		assert.False(t, ok, bad)
	}
}

// TestDelayProxyRelaysBothWays checks that bytes pass the proxy intact in
// both directions, with and without a delay, that a half-close reaches the
// other side, and that Close ends proxied connections.
func TestDelayProxyRelaysBothWays(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	go func() { // echo server: copies until EOF, then half-closes
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
				_ = c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	p, err := newDelayProxy("127.0.0.1:0", ln.Addr().String())
	require.NoError(t, err)
	defer p.Close()

	for _, delay := range []time.Duration{0, 3 * time.Millisecond} {
		p.SetDelay(delay)
		c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p.Port())), waitFor)
		require.NoError(t, err)
		require.NoError(t, c.SetDeadline(time.Now().Add(waitFor)))
		msg := bytes.Repeat([]byte("goop"), 50_000) // several chunks
		go func() {
			_, _ = c.Write(msg)
			_ = c.(*net.TCPConn).CloseWrite()
		}()
		got, err := io.ReadAll(c) // ends at the echo's half-close, relayed
		require.NoError(t, err)
		assert.Equal(t, msg, got, "delay %s", delay)
		c.Close()
	}

	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p.Port())), waitFor)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(waitFor)))
	_, err = c.Write([]byte("x"))
	require.NoError(t, err)
	buf := make([]byte, 1)
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	p.Close()
	_, err = c.Read(buf)
	assert.Error(t, err, "Close ends proxied connections")
}

// BenchmarkGroupFanout runs the fan-out measures of `goop bench groups` as
// Go benchmarks, for profiling (go test -run '^$' -bench GroupFanout
// -cpuprofile cpu.out ./cmd/goop): b.N messages to a group of N members,
// pipelined from the host (throughput) or one after the other from a member
// (latency).
func BenchmarkGroupFanout(b *testing.B) {
	for _, n := range []int{10, 50} {
		b.Run("N="+strconv.Itoa(n), func(b *testing.B) {
			ctx := context.Background()
			gb, err := startGroupsBench(ctx, groupsBenchOptions{Messages: 10_000, PayloadBytes: 1024, Transport: "any"}, n)
			require.NoError(b, err)
			defer func() { assert.NoError(b, gb.Close()) }()
			gid, err := gb.createGroup(ctx, "bench")
			require.NoError(b, err)
			members := make([]int, n)
			for i := range members {
				members[i] = i
			}
			require.NoError(b, gb.join(ctx, gid, members))
			host := mq.PeerID(gb.host.PeerID.String())
			_, err = gb.latency(ctx, gb.members[0], host, gid, members[1:], nil, groupsWarmup)
			require.NoError(b, err)

			b.Run("throughput_host_sends", func(b *testing.B) {
				b.ResetTimer()
				rate, _, err := gb.throughput(ctx, gb.host, host, gid, members, nil, b.N)
				require.NoError(b, err)
				b.ReportMetric(rate, "deliveries/s")
			})
			b.Run("latency_member_sends", func(b *testing.B) {
				b.ResetTimer()
				m, err := gb.latency(ctx, gb.members[0], host, gid, members[1:], nil, b.N)
				require.NoError(b, err)
				l := summarize(m.samples(members[1:]))
				b.ReportMetric(l.MedianUS, "median-µs")
				b.ReportMetric(l.P99US, "p99-µs")
			})
		})
	}
}

func TestThroughputMessages(t *testing.T) {
	b := &groupsBench{o: groupsBenchOptions{Messages: 500, MinDeliveries: 100_000}}
	assert.Equal(t, 2000, b.tputMessages(50))
	assert.Equal(t, 10_000, b.tputMessages(10))
	assert.Equal(t, 11_112, b.tputMessages(9), "rounded up")
	assert.Equal(t, 100_000, b.tputMessages(1), "at most the outbox bound")
	b.o.MinDeliveries = 0
	assert.Equal(t, 500, b.tputMessages(50), "--messages at least")
}
