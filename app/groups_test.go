package app_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/group"
	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/ports"
	"github.com/goop-p2p/goop/ports/memory"
)

func waitGroupEvent(t *testing.T, sub *app.Subscription, typ string) *group.Event {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case ev, ok := <-sub.C:
			require.True(t, ok, "subscription closed")
			if ev.Kind == app.EventGroup && ev.Group.Type == typ {
				return ev.Group
			}
		case <-timeout:
			t.Fatalf("no group event %q", typ)
		}
	}
}

func TestGroupOverRuntimes(t *testing.T) {
	net := memory.NewNetwork()
	hostStore := memory.NewStore()
	h := startNode(t, net, "H", hostStore, app.NodeOptions{Label: "host"})
	a := startNode(t, net, "A", memory.NewStore(), app.NodeOptions{Label: "alice"})
	b := startNode(t, net, "B", memory.NewStore(), app.NodeOptions{Label: "bob"})
	ctx := context.Background()
	subA, subB, subH := a.rt.Subscribe(256), b.rt.Subscribe(256), h.rt.Subscribe(256)
	defer subA.Close()
	defer subB.Close()
	defer subH.Close()

	var id string
	require.NoError(t, h.rt.Do(ctx, func(now time.Time, n *app.Node) {
		id = n.NewGroupID()
		_, err := n.Group(now).Create(now, group.CreateSpec{ID: id, Name: "chess", Lifecycle: group.Ephemeral, HostJoin: true})
		require.NoError(t, err)
	}))
	assert.Len(t, id, 16)
	for _, m := range []*testNode{a, b} {
		require.NoError(t, m.rt.Do(ctx, func(now time.Time, n *app.Node) { require.NoError(t, n.Group(now).Join(now, "H", id)) }))
	}
	waitGroupEvent(t, subA, group.EvJoined)
	waitGroupEvent(t, subB, group.EvJoined)
	require.NoError(t, h.rt.Do(ctx, func(now time.Time, n *app.Node) {
		v, _ := n.Groups().HostedGroup(id)
		assert.Len(t, v.Members, 3)
	}))

	require.NoError(t, a.rt.Do(ctx, func(now time.Time, n *app.Node) {
		require.NoError(t, n.Group(now).SendToGroup(now, "H", id, group.TypeMsg, []byte(`{"move":"e2e4"}`)))
	}))
	got := waitGroupEvent(t, subB, group.EvMsg)
	assert.Equal(t, mq.PeerID("A"), got.From, "relayed message names its original sender")
	assert.JSONEq(t, `{"move":"e2e4"}`, string(got.Payload))
	hostGot := waitGroupEvent(t, subH, group.EvMsg)
	assert.Equal(t, mq.PeerID("A"), hostGot.From)
	hist, err := hostStore.GroupHistory(ctx, id, 0)
	require.NoError(t, err)
	require.Len(t, hist, 1, "the move is in the host's database")

	// The host restarts: groups and members come back from its store.
	h.shutdown(t)
	h2 := startNode(t, net, "H", hostStore, app.NodeOptions{Label: "host"})
	var members int
	require.NoError(t, h2.rt.Do(ctx, func(now time.Time, n *app.Node) {
		v, ok := n.Groups().HostedGroup(id)
		require.True(t, ok)
		members = len(v.Members)
	}))
	assert.Equal(t, 3, members)
	require.NoError(t, b.rt.Do(ctx, func(now time.Time, n *app.Node) {
		require.NoError(t, n.Group(now).SendToGroup(now, "H", id, group.TypeMsg, []byte(`{"move":"e7e5"}`)))
	}))
	got = waitGroupEvent(t, subA, group.EvMsg)
	assert.Equal(t, mq.PeerID("B"), got.From)
}

type recordingHandler struct {
	typ   string
	calls chan string
}

