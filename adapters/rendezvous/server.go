package rendezvous

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/goop-p2p/goop/domain/presence"
)

// Defaults of ServerConfig's zero fields.
const (
	// DefaultStaleAfter: a peer silent this long is dropped with an offline broadcast (compat).
	DefaultStaleAfter = 30 * time.Second
	// DefaultKeepAlive is the interval of the SSE keep-alive comment.
	DefaultKeepAlive = 15 * time.Second
	// DefaultSweepInterval is how often stale peers and idle limiter keys are looked for.
	DefaultSweepInterval = 5 * time.Second
	// DefaultMaxClients caps concurrent /events streams (compat: 1024).
	DefaultMaxClients = 16384
	// DefaultMaxClientsPerIP caps concurrent /events streams per client
	// address (compat: 10; ours is higher so that peers behind one NAT fit).
	DefaultMaxClientsPerIP = 64
	// DefaultMaxPeers caps the peers the server tracks at once.
	DefaultMaxPeers = 65536
	// DefaultMaxPeersPerIP caps the peers published from one client address.
	DefaultMaxPeersPerIP = 1024
	// DefaultIPRate and DefaultIPBurst shape every client address's request
	// budget (publishes, stream connects, pages): 50/s sustained covers 250
	// peers behind one NAT at the 5 s heartbeat (compat: 60/min per IP).
	DefaultIPRate  = 50.0
	DefaultIPBurst = 500
	// DefaultPeerRate and DefaultPeerBurst shape each peer id's publish
	// budget: a heartbeat every 5 s plus address changes fit easily.
	DefaultPeerRate  = 1.0
	DefaultPeerBurst = 10
	// DefaultMaxClockSkew is how far a signed publish's ts may be from the
	// server's clock.
	DefaultMaxClockSkew = 2 * time.Minute
	// DefaultSignedMemory is how long the server remembers that a peer id
	// publishes signed (and its last ts) after its last signed publish.
	DefaultSignedMemory = 24 * time.Hour
	// DefaultMaxSignedIDs bounds that memory.
	DefaultMaxSignedIDs = 200_000
	// DefaultRingSize is how many broadcast frames the server keeps: an
	// /events client further behind than that is dropped as too slow.
	DefaultRingSize = 4096
	// DefaultWriteTimeout bounds each write to an /events client.
	DefaultWriteTimeout = 10 * time.Second
	// DefaultMaxTrackedKeys bounds each rate limiter's key map.
	DefaultMaxTrackedKeys = 65536
	// DefaultStreamSendBuffer is each /events connection's kernel send
	// buffer (SO_SNDBUF): it bounds the kernel memory a stalled client holds.
	DefaultStreamSendBuffer = 128 << 10
)

// ServerConfig configures a Server. Zero fields take the defaults above.
type ServerConfig struct {
	// ExternalURL is the public URL shown on the public page (presence.external_url).
	ExternalURL string
	// AdminPassword opens /admin and /admin/api with HTTP Basic auth (any
	// user name); empty keeps them closed (presence.admin_password).
	AdminPassword string
	// Addr is the listen address shown on the public page (default: the
	// first listener given to Serve).
	Addr string

	StaleAfter      time.Duration
	KeepAlive       time.Duration
	SweepInterval   time.Duration
	MaxClients      int
	MaxClientsPerIP int
	MaxPeers        int
	MaxPeersPerIP   int
	IPRate          float64
	IPBurst         int
	PeerRate        float64
	PeerBurst       int
	MaxClockSkew    time.Duration
	SignedMemory    time.Duration
	MaxSignedIDs    int
	RingSize        int
	WriteTimeout    time.Duration
	MaxTrackedKeys  int
	// StreamSendBuffer is the SO_SNDBUF of /events connections (negative:
	// leave the kernel's default and autotuning).
	StreamSendBuffer int
	// IgnoreForwardedFor makes per-IP limits use the connection's address
	// even when it is loopback. By default a loopback connection is taken to
	// be a local reverse proxy and its last X-Forwarded-For entry is used.
	IgnoreForwardedFor bool
	// StatePath, if set, is the file where the server keeps its signed-peer
	// records (which peer ids publish signed, and their last ts) across
	// restarts: loaded by NewServer, saved when changed at each sweep and by
	// Close (see state.go for the format and the corrupt-file policy). The
	// caller chooses it (a peer's is StatePathIn(peer folder)); it is never
	// derived from network input. Empty: the records live in memory only.
	StatePath string

	// Now is the clock (default time.Now); tests inject one and call Sweep.
	Now func() time.Time
	// Log receives the server's logs (nil: discard).
	Log *slog.Logger

	hooks *hooks // tests only
}

