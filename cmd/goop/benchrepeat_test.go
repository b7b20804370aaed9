package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSummarizeRuns(t *testing.T) {
	type res struct{ a, b float64 }
	fs := []figureOf[res]{
		{"a", unitUS, func(r *res) (float64, bool) { return r.a, true }},
		{"b only where measured", unitRatio, func(r *res) (float64, bool) { return positive(r.b) }},
		{"never measured", unitMS, func(*res) (float64, bool) { return 0, false }},
	}
	runs := []*res{{a: 30, b: 1.5}, {a: 10}, {a: 40, b: 1.1}, {a: 20, b: 1.3}}
	got := summarizeRuns(runs, fs)
	require.Len(t, got, 2, "a figure no run has is left out")
	assert.Equal(t, figure{Name: "a", Unit: unitUS, Median: 25, Min: 10, Max: 40, Values: []float64{30, 10, 40, 20}}, got[0],
		"an even count's median is the mean of the middle two; values stay in run order")
	assert.Equal(t, figure{Name: "b only where measured", Unit: unitRatio, Median: 1.3, Min: 1.1, Max: 1.5,
		Values: []float64{1.5, 1.1, 1.3}}, got[1], "a run without the figure does not count")

	var table bytes.Buffer
	require.NoError(t, writeFigures(&table, "header", got))
	lines := strings.Split(strings.TrimSpace(table.String()), "\n")
	require.Len(t, lines, 5, table.String())
	assert.Equal(t, "header", lines[0])
	assert.Regexp(t, `^figure +median +lowest +highest +each run`, lines[2])
	assert.Regexp(t, `^a +25 µs +10 µs +40 µs +30 µs, 10 µs, 40 µs, 20 µs`, lines[3])
	assert.Regexp(t, `^b only where measured +1\.30x +1\.10x +1\.50x +1\.50x, 1\.10x, 1\.30x`, lines[4])
}

func TestBenchMQRepeat(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three nodes twice")
	}
	code, out, errOut := runGoop(t, "bench", "mq", "--json", "--repeat", "2", "--count", "10", "--messages", "50", "--no-child")
	require.Equal(t, 0, code, errOut)
	var rep repeated[benchResult]
	require.NoError(t, json.Unmarshal([]byte(out), &rep), out)
	assert.Equal(t, 2, rep.Repeat)
	require.Len(t, rep.Results, 2)
	byName := map[string]figure{}
	for _, f := range rep.Summary {
		byName[f.Name] = f
	}
	ratio, ok := byName["MQ 1.1.0 median / echo median"]
	require.True(t, ok, "summary: %+v", rep.Summary)
	assert.Equal(t, []float64{rep.Results[0].RatioMQ11ToEcho, rep.Results[1].RatioMQ11ToEcho}, ratio.Values)
	assert.LessOrEqual(t, ratio.Min, ratio.Median)
	assert.LessOrEqual(t, ratio.Median, ratio.Max)
	assert.NotContains(t, byName, "'goop peer' start to healthy viewer", "--no-child: not measured, not summarized")

	code, out, errOut = runGoop(t, "bench", "mq", "--repeat", "2", "--count", "10", "--messages", "50", "--no-child")
	require.Equal(t, 0, code, errOut)
	assert.Regexp(t, `^goop bench: run 1 of 2 done \([0-9]+s\)\ngoop bench: run 2 of 2 done \([0-9]+s\)\n$`, errOut, "progress on stderr")
	assert.Contains(t, out, "10 round trips per latency measure")
	assert.Contains(t, out, ", 2 runs\n")
	assert.Regexp(t, `MQ 1\.1\.0 median / echo median +[0-9.]+x +[0-9.]+x +[0-9.]+x +[0-9.]+x, [0-9.]+x`, out)
}

func TestBenchGroupsRepeat(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three nodes twice")
	}
	code, out, errOut := runGoop(t, "bench", "groups", "--json", "--repeat", "2", "--members", "2", "--messages", "10",
		"--min-deliveries", "20", "--slow-ms", "0")
	require.Equal(t, 0, code, errOut)
	var rep repeated[groupsBenchResult]
	require.NoError(t, json.Unmarshal([]byte(out), &rep), out)
	require.Len(t, rep.Results, 2)
	names := []string{}
	for _, f := range rep.Summary {
		names = append(names, f.Name)
		if !strings.Contains(f.Name, "CPU") { // a short measure's CPU time can read 0 (clock ticks): not measured
			assert.Len(t, f.Values, 2, f.Name)
		}
	}
	assert.Contains(t, names, "N=2 latency, host sends, p99")
	assert.Contains(t, names, "N=2 throughput, member sends (via host)")
	assert.NotContains(t, names, "N=2 others' p99 slowed / baseline", "--slow-ms 0: no slow member measure")
}
