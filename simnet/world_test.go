package simnet

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/mq"
)

// delivery is one EventMessage seen by a test.
type delivery struct {
	at       time.Duration
	from, to int
	seq      int64
}

// recorder collects deliveries and frame arrivals through Options.OnStep.
type recorder struct {
	deliveries []delivery
	arrivals   []delivery // msg frames arriving (before dedupe)
	acks       int
}

func (r *recorder) onStep(w *World, s *Step) {
	if s.Kind == StepFrame && s.Frame.IsMsg() {
		r.arrivals = append(r.arrivals, delivery{s.Time, s.From, s.Peer, s.Frame.Seq})
	}
	for _, ev := range s.Events {
		switch ev.Kind {
		case app.EventMessage:
			from, _ := w.Index(ev.Peer)
			r.deliveries = append(r.deliveries, delivery{s.Time, from, s.Peer, ev.Msg.Seq})
		case app.EventDelivered:
			r.acks++
		}
	}
}

func newTestWorld(t *testing.T, peers int, link LinkParams) (*World, *recorder) {
	t.Helper()
	r := &recorder{}
	w := New(1, Options{Peers: peers, Link: link, OnStep: r.onStep})
	return w, r
}

func sendN(t *testing.T, w *World, from, to, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		_, err := w.Send(from, to, "t", []byte(fmt.Sprintf(`{"i":%d}`, i)))
		require.NoError(t, err)
	}
}

func TestLinkModel(t *testing.T) {
	cases := []struct {
		name  string
		link  LinkParams
		n     int
		run   time.Duration
		check func(t *testing.T, w *World, r *recorder)
	}{
		{"latency and jitter bound arrival", LinkParams{Latency: 10 * time.Millisecond, Jitter: 5 * time.Millisecond}, 20, time.Second,
			func(t *testing.T, w *World, r *recorder) {
				require.Len(t, r.deliveries, 20)
				for _, d := range r.deliveries {
					assert.GreaterOrEqual(t, d.at, 10*time.Millisecond)
					assert.Less(t, d.at, 15*time.Millisecond)
				}
			}},
		{"loss drops frames and retransmission recovers", LinkParams{Latency: time.Millisecond, Loss: 0.5}, 20, 30 * time.Second,
			func(t *testing.T, w *World, r *recorder) {
				assert.NotZero(t, w.Stats().DroppedLoss)
				assert.Len(t, r.deliveries, 20)
				assert.Equal(t, 20, r.acks)
			}},
		{"duplication is delivered once", LinkParams{Latency: time.Millisecond, Dup: 1}, 20, time.Second,
			func(t *testing.T, w *World, r *recorder) {
				s := w.Stats()
				assert.Equal(t, s.FramesSent, s.FramesDuplicated, "every frame is duplicated")
				assert.Len(t, r.arrivals, 40)
				assert.Len(t, r.deliveries, 20)
			}},
		{"reordering is delivered in order", LinkParams{Latency: time.Millisecond, Reorder: 0.5, ReorderDelay: 50 * time.Millisecond}, 50, time.Second,
			func(t *testing.T, w *World, r *recorder) {
				inversions := 0
				for i := 1; i < len(r.arrivals); i++ {
					if r.arrivals[i].seq < r.arrivals[i-1].seq {
						inversions++
					}
				}
				assert.NotZero(t, inversions, "frames overtook each other")
				require.Len(t, r.deliveries, 50)
				for i, d := range r.deliveries {
					assert.Equal(t, int64(i+1), d.seq)
				}
			}},
		{"bandwidth queues frames on the link", LinkParams{Latency: time.Millisecond, Bandwidth: 10_000}, 10, 10 * time.Second,
			func(t *testing.T, w *World, r *recorder) {
				require.Len(t, r.deliveries, 10)
				// each msg frame is well over 100 bytes: ten take more than 0.1 s at 10 kB/s
				assert.Greater(t, r.deliveries[9].at, 100*time.Millisecond)
				for i := 1; i < 10; i++ {
					assert.GreaterOrEqual(t, r.deliveries[i].at-r.deliveries[i-1].at, 10*time.Millisecond)
				}
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w, r := newTestWorld(t, 2, tc.link)
			sendN(t, w, 0, 1, tc.n)
			require.NoError(t, w.RunFor(tc.run))
			tc.check(t, w, r)
		})
	}
}

