package app_test

import (
	"context"
	"fmt"
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
