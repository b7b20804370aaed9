// Package node is the composition root of a real Goop peer: it wires a peer
// folder's config, store, identity, libp2p host, MQ transport, app runtime
// and viewer HTTP server together, and takes them down again in order. The
// goop command, its tests and the bench start real nodes with it in-process.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/goop-p2p/goop/adapters/discovery"
	"github.com/goop-p2p/goop/adapters/httpapi"
	"github.com/goop-p2p/goop/adapters/p2p"
	"github.com/goop-p2p/goop/adapters/sqlstore"
	"github.com/goop-p2p/goop/adapters/system"
	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/group"
	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/ports"
)

// Timeouts of the node's life cycle.
const (
	// shutdownTimeout bounds the HTTP server's graceful shutdown.
	shutdownTimeout = 5 * time.Second
	// reconnectInterval is how often static peers that are not connected are dialed again.
	reconnectInterval = 15 * time.Second
)

// Options tune Start. The zero value runs a node as `goop peer` does.
type Options struct {
	// Log receives the node's logs (nil: discard).
	Log *slog.Logger
	// ListenIP is the IP libp2p listens on (default 0.0.0.0: every IPv4
	// interface). Tests and the bench use 127.0.0.1.
	ListenIP string
	// MQ tunes the bus transport (e.g. Only10 to act as a compat peer).
	MQ p2p.MQOptions
	// Bus tunes the bus core (zero: mq.DefaultOptions).
	Bus mq.Options
	// Groups tunes the group core (zero: group.DefaultConfig).
	Groups group.Config
	// Init tunes the creation of a missing peer folder.
	Init InitOptions
	// BeforeRun, if set, is called with the runtime before it starts, e.g. to
	// subscribe to events without missing any a restarted node delivers.
	BeforeRun func(*app.Runtime)
	// NoAutoConnect turns off the connections LAN discovery makes: no mDNS,
	// and peers learnt from presence are not dialed. The node connects to
	// p2p.peers and whoever connects to it; presence still flows over those
	// connections. For benches and tests that control the connections. A
	// rendezvous (presence.rendezvous_wan, rendezvous_host) still connects
	// to the peers it tells of.
	NoAutoConnect bool
	// NoPresence: the node does not announce its presence (it still hears
	// others' and keeps its peer table). For benches that run many nodes on
	// one machine: their announcements, due at the same moments, would be
	// that many times one node's discovery traffic on the same cores.
	NoPresence bool
}

// Running is a started node. Its fields are set by Start and read-only.
// Close stops it; it is safe to call from several goroutines.
type Running struct {
	// Dir is the absolute peer folder.
	Dir string
	// Config is the loaded goop.json.
	Config app.Config
	// PeerID is the node's libp2p peer id.
	PeerID peer.ID
	// ViewerURL is the viewer's base URL, e.g. http://127.0.0.1:8080/.
	ViewerURL string
	// Runtime runs the node's app core.
	Runtime *app.Runtime
	// Host is the libp2p host.
	Host host.Host
	// Visiting serves this node's site and public data to visiting peers,
	// and holds the data views (see Visiting).
	Visiting *Visiting
	// RendezvousURL is the local URL of the rendezvous server this node
	// hosts (presence.rendezvous_host), e.g. http://127.0.0.1:8787; empty
	// when it hosts none.
	RendezvousURL string

	log      *slog.Logger
	store    ports.Store
	tr       *p2p.MQTransport
	disc     *discovery.Adapter
	rdv      *rendezvousRoles // owns disc once started
	srv      *http.Server
	srvDone  chan struct{}
	stopHTTP context.CancelFunc // ends SSE streams
	stopRun  context.CancelFunc
	runDone  chan struct{}
	bgDone   chan struct{}
	done     chan struct{}

	closing   atomic.Bool
	closeOnce sync.Once
	closeErr  error
	mu        sync.Mutex
	err       error
}

// Addrs returns the node's listen multiaddrs, each ending in /p2p/<id>.
func (r *Running) Addrs() []string { return hostAddrs(r.Host) }

// Done is closed when the node stopped: after Close, or when its runtime
// failed on its own (see Err).
func (r *Running) Done() <-chan struct{} { return r.done }

// Err reports why the node stopped by itself (e.g. its store failed); nil
// while running and after a clean Close.
func (r *Running) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

