package rendezvous

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// Dialing of the peers a node learns of.
const (
	// DialTimeout bounds each dial of a learnt peer.
	DialTimeout = 10 * time.Second
	// redialAfter is the least time between two dials of the same peer.
	redialAfter = 30 * time.Second
	// maxParallelDials bounds concurrent dials; presences beyond wait for
	// the peer's next heartbeat.
	maxParallelDials = 8
	// maxDialMemory bounds the per-peer dial records.
	maxDialMemory = 4096
)

// Config is the node's rendezvous settings: the presence.* keys of goop.json
// (SPEC §8) that concern the rendezvous, plus hooks.
type Config struct {
	// Host runs a rendezvous server in this peer (presence.rendezvous_host).
	Host bool
	// Port and Bind are where the server listens (presence.rendezvous_port,
	// presence.rendezvous_bind; port 0 picks a free one).
	Port int
	Bind string
	// WAN is a rendezvous server to publish to and follow (presence.rendezvous_wan).
	WAN string
	// AdminPassword and ExternalURL are the server's (presence.admin_password,
	// presence.external_url).
	AdminPassword string
	ExternalURL   string
	// Heartbeat is the publish interval (presence.heartbeat_seconds; default 5 s).
	Heartbeat time.Duration
	// OnPresence, if set, also receives every presence learnt from a
	// rendezvous (e.g. for the node's peer table). Called on the client's
	// goroutine; must not block for long.
	OnPresence func(PresenceMsg)
	// Server tunes the server's limits (its ExternalURL, AdminPassword and
	// Log are taken from the fields above).
	Server ServerConfig
	// Client tunes the clients (URL, Key, Presence and OnPresence are set here).
	Client ClientConfig
}

// Running is what StartForNode started.
type Running struct {
	// Server is the rendezvous server (nil unless Config.Host).
	Server *Server
	// ServerURL is the server's local URL, e.g. http://127.0.0.1:8787 (empty unless Config.Host).
	ServerURL string
	// Clients are the clients: one to our own server (if Config.Host) and one
	// to Config.WAN (if set).
	Clients []*Client

	stop func()
}

// Stop publishes offline, stops the clients and the server and waits for
// them. Safe to call more than once.
func (r *Running) Stop() { r.stop() }

// StartForNode starts a node's rendezvous roles: (a) with cfg.Host, a server
// on cfg.Bind:cfg.Port (and a client to it, so the node sees the peers that
// publish there, as Goop2 does); (b) with cfg.WAN, a client to that server.
// Clients publish h's label and addresses signed with key and dial (with
// DialTimeout) every peer they learn of that h is not connected to. It
// returns at once; stop ends everything. With neither role it does nothing.
// Errors about the port name the config key.
func StartForNode(ctx context.Context, cfg Config, h host.Host, key crypto.PrivKey, label string, log *slog.Logger) (stop func(), err error) {
	r, err := Start(ctx, cfg, h, key, label, log)
	if err != nil {
		return nil, err
	}
	return r.Stop, nil
}

// Start is StartForNode returning what it started.
func Start(ctx context.Context, cfg Config, h host.Host, key crypto.PrivKey, label string, log *slog.Logger) (*Running, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Running{stop: func() {}}
	var urls []string
	var srvDone chan struct{}
	if cfg.Host {
		ln, err := Listen(cfg.Bind, cfg.Port)
		if err != nil {
			return nil, err
		}
		sc := cfg.Server
		sc.ExternalURL, sc.AdminPassword, sc.Log = cfg.ExternalURL, cfg.AdminPassword, log
		if sc.Addr == "" {
			sc.Addr = ln.Addr().String()
		}
		r.Server = NewServer(sc)
		r.ServerURL = LocalURL(ln.Addr())
		srvDone = make(chan struct{})
		go func() {
			defer close(srvDone)
			if err := r.Server.Serve(ln); err != nil {
				log.Error("rendezvous server stopped", "err", err)
			}
		}()
		urls = append(urls, r.ServerURL)
		log.Info("rendezvous server started", "endpoint", r.Server.Endpoint(), "connect", r.Server.ConnectURLs())
	}
	if cfg.WAN != "" {
		urls = append(urls, cfg.WAN)
	}
	cctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d := newDialer(cctx, h, log)
	onPresence := func(m PresenceMsg) {
		if cfg.OnPresence != nil {
			cfg.OnPresence(m)
		}
		d.consider(m)
	}
	for _, u := range urls {
		cc := cfg.Client
		cc.URL, cc.Key, cc.OnPresence, cc.Log = u, key, onPresence, log
		if cfg.Heartbeat > 0 {
			cc.Heartbeat = cfg.Heartbeat
		}
		cc.Presence = func() PresenceMsg {
			return PresenceMsg{Content: label, Addrs: HostAddrs(h, MaxAddrs)}
		}
		c, err := NewClient(cc)
		if err != nil {
			cancel()
			if r.Server != nil {
				_ = r.Server.Close()
				<-srvDone
			}
			return nil, fmt.Errorf("presence.rendezvous_wan: %w", err)
		}
		r.Clients = append(r.Clients, c)
	}
	var wg sync.WaitGroup
	for _, c := range r.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.Run(cctx)
		}()
	}
	var once sync.Once
	r.stop = func() {
		once.Do(func() {
			cancel()
			wg.Wait()
			d.wait()
			if r.Server != nil {
				_ = r.Server.Close()
				<-srvDone
			}
		})
	}
	return r, nil
}

