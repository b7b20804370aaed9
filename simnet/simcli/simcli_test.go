package simcli

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/urfave/cli/v2"
)

// run runs `goop sim args...` and returns stdout and the exit code.
func run(t *testing.T, args ...string) (string, int) {
	t.Helper()
	var out bytes.Buffer
	a := &cli.App{Name: "goop", Writer: &out, ErrWriter: &out, ExitErrHandler: func(*cli.Context, error) {},
		Commands: []*cli.Command{Command()}}
	err := a.Run(append([]string{"goop", "sim"}, args...))
	if err == nil {
		return out.String(), 0
	}
	var ec cli.ExitCoder
	require.True(t, errors.As(err, &ec), "error %v has an exit code", err)
	return out.String() + err.Error(), ec.ExitCode()
}

func TestTextReport(t *testing.T) {
	out, code := run(t, "--peers", "20", "--seed", "3", "--duration", "5s")
	require.Equal(t, 0, code, out)
	for _, want := range []string{
		"scenario      mq-storm, seed 3", "options       latency=", "peers         20", "messages      sent ",
		"mq/no-duplicate        ok", "liveness      1 of 1 seeds converged", "virtual time  ", "speed         ",
		"peak memory   heap in use", "trace hash    ", "result        PASS",
	} {
		assert.Contains(t, out, want)
	}
}

func TestJSONReport(t *testing.T) {
	out, code := run(t, "--peers", "20", "--seed", "10", "--seeds", "3", "--duration", "5s", "--json")
	require.Equal(t, 0, code, out)
	var r Report
	require.NoError(t, json.Unmarshal([]byte(out), &r), out)
	assert.Equal(t, "mq-storm", r.Scenario)
	assert.Equal(t, uint64(10), r.FirstSeed)
	assert.Equal(t, 3, r.Seeds)
	assert.Equal(t, 3, r.Passed)
	assert.Equal(t, 3, r.Converged)
	assert.Equal(t, "PASS", r.Result)
	assert.Equal(t, 20, r.Peers)
	require.Len(t, r.Runs, 3)
	assert.Equal(t, uint64(12), r.Runs[2].Seed)
	assert.NotZero(t, r.Totals.MsgsSent)
	assert.NotZero(t, r.Ratio)
	assert.NotZero(t, r.PeakMemory.Sys)
	assert.Empty(t, r.Failures)
	assert.NotEmpty(t, r.Invariants)
	assert.Contains(t, out, `"duration": "5s"`)
}

func TestScriptScenario(t *testing.T) {
	out, code := run(t, "--scenario", "crash-restart", "--seed", "1")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "p1 crashed; durable:")
	assert.Contains(t, out, "result        PASS")
}

func TestFailureExitsWithReplay(t *testing.T) {
	out, code := run(t, "--peers", "30", "--seeds", "5", "--duration", "5s", "--fault", "skip-dedupe")
	assert.Equal(t, exitFailed, code)
	assert.Contains(t, out, "result        FAIL")
	assert.Contains(t, out, "invariant: mq/")
	assert.Contains(t, out, "replay:    go run ./cmd/goop sim --scenario mq-storm --seed ")
	assert.Contains(t, out, "--peers 30 --duration 5s --fault skip-dedupe")

	out, code = run(t, "--peers", "30", "--seeds", "2", "--duration", "5s", "--fault", "skip-dedupe", "--json")
	assert.Equal(t, exitFailed, code)
	var r Report
	require.NoError(t, json.NewDecoder(bytes.NewReader([]byte(out))).Decode(&r))
	require.NotEmpty(t, r.Failures)
	assert.Equal(t, "FAIL", r.Result)
	assert.NotEmpty(t, r.Failures[0].Invariant)
	assert.Contains(t, r.Failures[0].Replay, "--fault skip-dedupe")
}

func TestUsageErrors(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"one peer", []string{"--peers", "1"}, "--peers"},
		{"no seeds", []string{"--seeds", "0"}, "--seeds"},
		{"unknown scenario", []string{"--scenario", "nope"}, `unknown scenario "nope"`},
		{"unknown fault", []string{"--fault", "bogus"}, "unknown --fault"},
		{"argument", []string{"extra"}, "no arguments"},
		{"negative rate", []string{"--rate", "-1"}, "positive"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, code := run(t, tc.args...)
			assert.Equal(t, exitUsage, code)
			assert.Contains(t, out, tc.want)
		})
	}
}

func TestList(t *testing.T) {
	out, code := run(t, "--list")
	require.Equal(t, 0, code)
	assert.Contains(t, out, "mq-storm")
	assert.Contains(t, out, "  basic\n")
	assert.Contains(t, out, "partition a=P,P [b=P,P] [oneway]")
}

func TestDiscoveryScenarioReport(t *testing.T) {
	out, code := run(t, "--scenario", "discovery", "--peers", "24", "--seed", "2", "--duration", "30s")
	require.Equal(t, 0, code, out)
	for _, want := range []string{
		"scenario      discovery, seed 2", "options       segments=4", "presence      published ",
		"presence/lan-scope", "presence/offline-after-ttl", "presence/online-after-heal",
		"liveness      1 of 1 seeds converged", "full_discovery_heartbeats", "result        PASS",
	} {
		assert.Contains(t, out, want)
	}
}

func TestProfiles(t *testing.T) {
	dir := t.TempDir()
	cpu, mem := filepath.Join(dir, "cpu.pprof"), filepath.Join(dir, "mem.pprof")
	out, code := run(t, "--peers", "10", "--duration", "2s", "--cpuprofile", cpu, "--memprofile", mem)
	require.Equal(t, 0, code, out)
	for _, f := range []string{cpu, mem} {
		st, err := os.Stat(f)
		require.NoError(t, err)
		assert.NotZero(t, st.Size(), f)
	}
	out, code = run(t, "--peers", "10", "--duration", "2s", "--cpuprofile", filepath.Join(dir, "no", "such", "dir"))
	assert.Equal(t, exitUsage, code, out)
	out, code = run(t, "--peers", "10", "--mem-limit", "-1")
	assert.Equal(t, exitUsage, code, out)
}

func TestGCPercent(t *testing.T) {
	assert.Equal(t, 100, gcPercent(0, 1, 2), "one seed")
	assert.Equal(t, 100, gcPercent(0, 200, 1), "one worker")
	assert.Equal(t, 400, gcPercent(0, 200, 2), "seeds in parallel")
	assert.Equal(t, 250, gcPercent(250, 200, 2), "set")
	assert.Equal(t, -1, gcPercent(-1, 1, 1), "off")
}
