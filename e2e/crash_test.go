package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/mq"
)

// follow reads the SSE stream of the process's viewer and records the n of
// each message on topic from peer from, until the stream ends.
func (p *goopProcess) follow(t *testing.T, ctx context.Context, topic, from string, got *[]int, mu *sync.Mutex) (ended <-chan struct{}) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(p.ready["viewer"], "/")+"/api/mq/events", nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			var ev struct {
				Type string `json:"type"`
				From string `json:"from"`
				Msg  struct {
					Topic   string `json:"topic"`
					Payload struct {
						N int `json:"n"`
					} `json:"payload"`
				} `json:"msg"`
			}
			if json.Unmarshal([]byte(data), &ev) != nil || ev.Type != "message" || ev.Msg.Topic != topic || ev.From != from {
				continue
			}
			mu.Lock()
			*got = append(*got, ev.Msg.Payload.N)
			mu.Unlock()
		}
	}()
	return done
}

// TestReceiverKilledMidStreamDeliversNothingTwice kills a receiving node
// (a `goop peer` process) with SIGKILL while 3,000 messages stream to it,
// restarts it on the same folder (at most 64 unacknowledged at any time),
// and checks what its application (an SSE
// client of its viewer) got: every message at most once and in order, all
// of them but one contiguous run around the kill — those the node delivered
// (its cursor stored) that never reached the SSE socket, and those delivered
// before the new stream connected — and the last one. A receiver whose
// stored cursors lag behind what it delivered (for example cursor log
// records lost in a crash) delivers the sender's retransmissions again.
func TestReceiverKilledMidStreamDeliversNothingTwice(t *testing.T) {
	if testing.Short() {
		t.Skip("builds goop and runs it as a process")
	}
	bin := buildGoop(t)
	// The sender loses a fifth of the acks, so that at any time some
	// messages the receiver delivered (and stored its cursor for) are
	// retransmitted: only the stored cursor keeps them from being
	// delivered again, before the kill and after it.
	drop := &ackDropper{r: rand.New(rand.NewPCG(5, 6)), p: 0.2}
	a := start(t, t.TempDir(), drop, nil, nil)
	defer a.Close()
	dir := filepath.Join(t.TempDir(), "b")
	out, err := exec.Command(bin, "init", "--label", "b", dir).CombinedOutput()
	require.NoError(t, err, "%s", out)
	cfgPath := filepath.Join(dir, "goop.json")
	cfg, err := app.LoadConfig(cfgPath)
	require.NoError(t, err)
	cfg.Viewer.HTTPAddr = "127.0.0.1:0"
	cfg.P2P.Peers = dialable(a)
	cfg.P2P.MDNSTag = fmt.Sprintf("goop-e2e-crash-%d", time.Now().UnixNano())
	require.NoError(t, app.SaveConfig(cfgPath, cfg))

	const n = 3000
	const topic = "crash"
	var mu sync.Mutex
	var got []int
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(got) }
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()

	b := startGoopProcess(t, bin, dir, waitFor)
	ended := b.follow(t, ctx, topic, a.PeerID.String(), &got, &mu)
	bID := mq.PeerID(b.ready["peer_id"])
	// At most `window` messages unacknowledged at once, so that the burst
	// the sender retransmits after the restart stays within what an SSE
	// client is buffered for (a client that falls behind is cut off).
	const window = 64
	slots := make(chan struct{}, window)
	acked := a.Runtime.Subscribe(1 << 16)
	go func() {
		for ev := range acked.C {
			if ev.Kind == app.EventDelivered && ev.Peer == bID {
				<-slots
			}
		}
	}()
	sent := make(chan error, 1)
	go func() {
		for i := 0; i < n; i++ {
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				sent <- ctx.Err()
				return
			}
			if _, err := a.Runtime.Send(ctx, bID, topic, []byte(fmt.Sprintf(`{"n":%d}`, i))); err != nil {
				sent <- fmt.Errorf("send %d: %w", i, err)
				return
			}
		}
		sent <- nil
	}()
	waitUntil(t, func() (bool, string) {
		c := count()
		return c >= n/3, fmt.Sprintf("%d of the first %d messages delivered", c, n/3)
	})
	b.kill(t)
	<-ended
	killedAt := count()

	b = startGoopProcess(t, bin, dir, waitFor)
	require.Equal(t, string(bID), b.ready["peer_id"], "same identity after the restart")
	b.follow(t, ctx, topic, a.PeerID.String(), &got, &mu)
	require.NoError(t, <-sent)
	waitUntil(t, func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		last := -1
		if len(got) > 0 {
			last = got[len(got)-1]
		}
		return last == n-1, fmt.Sprintf("%d messages delivered (%d before the kill), the last %d", len(got), killedAt, last)
	})

	mu.Lock()
	seq := append([]int(nil), got...)
	mu.Unlock()
	gaps := 0
	missing := 0
	for i := 1; i < len(seq); i++ {
		require.Greater(t, seq[i], seq[i-1], "position %d: message %d after %d (delivered twice or out of order)", i, seq[i], seq[i-1])
		if d := seq[i] - seq[i-1] - 1; d > 0 {
			gaps++
			missing += d
		}
	}
	assert.Equal(t, 0, seq[0], "the first message")
	assert.LessOrEqual(t, gaps, 1, "at most one run missing, at the kill")
	assert.Positive(t, drop.dropped.Load(), "acks were really dropped")
	t.Logf("%d messages, %d seen by the application before the kill, %d after; %d missing around the kill; %d acks dropped",
		n, killedAt, len(seq)-killedAt, missing, drop.dropped.Load())
}
