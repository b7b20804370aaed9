package discovery

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/domain/presence"
	"github.com/goop-p2p/goop/ports"
	"github.com/goop-p2p/goop/ports/memory"
)

// TestCombine: publications and dials reach every member, events of every
// member come out of one channel, and Close closes them all.
func TestCombine(t *testing.T) {
	lan, wan := memory.NewDiscoveryNet(), memory.NewDiscoveryNet()
	onLAN, onWAN := lan.Join("X"), wan.Join("X")
	peerLAN, peerWAN := lan.Join("L"), wan.Join("W")
	d := Combine(0, onLAN, onWAN)

	msg := presence.Msg{Type: presence.TypeOnline, PeerID: "X", TS: 1}
	require.NoError(t, d.Publish(msg))
	d.Dial(context.Background(), "P", []string{"/ip4/10.0.0.1/tcp/1"})
	assert.Equal(t, []presence.Msg{msg}, onLAN.Published())
	assert.Equal(t, []presence.Msg{msg}, onWAN.Published())
	assert.Len(t, onLAN.Dialed(), 1)
	assert.Len(t, onWAN.Dialed(), 1)

	require.NoError(t, peerLAN.Publish(presence.Msg{Type: presence.TypeOnline, PeerID: "L", TS: 1}))
	require.NoError(t, peerWAN.Publish(presence.Msg{Type: presence.TypeOnline, PeerID: "W", TS: 1}))
	got := map[string]bool{}
	timeout := time.After(5 * time.Second)
	for len(got) < 2 {
		select {
		case ev := <-d.Events():
			if ev.Kind == ports.PresenceReceived {
				got[string(ev.Msg.PeerID)] = true
			}
		case <-timeout:
			t.Fatalf("merged events: got %v", got)
		}
	}

	require.NoError(t, d.Close())
	for range d.Events() {
	}
	assert.ErrorIs(t, onLAN.Publish(msg), ports.ErrClosed)
	assert.ErrorIs(t, onWAN.Publish(msg), ports.ErrClosed)
	assert.ErrorIs(t, d.Publish(msg), ports.ErrClosed)
	require.NoError(t, d.Close(), "Close twice")
}