func (r *Running) fail(err error) {
	r.mu.Lock()
	if r.err == nil {
		r.err = err
	}
	r.mu.Unlock()
}

// Start creates the peer folder dir if needed (see Init), then starts the
// node: store, identity, libp2p host (TCP and QUIC on p2p.listen_port), MQ
// transport, LAN discovery (mDNS with p2p.mdns_tag, presence on GossipSub),
// the rendezvous roles (a server with presence.rendezvous_host; publishing
// to and following presence.rendezvous_wan and our own server, connecting
// to the peers they tell of),
// app runtime restored from the store (the peer table included), static peers
// (p2p.peers, dialed in the background and redialed while disconnected) and
// the viewer on viewer.http_addr. It returns once the viewer accepts
// connections. ctx bounds the start-up only; stop the node with Close.
// Errors about config values or busy ports name the config key.
func Start(ctx context.Context, dir string, opts Options) (_ *Running, err error) {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("peer folder %s: %w", dir, err)
	}
	ini, err := Init(ctx, abs, opts.Init)
	if err != nil {
		return nil, err
	}
	cfg := ini.Config
	r := &Running{Dir: abs, Config: cfg, log: log, done: make(chan struct{})}

	// Undo what was started if a later step fails.
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()

	// The viewer port first: a busy port fails fast, before any network activity.
	ln, err := net.Listen("tcp", cfg.Viewer.HTTPAddr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("viewer.http_addr: %s is in use", cfg.Viewer.HTTPAddr)
		}
		return nil, fmt.Errorf("viewer.http_addr: listen on %s: %w", cfg.Viewer.HTTPAddr, err)
	}
	undo = append(undo, func() { _ = ln.Close() })
	vhost, _, _ := net.SplitHostPort(cfg.Viewer.HTTPAddr)
	_, vport, _ := net.SplitHostPort(ln.Addr().String())
	r.ViewerURL = "http://" + net.JoinHostPort(vhost, vport) + "/"

	st, err := openStore(ctx, abs, cfg, log)
	if err != nil {
		return nil, err
	}
	r.store = st
	undo = append(undo, func() { _ = st.Close() })

	key, err := p2p.LoadOrCreateIdentity(app.Resolve(abs, cfg.Identity.KeyFile))
	if err != nil {
		return nil, fmt.Errorf("identity.key_file: %w", err)
	}

	ip := opts.ListenIP
	if ip == "" {
		ip = "0.0.0.0"
	}
	if err := probePort(ip, cfg.P2P.ListenPort); err != nil {
		return nil, err
	}
	h, err := p2p.NewHost(ctx, p2p.HostConfig{PrivKey: key, ListenAddrs: p2p.ListenAddrs(ip, cfg.P2P.ListenPort),
		ConnMgrLow: cfg.P2P.MaxConnections / 2, ConnMgrHigh: cfg.P2P.MaxConnections, Log: log})
	if err != nil {
		if strings.Contains(err.Error(), "address already in use") {
			return nil, fmt.Errorf("p2p.listen_port: %d is in use", cfg.P2P.ListenPort)
		}
		return nil, fmt.Errorf("p2p.listen_port: start libp2p on port %d: %w", cfg.P2P.ListenPort, err)
	}
	undo = append(undo, func() { _ = h.Close() })
	if err := checkListening(h, cfg.P2P.ListenPort); err != nil {
		return nil, err
	}
	r.Host = h
	r.PeerID = h.ID()

	mqOpts := opts.MQ
	if mqOpts.Logger == nil {
		mqOpts.Logger = log
	}
	tr := p2p.NewMQTransport(h, mqOpts)
	r.tr = tr
	undo = append(undo, func() { _ = tr.Close() })

	snap, err := st.LoadBus(ctx)
	if err != nil {
		return nil, fmt.Errorf("load node state: %w", err)
	}
	gsnap, err := st.LoadGroups(ctx)
	if err != nil {
		return nil, fmt.Errorf("load groups: %w", err)
	}
	peers, err := st.LoadPeers(ctx)
	if err != nil {
		return nil, fmt.Errorf("load peers: %w", err)
	}
	dcfg := discovery.Config{MDNSTag: cfg.P2P.MDNSTag, Log: log, NoDial: opts.NoAutoConnect}
	if opts.NoAutoConnect {
		dcfg.MDNSTag = ""
	}
	disc, err := discovery.New(ctx, h, dcfg)
	if err != nil {
		return nil, fmt.Errorf("p2p.mdns_tag: start discovery: %w", err)
	}
	r.disc = disc
	undo = append(undo, func() { _ = disc.Close() })
	rdv, err := startRendezvous(cfg, abs, h, key, disc, log)
	if err != nil {
		return nil, err
	}
	r.rdv, r.RendezvousURL = rdv, rdv.url
	undo = append(undo, func() { _ = rdv.close() })
	pcfg, prof := presenceOptions(cfg, disc.Addrs(), !opts.NoPresence)
	self := mq.PeerID(h.ID().String())
	nd := app.NewNode(self, app.State{Bus: snap, Groups: gsnap, Peers: peers}, system.Rand{},
		app.NodeOptions{Bus: opts.Bus, Groups: opts.Groups, Label: cfg.Profile.Label, Presence: pcfg, Profile: prof})
	rt := app.NewRuntime(nd, tr, st, system.Clock{}, log)
	rt.SetDiscovery(rdv.disc)
	r.Runtime = rt
	if opts.BeforeRun != nil {
		opts.BeforeRun(rt)
	}
	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	r.stopRun = stopRun
	r.runDone = make(chan struct{})
	go func() {
		defer close(r.runDone)
		if err := rt.Run(runCtx); err != nil {
			r.fail(err)
			log.Error("node runtime stopped", "err", err)
		}
	}()
	undo = append(undo, func() { stopRun(); <-r.runDone })

	// Visiting peers: our site and data over libp2p (SPEC §1, §7).
	vis, err := startVisiting(h, rt, app.Resolve(abs, cfg.Paths.SiteRoot), log)
	if err != nil {
		return nil, err
	}
	r.Visiting = vis

	httpCtx, stopHTTP := context.WithCancel(context.WithoutCancel(ctx))
	r.stopHTTP = stopHTTP
	r.srv = &http.Server{
		Handler: httpapi.New(httpapi.Deps{
			Runtime:      rt,
			Label:        cfg.Profile.Label,
			Addrs:        func() []string { return hostAddrs(h) },
			Log:          log,
			GroupHistory: st.GroupHistory,
			SpeaksOurBus: tr.SpeaksOurs,
			SiteRoot:     vis.SiteRoot,
			FetchSite:    vis.FetchSite,
			QueryData:    vis.QueryData,
			LocalViews:   vis.LocalViews,
			PublicViews:  vis.PublicViews,
		}),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		BaseContext:       func(net.Listener) context.Context { return httpCtx },
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	r.srvDone = make(chan struct{})
	go func() {
		defer close(r.srvDone)
		if err := r.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			r.fail(fmt.Errorf("viewer server: %w", err))
			log.Error("viewer server stopped", "err", err)
		}
	}()

	// Static peers: dial in the background and keep them connected.
	bgCtx, stopBG := context.WithCancel(runCtx)
	r.bgDone = make(chan struct{})
	go func() {
		defer close(r.bgDone)
		keepConnected(bgCtx, h, cfg.P2P.Peers, log)
	}()
	prevStop := r.stopRun
	r.stopRun = func() { stopBG(); prevStop() }

	// Report a runtime that stops on its own.
	go func() {
		select {
		case <-r.runDone:
			if !r.closing.Load() {
				if r.Err() == nil {
					r.fail(app.ErrStopped)
				}
				_ = r.Close()
			}
		case <-r.done:
		}
	}()
	log.Info("peer started", "peer_id", r.PeerID, "viewer", r.ViewerURL, "addrs", hostAddrs(h))
	return r, nil
}