// hooks let tests wait for server events instead of sleeping.
type hooks struct {
	published     func(PresenceMsg)
	clientAdded   func()
	clientRemoved func(reason string)
	stateWriter   func(io.Writer) io.Writer // wraps the state file's writer
}

func (c *ServerConfig) setDefaults() {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	defi := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.StaleAfter, DefaultStaleAfter)
	def(&c.KeepAlive, DefaultKeepAlive)
	def(&c.SweepInterval, DefaultSweepInterval)
	def(&c.MaxClockSkew, DefaultMaxClockSkew)
	def(&c.SignedMemory, DefaultSignedMemory)
	def(&c.WriteTimeout, DefaultWriteTimeout)
	defi(&c.MaxClients, DefaultMaxClients)
	defi(&c.MaxClientsPerIP, DefaultMaxClientsPerIP)
	defi(&c.MaxPeers, DefaultMaxPeers)
	defi(&c.MaxPeersPerIP, DefaultMaxPeersPerIP)
	defi(&c.IPBurst, DefaultIPBurst)
	defi(&c.PeerBurst, DefaultPeerBurst)
	defi(&c.MaxSignedIDs, DefaultMaxSignedIDs)
	defi(&c.RingSize, DefaultRingSize)
	defi(&c.MaxTrackedKeys, DefaultMaxTrackedKeys)
	if c.StreamSendBuffer == 0 {
		c.StreamSendBuffer = DefaultStreamSendBuffer
	}
	if c.IPRate <= 0 {
		c.IPRate = DefaultIPRate
	}
	if c.PeerRate <= 0 {
		c.PeerRate = DefaultPeerRate
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
}

// Server is a rendezvous server (SPEC §6). It is an http.Handler; Serve runs
// it on a listener with timeouts. Its background goroutines (stale-peer
// sweep, keep-alive) run from NewServer until Close. Safe for concurrent use.
//
// Each /events stream costs one goroutine, its connection and a cursor into
// a shared ring of broadcast frames: a publish is encoded once, appended to
// the ring and never copied per client, and a client more than RingSize
// frames behind (or whose write times out) is dropped. Publishers never wait
// for clients.
type Server struct {
	cfg       ServerConfig
	log       *slog.Logger
	mux       *http.ServeMux
	hs        *http.Server
	adminHash [32]byte
	started   time.Time

	ipLim   *limiter // every request per client address
	peerLim *limiter // publishes per peer id
	authLim *limiter // failed admin logins per client address

	mu           sync.Mutex
	addr         string
	peers        map[string]*peerEntry
	peersPerIP   map[string]int
	signed       map[string]*signedInfo
	signedGen    uint64 // bumped when a peer id enters or leaves signed
	tsGen        uint64 // bumped when only a known id's last ts / seen moves
	clients      map[*sseClient]struct{}
	clientsPerIP map[string]int

	ringMu sync.RWMutex
	ring   [][]byte
	head   uint64        // sequence number of the next frame
	notify chan struct{} // closed and replaced on every append

	n counters

	saveMu sync.Mutex // serializes saveState
	// What was last written to StatePath, and when; guarded by saveMu.
	savedGen, savedTSGen uint64
	savedAt              time.Time

	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
	bg        sync.WaitGroup
	clientsWG sync.WaitGroup
}

type peerEntry struct {
	msg      PresenceMsg
	frame    []byte // "data: <json>\n\n" as last broadcast
	lastSeen time.Time
	ip       string
}

type signedInfo struct {
	lastTS int64
	seen   time.Time
}

type sseClient struct {
	ip    string
	since time.Time
	conn  net.Conn // set once hijacked; guarded by Server.mu
}

type counters struct {
	published, rejected400, rejected403, rejected429, rejected503 atomic.Int64
	streamsRefused, droppedSlow, droppedWrite, offlineSwept       atomic.Int64
}

var pingFrame = []byte(": ping\n\n")