func TestLatencySpreadIsPerLinkAndSymmetric(t *testing.T) {
	w := New(7, Options{Peers: 4, Link: LinkParams{Latency: time.Millisecond}, LatencySpread: 100 * time.Millisecond})
	lp := w.link(0, 1)
	assert.Equal(t, w.baseLatency(0, 1, lp), w.baseLatency(1, 0, lp))
	seen := map[int64]bool{}
	for a := int32(0); a < 4; a++ {
		for b := a + 1; b < 4; b++ {
			d := w.baseLatency(a, b, lp)
			assert.GreaterOrEqual(t, d, int64(time.Millisecond))
			assert.Less(t, d, int64(101*time.Millisecond))
			seen[d] = true
		}
	}
	assert.Greater(t, len(seen), 3, "links get different latencies")
}

func TestPartitions(t *testing.T) {
	cases := []struct {
		name           string
		oneWay         bool
		wantAtoB       bool // does a message from p0 (side A) reach p1 (side B) during the partition
		wantBtoA       bool
		wantBtoAAcked  bool
		wantAtoBAcked  bool
		wantDropped    bool
		wantConverges  bool
		partitionPeers [2][]int
	}{
		{name: "symmetric", partitionPeers: [2][]int{{0}, {1}}, wantDropped: true, wantConverges: true},
		{name: "one-way", oneWay: true, partitionPeers: [2][]int{{0}, {1}}, wantBtoA: true, wantDropped: true, wantConverges: true},
		{name: "rest of the world", partitionPeers: [2][]int{{0}, nil}, wantDropped: true, wantConverges: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w, r := newTestWorld(t, 3, LinkParams{Latency: time.Millisecond})
			id, err := w.Partition(tc.partitionPeers[0], tc.partitionPeers[1], tc.oneWay)
			require.NoError(t, err)
			assert.True(t, w.Blocked(0, 1))
			assert.Equal(t, !tc.oneWay, w.Blocked(1, 0))
			sendN(t, w, 0, 1, 1)
			sendN(t, w, 1, 0, 1)
			require.NoError(t, w.RunFor(5*time.Second))
			got := map[[2]int]bool{}
			for _, d := range r.deliveries {
				got[[2]int{d.from, d.to}] = true
			}
			assert.Equal(t, tc.wantAtoB, got[[2]int{0, 1}])
			assert.Equal(t, tc.wantBtoA, got[[2]int{1, 0}])
			assert.Zero(t, r.acks, "no ack crosses the cut")
			assert.Equal(t, tc.wantDropped, w.Stats().DroppedPartition > 0)

			require.NoError(t, w.Heal(id))
			assert.False(t, w.Blocked(0, 1))
			require.NoError(t, w.Converge(10*time.Second))
			assert.Len(t, r.deliveries, 2)
			assert.Equal(t, 2, r.acks)
			assert.Less(t, w.Elapsed(), 5*time.Second+100*time.Millisecond, "the heal reconnects at once instead of waiting for the backoff")
		})
	}
	t.Run("a peer on both sides is refused", func(t *testing.T) {
		w, _ := newTestWorld(t, 2, DefaultLink())
		_, err := w.Partition([]int{0}, []int{0, 1}, false)
		assert.Error(t, err)
		assert.Error(t, w.Heal(42))
	})
}

func TestCrashLosesFramesInFlightAndKeepsDurableState(t *testing.T) {
	w, r := newTestWorld(t, 2, LinkParams{Latency: 10 * time.Millisecond})
	sendN(t, w, 0, 1, 3)
	require.NoError(t, w.RunFor(5*time.Millisecond))
	require.NoError(t, w.Crash(1))
	assert.False(t, w.Up(1))
	assert.Nil(t, w.Node(1))
	assert.ErrorIs(t, w.Crash(1), ErrPeerDown)
	require.NoError(t, w.RunFor(50*time.Millisecond))
	assert.Equal(t, uint64(3), w.Stats().DroppedDown, "frames in flight to a crashed peer are lost")
	assert.Empty(t, r.deliveries)

	epoch := w.Durable(0).Epoch
	require.NoError(t, w.Crash(0))
	snap := w.Durable(0)
	assert.Len(t, snap.Outbox, 3, "the sender's outbox survives its crash")
	assert.Equal(t, epoch, snap.Epoch)

	require.NoError(t, w.Restart(0))
	require.NoError(t, w.Restart(1))
	assert.ErrorIs(t, w.Restart(1), ErrPeerUp)
	assert.Equal(t, 2, w.Incarnation(0))
	assert.Equal(t, epoch, w.Node(0).Bus().Epoch(), "a restart keeps the bus epoch")
	require.NoError(t, w.Converge(10*time.Second))
	require.Len(t, r.deliveries, 3)
	assert.Equal(t, 3, r.acks)
	assert.Empty(t, w.Durable(0).Outbox, "acknowledged messages leave the outbox")
	assert.Equal(t, int64(4), w.Durable(1).Cursors[w.PeerID(0)].Next)
}