// Close stops the node in order: the viewer (open event streams end, then a
// graceful shutdown), the runtime (which publishes our offline presence),
// discovery, the MQ transport and host, and the store.
// It returns the first error; later calls return the same.
func (r *Running) Close() error {
	r.closing.Store(true)
	r.closeOnce.Do(func() {
		var errs []error
		r.stopHTTP()
		sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		if err := r.srv.Shutdown(sctx); err != nil {
			_ = r.srv.Close()
			errs = append(errs, fmt.Errorf("viewer shutdown: %w", err))
		}
		cancel()
		<-r.srvDone
		r.stopRun()
		<-r.runDone
		<-r.bgDone
		// After the runtime published our offline; the rendezvous server
		// stops before the host.
		if err := r.rdv.close(); err != nil {
			errs = append(errs, err)
		}
		if err := r.tr.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close transport: %w", err))
		}
		if err := r.Host.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close host: %w", err))
		}
		if err := r.store.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close store: %w", err))
		}
		r.closeErr = errors.Join(errs...)
		close(r.done)
		r.log.Info("peer stopped", "peer_id", r.PeerID)
	})
	return r.closeErr
}

// openStore opens (creating and migrating) the node's database.
func openStore(ctx context.Context, dir string, cfg app.Config, log *slog.Logger) (*sqlstore.Store, error) {
	sc := sqlstore.Config{Driver: cfg.Storage.Driver, Logger: log}
	key := "storage.dsn"
	if cfg.Storage.Driver == app.StorageSQLite {
		sc.Path = cfg.SQLitePath(dir)
		if cfg.Storage.DSN == "" {
			key = "storage.driver"
		}
	} else {
		sc.DSN = cfg.Storage.DSN
	}
	st, err := sqlstore.Open(ctx, sc)
	if err != nil {
		return nil, fmt.Errorf("%s: open %s database: %w", key, cfg.Storage.Driver, err)
	}
	return st, nil
}

