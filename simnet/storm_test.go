package simnet

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestStormInvariantsAndLiveness is the acceptance run: mq-storm with
// 100 peers over 200 seeds, each with its own fault mix; every invariant holds
// and every seed converges. -short runs 20 seeds.
func TestStormInvariantsAndLiveness(t *testing.T) {
	seeds := 200
	if testing.Short() {
		seeds = 20
	}
	sc, err := Lookup(ScenarioStorm)
	require.NoError(t, err)
	sum := RunSeeds(sc, 1, seeds, Params{Peers: 100}, 0)
	require.Len(t, sum.Reports, seeds)
	for _, r := range sum.Reports {
		if !r.Passed() {
			t.Error(r.Failure())
		}
	}
	tot := sum.Totals()
	assert.Equal(t, tot.MsgsSent, tot.MsgsAcked+tot.MsgsFailed, "every message has exactly one fate")
	assert.LessOrEqual(t, tot.MsgsAcked, tot.MsgsDelivered)
	assert.LessOrEqual(t, tot.MsgsDelivered, tot.MsgsSent)
	assert.NotZero(t, tot.MsgsFailed, "bounded-retry seeds gave messages up")
	assert.NotZero(t, tot.DroppedLoss)
	assert.NotZero(t, tot.DroppedPartition)
	assert.NotZero(t, tot.DroppedDown)
	assert.NotZero(t, tot.FramesDuplicated)
	assert.NotZero(t, tot.Crashes)
	assert.NotZero(t, tot.CodecChecked)
	t.Logf("%d seeds × 100 peers: %d events, %d messages, in %s on %d workers (%.1f seeds/s), virtual/wall %.0f× per core",
		seeds, tot.Events, tot.MsgsSent, sum.Elapsed.Round(time.Millisecond), sum.Workers,
		float64(seeds)/sum.Elapsed.Seconds(), sum.Ratio())
}

// TestStormDeterminism runs 20 seeds twice: the trace hashes are identical,
// and different seeds give different traces.
func TestStormDeterminism(t *testing.T) {
	n := 20
	if testing.Short() {
		n = 5
	}
	sc, err := Lookup(ScenarioStorm)
	require.NoError(t, err)
	a := RunSeeds(sc, 1, n, Params{Peers: 100}, 0)
	b := RunSeeds(sc, 1, n, Params{Peers: 100}, 1) // another schedule of the same seeds
	seen := map[string]uint64{}
	for i := range a.Reports {
		ra, rb := a.Reports[i], b.Reports[i]
		require.Equal(t, ra.Seed, rb.Seed)
		assert.Equal(t, ra.TraceHash, rb.TraceHash, "seed %d", ra.Seed)
		assert.Equal(t, ra.Stats, rb.Stats, "seed %d", ra.Seed)
		assert.Equal(t, ra.VirtualTime, rb.VirtualTime, "seed %d", ra.Seed)
		if prev, dup := seen[ra.TraceHash]; dup {
			t.Errorf("seeds %d and %d have the same trace hash", prev, ra.Seed)
		}
		seen[ra.TraceHash] = ra.Seed
	}
}

// TestPlantedFaultIsCaught proves the checks can fail: with a bus that skips
// dedupe, the invariants catch it within 50 seeds, and the failure names the
// seed, its options, the broken invariant and the replay command.
func TestPlantedFaultIsCaught(t *testing.T) {
	for seed := uint64(1); seed <= 50; seed++ {
		r := RunStorm(seed, Params{Peers: 100, Fault: FaultSkipDedupe})
		if r.Passed() {
			continue
		}
		require.NotNil(t, r.Violation, "a safety property caught it, not a timeout")
		assert.Contains(t, []string{PropNoDuplicate, PropOrder}, r.Violation.Property)
		f := r.Failure()
		assert.Contains(t, f, fmt.Sprintf("seed %d", seed))
		assert.Contains(t, f, "options:   latency=")
		assert.Contains(t, f, "invariant: "+r.Violation.Property)
		assert.Contains(t, f, fmt.Sprintf("replay:    go run ./cmd/goop sim --scenario mq-storm --seed %d --peers 100 --duration 30s --fault skip-dedupe", seed))
		t.Logf("caught at seed %d:\n%s", seed, f)
		return
	}
	t.Fatal("50 seeds of mq-storm with a bus that skips dedupe broke no invariant")
}