func TestConvergeRestartsCrashedPeersAndHeals(t *testing.T) {
	w, r := newTestWorld(t, 3, DefaultLink())
	_, err := w.Partition([]int{0}, nil, false)
	require.NoError(t, err)
	require.NoError(t, w.Crash(2))
	sendN(t, w, 0, 1, 2)
	sendN(t, w, 1, 2, 2)
	require.NoError(t, w.RunFor(3*time.Second))
	require.NoError(t, w.Converge(30*time.Second))
	assert.Len(t, r.deliveries, 4)
	assert.True(t, w.Up(2))
	assert.Empty(t, w.Partitions())
}

func TestConvergeFailsWhenTheNetworkNeverDelivers(t *testing.T) {
	w, _ := newTestWorld(t, 2, LinkParams{Latency: time.Millisecond, Loss: 1})
	sendN(t, w, 0, 1, 2)
	err := w.Converge(20 * time.Second)
	var le *LivenessError
	require.ErrorAs(t, err, &le)
	assert.Equal(t, 20*time.Second, le.Deadline)
	require.Len(t, le.Waiting, 1)
	assert.Contains(t, le.Waiting[0], "2 of 2 messages not delivered and acknowledged")
	assert.Contains(t, le.Waiting[0], "p0→p1 #1 queued at 0s not delivered")
}

func TestBroadcastReachesOnlyItsSegment(t *testing.T) {
	type heard struct{ to, from int }
	var got []heard
	w := New(1, Options{Peers: 5, Link: LinkParams{Latency: time.Millisecond},
		OnBroadcast: func(_ *World, to, from int, payload []byte) {
			assert.Equal(t, "hi", string(payload))
			got = append(got, heard{to, from})
		}})
	for i, seg := range []string{"a", "a", "a", "b", ""} {
		w.SetSegment(i, seg)
	}
	assert.Equal(t, []int{0, 1, 2}, w.SegmentPeers("a"))
	n, err := w.Broadcast(0, []byte("hi"))
	require.NoError(t, err)
	assert.Equal(t, 2, n)
	_, err = w.Broadcast(4, []byte("hi"))
	assert.ErrorIs(t, err, ErrNoSegment)
	require.NoError(t, w.RunFor(time.Second))
	assert.ElementsMatch(t, []heard{{1, 0}, {2, 0}}, got)

	got = nil
	w.SetSegment(2, "b") // p2 moves to segment b
	_, err = w.Partition([]int{3}, []int{2}, true)
	require.NoError(t, err)
	_, err = w.Broadcast(3, []byte("hi"))
	require.NoError(t, err)
	_, err = w.Broadcast(2, []byte("hi"))
	require.NoError(t, err)
	require.NoError(t, w.RunFor(time.Second))
	assert.Equal(t, []heard{{3, 2}}, got, "the one-way cut stops p3's broadcast, not p2's")
}

func TestPeerStreamsDoNotDependOnOtherPeers(t *testing.T) {
	run := func(peers int) ([]mq.PeerID, []string, []time.Duration) {
		r := &recorder{}
		w := New(99, Options{Peers: peers, Link: LinkParams{Latency: time.Millisecond, Jitter: 10 * time.Millisecond, Loss: 0.2}, OnStep: r.onStep})
		var ids []mq.PeerID
		for i := 0; i < 5; i++ {
			ids = append(ids, w.PeerID(i))
		}
		var msgIDs []string
		for i := 0; i < 5; i++ {
			f, err := w.Send(0, 1, "t", []byte(`{}`))
			require.NoError(t, err)
			msgIDs = append(msgIDs, f.ID)
		}
		require.NoError(t, w.RunFor(10*time.Second))
		var times []time.Duration
		for _, d := range r.deliveries {
			times = append(times, d.at)
		}
		return ids, msgIDs, times
	}
	ids5, msgs5, times5 := run(5)
	ids8, msgs8, times8 := run(8)
	assert.Equal(t, ids5, ids8, "peer ids")
	assert.Equal(t, msgs5, msgs8, "message ids from p0's node stream")
	assert.Equal(t, times5, times8, "p0's network draws")
	assert.Len(t, times5, 5)
}

