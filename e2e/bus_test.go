// Package e2e holds tests across real components: real libp2p hosts on
// loopback, SQLite files, the viewer HTTP server, and processes.
package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/adapters/p2p"
	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/cmd/goop/node"
	"github.com/goop-p2p/goop/domain/mq"
)

const waitFor = 2 * time.Minute

// ackDropper drops a fraction of received acks, at random but repeatably.
type ackDropper struct {
	mu      sync.Mutex
	r       *rand.Rand
	p       float64
	dropped atomic.Int64
}

func (d *ackDropper) drop(_ mq.PeerID, f mq.Frame) bool {
	if f.Type != mq.TypeAck {
		return false
	}
	d.mu.Lock()
	x := d.r.Float64()
	d.mu.Unlock()
	if x < d.p {
		d.dropped.Add(1)
		return true
	}
	return false
}

func start(t *testing.T, dir string, drop *ackDropper, peers []string, before func(*app.Runtime)) *node.Running {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	bus := mq.DefaultOptions()
	bus.InitialRTO = 100 * time.Millisecond // retransmit lost acks quickly in the test
	bus.MaxRTO = time.Second
	bus.MaxAttempts = 1000
	r, err := node.Start(ctx, dir, node.Options{ListenIP: "127.0.0.1", Bus: bus, NoAutoConnect: true,
		MQ:        p2p.MQOptions{DropInbound: drop.drop},
		BeforeRun: before,
		Init: node.InitOptions{Configure: func(c *app.Config) {
			c.Viewer.HTTPAddr = "127.0.0.1:0"
			c.P2P.Peers = peers
		}}})
	require.NoError(t, err)
	return r
}

// dialable returns r's TCP addresses with its peer id, for p2p.peers.
func dialable(r *node.Running) []string {
	var out []string
	for _, a := range r.Addrs() {
		if strings.Contains(a, "/tcp/") {
			out = append(out, a+"/p2p/"+r.PeerID.String())
		}
	}
	return out
}

// receiver records, per topic, the numbers the application got, in order.
type receiver struct {
	mu  sync.Mutex
	got map[string][]int
}

func newReceiver() *receiver { return &receiver{got: map[string][]int{}} }

// follow subscribes before the runtime runs and records until it stops.
func (rc *receiver) follow(topic string) func(*app.Runtime) {
	return func(rt *app.Runtime) {
		sub := rt.Subscribe(1 << 16)
		go func() {
			for ev := range sub.C {
				if ev.Kind != app.EventMessage || ev.Topic != topic {
					continue
				}
				var p struct {
					N int `json:"n"`
				}
				if json.Unmarshal(ev.Msg.Payload, &p) != nil {
					continue
				}
				rc.mu.Lock()
				rc.got[topic] = append(rc.got[topic], p.N)
				rc.mu.Unlock()
			}
		}()
	}
}

func (rc *receiver) seq(topic string) []int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]int(nil), rc.got[topic]...)
}

func waitCount(t *testing.T, rc *receiver, topic string, n int) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for range tick.C {
		if len(rc.seq(topic)) >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d of %d messages arrived", topic, len(rc.seq(topic)), n)
		}
	}
}

func assertExactlyOnceInOrder(t *testing.T, got []int, n int, what string) {
	t.Helper()
	require.Len(t, got, n, "%s: count", what)
	for i, v := range got {
		if v != i {
			t.Fatalf("%s: position %d holds message %d (lost, duplicated or reordered)", what, i, v)
		}
	}
}

