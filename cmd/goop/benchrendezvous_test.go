package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestBenchRendezvous runs the bench small, with the clients in a child
// process (this test binary as goop) and in process.
func TestBenchRendezvous(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a child process and a flood")
	}
	exe, err := os.Executable()
	require.NoError(t, err)
	t.Setenv(runMainEnv, "1") // the child is this test binary
	cases := []struct {
		name  string
		exe   string
		flood time.Duration
	}{
		{"child process", exe, time.Second},
		{"in process", "", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, err := benchRendezvous(context.Background(), rvBenchOptions{Clients: 120, Publishes: 3, Flood: tc.flood, Exe: tc.exe})
			require.NoError(t, err)
			assert.Equal(t, 120, res.Clients)
			assert.Equal(t, 120, res.ClientsAtEnd)
			assert.Equal(t, 1.0, res.DeliveredRatio)
			assert.Equal(t, 360, res.Delivery.N)
			assert.Equal(t, 3, res.AllReceived.N)
			assert.Positive(t, res.Delivery.P99US)
			// Measured in this test process, where what earlier tests left
			// (e.g. a hundred nodes of the groups bench) may still be freed
			// meanwhile: the figure is only plausible (it came out at -955
			// and at 0 bytes in full runs); its sign means something in a
			// process of its own (goop bench rendezvous).
			assert.Less(t, math.Abs(res.ServerGoBytesPerClient), float64(1<<20), "bytes per client")
			if tc.flood > 0 {
				f := res.Flood
				require.NotNil(t, f)
				assert.Positive(t, f.Flooder429, "the flooder is refused")
				assert.LessOrEqual(t, f.Flooder204, 15, "the flooder gets no more than its peer budget")
				assert.Positive(t, f.HonestPublishes)
				assert.Equal(t, f.HonestPublishes, f.Honest204, "honest peers are served")
				assert.Equal(t, f.WantEvents, f.MinEvents, "every client got every accepted publish")
				assert.Equal(t, 120, f.ClientsAfter)
			} else {
				assert.Nil(t, res.Flood)
			}
			var table bytes.Buffer
			require.NoError(t, res.writeTable(&table))
			assert.Contains(t, table.String(), "publish -> each client")
			b, err := json.Marshal(res)
			require.NoError(t, err)
			assert.Contains(t, string(b), `"server_go_bytes_per_client"`)
		})
	}
}

func TestBenchRendezvousUsage(t *testing.T) {
	code, _, errOut := runGoop(t, "bench", "rendezvous", "--clients", "0")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, "--clients must be between")
	code, out, _ := runGoop(t, "bench", "rendezvous", "--help")
	assert.Equal(t, 0, code)
	assert.Contains(t, out, "--clients")
}