func TestRestartUsesAFreshStreamPerIncarnation(t *testing.T) {
	w, _ := newTestWorld(t, 2, DefaultLink())
	f1, err := w.Send(0, 1, "t", nil)
	require.NoError(t, err)
	require.NoError(t, w.Crash(0))
	require.NoError(t, w.Restart(0))
	f2, err := w.Send(0, 1, "t", nil)
	require.NoError(t, err)
	assert.NotEqual(t, f1.ID, f2.ID)
	assert.Equal(t, int64(1025), f2.Seq, "the restarted sender resumes above its durable reservation")
}

func TestSendErrors(t *testing.T) {
	w, _ := newTestWorld(t, 2, DefaultLink())
	_, err := w.Send(0, 5, "t", nil)
	assert.ErrorIs(t, err, ErrNoPeer)
	_, err = w.Send(0, 0, "t", nil)
	assert.ErrorIs(t, err, mq.ErrBadFrame)
	require.NoError(t, w.Crash(1))
	_, err = w.Send(1, 0, "t", nil)
	assert.ErrorIs(t, err, ErrPeerDown)
	assert.Equal(t, uint64(2), w.Stats().MsgsRejected)
}

func TestScheduledActionsRunInTimeThenSequenceOrder(t *testing.T) {
	w, _ := newTestWorld(t, 1, DefaultLink())
	var order []int64
	a := ActionFunc(func(w *World, arg int64) { order = append(order, arg) })
	w.Schedule(2*time.Second, a, 3)
	w.Schedule(time.Second, a, 1)
	w.Schedule(time.Second, a, 2)
	w.After(500*time.Millisecond, a, 0)
	require.NoError(t, w.RunUntil(3*time.Second))
	assert.Equal(t, []int64{0, 1, 2, 3}, order)
	assert.Equal(t, 3*time.Second, w.Elapsed())
	assert.Equal(t, Epoch().Add(3*time.Second), w.Now())
}

func TestCodecRoundTripIsExercised(t *testing.T) {
	w := New(1, Options{Peers: 2, Link: DefaultLink(), CodecEvery: 1})
	_, err := w.Send(0, 1, "t", []byte("{\n\"multi\": \"line\"\n}"))
	require.NoError(t, err)
	require.NoError(t, w.Converge(time.Second))
	assert.Equal(t, uint64(3), w.Stats().CodecChecked, "the msg, its received ack and its final ack went through the codec")
}

// step builds a synthetic step for checker tests.
func checkerWorld(t *testing.T) *World {
	t.Helper()
	return New(1, Options{Peers: 3, Link: DefaultLink(), Checkers: []Checker{}})
}

