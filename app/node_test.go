package app_test

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/ports"
	"github.com/goop-p2p/goop/ports/memory"
)

// TestMessageIDsAreRandomUUIDs: every message gets a distinct version 4
// UUID (RFC 4122 variant) as its id, drawn from the node's random source.
func TestMessageIDsAreRandomUUIDs(t *testing.T) {
	n := app.NewNode("A", app.State{}, memory.NewRand(7), app.NodeOptions{})
	seen := map[string]bool{}
	for range 200 {
		f, err := n.Send(time.Unix(1, 0), "B", "t", []byte(`1`), "")
		require.NoError(t, err)
		u, err := uuid.Parse(f.ID)
		require.NoError(t, err, "id %q", f.ID)
		assert.Equal(t, uuid.Version(4), u.Version(), "id %q", f.ID)
		assert.Equal(t, uuid.RFC4122, u.Variant(), "id %q", f.ID)
		assert.Len(t, f.ID, 36)
		assert.False(t, seen[f.ID], "id %q given twice", f.ID)
		seen[f.ID] = true
	}
}

// A round trip between two nodes whose Readys are handed back (Reuse), as
// the runtime does, allocates only the message's id, its queue entry, its
// delivery, and the events somebody listens to.
func TestNodeRoundTripAllocations(t *testing.T) {
	a := app.NewNode("A", app.State{}, memory.NewRand(1), app.NodeOptions{})
	b := app.NewNode("B", app.State{}, memory.NewRand(2), app.NodeOptions{})
	now := time.Unix(1, 0)
	payload := []byte(`{"n":1}`)
	var frames []mq.Outgoing
	step := func(n *app.Node, to *app.Node, from mq.PeerID) int {
		rd := n.Ready()
		frames = append(append(frames[:0], rd.EarlyFrames...), rd.Frames...)
		events := len(rd.Events)
		n.Reuse(&rd)
		for _, o := range frames {
			to.Handle(now, ports.TransportEvent{Kind: ports.FrameReceived, From: from, Frame: o.Frame})
		}
		return events
	}
	roundTrip := func() {
		if _, err := a.Send(now, "B", "t", payload, ""); err != nil {
			panic(err)
		}
		step(a, b, "A")
		if step(b, a, "B") != 1 { // B's application gets the message
			panic("no delivery")
		}
		if step(a, b, "A") != 1 { // A's, the final ack
			panic("no ack")
		}
	}
	for range 10 {
		roundTrip()
	}
	allocs := testing.AllocsPerRun(200, roundTrip)
	t.Logf("allocations per round trip: %.1f", allocs)
	assert.LessOrEqual(t, allocs, 3.0, "the id, the queue entry and the delivery")
}