// NewServer returns a server with cfg (zero fields: defaults) and starts its
// background goroutines. Stop it with Close.
func NewServer(cfg ServerConfig) *Server {
	cfg.setDefaults()
	s := &Server{
		cfg:          cfg,
		log:          cfg.Log,
		started:      cfg.Now(),
		ipLim:        newLimiter(cfg.IPRate, cfg.IPBurst, cfg.MaxTrackedKeys),
		peerLim:      newLimiter(cfg.PeerRate, cfg.PeerBurst, cfg.MaxTrackedKeys),
		authLim:      newLimiter(0.2, 10, cfg.MaxTrackedKeys),
		addr:         cfg.Addr,
		peers:        make(map[string]*peerEntry),
		peersPerIP:   make(map[string]int),
		signed:       make(map[string]*signedInfo),
		clients:      make(map[*sseClient]struct{}),
		clientsPerIP: make(map[string]int),
		ring:         make([][]byte, cfg.RingSize),
		notify:       make(chan struct{}),
		done:         make(chan struct{}),
	}
	if cfg.StatePath != "" {
		s.loadState()
	}
	if cfg.AdminPassword != "" {
		s.adminHash = sha256.Sum256([]byte(cfg.AdminPassword))
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /publish", s.handlePublish)
	mux.HandleFunc("GET /events", s.handleEvents)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /{$}", s.handleIndex)
	mux.HandleFunc("GET /admin", s.handleAdmin)
	mux.HandleFunc("GET /admin/api", s.handleAdminAPI)
	s.mux = mux
	s.hs = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second, // cleared for /events streams
		WriteTimeout:      15 * time.Second, // idem
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(cfg.Log.Handler(), slog.LevelDebug),
	}
	s.bg.Add(2)
	go s.sweepLoop()
	go s.keepAliveLoop()
	return s
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// Serve accepts HTTP connections on ln (with header, read, write and idle
// timeouts) until Close. It blocks, and returns nil once closed.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.addr == "" {
		s.addr = ln.Addr().String()
	}
	s.mu.Unlock()
	if err := s.hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("rendezvous: serve: %w", err)
	}
	return nil
}

// Close stops the server: listeners close, open /events streams end, and the
// background goroutines stop. It waits for all of them (in-flight requests
// at most 5 s), then saves the signed-peer records to StatePath if they
// changed (a failed save is part of the error). Later calls return the
// first result.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		close(s.done)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := s.hs.Shutdown(ctx); err != nil {
			_ = s.hs.Close()
			s.closeErr = fmt.Errorf("rendezvous: shutdown: %w", err)
		}
		cancel()
		s.mu.Lock()
		for c := range s.clients {
			if c.conn != nil {
				_ = c.conn.Close()
			}
		}
		s.mu.Unlock()
		s.clientsWG.Wait()
		s.bg.Wait()
		if err := s.saveState(true); err != nil {
			s.log.Error("rendezvous: signed-peer state not saved at shutdown", "err", err)
			s.closeErr = errors.Join(s.closeErr, err)
		}
	})
	return s.closeErr
}

func (s *Server) closed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

func (s *Server) sweepLoop() {
	defer s.bg.Done()
	t := time.NewTicker(s.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			s.Sweep()
		}
	}
}

func (s *Server) keepAliveLoop() {
	defer s.bg.Done()
	t := time.NewTicker(s.cfg.KeepAlive)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			s.ringMu.Lock()
			s.appendRingLocked(pingFrame)
			s.ringMu.Unlock()
		}
	}
}

// Sweep drops the peers silent for StaleAfter (by the configured clock),
// broadcasting an offline for each, and forgets idle limiter keys and
// expired signed-peer records, then saves the signed-peer records to
// StatePath if they changed (a failure is logged and retried at the next
// sweep). The server calls it every SweepInterval; tests with an injected
// clock call it directly. At most RingSize/4 peers go per call, so that a
// mass departure cannot push every stream out of the ring; the rest go in
// the next sweeps.
func (s *Server) Sweep() {
	now := s.cfg.Now()
	s.mu.Lock()
	var frames [][]byte
	limit := max(len(s.ring)/4, 1)
	for id, e := range s.peers {
		if len(frames) == limit {
			break
		}
		if now.Sub(e.lastSeen) >= s.cfg.StaleAfter {
			s.deletePeerLocked(id, e)
			off := PresenceMsg{Type: TypeOffline, PeerID: presence.PeerID(id), TS: unixMilli(now), Verified: e.msg.Verified}
			frames = append(frames, encodeFrame(&off))
		}
	}
	for id, si := range s.signed {
		if now.Sub(si.seen) > s.cfg.SignedMemory {
			delete(s.signed, id)
			s.signedGen++
		}
	}
	if len(frames) > 0 {
		s.ringMu.Lock()
		s.appendRingLocked(frames...)
		s.ringMu.Unlock()
	}
	s.mu.Unlock()
	s.n.offlineSwept.Add(int64(len(frames)))
	s.ipLim.prune(now)
	s.peerLim.prune(now)
	s.authLim.prune(now)
	if err := s.saveState(false); err != nil {
		s.log.Error("rendezvous: signed-peer state not saved; retrying at the next sweep", "err", err)
	}
}