// probePort checks that a fixed p2p port is free for TCP and UDP. libp2p
// binds with SO_REUSEPORT, so without this a second peer on the same port
// would share the first one's TCP port instead of failing.
func probePort(ip string, port int) error {
	if port == 0 {
		return nil
	}
	addr := net.JoinHostPort(ip, strconv.Itoa(port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("p2p.listen_port: %d is in use (TCP)", port)
		}
		return fmt.Errorf("p2p.listen_port: listen on %s: %w", addr, err)
	}
	_ = ln.Close()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("p2p.listen_port: %d is in use (UDP, QUIC)", port)
		}
		return fmt.Errorf("p2p.listen_port: listen on %s/udp: %w", addr, err)
	}
	_ = pc.Close()
	return nil
}

// checkListening verifies that a fixed port got both TCP and QUIC: libp2p
// starts if any listen address works, which would hide a busy port.
func checkListening(h host.Host, port int) error {
	if port == 0 {
		return nil
	}
	var tcp, udp bool
	for _, a := range h.Network().ListenAddresses() {
		if v, err := a.ValueForProtocol(ma.P_TCP); err == nil && v == strconv.Itoa(port) {
			tcp = true
		}
		if v, err := a.ValueForProtocol(ma.P_UDP); err == nil && v == strconv.Itoa(port) {
			udp = true
		}
	}
	switch {
	case !tcp && !udp:
		return fmt.Errorf("p2p.listen_port: %d is in use", port)
	case !tcp:
		return fmt.Errorf("p2p.listen_port: %d is in use (TCP)", port)
	case !udp:
		return fmt.Errorf("p2p.listen_port: %d is in use (UDP, QUIC)", port)
	}
	return nil
}

// hostAddrs returns h's addresses as full multiaddrs with /p2p/<id>.
func hostAddrs(h host.Host) []string {
	id := h.ID().String()
	addrs := h.Addrs()
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, a.String()+"/p2p/"+id)
	}
	return out
}

// keepConnected dials the static peers now and again every
// reconnectInterval for those not connected, until ctx ends.
func keepConnected(ctx context.Context, h host.Host, addrs []string, log *slog.Logger) {
	if len(addrs) == 0 {
		return
	}
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var todo []string
		for _, a := range addrs {
			ai, err := peer.AddrInfoFromString(a)
			if err != nil || ai.ID == h.ID() || h.Network().Connectedness(ai.ID) == network.Connected {
				continue
			}
			todo = append(todo, a)
		}
		if len(todo) > 0 {
			if err := p2p.ConnectPeers(ctx, h, todo); err != nil && ctx.Err() == nil {
				log.Warn("static peers not reachable; retrying", "err", err, "retry_in", reconnectInterval)
			}
		}
		t.Reset(reconnectInterval)
	}
}
