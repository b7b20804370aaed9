package simnet

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/domain/group"
)

// TestGroupStormInvariantsAndLiveness runs group-storm over 100 seeds of 30
// peers (-short: 10): every invariant of the bus and of groups holds after
// every event, and every seed converges: every member re-joined or left,
// every accepted message reached every member that stayed, exactly once, and
// every member sees its host's member list.
func TestGroupStormInvariantsAndLiveness(t *testing.T) {
	seeds := 100
	if testing.Short() {
		seeds = 10
	}
	sc, err := Lookup(ScenarioGroupStorm)
	require.NoError(t, err)
	sum := RunSeeds(sc, 1, seeds, Params{Peers: 30}, 0)
	require.Len(t, sum.Reports, seeds)
	checks := map[string]uint64{}
	for _, r := range sum.Reports {
		if !r.Passed() {
			t.Error(r.Failure())
		}
		assert.True(t, r.Liveness.Converged, "seed %d", r.Seed)
		for _, ir := range r.Invariants {
			checks[ir.Name] += ir.Checked
		}
	}
	for _, p := range []string{PropGroupExactlyOnce, PropGroupNoEcho, PropGroupOrder, PropGroupUniqueAccept, PropNoDuplicate} {
		assert.NotZero(t, checks[p], p)
	}
	tot := sum.Totals()
	assert.NotZero(t, tot.DroppedLoss)
	assert.NotZero(t, tot.DroppedPartition)
	assert.NotZero(t, tot.DroppedDown)
	assert.NotZero(t, tot.FramesDuplicated)
	assert.NotZero(t, tot.Crashes)
	t.Logf("%d seeds × 30 peers: %d events, %d relayed messages checked, %d accepted, in %s on %d workers, virtual/wall %.0f× per core",
		seeds, tot.Events, checks[PropGroupExactlyOnce], checks[PropGroupUniqueAccept], sum.Elapsed.Round(time.Millisecond), sum.Workers, sum.Ratio())
}

// TestGroupStormDeterminism runs seeds twice on different schedules: the
// trace hashes are identical, and different seeds give different traces.
func TestGroupStormDeterminism(t *testing.T) {
	n := 10
	if testing.Short() {
		n = 3
	}
	sc, err := Lookup(ScenarioGroupStorm)
	require.NoError(t, err)
	a := RunSeeds(sc, 1, n, Params{Peers: 30}, 0)
	b := RunSeeds(sc, 1, n, Params{Peers: 30}, 1)
	seen := map[string]uint64{}
	for i := range a.Reports {
		ra, rb := a.Reports[i], b.Reports[i]
		require.Equal(t, ra.Seed, rb.Seed)
		assert.Equal(t, ra.TraceHash, rb.TraceHash, "seed %d", ra.Seed)
		assert.Equal(t, ra.Stats, rb.Stats, "seed %d", ra.Seed)
		assert.Equal(t, ra.Invariants, rb.Invariants, "seed %d", ra.Seed)
		if prev, dup := seen[ra.TraceHash]; dup {
			t.Errorf("seeds %d and %d have the same trace hash", prev, ra.Seed)
		}
		seen[ra.TraceHash] = ra.Seed
	}
}

// TestGroupStormPlantedFaultIsCaughtByTheGroupChecker runs group-storm with a
// bus that delivers duplicates and only the group checker: it catches the
// duplicated relays on its own.
func TestGroupStormPlantedFaultIsCaughtByTheGroupChecker(t *testing.T) {
	p := Params{Peers: 30, Fault: FaultSkipDedupe}.withDefaults()
	for seed := uint64(1); seed <= 30; seed++ {
		w, _ := newGroupStormWorld(seed, p, []Checker{NewGroupChecker()})
		err := w.RunUntil(p.Duration)
		if err == nil {
			err = w.Converge(p.Deadline)
		}
		v := w.Violation()
		if v == nil {
			continue
		}
		assert.Contains(t, []string{PropGroupExactlyOnce, PropGroupUniqueAccept, PropGroupOrder}, v.Property)
		t.Logf("caught at seed %d: %v", seed, v)
		return
	}
	t.Fatal("30 seeds of group-storm with a bus that skips dedupe broke no group invariant")
}

func TestGroupStormPlanIsSeeded(t *testing.T) {
	p := Params{Peers: 30}
	assert.Equal(t, PlanGroupStorm(3, p), PlanGroupStorm(3, p))
	assert.NotEqual(t, PlanGroupStorm(3, p).String(), PlanGroupStorm(4, p).String())
	var ephemeral, inviteOnly, capped, closed, hostCrashes, hostParts, multi int
	for seed := uint64(1); seed <= 100; seed++ {
		pl := PlanGroupStorm(seed, p)
		require.NotEmpty(t, pl.Groups)
		hosts := map[int]bool{}
		for _, g := range pl.Groups {
			hosts[g.Host] = true
			if g.Lifecycle == group.Ephemeral {
				ephemeral++
			}
			if g.Access == group.InviteOnly {
				inviteOnly++
			}
			if g.MaxMembers > 0 {
				capped++
			}
			if g.CloseAt > 0 {
				closed++
				assert.Less(t, g.CloseAt, p.withDefaults().Duration)
			}
		}
		if len(hosts) > 1 {
			multi++
		}
		for _, c := range pl.Crashes {
			if hosts[c.Peer] {
				hostCrashes++
			}
		}
		for _, pp := range pl.Partitions {
			if len(pp.A) == 1 && hosts[pp.A[0]] {
				hostParts++
			}
		}
		require.Len(t, pl.Joins, 30)
		for i, js := range pl.Joins {
			assert.NotEmpty(t, js, "seed %d peer %d takes part in a group", seed, i)
		}
	}
	for name, n := range map[string]int{"ephemeral": ephemeral, "invite-only": inviteOnly, "max members": capped, "closed": closed,
		"host crashes": hostCrashes, "host partitions": hostParts, "several hosts": multi} {
		assert.NotZero(t, n, name)
	}
}

func TestGroupStormLookupAndReplay(t *testing.T) {
	sc, err := Lookup(ScenarioGroupStorm)
	require.NoError(t, err)
	assert.Equal(t, ScenarioGroupStorm, sc.Name)
	r := sc.Run(2, Params{Peers: 12, Duration: 10 * time.Second})
	assert.True(t, r.Passed(), r.Failure())
	assert.Contains(t, r.Options, "groups=")
	assert.IsType(t, &GroupStormPlan{}, r.Plan)
	assert.Equal(t, "go run ./cmd/goop sim --scenario group-storm --seed 2 --peers 12 --duration 10s", r.Replay)
	assert.Equal(t, fmt.Sprintf("go run ./cmd/goop sim --scenario group-storm --seed 9 --peers 50 --duration 30s --rate 3"),
		ReplayCommand(ScenarioGroupStorm, 9, Params{Peers: 50, Rate: 3}))
}