// TestTenThousandEachWayWithLostAcksAndARestart is the bus's acceptance test
// over real libp2p and SQLite: 10,000 messages each way while 10% of acks are
// dropped, and node B restarts in the middle (its outbox to A resumes, and
// A's stream to B continues). Nothing is lost, duplicated or reordered.
func TestTenThousandEachWayWithLostAcksAndARestart(t *testing.T) {
	n := 10_000
	if testing.Short() {
		n = 2_000
	}
	dropA := &ackDropper{r: rand.New(rand.NewPCG(1, 2)), p: 0.10}
	dropB := &ackDropper{r: rand.New(rand.NewPCG(3, 4)), p: 0.10}
	atA, atB := newReceiver(), newReceiver()
	a := start(t, t.TempDir(), dropA, nil, atA.follow("b2a"))
	defer a.Close()
	bDir := filepath.Join(t.TempDir(), "b")
	var bMu sync.Mutex
	b := start(t, bDir, dropB, dialable(a), atB.follow("a2b"))
	current := func() *node.Running { bMu.Lock(); defer bMu.Unlock(); return b }
	defer func() { _ = current().Close() }()
	aID, bID := mq.PeerID(a.PeerID.String()), mq.PeerID(b.PeerID.String())
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()

	payload := func(i int) []byte { return []byte(fmt.Sprintf(`{"n":%d}`, i)) }
	errs := make(chan error, 2)
	go func() { // A → B, A never restarts
		for i := 0; i < n; i++ {
			if _, err := a.Runtime.Send(ctx, bID, "a2b", payload(i)); err != nil {
				errs <- fmt.Errorf("A send %d: %w", i, err)
				return
			}
		}
		errs <- nil
	}()
	restarted := make(chan struct{})
	go func() { // B → A, across B's restart: a refused send is sent again
		for i := 0; i < n; {
			_, err := current().Runtime.Send(ctx, aID, "b2a", payload(i))
			switch {
			case err == nil:
				i++
			case errors.Is(err, app.ErrStopped):
				select {
				case <-restarted:
				case <-ctx.Done():
					errs <- ctx.Err()
					return
				}
			default:
				errs <- fmt.Errorf("B send %d: %w", i, err)
				return
			}
		}
		errs <- nil
	}()

	waitCount(t, atB, "a2b", n/2)
	bMu.Lock()
	require.NoError(t, b.Close())
	b = start(t, bDir, dropB, dialable(a), atB.follow("a2b"))
	bMu.Unlock()
	close(restarted)
	require.Equal(t, bID, mq.PeerID(current().PeerID.String()), "same identity after restart")

	require.NoError(t, <-errs)
	require.NoError(t, <-errs)
	waitCount(t, atB, "a2b", n)
	waitCount(t, atA, "b2a", n)
	assertExactlyOnceInOrder(t, atB.seq("a2b"), n, "A→B")
	assertExactlyOnceInOrder(t, atA.seq("b2a"), n, "B→A")
	assert.Positive(t, dropA.dropped.Load()+dropB.dropped.Load(), "acks were really dropped")
	t.Logf("acks dropped: %d at A, %d at B", dropA.dropped.Load(), dropB.dropped.Load())
}

// TestRoundTripsAmidPipelinedTraffic: callers waiting on round trips
// (their msgs and acks are stepped on the stream readers while a node is
// idle) share the bus with pipelined messages both ways (stepped by the
// nodes' loops), while 10% of acks are dropped (the callers then wait for
// retransmissions). Every round trip completes, and every message of every
// sender arrives exactly once, in order.
func TestRoundTripsAmidPipelinedTraffic(t *testing.T) {
	const callers, trips, piped = 4, 200, 3000
	drop := func(seed uint64) *ackDropper { return &ackDropper{r: rand.New(rand.NewPCG(seed, 7)), p: 0.10} }
	atA, atB := newReceiver(), newReceiver()
	follow := func(topics ...string) func(*app.Runtime) {
		return func(rt *app.Runtime) {
			for _, tp := range topics {
				atB.follow(tp)(rt)
			}
		}
	}
	topics := []string{"p"}
	for c := range callers {
		topics = append(topics, fmt.Sprint("rt", c))
	}
	a := start(t, t.TempDir(), drop(1), nil, atA.follow("p"))
	defer a.Close()
	b := start(t, t.TempDir(), drop(2), dialable(a), follow(topics...))
	defer b.Close()
	aID, bID := mq.PeerID(a.PeerID.String()), mq.PeerID(b.PeerID.String())
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	payload := func(i int) []byte { return []byte(fmt.Sprintf(`{"n":%d}`, i)) }

	errs := make(chan error, callers+2)
	for c := range callers {
		go func() {
			for i := range trips {
				_, ev, err := a.Runtime.SendRoundTrip(ctx, bID, fmt.Sprint("rt", c), payload(i))
				if err == nil && ev.Kind != app.EventReceived && ev.Kind != app.EventDelivered {
					err = fmt.Errorf("answered by a %d event", ev.Kind)
				}
				if err != nil {
					errs <- fmt.Errorf("caller %d, round trip %d: %w", c, i, err)
					return
				}
			}
			errs <- nil
		}()
	}
	pipe := func(from *node.Running, to mq.PeerID) {
		for i := range piped {
			if err := from.Runtime.Post(ctx, to, "p", payload(i)); err != nil {
				errs <- fmt.Errorf("post %d: %w", i, err)
				return
			}
		}
		errs <- nil
	}
	go pipe(a, bID)
	go pipe(b, aID)
	for range callers + 2 {
		require.NoError(t, <-errs)
	}
	waitCount(t, atB, "p", piped)
	waitCount(t, atA, "p", piped)
	assertExactlyOnceInOrder(t, atB.seq("p"), piped, "A→B pipelined")
	assertExactlyOnceInOrder(t, atA.seq("p"), piped, "B→A pipelined")
	for c := range callers {
		tp := fmt.Sprint("rt", c)
		waitCount(t, atB, tp, trips)
		assertExactlyOnceInOrder(t, atB.seq(tp), trips, "round trips of caller "+fmt.Sprint(c))
	}
}