func (s *Server) deletePeerLocked(id string, e *peerEntry) {
	delete(s.peers, id)
	if s.peersPerIP[e.ip]--; s.peersPerIP[e.ip] <= 0 {
		delete(s.peersPerIP, e.ip)
	}
}

// appendRingLocked adds frames to the broadcast ring and wakes every
// stream. Caller holds ringMu for writing.
func (s *Server) appendRingLocked(frames ...[]byte) {
	for _, f := range frames {
		s.ring[s.head%uint64(len(s.ring))] = f
		s.head++
	}
	close(s.notify)
	s.notify = make(chan struct{})
}

func encodeFrame(m *PresenceMsg) []byte {
	var buf bytes.Buffer
	buf.Grow(256 + len(m.Content))
	buf.WriteString("data: ")
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(m) // a validated PresenceMsg always encodes; Encode adds '\n'
	buf.WriteByte('\n')
	return buf.Bytes()
}

func (s *Server) clientKey(r *http.Request) string { return clientKey(r, !s.cfg.IgnoreForwardedFor) }

// allowIP charges one request to the client address; on refusal it answers 429.
func (s *Server) allowIP(w http.ResponseWriter, ip string) bool {
	ok, wait := s.ipLim.allow(ip, s.cfg.Now())
	if !ok {
		s.n.rejected429.Add(1)
		w.Header().Set("Retry-After", retryAfter(wait))
		httpError(w, http.StatusTooManyRequests, "too many requests from your address; slow down")
	}
	return ok
}

func httpError(w http.ResponseWriter, code int, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = io.WriteString(w, "rendezvous: "+msg+"\n")
}

// handlePublish is POST /publish: one PresenceMsg, answered 204 when accepted.
//
// Order of checks, cheapest first, so that nobody can spend another peer's
// budget: the client address's request budget (429); body size, JSON and
// field validation (400); the signature and its ts window (403); the rule
// that a peer id seen signed never publishes unsigned, and signed ts only
// grow (403); the peer's own publish budget (429) — verified peers by peer
// id, unsigned ones by peer id and address, so a forger spends only its own;
// the peer caps (429/503).
func (s *Server) handlePublish(w http.ResponseWriter, r *http.Request) {
	if s.closed() {
		s.n.rejected503.Add(1)
		httpError(w, http.StatusServiceUnavailable, "shutting down")
		return
	}
	ip := s.clientKey(r)
	if !s.allowIP(w, ip) {
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		s.n.rejected400.Add(1)
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			httpError(w, http.StatusBadRequest, fmt.Sprintf("presence larger than %d bytes", MaxBodyBytes))
			return
		}
		httpError(w, http.StatusBadRequest, "could not read the request body")
		return
	}
	now := s.cfg.Now()
	nowMS := unixMilli(now)
	m, err := decodePresence(body, nowMS)
	if err != nil {
		s.n.rejected400.Add(1)
		httpError(w, http.StatusBadRequest, err.Error())
		return
	}
	m.Verified = false
	if m.Sig != "" {
		if err := VerifySignature(&m); err != nil {
			s.n.rejected403.Add(1)
			httpError(w, http.StatusForbidden, "refused: "+err.Error())
			return
		}
		if skew := time.Duration(m.TS-nowMS) * time.Millisecond; skew > s.cfg.MaxClockSkew || -skew > s.cfg.MaxClockSkew {
			s.n.rejected403.Add(1)
			httpError(w, http.StatusForbidden, fmt.Sprintf("refused: signed ts is %s away from the server's clock (limit %s); check the peer's clock",
				skew.Round(time.Second), s.cfg.MaxClockSkew))
			return
		}
		m.Verified = true
	}

	code, msg, wait, accepted := s.apply(&m, ip, now)
	if !accepted {
		if wait > 0 {
			w.Header().Set("Retry-After", retryAfter(wait))
		}
		switch code {
		case http.StatusForbidden:
			s.n.rejected403.Add(1)
		case http.StatusTooManyRequests:
			s.n.rejected429.Add(1)
		default:
			s.n.rejected503.Add(1)
		}
		httpError(w, code, msg)
		return
	}
	s.n.published.Add(1)
	if h := s.cfg.hooks; h != nil && h.published != nil {
		h.published(m)
	}
	w.WriteHeader(http.StatusNoContent)
}

