package ports

import (
	"context"

	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/domain/presence"
)

// DiscoveryEventKind tells what a DiscoveryEvent carries.
type DiscoveryEventKind uint8

// Discovery event kinds.
const (
	// PresenceReceived: Msg arrived over Source, already decoded and
	// validated. From is its authenticated sender when the transport knows
	// it (GossipSub: the message's signer), else empty; Verified says the
	// transport proved Msg.PeerID authored it by other means.
	PresenceReceived DiscoveryEventKind = iota + 1
	// PeerFound: Peer was found at Addrs (mDNS).
	PeerFound
	// AddrsChanged: this node's own addresses are now Addrs.
	AddrsChanged
	// PeerJoined: Peer can now hear our presence (it subscribed to the
	// presence topic) and has not yet.
	PeerJoined
)

// DiscoveryEvent is something a discovery adapter reports to the runtime.
type DiscoveryEvent struct {
	Kind     DiscoveryEventKind
	Source   presence.Source
	From     mq.PeerID
	Verified bool
	Msg      presence.Msg
	Peer     mq.PeerID
	Addrs    []string
}

// Discovery publishes this node's presence and reports the presence of
// others and the peers it finds (SPEC §6: GossipSub goop.presence.v1 and
// mDNS on the LAN; a rendezvous client on the WAN). Safe for concurrent
// use. Nothing it reports is trusted: the runtime feeds it to the peer table
// (domain/presence), which decides.
type Discovery interface {
	// Publish hands our presence to the network and returns at once: it
	// never blocks on the network. Returns ErrBackpressure when the
	// adapter's queue is full (the message is dropped: the next heartbeat
	// says the same), ErrClosed after Close.
	Publish(msg presence.Msg) error
	// Dial asks for a connection to peer at addrs (multiaddrs, with or
	// without /p2p/<peer>) and returns at once; the connection is made in
	// the background, bounded by ctx and the adapter's own timeout. It is a
	// hint: adapters skip peers already connected or being dialed, drop
	// hints when too many dials are running, and adapters that cannot dial
	// ignore it.
	Dial(ctx context.Context, peer mq.PeerID, addrs []string)
	// Events is the stream of received presence, found peers and our own
	// address changes; it is closed by Close. It is bounded: when the
	// reader falls behind, events are dropped (presence repeats itself).
	Events() <-chan DiscoveryEvent
	// Close stops the adapter; Events is closed afterwards.
	Close() error
}