func TestMQCheckerCatchesEveryBrokenProperty(t *testing.T) {
	type obs struct {
		peer   int
		kind   StepKind
		to     int
		frame  *mq.Frame
		events []app.Event
	}
	w := checkerWorld(t)
	p0, p1 := w.PeerID(0), w.PeerID(1)
	sent := func(id string, seq int64, payload string) obs {
		return obs{peer: 0, kind: StepSend, to: 1, frame: &mq.Frame{Type: mq.TypeMsg, ID: id, Seq: seq, Payload: []byte(payload)}}
	}
	msg := func(id string, seq int64, payload string) obs {
		return obs{peer: 1, kind: StepFrame, events: []app.Event{{Kind: app.EventMessage, Peer: p0, MsgID: id,
			Msg: &mq.Frame{Type: mq.TypeMsg, ID: id, Seq: seq, Payload: []byte(payload)}}}}
	}
	ack := func(id string) obs {
		return obs{peer: 0, kind: StepFrame, events: []app.Event{{Kind: app.EventDelivered, Peer: p1, MsgID: id}}}
	}
	failed := func(id string) obs {
		return obs{peer: 0, kind: StepWake, events: []app.Event{{Kind: app.EventFailed, Peer: p1, MsgID: id}}}
	}
	cases := []struct {
		name string
		obs  []obs
		want string // property broken by the last observation; "" for none
	}{
		{"clean exchange", []obs{sent("a", 1, "1"), sent("b", 2, "2"), msg("a", 1, "1"), msg("b", 2, "2"), ack("b"), ack("a")}, ""},
		{"duplicate delivery", []obs{sent("a", 1, "1"), msg("a", 1, "1"), msg("a", 1, "1")}, PropNoDuplicate},
		{"out of order", []obs{sent("a", 1, "1"), sent("b", 2, "2"), msg("b", 2, "2"), msg("a", 1, "1")}, PropOrder},
		{"ack before delivery", []obs{sent("a", 1, "1"), ack("a")}, PropAckedKept},
		{"ack of unknown message", []obs{ack("zz")}, PropAckedKept},
		{"payload changed", []obs{sent("a", 1, "1"), msg("a", 1, "2")}, PropIntegrity},
		{"seq changed", []obs{sent("a", 1, "1"), msg("a", 3, "1")}, PropIntegrity},
		{"two results", []obs{sent("a", 1, "1"), msg("a", 1, "1"), ack("a"), ack("a")}, PropOneResult},
		// Once a message is delivered and acknowledged the checker keeps only
		// its id and flags: later duplicates must still be caught.
		{"duplicate delivery after ack", []obs{sent("a", 1, "1"), msg("a", 1, "1"), ack("a"), msg("a", 1, "1")}, PropNoDuplicate},
		{"duplicate delivery long after ack", []obs{sent("a", 1, "1"), sent("b", 2, "2"), msg("a", 1, "1"), ack("a"),
			msg("b", 2, "2"), ack("b"), msg("a", 1, "1")}, PropNoDuplicate},
		{"old seq after settled ones", []obs{sent("a", 1, "1"), sent("b", 2, "2"), msg("a", 1, "1"), ack("a"),
			msg("b", 2, "2"), ack("b"), msg("d", 1, "4")}, PropOrder},
		{"result after failed and delivered", []obs{sent("a", 1, "1"), failed("a"), msg("a", 1, "1"), ack("a")}, PropOneResult},
		{"delivery after failed", []obs{sent("a", 1, "1"), failed("a"), msg("a", 1, "1"), msg("a", 1, "1")}, PropNoDuplicate},
	}
	// Ids from nodes are UUIDs, kept in compact form; others as strings.
	uuidOf := func(id string) string {
		if id == "" {
			return ""
		}
		return fmt.Sprintf("%08x-0000-4000-8000-%012x", len(id), id[0])
	}
	withIDs := func(in []obs, f func(string) string) []obs {
		out := make([]obs, len(in))
		for i, o := range in {
			o2 := o
			if o.frame != nil {
				fr := *o.frame
				fr.ID = f(fr.ID)
				o2.frame = &fr
			}
			o2.events = nil
			for _, ev := range o.events {
				ev.MsgID = f(ev.MsgID)
				if ev.Msg != nil {
					m := *ev.Msg
					m.ID = f(m.ID)
					ev.Msg = &m
				}
				o2.events = append(o2.events, ev)
			}
			out[i] = o2
		}
		return out
	}
	for _, form := range []struct {
		name string
		id   func(string) string
	}{{"short ids", func(s string) string { return s }}, {"uuid ids", uuidOf}} {
		for _, tc := range cases {
			t.Run(form.name+"/"+tc.name, func(t *testing.T) {
				c := NewMQChecker()
				var last *Violation
				for i, o := range withIDs(tc.obs, form.id) {
					last = c.Observe(w, &Step{Kind: o.kind, Peer: o.peer, To: o.to, Frame: o.frame, Events: o.events})
					if i < len(tc.obs)-1 {
						require.Nil(t, last, "observation %d", i)
					}
				}
				if tc.want == "" {
					assert.Nil(t, last)
					assert.True(t, c.Converged())
					return
				}
				require.NotNil(t, last)
				assert.Equal(t, tc.want, last.Property)
			})
		}
	}
	t.Run("a failed message blocks convergence", func(t *testing.T) {
		c := NewMQChecker()
		require.Nil(t, c.Observe(w, &Step{Kind: StepSend, Peer: 0, To: 1, Frame: &mq.Frame{ID: "a", Seq: 1}}))
		require.Nil(t, c.Observe(w, &Step{Kind: StepWake, Peer: 0, Events: []app.Event{{Kind: app.EventFailed, Peer: p1, MsgID: "a"}}}))
		assert.False(t, c.Converged())
		assert.Contains(t, c.Waiting(w), "(1 failed): p0→p1 #1 queued at 0s failed")
	})
}

func TestViolationStopsTheWorld(t *testing.T) {
	bus := SimBusOptions()
	bus.UnsafeSkipDedupe = true
	w := New(1, Options{Peers: 2, Link: LinkParams{Latency: time.Millisecond, Dup: 1}, Node: app.NodeOptions{Bus: bus}})
	sendN(t, w, 0, 1, 1)
	err := w.RunFor(time.Second)
	var v *Violation
	require.True(t, errors.As(err, &v))
	assert.Equal(t, PropNoDuplicate, v.Property)
	assert.Less(t, w.Elapsed(), time.Second, "the world stops at the violation")
	assert.Equal(t, v, w.Converge(time.Second))
}
