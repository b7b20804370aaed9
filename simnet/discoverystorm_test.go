package simnet

import (
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDiscoveryScenarioSweep runs the discovery scenario over 20 seeds of 200
// peers on 4 segments with 2 mDNS tags and a rendezvous (-short: 4 seeds):
// every discovery invariant holds after every event, every table is
// complete (its segment+tag via lan, every rendezvous user via wan) within a
// few heartbeats of the start, and again within DiscoveryLivenessHeartbeats
// of the final heal.
func TestDiscoveryScenarioSweep(t *testing.T) {
	seeds := 20
	if testing.Short() {
		seeds = 4
	}
	sc, err := Lookup(ScenarioDiscovery)
	require.NoError(t, err)
	start := time.Now()
	sum := RunSeeds(sc, 1, seeds, Params{Peers: 200, Duration: time.Minute}, 0)
	wall := time.Since(start)
	require.Len(t, sum.Reports, seeds)
	checks := map[string]uint64{}
	var full, conv []float64
	maxReturn := 0.0
	for _, r := range sum.Reports {
		if !r.Passed() {
			t.Error(r.Failure())
			continue
		}
		for _, ir := range r.Invariants {
			checks[ir.Name] += ir.Checked
		}
		f, ok := r.Metrics["full_discovery_heartbeats"]
		require.True(t, ok, "seed %d: discovery never completed", r.Seed)
		full = append(full, f)
		conv = append(conv, r.Metrics["converge_after_heal_heartbeats"])
		maxReturn = max(maxReturn, r.Metrics["max_return_s"])
		assert.LessOrEqual(t, f, 4.0, "seed %d: full discovery within a few heartbeats", r.Seed)
		assert.Zero(t, r.Metrics["max_offline_lag_s"], "seed %d: offline exactly at the TTL", r.Seed)
	}
	for _, p := range []string{PropPresenceLANScope, PropPresenceExpiry, PropPresenceReturn} {
		assert.NotZero(t, checks[p], p)
	}
	tot := sum.Totals()
	for name, n := range map[string]uint64{"partitions": tot.Partitions, "crashes": tot.Crashes, "mdns lost": tot.Presence.MDNSLost,
		"swept by the rendezvous": tot.Presence.RdvSwept, "refused presence": tot.Presence.Refused, "dropped presence": tot.Presence.Dropped} {
		assert.NotZero(t, n, name)
	}
	slices.Sort(full)
	slices.Sort(conv)
	t.Logf("%d seeds × 200 peers in %s on %d workers (virtual/wall %.0f× per core): %d events; full discovery in %.2f..%.2f heartbeats (median %.2f); converged %.2f..%.2f heartbeats after the heal; slowest return %.2fs; checks %v",
		seeds, wall.Round(time.Millisecond), sum.Workers, sum.Ratio(), tot.Events, full[0], full[len(full)-1], full[len(full)/2],
		conv[0], conv[len(conv)-1], maxReturn, checks)
}

// TestDiscoveryDeterminism runs seeds twice on different schedules: the
// trace hashes are identical, and different seeds give different traces.
func TestDiscoveryDeterminism(t *testing.T) {
	n := 4
	if testing.Short() {
		n = 2
	}
	sc, err := Lookup(ScenarioDiscovery)
	require.NoError(t, err)
	p := Params{Peers: 100, Duration: 40 * time.Second}
	a := RunSeeds(sc, 1, n, p, 0)
	b := RunSeeds(sc, 1, n, p, 1)
	seen := map[string]uint64{}
	for i := range a.Reports {
		ra, rb := a.Reports[i], b.Reports[i]
		require.Equal(t, ra.Seed, rb.Seed)
		assert.True(t, ra.Passed(), ra.Failure())
		assert.Equal(t, ra.TraceHash, rb.TraceHash, "seed %d", ra.Seed)
		assert.Equal(t, ra.Stats, rb.Stats, "seed %d", ra.Seed)
		assert.Equal(t, ra.Metrics, rb.Metrics, "seed %d", ra.Seed)
		if prev, dup := seen[ra.TraceHash]; dup {
			t.Errorf("seeds %d and %d have the same trace hash", prev, ra.Seed)
		}
		seen[ra.TraceHash] = ra.Seed
	}
}

func TestDiscoveryPlanIsSeeded(t *testing.T) {
	p := Params{Peers: 200, Duration: time.Minute}
	assert.Equal(t, PlanDiscovery(3, p), PlanDiscovery(3, p))
	assert.NotEqual(t, PlanDiscovery(3, p).String(), PlanDiscovery(4, p).String())
	kinds := map[string]int{}
	graceful, oneWay := 0, 0
	for seed := uint64(1); seed <= 100; seed++ {
		pl := PlanDiscovery(seed, p)
		require.Len(t, pl.Places, 200)
		segs, tags := map[string]bool{}, map[string]bool{}
		for _, pp := range pl.Places {
			segs[pp.Segment] = true
			tags[pp.Tag] = true
		}
		assert.Len(t, segs, DiscoverySegments, "seed %d", seed)
		assert.Len(t, tags, 2, "seed %d: both tags", seed)
		assert.NotEmpty(t, pl.Faults)
		for _, f := range pl.Faults {
			kinds[f.Kind]++
			if f.OneWay {
				oneWay++
			}
			assert.GreaterOrEqual(t, f.At, 10*time.Second, "after the warm-up")
			if f.Kind != FaultRdvCrash {
				assert.Greater(t, f.For, 20*time.Second, "past the TTL")
			}
		}
		for _, c := range pl.Crashes {
			if c.Graceful {
				graceful++
			}
		}
	}
	for _, k := range []string{FaultIsolate, FaultCutRdv, FaultSegment, FaultRdvCut, FaultRdvCrash} {
		assert.NotZero(t, kinds[k], k)
	}
	assert.NotZero(t, graceful)
	assert.NotZero(t, oneWay)
}

func TestDiscoveryLookupAndReplay(t *testing.T) {
	sc, err := Lookup(ScenarioDiscovery)
	require.NoError(t, err)
	assert.Equal(t, ScenarioDiscovery, sc.Name)
	r := sc.Run(2, Params{Peers: 24, Duration: 30 * time.Second})
	assert.True(t, r.Passed(), r.Failure())
	assert.Contains(t, r.Options, "segments=4")
	assert.IsType(t, &DiscoveryPlan{}, r.Plan)
	assert.Contains(t, r.Metrics, "full_discovery_heartbeats")
	assert.Equal(t, "go run ./cmd/goop sim --scenario discovery --seed 2 --peers 24 --duration 30s", r.Replay)
	assert.Equal(t, "go run ./cmd/goop sim --scenario discovery --seed 9 --peers 200 --duration 1m0s",
		ReplayCommand(ScenarioDiscovery, 9, Params{Peers: 200, Duration: time.Minute, Rate: 3}))
}
