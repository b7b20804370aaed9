// Package p2p is the libp2p adapter of the Goop node: host construction and
// identity, static peer dialing, and the message-bus transport (MQTransport,
// SPEC §1–2: /goop/mq/1.1.0 with fallback to /goop/mq/1.0.0).
package p2p

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
)

// Connection manager water marks sized for groups (libp2p's default trims
// above 192 connections): those of a node with the default
// p2p.max_connections (app.DefaultMaxConnections; a test of cmd/goop/node
// keeps them equal).
const (
	DefaultConnMgrLow  = 400
	DefaultConnMgrHigh = 800
)

// DefaultDialTimeout bounds each peer dial of ConnectPeers.
const DefaultDialTimeout = 10 * time.Second

// HostConfig configures NewHost. Zero fields take the documented defaults.
type HostConfig struct {
	// PrivKey is the node identity; it must be an Ed25519 key (see LoadOrCreateIdentity).
	PrivKey crypto.PrivKey
	// ListenAddrs are multiaddrs to listen on. Empty means ListenAddrs("0.0.0.0", ListenPort):
	// TCP and QUIC v1 on every IPv4 interface.
	ListenAddrs []string
	// ListenPort is used only when ListenAddrs is empty (0 = any free port).
	ListenPort int
	// ConnMgrLow and ConnMgrHigh are the connection manager's water marks
	// (defaults DefaultConnMgrLow / DefaultConnMgrHigh).
	ConnMgrLow, ConnMgrHigh int
	// EnableMetrics turns on libp2p's Prometheus metrics (off by default).
	EnableMetrics bool
	// Log receives the host's own logs (nil: discard).
	Log *slog.Logger
}

func (c HostConfig) logger() *slog.Logger {
	if c.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Log
}

// NewHost starts a libp2p host with TCP and QUIC v1 transports, the default
// security (Noise, TLS) and muxer (yamux), a connection manager sized for
// groups, and LANDialRanker (TCP first on the local network). The caller
// owns the host and must Close it; ctx is only used for the construction
// itself.
func NewHost(ctx context.Context, cfg HostConfig) (host.Host, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("p2p: new host: %w", err)
	}
	if cfg.PrivKey == nil {
		return nil, errors.New("p2p: new host: no private key")
	}
	if cfg.PrivKey.Type() != crypto.Ed25519 {
		return nil, fmt.Errorf("p2p: new host: identity key is %s, want Ed25519", cfg.PrivKey.Type())
	}
	addrs := cfg.ListenAddrs
	if len(addrs) == 0 {
		if cfg.ListenPort < 0 || cfg.ListenPort > 65535 {
			return nil, fmt.Errorf("p2p: new host: listen port %d out of range", cfg.ListenPort)
		}
		addrs = ListenAddrs("0.0.0.0", cfg.ListenPort)
	}
	low, high := cfg.ConnMgrLow, cfg.ConnMgrHigh
	if low <= 0 {
		low = DefaultConnMgrLow
	}
	if high <= 0 {
		high = DefaultConnMgrHigh
	}
	if high < low {
		return nil, fmt.Errorf("p2p: new host: connection manager high water %d below low water %d", high, low)
	}
	cm, err := connmgr.NewConnManager(low, high)
	if err != nil {
		return nil, fmt.Errorf("p2p: new host: connection manager: %w", err)
	}
	opts := []libp2p.Option{
		libp2p.Identity(cfg.PrivKey),
		libp2p.ListenAddrStrings(addrs...),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Transport(libp2pquic.NewTransport),
		libp2p.ConnectionManager(cm),
		libp2p.SwarmOpts(swarm.WithDialRanker(LANDialRanker)),
	}
	// yamux (TCP's multiplexer) with a stream's opening frames gathered
	// into one write (coalescingConn).
	opts = append(opts, libp2p.Muxer(yamux.ID, coalescingMuxer{inner: yamux.DefaultTransport}))
	// libp2p's default resource manager, built here: with its connection
	// limits raised to the connection manager's (admitConns), and, unless
	// metrics are on, without its Prometheus reports (they cost ~15% CPU per
	// stream open even with DisableMetrics).
	limits := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&limits)
	var rmOpts []rcmgr.Option
	if !cfg.EnableMetrics {
		rmOpts = append(rmOpts, rcmgr.WithMetricsDisabled())
		opts = append(opts, libp2p.DisableMetrics())
	}
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(admitConns(limits.AutoScale(), high)), rmOpts...)
	if err != nil {
		_ = cm.Close()
		return nil, fmt.Errorf("p2p: new host: resource manager: %w", err)
	}
	opts = append(opts, libp2p.ResourceManager(rm))
	h, err := libp2p.New(opts...)
	if err != nil {
		_ = cm.Close()
		_ = rm.Close()
		return nil, fmt.Errorf("p2p: new host: %w", err)
	}
	return reapStaleConns(h, cfg.logger()), nil
}

