package memory

import (
	"context"
	"slices"
	"sync"

	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/domain/presence"
	"github.com/goop-p2p/goop/ports"
)

var _ ports.Discovery = (*Discovery)(nil)

// DiscoveryNet is an in-memory LAN for presence: what one member publishes
// reaches every other member as a PresenceReceived from it (SourceLAN), as
// GossipSub would deliver a signed message. Safe for concurrent use.
type DiscoveryNet struct {
	mu      sync.Mutex
	members map[mq.PeerID]*Discovery
	// QueueLen bounds each member's event channel (default 256).
	QueueLen int
}

// NewDiscoveryNet returns an empty presence LAN.
func NewDiscoveryNet() *DiscoveryNet {
	return &DiscoveryNet{members: map[mq.PeerID]*Discovery{}}
}

// Join attaches a member for id. Members already present are reported to it
// (PeerFound), and it to them, as mDNS would.
func (n *DiscoveryNet) Join(id mq.PeerID) *Discovery {
	n.mu.Lock()
	defer n.mu.Unlock()
	ql := n.QueueLen
	if ql <= 0 {
		ql = 256
	}
	d := &Discovery{net: n, self: id, events: make(chan ports.DiscoveryEvent, ql)}
	for oid, o := range n.members {
		o.deliver(ports.DiscoveryEvent{Kind: ports.PeerFound, Source: presence.SourceLAN, Peer: id, Addrs: []string{"/memory/" + string(id)}})
		d.deliver(ports.DiscoveryEvent{Kind: ports.PeerFound, Source: presence.SourceLAN, Peer: oid, Addrs: []string{"/memory/" + string(oid)}})
	}
	n.members[id] = d
	return d
}

// Discovery is one member of a DiscoveryNet, or a standalone fake (its zero
// value is not usable; use DiscoveryNet.Join). It records what was
// published and dialed.
type Discovery struct {
	net    *DiscoveryNet
	self   mq.PeerID
	events chan ports.DiscoveryEvent

	mu        sync.Mutex
	closed    bool
	published []presence.Msg
	dialed    []presence.DialHint
	dropped   int
}

// Publish implements ports.Discovery: the message reaches every other member.
func (d *Discovery) Publish(msg presence.Msg) error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return ports.ErrClosed
	}
	msg.Addrs = slices.Clone(msg.Addrs)
	d.published = append(d.published, msg)
	d.mu.Unlock()
	d.net.mu.Lock()
	defer d.net.mu.Unlock()
	for id, o := range d.net.members {
		if id != d.self {
			o.deliver(ports.DiscoveryEvent{Kind: ports.PresenceReceived, Source: presence.SourceLAN, From: d.self, Msg: msg})
		}
	}
	return nil
}

// Dial implements ports.Discovery: it records the hint.
func (d *Discovery) Dial(_ context.Context, peer mq.PeerID, addrs []string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.dialed = append(d.dialed, presence.DialHint{Peer: peer, Addrs: slices.Clone(addrs)})
}

// Events implements ports.Discovery.
func (d *Discovery) Events() <-chan ports.DiscoveryEvent { return d.events }

// Inject delivers ev to this member as if the network reported it (dropped
// when the queue is full or the member closed).
func (d *Discovery) Inject(ev ports.DiscoveryEvent) {
	d.net.mu.Lock()
	defer d.net.mu.Unlock()
	d.deliver(ev)
}

// deliver queues ev without blocking; the net's mutex is held.
func (d *Discovery) deliver(ev ports.DiscoveryEvent) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	select {
	case d.events <- ev:
	default:
		d.dropped++
	}
}

// Published returns copies of the messages published so far.
func (d *Discovery) Published() []presence.Msg {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.published)
}

// Dialed returns the dial hints received so far.
func (d *Discovery) Dialed() []presence.DialHint {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.dialed)
}

// Dropped is the number of events dropped on a full queue.
func (d *Discovery) Dropped() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dropped
}

// Close implements ports.Discovery: the member leaves the net.
func (d *Discovery) Close() error {
	d.net.mu.Lock()
	defer d.net.mu.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.closed {
		d.closed = true
		delete(d.net.members, d.self)
		close(d.events)
	}
	return nil
}
