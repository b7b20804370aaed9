package p2p

import (
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/ports"
)

// TestClaimDirectWritesInOrder: ClaimDirect refuses until a 1.1.0 stream to
// the peer is open, then writes on the caller's goroutine; frames sent
// through Send while a claim is held go out after the claimed one, so the
// peer reads every frame in the order it was handed over.
func TestClaimDirectWritesInOrder(t *testing.T) {
	ha, hb := newTestHost(t), newTestHost(t)
	connect(t, ha, hb)
	ta := newTransport(t, ha, MQOptions{})
	tb := newTransport(t, hb, MQOptions{NoReceivedAcks: true})
	to := pidOf(hb)

	_, ok := ta.ClaimDirect(to, testMsg("m0", 0))
	assert.False(t, ok, "no stream to the peer yet: the frame must go through Send")
	_, ok = ta.ClaimDirect(to, mq.Frame{Type: mq.TypeMsg})
	assert.False(t, ok, "an invalid frame is refused")

	require.NoError(t, ta.Send(to, testMsg("m0", 0))) // opens the stream
	nextEvent(t, tb, isFrame)

	// claim retries while the writer goroutine still holds the way (it
	// releases it right after its last flush).
	claim := func(f mq.Frame) func() {
		deadline := time.Now().Add(waitFor)
		for time.Now().Before(deadline) {
			if write, ok := ta.ClaimDirect(to, f); ok {
				return write
			}
			runtime.Gosched()
		}
		require.FailNow(t, "no direct claim", "frame %s", f.ID)
		return nil
	}
	var want, got []string
	for i := 1; i <= 50; i++ {
		id := fmt.Sprintf("m%d", i)
		write := claim(testMsg(id, int64(i)))
		want = append(want, id)
		// While the claim is held, more frames queue behind it.
		_, again := ta.ClaimDirect(to, testMsg("x", 0))
		assert.False(t, again, "a second claim while the first is held")
		id2 := fmt.Sprintf("q%d", i)
		require.NoError(t, ta.Send(to, testMsg(id2, int64(1000+i))))
		want = append(want, id2)
		write()
		for len(got) < len(want) {
			got = append(got, nextEvent(t, tb, isFrame).Frame.ID)
		}
	}
	assert.Equal(t, want, got)
}

// TestAckHookSeesAcks: the hook is shown every ack read (received and
// final), on the network goroutine, and nothing else; the acks are still
// reported on Events.
func TestAckHookSeesAcks(t *testing.T) {
	ha, hb := newTestHost(t), newTestHost(t)
	connect(t, ha, hb)
	ta := newTransport(t, ha, MQOptions{})
	tb := newTransport(t, hb, MQOptions{})
	var mu sync.Mutex
	var seen []mq.Frame
	hooked := make(chan struct{}) // closed when the hook saw m1's final ack
	ta.SetAckHook(func(from mq.PeerID, ack mq.Frame) {
		mu.Lock()
		defer mu.Unlock()
		assert.Equal(t, pidOf(hb), from)
		seen = append(seen, ack)
		if ack.ID == "m1" && ack.Stage == "" {
			close(hooked)
		}
	})
	ackAll(tb, nil)
	// A msg that does not ask for the early ack gets the final ack alone;
	// one that asks (with an epoch: from a Goop node) gets both.
	f := testMsg("m0", 1)
	f.Epoch = "e1"
	require.NoError(t, ta.Send(pidOf(hb), f))
	f = testMsg("m1", 2)
	f.Epoch, f.Want = "e1", mq.StageReceived
	require.NoError(t, ta.Send(pidOf(hb), f))
	var final ports.TransportEvent
	for final.Frame.Type != mq.TypeAck || final.Frame.Stage != "" || final.Frame.ID != "m1" {
		final = nextEvent(t, ta, isFrame)
	}
	// The hook runs right after the event is handed over: wait for it.
	select {
	case <-hooked:
	case <-time.After(waitFor):
		t.Fatal("the hook never saw m1's final ack")
	}
	mu.Lock()
	defer mu.Unlock()
	received := mq.Frame{Type: mq.TypeAck, ID: "m1", Seq: 2, Stage: mq.StageReceived}
	assert.ElementsMatch(t, []mq.Frame{{Type: mq.TypeAck, ID: "m0", Seq: 1}, received, {Type: mq.TypeAck, ID: "m1", Seq: 2}}, seen,
		"m0's final ack, m1's received ack and final ack")
	i := slices.IndexFunc(seen, func(f mq.Frame) bool { return f.ID == "m1" && f.Stage == mq.StageReceived })
	assert.Less(t, i, len(seen)-1, "m1's received ack comes before its final ack")
}