// decodePresence parses and validates a publish body. Unknown fields (other
// compat versions send some) are ignored; trailing data is refused. An
// unsigned presence without ts (compat) is stamped with nowMS, the
// server's time; a signed one must carry its own.
func decodePresence(body []byte, nowMS int64) (PresenceMsg, error) {
	var m PresenceMsg
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&m); err != nil {
		return m, fmt.Errorf("malformed presence JSON: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return m, errors.New("malformed presence JSON: trailing data after the object")
	}
	if m.TS == 0 && m.Sig == "" {
		m.TS = nowMS // compat: the server stamps unstamped publishes
	}
	if err := Validate(&m); err != nil {
		return m, err // "presence: invalid message: <why>"
	}
	return m, nil
}

// apply updates the peer table and broadcasts m, or says why not (and,
// for a 429, when to retry). An offline for a peer the server does not know
// is accepted but not broadcast.
func (s *Server) apply(m *PresenceMsg, ip string, now time.Time) (code int, msg string, wait time.Duration, ok bool) {
	id := string(m.PeerID)
	s.mu.Lock()
	defer s.mu.Unlock()
	si, wasSigned := s.signed[id]
	if wasSigned && now.Sub(si.seen) > s.cfg.SignedMemory {
		wasSigned = false
	}
	if !m.Verified && wasSigned {
		return http.StatusForbidden, "refused: this peer id publishes signed presence; unsigned presence for it is not accepted", 0, false
	}
	if m.Verified && wasSigned && m.TS <= si.lastTS {
		return http.StatusForbidden, "refused: ts is not newer than this peer's last presence (replay?)", 0, false
	}
	key := "v/" + id
	if !m.Verified {
		key = "u/" + id + "/" + ip
	}
	if ok, wait := s.peerLim.allow(key, now); !ok {
		return http.StatusTooManyRequests, "too many publishes for this peer id; retry in " + retryAfter(wait) + " s", wait, false
	}
	e, exists := s.peers[id]
	if !exists && m.Type != TypeOffline {
		if s.peersPerIP[ip] >= s.cfg.MaxPeersPerIP {
			return http.StatusTooManyRequests, "too many peers published from your address", 30 * time.Second, false
		}
		if len(s.peers) >= s.cfg.MaxPeers {
			return http.StatusServiceUnavailable, "this rendezvous server is full", 0, false
		}
	}
	if m.Verified {
		if si == nil {
			if len(s.signed) >= s.cfg.MaxSignedIDs {
				s.evictSignedLocked()
			}
			si = &signedInfo{}
			s.signed[id] = si
			s.signedGen++
		} else {
			s.tsGen++
		}
		si.lastTS, si.seen = m.TS, now
	}
	frame := encodeFrame(m)
	switch {
	case m.Type == TypeOffline:
		if !exists {
			return http.StatusNoContent, "", 0, true
		}
		s.deletePeerLocked(id, e)
	case exists:
		if e.ip != ip {
			if s.peersPerIP[e.ip]--; s.peersPerIP[e.ip] <= 0 {
				delete(s.peersPerIP, e.ip)
			}
			s.peersPerIP[ip]++
		}
		e.msg, e.frame, e.lastSeen, e.ip = *m, frame, now, ip
	default:
		s.peers[id] = &peerEntry{msg: *m, frame: frame, lastSeen: now, ip: ip}
		s.peersPerIP[ip]++
	}
	s.ringMu.Lock()
	s.appendRingLocked(frame)
	s.ringMu.Unlock()
	return http.StatusNoContent, "", 0, true
}

