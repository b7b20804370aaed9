package app_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/group"
	"github.com/goop-p2p/goop/domain/mq"
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
	j := waitGroupEvent(t, subB, group.EvJoined)
	assert.Len(t, j.Members, 3)

	require.NoError(t, a.rt.Do(ctx, func(now time.Time, n *app.Node) {
		require.NoError(t, n.Group(now).SendToGroup(now, "H", id, group.TypeMsg, []byte(`{"move":"e2e4"}`)))
	}))
	got := waitGroupEvent(t, subB, group.EvMsg)
	assert.Equal(t, mq.PeerID("A"), got.From, "relayed message names its original sender")
	assert.JSONEq(t, `{"move":"e2e4"}`, string(got.Payload))
	hostGot := waitGroupEvent(t, subH, group.EvMsg)
	assert.Equal(t, mq.PeerID("A"), hostGot.From)
	require.Len(t, hostStore.GroupHistory(), 1, "the move is in the host's database")

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