func (r *recordingHandler) Type() string { return r.typ }
func (r *recordingHandler) Flags() group.TypeFlags {
	return group.TypeFlags{HostCanJoin: false, Volatile: true}
}
func (r *recordingHandler) OnCreate(g group.Group) { r.calls <- "create " + g.Name }
func (r *recordingHandler) OnJoin(id string, host, peer mq.PeerID) {
	r.calls <- "join " + string(peer)
}
func (r *recordingHandler) OnLeave(id string, host, peer mq.PeerID, reason string) {
	r.calls <- "leave " + string(peer) + " " + reason
}
func (r *recordingHandler) OnClose(id string, host mq.PeerID, reason string) {
	r.calls <- "close " + reason
}
func (r *recordingHandler) OnEvent(ev group.Event) {}

func TestTypeHandlerHooksAndFlags(t *testing.T) {
	net := memory.NewNetwork()
	rec := &recordingHandler{typ: "compute", calls: make(chan string, 64)}
	h := startNode(t, net, "H", memory.NewStore(), app.NodeOptions{TypeHandlers: []ports.GroupTypeHandler{rec}})
	a := startNode(t, net, "A", memory.NewStore(), app.NodeOptions{})
	ctx := context.Background()
	var id string
	var created group.Group
	require.NoError(t, h.rt.Do(ctx, func(now time.Time, n *app.Node) {
		id = n.NewGroupID()
		var err error
		created, err = n.Group(now).Create(now, group.CreateSpec{ID: id, Name: "farm", Type: "compute"})
		require.NoError(t, err)
		assert.Equal(t, group.CodeHostCantJoin, group.CodeOf(n.Group(now).Join(now, "H", id)), "handler flags apply")
	}))
	assert.True(t, created.Volatile, "handler flags apply")
	hs := h.rt.Subscribe(64)
	defer hs.Close()
	require.NoError(t, a.rt.Do(ctx, func(now time.Time, n *app.Node) { require.NoError(t, n.Group(now).Join(now, "H", id)) }))
	waitGroupEvent(t, hs, group.EvMemberJoined)
	require.NoError(t, a.rt.Do(ctx, func(now time.Time, n *app.Node) { require.NoError(t, n.Group(now).Leave(now, "H", id)) }))
	waitGroupEvent(t, hs, group.EvMemberLeft)
	require.NoError(t, h.rt.Do(ctx, func(now time.Time, n *app.Node) { require.NoError(t, n.Group(now).Close(now, id)) }))
	want := []string{"create farm", "join A", "leave A left", "close closed by host"}
	for _, w := range want {
		select {
		case got := <-rec.calls:
			assert.Equal(t, w, got)
		case <-time.After(5 * time.Second):
			t.Fatalf("hook %q not called", w)
		}
	}
}