// evictSignedLocked forgets the least recently seen of a few sampled signed
// records (the map is full: an attacker minting keys, or a huge network).
func (s *Server) evictSignedLocked() {
	var oldest string
	var at time.Time
	i := 0
	for id, si := range s.signed {
		if oldest == "" || si.seen.Before(at) {
			oldest, at = id, si.seen
		}
		if i++; i >= 16 {
			break
		}
	}
	delete(s.signed, oldest)
}

// handleEvents is GET /events: an SSE stream of `data: <PresenceMsg>` frames,
// first every current peer, then each accepted publish and offline, with a
// keep-alive comment every KeepAlive.
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	ip := s.clientKey(r)
	if !s.allowIP(w, ip) {
		return
	}
	s.mu.Lock()
	if s.closed() {
		s.mu.Unlock()
		httpError(w, http.StatusServiceUnavailable, "shutting down")
		return
	}
	if len(s.clients) >= s.cfg.MaxClients {
		s.mu.Unlock()
		s.n.streamsRefused.Add(1)
		w.Header().Set("Retry-After", "30")
		httpError(w, http.StatusTooManyRequests, "too many event streams on this server")
		return
	}
	if s.clientsPerIP[ip] >= s.cfg.MaxClientsPerIP {
		s.mu.Unlock()
		s.n.streamsRefused.Add(1)
		w.Header().Set("Retry-After", "30")
		httpError(w, http.StatusTooManyRequests, "too many event streams from your address")
		return
	}
	c := &sseClient{ip: ip, since: s.cfg.Now()}
	s.clients[c] = struct{}{}
	s.clientsPerIP[ip]++
	snapshot := make([][]byte, 0, len(s.peers))
	for _, e := range s.peers {
		snapshot = append(snapshot, e.frame)
	}
	s.ringMu.RLock()
	cursor := s.head
	s.ringMu.RUnlock()
	s.clientsWG.Add(1)
	s.mu.Unlock()
	if h := s.cfg.hooks; h != nil && h.clientAdded != nil {
		h.clientAdded()
	}

	if hj, ok := w.(http.Hijacker); ok {
		conn, _, err := hj.Hijack()
		if err == nil {
			// The stream is ours now: no net/http buffers or goroutines
			// stay behind, only the connection and one goroutine.
			_ = conn.SetDeadline(time.Time{})
			if tc, ok := conn.(*net.TCPConn); ok && s.cfg.StreamSendBuffer > 0 {
				_ = tc.SetWriteBuffer(s.cfg.StreamSendBuffer)
			}
			s.mu.Lock()
			c.conn = conn
			if s.closed() {
				_ = conn.Close()
			}
			s.mu.Unlock()
			head := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n" +
				"X-Accel-Buffering: no\r\nConnection: close\r\n\r\n: ok\n\n")
			go s.runClient(c, &connWriter{conn: conn, timeout: s.cfg.WriteTimeout}, head, snapshot, cursor)
			return
		}
	}
	// Not hijackable (e.g. HTTP/2 or a wrapping middleware): stream through
	// the ResponseWriter on the handler's goroutine.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	s.runClient(c, &httpWriter{w: w, rc: rc, timeout: s.cfg.WriteTimeout, ctx: r.Context()}, []byte(": ok\n\n"), snapshot, cursor)
}

// frameWriter writes frames to one /events client, each call bounded by a deadline.
type frameWriter interface {
	write(bufs net.Buffers) error
}

// connWriter writes to a hijacked connection. Each write gets between
// timeout/2 and timeout to complete: the deadline is moved only when less
// than half of it is left, which saves a timer update per write.
type connWriter struct {
	conn     net.Conn
	timeout  time.Duration
	deadline time.Time
}

func (c *connWriter) write(bufs net.Buffers) error {
	if now := time.Now(); c.deadline.Sub(now) < c.timeout/2 {
		c.deadline = now.Add(c.timeout)
		_ = c.conn.SetWriteDeadline(c.deadline)
	}
	_, err := bufs.WriteTo(c.conn)
	return err
}

type httpWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	ctx     context.Context
	timeout time.Duration
}

func (h *httpWriter) write(bufs net.Buffers) error {
	if err := h.ctx.Err(); err != nil {
		return err
	}
	_ = h.rc.SetWriteDeadline(time.Now().Add(h.timeout))
	for _, b := range bufs {
		if _, err := h.w.Write(b); err != nil {
			return err
		}
	}
	return h.rc.Flush()
}

// maxBatch is how many frames go out in one write.
const maxBatch = 64

