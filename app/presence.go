package app

import (
	"context"
	"fmt"
	"time"

	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/domain/presence"
	"github.com/goop-p2p/goop/ports"
)

// newPresence builds the node's presence core from its restored table.
func newPresence(self mq.PeerID, st State, opts NodeOptions) *presence.Core {
	prof := opts.Profile
	if prof.Label == "" {
		prof.Label = opts.Label
	}
	return presence.New(self, opts.Presence, prof, st.Peers)
}

// tickPresence starts the presence core on the first Tick (restored peers
// go offline and are dialed; an announcing node publishes online), then
// fires its timers.
func (n *Node) tickPresence(now time.Time) {
	if !n.presenceStarted {
		n.presenceStarted = true
		_ = n.presence.Handle(now, presence.Start{})
	}
	n.presence.Tick(now)
}

// Presence returns the presence core for a command at time now, e.g.
// Handle(now, presence.ProfileChanged{...}); the same now must be passed to
// the command. Call it only from the goroutine that drives the node
// (Runtime.Do); the outputs go out with the next Ready.
func (n *Node) Presence(now time.Time) *presence.Core {
	n.now = now
	return n.presence
}

// Peers returns the peer table sorted by peer id (copies): for queries.
func (n *Node) Peers() []presence.Peer { return n.presence.Peers() }

// HandlePresence feeds a presence message that arrived over src. from is
// its authenticated sender ("" when unknown) and verified says the transport
// proved msg.PeerID authored it by other means (presence.Received). The
// error says why the message changed nothing (presence.ErrForged,
// ErrStale, ...); it is never fatal.
func (n *Node) HandlePresence(now time.Time, src presence.Source, from mq.PeerID, verified bool, msg presence.Msg) error {
	n.now = now
	return n.presence.Handle(now, presence.Received{Source: src, From: from, Verified: verified, Msg: msg})
}

// Discovered reports that peer was found at addrs over src (mDNS, a
// simulated LAN broadcast); the node answers with a dial hint in Ready.Dial
// unless the peer is online and was dialed recently.
func (n *Node) Discovered(now time.Time, src presence.Source, peer mq.PeerID, addrs []string) error {
	n.now = now
	return n.presence.Handle(now, presence.Discovered{Source: src, Peer: peer, Addrs: addrs})
}

// HandleDiscovery feeds one event of a discovery adapter (ports.Discovery).
func (n *Node) HandleDiscovery(now time.Time, ev ports.DiscoveryEvent) error {
	switch ev.Kind {
	case ports.PresenceReceived:
		return n.HandlePresence(now, ev.Source, ev.From, ev.Verified, ev.Msg)
	case ports.PeerFound:
		return n.Discovered(now, ev.Source, ev.Peer, ev.Addrs)
	case ports.AddrsChanged:
		n.now = now
		return n.presence.Handle(now, presence.AddrsChanged{Addrs: ev.Addrs})
	case ports.PeerJoined:
		n.now = now
		return n.presence.Handle(now, presence.Joined{Peer: ev.Peer})
	}
	return fmt.Errorf("unknown discovery event kind %d", ev.Kind)
}

// StopPresence announces that the node goes offline (when it announces)
// and stops its heartbeats; the peer table keeps working.
func (n *Node) StopPresence(now time.Time) {
	n.now = now
	_ = n.presence.Handle(now, presence.Stop{})
}

// drainPresence adds the presence core's outputs to r.
func (n *Node) drainPresence(r *Ready) {
	pr := n.presence.Drain()
	r.Batch.Peers = append(r.Batch.Peers, pr.Changes...)
	r.Publish = append(r.Publish, pr.Publish...)
	r.Dial = append(r.Dial, pr.Dial...)
	for i := range pr.Events {
		ev := pr.Events[i]
		n.events = append(n.events, Event{Kind: EventPeer, Peer: ev.Peer.ID, Presence: &ev})
	}
}

// SetDiscovery makes the runtime publish the node's presence and dial peers
// through d, and feed d's events to the node. Call it before Run. The caller
// keeps ownership of d and closes it after Run returned: Run publishes the
// offline presence as it stops.
func (r *Runtime) SetDiscovery(d ports.Discovery) { r.disc = d }

// Peers returns the node's peer table, sorted by peer id.
func (r *Runtime) Peers(ctx context.Context) ([]presence.Peer, error) {
	var ps []presence.Peer
	err := r.Do(ctx, func(_ time.Time, n *Node) { ps = n.Peers() })
	return ps, err
}

func (r *Runtime) discoveryEvents() <-chan ports.DiscoveryEvent {
	if r.disc == nil {
		return nil
	}
	return r.disc.Events()
}

// onDiscovery feeds one discovery event to the node; it returns the channel
// to keep reading (nil once it is closed).
func (r *Runtime) onDiscovery(ch <-chan ports.DiscoveryEvent, ev ports.DiscoveryEvent, ok bool) <-chan ports.DiscoveryEvent {
	if !ok {
		return nil
	}
	if err := r.node.HandleDiscovery(r.clock.Now(), ev); err != nil {
		r.log.Debug("discovery event ignored", "kind", ev.Kind, "source", ev.Source, "err", err)
	}
	return ch
}

// discover carries out a Ready's presence publications and dial hints.
func (r *Runtime) discover(ctx context.Context, rd *Ready) {
	if r.disc == nil {
		return
	}
	for i := range rd.Publish {
		if err := r.disc.Publish(rd.Publish[i]); err != nil {
			r.log.Debug("publish presence", "type", rd.Publish[i].Type, "err", err)
		}
	}
	for _, h := range rd.Dial {
		r.disc.Dial(ctx, h.Peer, h.Addrs)
	}
}

// shutdown announces the node offline and flushes what that produced.
func (r *Runtime) shutdown(ctx context.Context) {
	now := r.clock.Now()
	r.node.StopPresence(now)
	_ = r.flush(ctx, now, nil) // a failure is logged and kept in Err
}