// protectSeq numbers Protect's tags.
var protectSeq atomic.Uint64

// Protect keeps h's connections to p out of the connection manager's trims
// until the returned func is called (once; later calls do nothing). Each
// call has a tag of its own (prefix plus a number), so that the end of one
// use — a bus peer's state, a site transfer — never lifts the protection of
// another use of the same peer.
func Protect(h host.Host, p peer.ID, prefix string) (release func()) {
	tag := prefix + strconv.FormatUint(protectSeq.Add(1), 10)
	cm := h.ConnManager()
	cm.Protect(p, tag)
	var once sync.Once
	return func() { once.Do(func() { cm.Unprotect(p, tag) }) }
}

// admitConns returns l with the system-wide connection limits raised, where
// lower, to what the connection manager keeps: up to high connections, all
// of them inbound for a group's host or outbound for a busy member, plus a
// quarter for those opened before a trim closes the excess. libp2p's
// limits, scaled to the machine's memory, admit fewer (504 connections,
// 252 inbound, with 24 GiB), which would cap a host's members well below
// the connection manager's water marks. The other limits (connections in
// handshake, per peer, streams, memory, file descriptors) stay libp2p's.
func admitConns(l rcmgr.ConcreteLimitConfig, high int) rcmgr.ConcreteLimitConfig {
	p := l.ToPartialLimitConfig()
	raise := func(v *rcmgr.LimitVal, n int) {
		// Only concrete limits: not Unlimited, nor BlockAllLimit.
		if *v > 0 && *v < rcmgr.LimitVal(n) {
			*v = rcmgr.LimitVal(n)
		}
	}
	raise(&p.System.Conns, high+high/4)
	raise(&p.System.ConnsInbound, high)
	raise(&p.System.ConnsOutbound, high)
	return p.Build(l)
}

// ListenAddrs returns the TCP and QUIC v1 listen multiaddrs for ip and port
// (port 0 = any free port). ip may be IPv4 or IPv6.
func ListenAddrs(ip string, port int) []string {
	proto := "ip4"
	for i := 0; i < len(ip); i++ {
		if ip[i] == ':' {
			proto = "ip6"
			break
		}
	}
	p := strconv.Itoa(port)
	return []string{
		"/" + proto + "/" + ip + "/tcp/" + p,
		"/" + proto + "/" + ip + "/udp/" + p + "/quic-v1",
	}
}

// TransportName names the transport of a multiaddr (as a string): "quic-v1",
// "tcp", or the address itself when it is neither.
func TransportName(addr string) string {
	switch {
	case strings.Contains(addr, "/quic-v1"):
		return "quic-v1"
	case strings.Contains(addr, "/tcp/"):
		return "tcp"
	}
	return addr
}

