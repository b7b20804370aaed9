package app_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/group"
	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/ports/memory"
)

// BenchmarkGroupFanoutNodes measures the nodes' own work (domain cores and
// the app layer, no network, no store) for one message of a group's host
// to 50 members: the host's step, each member's delivery and ack, and the
// host's handling of the acks. B/op is what the message makes the garbage
// collector reclaim across the 51 nodes.
//
// "all events" builds every event; "group events only" mutes the bus
// events that a runtime whose subscribers take only group events mutes
// (Node.Mute).
func BenchmarkGroupFanoutNodes(b *testing.B) {
	b.Run("all events", func(b *testing.B) { benchmarkGroupFanout(b, 0) })
	b.Run("group events only", func(b *testing.B) { benchmarkGroupFanout(b, app.Mutable) })
}

func benchmarkGroupFanout(b *testing.B, muted uint32) {
	const members = 50
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	nodes := map[mq.PeerID]*app.Node{}
	ids := []mq.PeerID{"H"}
	for i := range members {
		ids = append(ids, mq.PeerID(fmt.Sprintf("M%02d", i)))
	}
	for i, id := range ids {
		nodes[id] = app.NewNode(id, app.State{}, memory.NewRand(uint64(i+1)), app.NodeOptions{})
		nodes[id].Tick(now)
		nodes[id].Ready()
	}
	h := nodes["H"]
	g, err := h.Group(now).Create(now, group.CreateSpec{ID: "00000000000000aa", Name: "bench", Type: group.AppRealtime, Lifecycle: group.Persistent})
	if err != nil {
		b.Fatal(err)
	}
	h.Ready()
	joins := map[mq.PeerID]app.Ready{}
	for _, id := range ids[1:] {
		if err := nodes[id].Group(now).Join(now, "H", g.ID); err != nil {
			b.Fatal(err)
		}
		joins[id] = nodes[id].Ready()
	}
	pumpFrames(now, nodes, joins)
	if v, _ := h.Groups().HostedGroup(g.ID); len(v.Members) != members {
		b.Fatalf("%d members joined, want %d", len(v.Members), members)
	}
	for _, n := range nodes {
		n.Mute(muted)
	}
	payload := []byte(`{"n":1,"p":"` + fmt.Sprintf("%0990d", 0) + `"}`)
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(time.Millisecond)
		if err := h.Group(now).SendToGroup(now, "H", g.ID, group.TypeMsg, payload); err != nil {
			b.Fatal(err)
		}
		pumpFrames(now, nodes, map[mq.PeerID]app.Ready{"H": h.Ready()})
	}
}
