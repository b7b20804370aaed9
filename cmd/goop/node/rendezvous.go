package node

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"

	"github.com/goop-p2p/goop/adapters/discovery"
	"github.com/goop-p2p/goop/adapters/rendezvous"
	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/ports"
)

// rendezvousRoles are a node's rendezvous roles (SPEC §6) and the discovery
// its runtime uses.
type rendezvousRoles struct {
	// disc is what the runtime publishes through and hears from: LAN
	// discovery alone, or LAN and WAN combined.
	disc ports.Discovery
	// server is the rendezvous server this node hosts (nil unless
	// presence.rendezvous_host); url is its local URL.
	server  *rendezvous.Server
	url     string
	srvDone chan struct{}

	closeOnce sync.Once
	closeErr  error
}

// startRendezvous starts the node's rendezvous roles on top of its LAN
// discovery: with presence.rendezvous_host, a server on
// presence.rendezvous_bind:presence.rendezvous_port (a busy port is an error
// naming presence.rendezvous_port); with the server or
// presence.rendezvous_wan, a WAN discovery (adapters/rendezvous.Discovery)
// that publishes our presence signed with key to each, follows their
// /events and dials the peers they tell of, combined with lan. Without
// either it returns lan alone. The server keeps its signed-peer records in
// the peer folder dir (rendezvous.StatePathIn). The roles own lan from now
// on: close them (close) instead, after the runtime stopped and before the
// host closes.
func startRendezvous(cfg app.Config, dir string, h host.Host, key crypto.PrivKey, lan ports.Discovery, log *slog.Logger) (*rendezvousRoles, error) {
	pc := cfg.Presence
	r := &rendezvousRoles{disc: lan}
	var urls []string
	if pc.RendezvousHost {
		ln, err := rendezvous.Listen(pc.RendezvousBind, pc.RendezvousPort)
		if err != nil {
			return nil, err
		}
		r.server = rendezvous.NewServer(rendezvous.ServerConfig{ExternalURL: pc.ExternalURL,
			AdminPassword: pc.AdminPassword, Addr: ln.Addr().String(), Log: log,
			StatePath: rendezvous.StatePathIn(dir)})
		r.url = rendezvous.LocalURL(ln.Addr())
		r.srvDone = make(chan struct{})
		go func() {
			defer close(r.srvDone)
			if err := r.server.Serve(ln); err != nil {
				log.Error("rendezvous server stopped", "err", err)
			}
		}()
		urls = append(urls, r.url)
		log.Info("rendezvous server started", "endpoint", r.server.Endpoint(), "connect", r.server.ConnectURLs())
	}
	if pc.RendezvousWAN != "" && pc.RendezvousWAN != r.url {
		urls = append(urls, pc.RendezvousWAN)
	}
	if len(urls) == 0 {
		return r, nil
	}
	wan, err := rendezvous.NewDiscovery(rendezvous.DiscoveryConfig{URLs: urls, Key: key, Host: h, Log: log,
		Client: rendezvous.ClientConfig{Heartbeat: time.Duration(pc.HeartbeatSeconds) * time.Second}})
	if err != nil {
		r.stopServer()
		return nil, fmt.Errorf("presence.rendezvous_wan: %w", err)
	}
	r.disc = discovery.Combine(0, lan, wan)
	return r, nil
}

// close closes the discovery (LAN and WAN: our offline goes out to the
// servers), then stops the server. Later calls return the first result.
func (r *rendezvousRoles) close() error {
	r.closeOnce.Do(func() {
		err := r.disc.Close()
		r.closeErr = errors.Join(err, r.stopServer())
	})
	return r.closeErr
}

func (r *rendezvousRoles) stopServer() error {
	if r.server == nil {
		return nil
	}
	err := r.server.Close()
	<-r.srvDone
	if err != nil {
		return fmt.Errorf("rendezvous server: %w", err)
	}
	return nil
}