// TestRelayOutboxRowsLinger: when the host relays a member's message, what
// the relay depends on (the sender's cursor, the history row) is stored at
// once — the other member gets the message although the linger is a minute
// long — while the relay's outbox rows wait, and are never written when
// their acks come within the linger.
func TestRelayOutboxRowsLinger(t *testing.T) {
	net := memory.NewNetwork()
	hostStore := &recStore{Store: memory.NewStore()}
	h := startNodeWith(t, net, "H", hostStore.Store, hostStore, app.NodeOptions{Label: "host"},
		func(rt *app.Runtime) { rt.SetCommitLinger(time.Minute) })
	a := startNode(t, net, "A", memory.NewStore(), app.NodeOptions{Label: "alice"})
	b := startNode(t, net, "B", memory.NewStore(), app.NodeOptions{Label: "bob"})
	ctx := context.Background()
	subA := a.rt.Subscribe(256)
	defer subA.Close()
	subB := b.rt.Subscribe(256)
	defer subB.Close()
	var id string
	var err error
	require.NoError(t, h.rt.Do(ctx, func(now time.Time, n *app.Node) {
		id = n.NewGroupID()
		_, err = n.Group(now).Create(now, group.CreateSpec{ID: id, Name: "chess"})
	}))
	require.NoError(t, err)
	for _, m := range []*testNode{a, b} {
		require.NoError(t, m.rt.Do(ctx, func(now time.Time, n *app.Node) { err = n.Group(now).Join(now, "H", id) }))
		require.NoError(t, err)
	}
	// Both members are in before A sends (a send before A's welcome is
	// refused).
	waitGroupEvent(t, subA, group.EvJoined)
	waitGroupEvent(t, subB, group.EvJoined)
	subH := h.rt.Subscribe(256)
	defer subH.Close()
	for i := range 3 {
		require.NoError(t, a.rt.Do(ctx, func(now time.Time, n *app.Node) {
			err = n.Group(now).SendToGroup(now, "H", id, group.TypeMsg, []byte(fmt.Sprintf(`{"move":%d}`, i)))
		}))
		require.NoError(t, err)
		waitGroupEvent(t, subB, group.EvMsg)
	}
	hist, err := hostStore.GroupHistory(ctx, id, 0)
	require.NoError(t, err)
	assert.Len(t, hist, 3, "history rows are stored before the relay leaves")
	// B's acks are on their way back when B hears the message: the host
	// must have them before it shuts down, or the rows are rightly stored.
	for acked := 0; acked < 3; {
		if ev := waitEvent(t, subH, app.EventDelivered); ev.Peer == "B" && ev.Topic == group.Topic(id, group.TypeMsg) {
			acked++
		}
	}
	h.shutdown(t) // the lingering rows are stored at shutdown

	hostStore.mu.Lock()
	for i, batch := range hostStore.applies {
		for _, c := range batch.Bus {
			if c.Kind == mq.PutOutbox && c.Peer == "B" && c.Frame != nil && strings.HasPrefix(c.Frame.Topic, "group:"+id+":msg") {
				t.Errorf("apply %d: a relay row to B acked within the linger was written (seq %d)", i, c.Seq)
			}
			if c.Kind == mq.DeleteOutbox && c.Peer == "B" {
				t.Errorf("apply %d: the deletion of a relay row never written reached the store (seq %d)", i, c.Seq)
			}
		}
	}
	hostStore.mu.Unlock()
	snap, err := hostStore.LoadBus(ctx)
	require.NoError(t, err)
	for _, e := range snap.Outbox {
		assert.NotEqual(t, mq.PeerID("B"), e.To, "relay row to B left in the outbox: %+v", e.Frame)
	}
}

// pumpFrames carries the frames of rds (each node's last Ready) to their
// destinations among nodes, and goes on with the Readies that produces,
// until no frame is left.
func pumpFrames(now time.Time, nodes map[mq.PeerID]*app.Node, rds map[mq.PeerID]app.Ready) {
	for len(rds) > 0 {
		next := map[mq.PeerID]app.Ready{}
		for from, rd := range rds {
			for _, o := range append(rd.EarlyFrames, rd.Frames...) {
				if to := nodes[o.To]; to != nil {
					to.Handle(now, ports.TransportEvent{Kind: ports.FrameReceived, From: from, Frame: o.Frame})
				}
			}
		}
		for id, n := range nodes {
			if rd := n.Ready(); len(rd.EarlyFrames)+len(rd.Frames) > 0 {
				next[id] = rd
			}
		}
		rds = next
	}
}

// topicsTo lists the msg frames of os to peer, by topic.
func topicsTo(os []mq.Outgoing, peer mq.PeerID) []string {
	var out []string
	for _, o := range os {
		if o.To == peer && o.Frame.IsMsg() {
			out = append(out, o.Frame.Topic)
		}
	}
	return out
}