func TestStormPlanIsSeeded(t *testing.T) {
	p := Params{Peers: 100}
	assert.Equal(t, PlanStorm(3, p), PlanStorm(3, p))
	assert.NotEqual(t, PlanStorm(3, p).String(), PlanStorm(4, p).String())
	var parts, oneWay, crashes, bw int
	for seed := uint64(1); seed <= 100; seed++ {
		pl := PlanStorm(seed, p)
		parts += len(pl.Partitions)
		crashes += len(pl.Crashes)
		for _, pp := range pl.Partitions {
			if pp.OneWay {
				oneWay++
			}
			assert.Less(t, pp.At, p.withDefaults().Duration)
			assert.NotEmpty(t, pp.A)
		}
		if pl.Link.Bandwidth > 0 {
			bw++
		}
		assert.GreaterOrEqual(t, pl.Link.Loss, 0.0)
		assert.Less(t, pl.Link.Loss, 0.2)
	}
	assert.NotZero(t, parts)
	assert.NotZero(t, oneWay)
	assert.NotZero(t, crashes)
	assert.NotZero(t, bw)
}

func TestReplayCommand(t *testing.T) {
	cases := []struct {
		name string
		sc   string
		p    Params
		want string
	}{
		{"storm defaults", ScenarioStorm, Params{}, "go run ./cmd/goop sim --scenario mq-storm --seed 7 --peers 100 --duration 30s"},
		{"storm custom", ScenarioStorm, Params{Peers: 1000, Duration: time.Minute, Rate: 2, Deadline: time.Hour, Fault: FaultSkipDedupe},
			"go run ./cmd/goop sim --scenario mq-storm --seed 7 --peers 1000 --duration 1m0s --rate 2 --deadline 1h0m0s --fault skip-dedupe"},
		{"script", "crash-restart", Params{}, "go run ./cmd/goop sim --scenario crash-restart --seed 7"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, ReplayCommand(tc.sc, 7, tc.p))
		})
	}
}

func TestLookup(t *testing.T) {
	sc, err := Lookup("mq-storm")
	require.NoError(t, err)
	assert.Equal(t, ScenarioStorm, sc.Name)

	assert.Contains(t, EmbeddedScripts(), "basic")
	sc, err = Lookup("basic")
	require.NoError(t, err)
	r := sc.Run(1, Params{})
	assert.True(t, r.Passed(), r.Failure())
	assert.True(t, r.Liveness.Ran == false || r.Liveness.Converged)
	assert.Contains(t, r.Transcript, "p1 delivered p0→p1 #1")

	sc, err = Lookup("planted-fault")
	require.NoError(t, err)
	r = sc.Run(1, Params{})
	assert.False(t, r.Passed())
	require.NotNil(t, r.Violation)
	assert.Equal(t, PropNoDuplicate, r.Violation.Property)

	path := filepath.Join(t.TempDir(), "mine.txt")
	require.NoError(t, os.WriteFile(path, []byte("world peers=2\n----\n\nsend from=p0 to=p1\n----\n\nconverge\n----\n"), 0o644))
	sc, err = Lookup(path)
	require.NoError(t, err)
	r = sc.Run(5, Params{})
	assert.True(t, r.Passed(), r.Failure())
	assert.True(t, r.Liveness.Converged)
	assert.Equal(t, "peers=2", r.Options)

	_, err = Lookup("no-such-scenario")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "mq-storm")
}

// BenchmarkStorm measures mq-storm at 100 and 1,000 peers: virtual/wall is the
// speed-up over real time, heap-MiB the peak heap in use.
func BenchmarkStorm(b *testing.B) {
	for _, peers := range []int{100, 1000} {
		b.Run(fmt.Sprintf("peers=%d", peers), func(b *testing.B) {
			m := StartMemSampler(10 * time.Millisecond)
			var virt, wall time.Duration
			for i := 0; i < b.N; i++ {
				r := RunStorm(uint64(i+1), Params{Peers: peers})
				if !r.Passed() {
					b.Fatal(r.Failure())
				}
				virt += r.VirtualTime
				wall += r.WallTime
			}
			peak := m.Stop()
			b.ReportMetric(float64(virt)/float64(wall), "virtual/wall")
			b.ReportMetric(float64(peak.HeapInuse)/(1<<20), "heap-MiB")
			b.ReportMetric(float64(peak.Sys)/(1<<20), "sys-MiB")
		})
	}
}

func TestMemSampler(t *testing.T) {
	m := StartMemSampler(time.Millisecond)
	buf := make([]byte, 8<<20)
	runtime.KeepAlive(buf)
	p := m.Stop()
	assert.NotZero(t, p.HeapInuse)
	assert.GreaterOrEqual(t, p.Sys, p.HeapInuse)
	assert.True(t, strings.HasPrefix(fmt.Sprint(p.Sys > 0), "true"))
}
