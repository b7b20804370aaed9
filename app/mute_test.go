package app_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/ports"
	"github.com/goop-p2p/goop/ports/memory"
)

func eventKinds(evs []app.Event) []app.EventKind {
	var out []app.EventKind
	for _, ev := range evs {
		out = append(out, ev.Kind)
	}
	return out
}

// A muted node builds no event of the muted kinds (a message received, an
// ack of ours) but counts them, and builds the kinds Mute cannot silence.
func TestMutedEventsAreNotBuilt(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name  string
		muted uint32
		want  []app.EventKind // B's events for A's msg, then A's for B's ack
	}{
		{"nothing muted", 0, []app.EventKind{app.EventMessage, app.EventDelivered}},
		{"all mutable kinds muted", app.Mutable, nil},
		{"only received messages muted", 1 << app.EventMessage, []app.EventKind{app.EventDelivered}},
		{"an unmutable kind asked for", 1 << app.EventGroup, []app.EventKind{app.EventMessage, app.EventDelivered}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := app.NewNode("A", app.State{}, memory.NewRand(1), app.NodeOptions{})
			b := app.NewNode("B", app.State{}, memory.NewRand(2), app.NodeOptions{})
			for _, n := range []*app.Node{a, b} {
				n.Tick(now)
				n.Ready()
				n.Mute(tc.muted)
			}
			_, err := a.Send(now, "B", "chat", []byte(`{"text":"hi"}`), "")
			require.NoError(t, err)
			carry := func(from mq.PeerID, rd app.Ready, to *app.Node) app.Ready {
				for _, o := range append(rd.EarlyFrames, rd.Frames...) {
					to.Handle(now, ports.TransportEvent{Kind: ports.FrameReceived, From: from, Frame: o.Frame})
				}
				return to.Ready()
			}
			rdB := carry("A", a.Ready(), b)
			rdA := carry("B", rdB, a)
			assert.Equal(t, tc.want, append(eventKinds(rdB.Events), eventKinds(rdA.Events)...))
			assert.Equal(t, uint64(1), b.Stats().Delivered, "counted muted or not")
			assert.Equal(t, uint64(1), a.Stats().Acked)
		})
	}
}

// The runtime mutes only what nobody takes, step by step: a subscriber of
// group events alone does not keep message events alive, one that comes
// later gets them, and a caller waiting for its message's ack gets it
// whoever subscribes.
func TestRuntimeMutesOnlyWhatNobodyTakes(t *testing.T) {
	net := memory.NewNetwork()
	a := startNode(t, net, "A", memory.NewStore(), app.NodeOptions{})
	b := startNode(t, net, "B", memory.NewStore(), app.NodeOptions{})
	groupsOnly := b.rt.SubscribeKinds(16, app.EventGroup)
	defer groupsOnly.Close()
	waiterOnly := a.rt.SubscribeKinds(16, app.EventGroup) // A's acks: muted but for the waiter
	defer waiterOnly.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f, ev, err := a.rt.SendWait(ctx, "B", "chat", []byte(`1`))
	require.NoError(t, err)
	assert.Equal(t, app.EventDelivered, ev.Kind, "the waiter keeps its kind built")
	assert.Equal(t, f.ID, ev.MsgID)

	all := b.rt.Subscribe(16)
	defer all.Close()
	f2, _, err := a.rt.SendWait(ctx, "B", "chat", []byte(`2`))
	require.NoError(t, err)
	got := waitEvent(t, all, app.EventMessage)
	assert.Equal(t, f2.ID, got.Msg.ID, "a subscriber of every kind gets message events from the next step on")
	select {
	case ev := <-groupsOnly.C:
		t.Fatalf("a group-only subscriber got %+v", ev)
	default:
	}
}