// A group message leaves before the step's changes are stored only when it
// depends on none of them: the host's own message to its group (its
// history row is no announcement), not a state (the host announces a
// state it stores), and not a relay (it waits for the cursor of the
// member's message, or a host that crashed before storing that cursor
// would relay the message again when the member resends it).
func TestGroupMessagesWaitOnlyForWhatTheyDependOn(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	nodes := map[mq.PeerID]*app.Node{}
	for i, id := range []mq.PeerID{"H", "A", "B"} {
		nodes[id] = app.NewNode(id, app.State{}, memory.NewRand(uint64(i+1)), app.NodeOptions{})
		nodes[id].Tick(now)
		nodes[id].Ready()
	}
	h := nodes["H"]
	persistent, err := h.Group(now).Create(now, group.CreateSpec{ID: "00000000000000aa", Name: "chat", Type: group.AppChat, Lifecycle: group.Persistent})
	require.NoError(t, err)
	volatile, err := h.Group(now).Create(now, group.CreateSpec{ID: "00000000000000bb", Name: "jobs", Type: group.AppCluster})
	require.NoError(t, err)
	require.True(t, volatile.Volatile)
	h.Ready()
	for _, m := range []mq.PeerID{"A", "B"} {
		for _, id := range []string{persistent.ID, volatile.ID} {
			require.NoError(t, nodes[m].Group(now).Join(now, "H", id))
		}
	}
	pumpFrames(now, nodes, map[mq.PeerID]app.Ready{"A": nodes["A"].Ready(), "B": nodes["B"].Ready()})
	v, ok := h.Groups().HostedGroup(volatile.ID)
	require.True(t, ok)
	require.Len(t, v.Members, 2)

	msgTopic := group.Topic(persistent.ID, group.TypeMsg)
	require.NoError(t, h.Group(now).SendToGroup(now, "H", persistent.ID, group.TypeMsg, []byte(`{"text":"hi"}`)))
	rd := h.Ready()
	require.Len(t, rd.Batch.Groups, 1)
	assert.Equal(t, group.AppendHistory, rd.Batch.Groups[0].Kind)
	assert.Equal(t, []string{msgTopic}, topicsTo(rd.EarlyFrames, "A"), "the host's own message leaves at once")
	assert.Equal(t, []string{msgTopic}, topicsTo(rd.EarlyFrames, "B"))
	assert.Empty(t, topicsTo(rd.Frames, "A"))
	pumpFrames(now, nodes, map[mq.PeerID]app.Ready{"H": rd})

	require.NoError(t, h.Group(now).SendToGroup(now, "H", persistent.ID, group.TypeState, []byte(`{"turn":"A"}`)))
	rd = h.Ready()
	assert.Empty(t, topicsTo(rd.EarlyFrames, "A"), "a state waits until the host stored it")
	assert.Equal(t, []string{group.Topic(persistent.ID, group.TypeState)}, topicsTo(rd.Frames, "A"))
	pumpFrames(now, nodes, map[mq.PeerID]app.Ready{"H": rd})

	for _, id := range []string{persistent.ID, volatile.ID} {
		require.NoError(t, nodes["A"].Group(now).SendToGroup(now, "H", id, group.TypeMsg, []byte(`{"text":"from A"}`)))
		for _, o := range nodes["A"].Ready().EarlyFrames {
			h.Handle(now, ports.TransportEvent{Kind: ports.FrameReceived, From: "A", Frame: o.Frame})
		}
		rd = h.Ready()
		assert.True(t, slices.ContainsFunc(rd.Batch.Bus, func(c mq.Change) bool { return c.Kind == mq.SetCursor && c.Peer == "A" }),
			"group %s: the host stores A's cursor", id)
		assert.Empty(t, topicsTo(rd.EarlyFrames, "B"), "group %s: the relay waits for A's cursor", id)
		assert.Equal(t, []string{group.Topic(id, group.TypeMsg)}, topicsTo(rd.Frames, "B"), "group %s", id)
		pumpFrames(now, nodes, map[mq.PeerID]app.Ready{"H": rd})
	}
}
