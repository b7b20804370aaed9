package node

import (
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/presence"
)

// presenceOptions turns the config's presence settings into the node's:
// it announces itself unless !announce (online, heartbeats every
// presence.heartbeat_seconds, offline at shutdown), marks peers offline
// after presence.ttl_seconds, and records the static peers (p2p.peers) as
// such. addrs are the host's current addresses.
func presenceOptions(cfg app.Config, addrs []string, announce bool) (presence.Config, presence.Profile) {
	pc := presence.DefaultConfig()
	pc.Announce = announce
	pc.Heartbeat = time.Duration(cfg.Presence.HeartbeatSeconds) * time.Second
	pc.TTL = time.Duration(cfg.Presence.TTLSeconds) * time.Second
	for _, a := range cfg.P2P.Peers {
		if ai, err := peer.AddrInfoFromString(a); err == nil {
			pc.Static = append(pc.Static, presence.PeerID(ai.ID.String()))
		}
	}
	return pc, presence.Profile{Label: cfg.Profile.Label, Addrs: addrs}
}