// runClient streams to c until it fails, falls too far behind, or the
// server closes.
func (s *Server) runClient(c *sseClient, out frameWriter, hello []byte, snapshot [][]byte, cursor uint64) {
	reason := "closed"
	defer func() { s.removeClient(c, reason) }()
	first := make(net.Buffers, 0, min(len(snapshot), maxBatch)+1)
	first = append(first, hello)
	for len(snapshot) > 0 || first != nil {
		n := min(len(snapshot), maxBatch)
		batch := append(first, snapshot[:n]...)
		snapshot, first = snapshot[n:], nil
		if err := out.write(batch); err != nil {
			reason = "write"
			return
		}
	}
	size := uint64(len(s.ring))
	var bufs net.Buffers
	for {
		s.ringMu.RLock()
		head, notify := s.head, s.notify
		if head-cursor > size {
			s.ringMu.RUnlock()
			reason = "slow"
			return
		}
		n := min(head-cursor, maxBatch)
		bufs = bufs[:0]
		for i := cursor; i < cursor+n; i++ {
			bufs = append(bufs, s.ring[i%size])
		}
		s.ringMu.RUnlock()
		if n > 0 {
			// write consumes its copy of the slice header; bufs is refilled next round.
			if err := out.write(bufs); err != nil {
				reason = "write"
				return
			}
			cursor += n
			continue
		}
		select {
		case <-notify:
		case <-s.done:
			return
		}
	}
}

func (s *Server) removeClient(c *sseClient, reason string) {
	s.mu.Lock()
	delete(s.clients, c)
	if s.clientsPerIP[c.ip]--; s.clientsPerIP[c.ip] <= 0 {
		delete(s.clientsPerIP, c.ip)
	}
	conn := c.conn
	s.mu.Unlock()
	if conn != nil {
		_ = conn.Close()
	}
	switch reason {
	case "slow":
		s.n.droppedSlow.Add(1)
		s.log.Debug("rendezvous: dropped a slow event stream", "ip", c.ip)
	case "write":
		s.n.droppedWrite.Add(1)
	}
	if h := s.cfg.hooks; h != nil && h.clientRemoved != nil {
		h.clientRemoved(reason)
	}
	s.clientsWG.Done()
}

// Stats is a snapshot of the server's state and counters.
type Stats struct {
	Peers         int `json:"peers"`
	VerifiedPeers int `json:"verified_peers"`
	Clients       int `json:"clients"`
	SignedIDs     int `json:"signed_ids"`
	// Published counts accepted publishes; Rejected4xx/503 the refused ones by status.
	Published   int64 `json:"published"`
	Rejected400 int64 `json:"rejected_400"`
	Rejected403 int64 `json:"rejected_403"`
	Rejected429 int64 `json:"rejected_429"`
	Rejected503 int64 `json:"rejected_503"`
	// StreamsRefused counts /events answered 429 by the client caps.
	StreamsRefused int64 `json:"streams_refused"`
	// DroppedSlow and DroppedWrite count streams ended for lagging too far
	// behind and for failed or timed-out writes.
	DroppedSlow  int64 `json:"dropped_slow"`
	DroppedWrite int64 `json:"dropped_write"`
	// OfflineSwept counts peers dropped for silence.
	OfflineSwept int64 `json:"offline_swept"`
}

// Stats returns the current counts.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	st := Stats{Peers: len(s.peers), Clients: len(s.clients), SignedIDs: len(s.signed)}
	for _, e := range s.peers {
		if e.msg.Verified {
			st.VerifiedPeers++
		}
	}
	s.mu.Unlock()
	st.Published = s.n.published.Load()
	st.Rejected400 = s.n.rejected400.Load()
	st.Rejected403 = s.n.rejected403.Load()
	st.Rejected429 = s.n.rejected429.Load()
	st.Rejected503 = s.n.rejected503.Load()
	st.StreamsRefused = s.n.streamsRefused.Load()
	st.DroppedSlow = s.n.droppedSlow.Load()
	st.DroppedWrite = s.n.droppedWrite.Load()
	st.OfflineSwept = s.n.offlineSwept.Load()
	return st
}

// Peers returns the current peers as last published (Verified set by the server).
func (s *Server) Peers() []PresenceMsg {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]PresenceMsg, 0, len(s.peers))
	for _, e := range s.peers {
		out = append(out, e.msg)
	}
	return out
}