// Listen opens the rendezvous server's TCP listener on bind:port (bind empty:
// 127.0.0.1). Errors name presence.rendezvous_port / presence.rendezvous_bind.
func Listen(bind string, port int) (net.Listener, error) {
	if bind == "" {
		bind = "127.0.0.1"
	}
	addr := net.JoinHostPort(bind, strconv.Itoa(port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("presence.rendezvous_port: %s is in use", addr)
		}
		if errors.Is(err, syscall.EADDRNOTAVAIL) {
			return nil, fmt.Errorf("presence.rendezvous_bind: %s is not an address of this machine", bind)
		}
		return nil, fmt.Errorf("presence.rendezvous_port: listen on %s: %w", addr, err)
	}
	return ln, nil
}

// LocalURL is the URL this machine reaches a listener at: its address, with
// an unspecified IP (0.0.0.0, ::) replaced by loopback.
func LocalURL(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return "http://" + a.String()
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsUnspecified() {
		if ip.Is4() {
			host = "127.0.0.1"
		} else {
			host = "::1"
		}
	}
	return "http://" + net.JoinHostPort(host, port)
}

// HostAddrs returns up to n of h's listen addresses for a presence, public
// ones first, then private, then loopback (useful on one machine only).
func HostAddrs(h host.Host, n int) []string {
	addrs := slices.Clone(h.Addrs())
	slices.SortStableFunc(addrs, func(a, b ma.Multiaddr) int { return rankAddr(a) - rankAddr(b) })
	out := make([]string, 0, min(len(addrs), n))
	for _, a := range addrs {
		if len(out) == n {
			break
		}
		out = append(out, a.String())
	}
	return out
}

// rankAddr orders addresses for a presence: 0 public, 1 private (or a DNS
// name), 2 loopback, 3 an IP that does not parse.
func rankAddr(a ma.Multiaddr) int {
	for _, code := range []int{ma.P_IP4, ma.P_IP6} {
		if v, err := a.ValueForProtocol(code); err == nil {
			ip, err := netip.ParseAddr(v)
			switch {
			case err != nil:
				return 3
			case ip.IsLoopback():
				return 2
			case ip.IsPrivate() || ip.IsLinkLocalUnicast():
				return 1
			}
			return 0
		}
	}
	return 1 // DNS names and others
}

// dialer connects h to the peers presences announce: in the background, at
// most maxParallelDials at once, each peer at most once per redialAfter.
type dialer struct {
	ctx context.Context
	h   host.Host
	log *slog.Logger
	sem chan struct{}
	wg  sync.WaitGroup

	mu   sync.Mutex
	last map[peer.ID]time.Time
}

func newDialer(ctx context.Context, h host.Host, log *slog.Logger) *dialer {
	return &dialer{ctx: ctx, h: h, log: log, sem: make(chan struct{}, maxParallelDials), last: make(map[peer.ID]time.Time)}
}

func (d *dialer) consider(m PresenceMsg) {
	if d.h == nil || m.Type == TypeOffline || len(m.Addrs) == 0 {
		return
	}
	ai, err := AddrInfo(&m)
	if err != nil || ai.ID == d.h.ID() || len(ai.Addrs) == 0 {
		return
	}
	if d.h.Network().Connectedness(ai.ID) == network.Connected {
		return
	}
	now := time.Now()
	d.mu.Lock()
	if t, ok := d.last[ai.ID]; ok && now.Sub(t) < redialAfter {
		d.mu.Unlock()
		return
	}
	if len(d.last) >= maxDialMemory {
		for id, t := range d.last {
			if now.Sub(t) >= redialAfter {
				delete(d.last, id)
			}
		}
		if len(d.last) >= maxDialMemory {
			d.mu.Unlock()
			return
		}
	}
	select {
	case d.sem <- struct{}{}:
	default:
		d.mu.Unlock()
		return // busy: the peer's next heartbeat tries again
	}
	d.last[ai.ID] = now
	d.wg.Add(1)
	d.mu.Unlock()
	go func() {
		defer d.wg.Done()
		defer func() { <-d.sem }()
		ctx, cancel := context.WithTimeout(d.ctx, DialTimeout)
		defer cancel()
		if err := d.h.Connect(ctx, ai); err != nil {
			d.log.Debug("rendezvous: could not connect to a peer", "peer", ai.ID, "err", err)
			return
		}
		d.log.Debug("rendezvous: connected to a peer", "peer", ai.ID)
	}()
}

func (d *dialer) wait() { d.wg.Wait() }