// LoadOrCreateIdentity returns the Ed25519 key stored at path (libp2p's
// protobuf key encoding, crypto.MarshalPrivateKey), creating it with mode 0600
// (and its parent directory with 0700) when the file does not exist. An
// existing file readable by group or others is narrowed to 0600, with a
// warning. A key of another type is refused. Creation is atomic: a crash never
// leaves a partial key file, and two concurrent callers get the same key.
func LoadOrCreateIdentity(path string) (crypto.PrivKey, error) {
	if path == "" {
		return nil, errors.New("p2p: identity: empty key file path")
	}
	if k, err := loadIdentity(path); err == nil || !errors.Is(err, os.ErrNotExist) {
		return k, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("p2p: identity: create directory: %w", err)
	}
	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("p2p: identity: generate key: %w", err)
	}
	raw, err := crypto.MarshalPrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("p2p: identity: encode key: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".identity-*.tmp")
	if err != nil {
		return nil, fmt.Errorf("p2p: identity: %w", err)
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName)
	if err := tmp.Chmod(0o600); err != nil && runtime.GOOS != "windows" {
		_ = tmp.Close()
		return nil, fmt.Errorf("p2p: identity: %w", err)
	}
	if _, err := tmp.Write(raw); err != nil {
		_ = tmp.Close()
		return nil, fmt.Errorf("p2p: identity: write key: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		_ = tmp.Close()
		return nil, fmt.Errorf("p2p: identity: sync key: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("p2p: identity: %w", err)
	}
	// Link fails if another process created the key meanwhile: then use theirs.
	if err := os.Link(tmpName, path); err != nil {
		if !errors.Is(err, os.ErrExist) {
			if err := os.Rename(tmpName, path); err != nil {
				return nil, fmt.Errorf("p2p: identity: store key: %w", err)
			}
		}
		return loadIdentity(path)
	}
	return priv, nil
}

func loadIdentity(path string) (crypto.PrivKey, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("p2p: identity: %s is not a regular file", path)
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm()&0o077 != 0 {
		slog.Warn("p2p: identity key file was accessible to others; narrowing to 0600",
			"path", path, "mode", fi.Mode().Perm().String())
		if err := os.Chmod(path, 0o600); err != nil {
			return nil, fmt.Errorf("p2p: identity: %s has mode %s and cannot be narrowed to 0600: %w",
				path, fi.Mode().Perm(), err)
		}
	}
	if fi.Size() > 4096 {
		return nil, fmt.Errorf("p2p: identity: %s is too large for a key (%d bytes)", path, fi.Size())
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("p2p: identity: %w", err)
	}
	k, err := crypto.UnmarshalPrivateKey(raw)
	if err != nil {
		return nil, fmt.Errorf("p2p: identity: decode %s: %w", path, err)
	}
	if k.Type() != crypto.Ed25519 {
		return nil, fmt.Errorf("p2p: identity: %s holds a %s key, want Ed25519", path, k.Type())
	}
	return k, nil
}

// ConnectPeers dials static peers given as full multiaddrs ending in
// /p2p/<peer id>, in parallel, each with DefaultDialTimeout (or less if ctx
// ends sooner), through Connect (a connection the peer drops right after
// accepting it is dialed again). It connects every good one and returns a
// joined error naming each address that could not be parsed or dialed; nil
// if all connected.
// Addresses of the same peer are tried together; the host's own id is skipped.
func ConnectPeers(ctx context.Context, h host.Host, addrs []string) error {
	var errs []error
	byPeer := map[peer.ID]*peer.AddrInfo{}
	var order []peer.ID
	for _, a := range addrs {
		ai, err := peer.AddrInfoFromString(a)
		if err != nil {
			errs = append(errs, fmt.Errorf("peer address %q: %w", a, err))
			continue
		}
		if ai.ID == h.ID() {
			continue
		}
		if cur, ok := byPeer[ai.ID]; ok {
			cur.Addrs = append(cur.Addrs, ai.Addrs...)
			continue
		}
		byPeer[ai.ID] = ai
		order = append(order, ai.ID)
	}
	var (
		mu  sync.Mutex
		wg  sync.WaitGroup
		sem = make(chan struct{}, 16)
	)
	for _, id := range order {
		ai := byPeer[id]
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			dctx, cancel := context.WithTimeout(ctx, DefaultDialTimeout)
			defer cancel()
			if err := Connect(dctx, h, *ai); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("peer %s (%v): %w", ai.ID, ai.Addrs, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
