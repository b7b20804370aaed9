package rendezvous

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Defaults of ClientConfig's zero fields.
const (
	DefaultHeartbeat      = 5 * time.Second
	DefaultRequestTimeout = 10 * time.Second
	// DefaultIdleTimeout: an /events stream silent this long (the server
	// sends a keep-alive every 15 s) is taken as dead and reconnected.
	DefaultIdleTimeout = 45 * time.Second
	DefaultMinBackoff  = 250 * time.Millisecond
	DefaultMaxBackoff  = 30 * time.Second
	// maxEventBytes bounds one SSE line and one event's data.
	maxEventBytes = 256 << 10
	// maxSignedSeen bounds the client's memory of peers seen signed.
	maxSignedSeen = 65536
	// offlineTimeout bounds the offline publish at shutdown.
	offlineTimeout = 2 * time.Second
)

// ClientConfig configures a Client.
type ClientConfig struct {
	// URL is the rendezvous server's base URL, e.g. http://192.0.2.2:8787 (required).
	URL string
	// Key is the peer's libp2p identity; every publish is signed with it (required).
	Key crypto.PrivKey
	// Presence returns what to publish (label, addrs, …). The client sets
	// Type, PeerID, TS, Verified and Sig itself. Required; called on the
	// client's goroutine before every publish.
	Presence func() PresenceMsg
	// OnPresence receives every valid presence of another peer from the
	// server's stream, Verified meaning that the client checked its
	// signature itself. Called on one goroutine, in order; it must not block
	// for long (the server drops streams that fall behind). Optional.
	OnPresence func(PresenceMsg)
	// Heartbeat is the publish interval (default 5 s).
	Heartbeat time.Duration
	// RequestTimeout bounds each publish and each stream's connection and
	// response headers (default 10 s).
	RequestTimeout time.Duration
	// IdleTimeout: a stream without a byte for this long is reconnected (default 45 s).
	IdleTimeout time.Duration
	// MinBackoff and MaxBackoff bound the reconnection backoff (exponential,
	// with jitter; defaults 250 ms and 30 s).
	MinBackoff, MaxBackoff time.Duration
	// Log receives the client's logs (nil: discard).
	Log *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Client publishes a peer's signed presence to one rendezvous server every
// heartbeat and follows the server's /events stream, reconnecting with
// exponential backoff (a server restart is survived: the client subscribes
// and publishes again). Every network call has a timeout. Run it with Run.
type Client struct {
	cfg   ClientConfig
	base  string
	self  peer.ID
	log   *slog.Logger
	pubHC *http.Client
	sseHC *http.Client
	tr    *http.Transport
	wake  chan struct{} // publish now (stream (re)connected, or Refresh)
	// announce: a stream (re)connected, so the next publish is an online
	// (the server may be a new one that does not know us).
	announce atomic.Bool
	lastTS   int64 // guarded by the publish goroutine

	mu         sync.Mutex
	signedSeen map[peer.ID]int64 // peers seen signed -> their last ts
}

// NewClient checks cfg and returns a client; nothing runs until Run.
func NewClient(cfg ClientConfig) (*Client, error) {
	u, err := url.Parse(strings.TrimSpace(cfg.URL))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("rendezvous: client: %q is not an http:// or https:// URL", cfg.URL)
	}
	if cfg.Key == nil {
		return nil, errors.New("rendezvous: client: no key")
	}
	if cfg.Presence == nil {
		return nil, errors.New("rendezvous: client: no Presence function")
	}
	self, err := peer.IDFromPrivateKey(cfg.Key)
	if err != nil {
		return nil, fmt.Errorf("rendezvous: client: %w", err)
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(DefaultMaxBackoff, cfg.MinBackoff)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: cfg.RequestTimeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   cfg.RequestTimeout,
		ResponseHeaderTimeout: cfg.RequestTimeout,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   2,
	}
	return &Client{
		cfg:        cfg,
		base:       strings.TrimRight(u.String(), "/"),
		self:       self,
		log:        cfg.Log,
		tr:         tr,
		pubHC:      &http.Client{Transport: tr, Timeout: cfg.RequestTimeout},
		sseHC:      &http.Client{Transport: tr}, // bounded by header timeout + idle watchdog
		wake:       make(chan struct{}, 1),
		signedSeen: make(map[peer.ID]int64),
	}, nil
}

// PeerID is the client's own peer id.
func (c *Client) PeerID() peer.ID { return c.self }

// Refresh asks for a publish now (e.g. the addresses changed). It never blocks.
func (c *Client) Refresh() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Run publishes and follows the stream until ctx ends, then publishes an
// offline (bounded by 2 s) and returns nil. It blocks.
func (c *Client) Run(ctx context.Context) error {
	defer c.tr.CloseIdleConnections()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.follow(ctx)
	}()
	c.publishLoop(ctx)
	wg.Wait()
	return nil
}

func (c *Client) publishLoop(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	typ := TypeOnline
	failing := false
	for {
		select {
		case <-ctx.Done():
			octx, cancel := context.WithTimeout(context.WithoutCancel(ctx), offlineTimeout)
			_, _ = c.publish(octx, TypeOffline)
			cancel()
			return
		case <-t.C:
		case <-c.wake:
			if !t.Stop() {
				select {
				case <-t.C:
				default:
				}
			}
		}
		if c.announce.Swap(false) {
			typ = TypeOnline
		}
		next := c.cfg.Heartbeat
		wait, err := c.publish(ctx, typ)
		switch {
		case err == nil:
			typ = TypeUpdate
			if failing {
				c.log.Info("rendezvous: publishing again", "server", c.base)
			}
			failing = false
		case ctx.Err() != nil:
		default:
			if !failing {
				c.log.Warn("rendezvous: publish failed; retrying every heartbeat", "server", c.base, "err", err)
			} else {
				c.log.Debug("rendezvous: publish failed", "server", c.base, "err", err)
			}
			failing = true
			typ = TypeOnline // the server may have restarted without us
			next = max(next, wait)
		}
		t.Reset(next)
	}
}

// publish sends our signed presence of type typ. On a 429 it returns the
// server's Retry-After.
func (c *Client) publish(ctx context.Context, typ string) (time.Duration, error) {
	m := c.cfg.Presence()
	m.Type = typ
	m.Verified = false
	ts := unixMilli(c.cfg.Now())
	if ts <= c.lastTS {
		ts = c.lastTS + 1 // the server refuses a signed ts that does not grow
	}
	c.lastTS = ts
	m.TS = ts
	if len(m.Addrs) > MaxAddrs {
		m.Addrs = m.Addrs[:MaxAddrs]
	}
	if err := Sign(&m, c.cfg.Key); err != nil {
		return 0, err
	}
	body, err := json.Marshal(&m)
	if err != nil {
		return 0, fmt.Errorf("rendezvous: encode presence: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/publish", bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("rendezvous: publish: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.pubHC.Do(req)
	if err != nil {
		return 0, fmt.Errorf("rendezvous: publish: %w", err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode/100 == 2 {
		return 0, nil
	}
	var wait time.Duration
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 && s < 3600 {
		wait = time.Duration(s) * time.Second
	}
	return wait, fmt.Errorf("rendezvous: publish: %s: %s", resp.Status, strings.TrimSpace(string(msg)))
}

// follow keeps an /events stream open until ctx ends.
func (c *Client) follow(ctx context.Context) {
	backoff := c.cfg.MinBackoff
	for ctx.Err() == nil {
		start := time.Now()
		connected, wait, err := c.stream(ctx)
		if ctx.Err() != nil {
			return
		}
		if connected && time.Since(start) > 10*time.Second {
			backoff = c.cfg.MinBackoff
		}
		d := max(backoff/2+rand.N(backoff/2+1), wait)
		c.log.Debug("rendezvous: event stream ended; reconnecting", "server", c.base, "err", err, "in", d)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(backoff*2, c.cfg.MaxBackoff)
	}
}

// stream runs one /events connection. connected reports whether the server
// accepted it; wait is the server's Retry-After on a refusal.
func (c *Client) stream(ctx context.Context) (connected bool, wait time.Duration, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(sctx, http.MethodGet, c.base+"/events", nil)
	if err != nil {
		return false, 0, err
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := c.sseHC.Do(req)
	if err != nil {
		return false, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 && s < 3600 {
			wait = time.Duration(s) * time.Second
		}
		return false, wait, fmt.Errorf("events: %s", resp.Status)
	}
	// A stream that goes silent (no keep-alive) is cut by this watchdog.
	idle := time.AfterFunc(c.cfg.IdleTimeout, cancel)
	defer idle.Stop()
	c.announce.Store(true)
	c.Refresh() // a new stream: tell this server about us now
	sc := bufio.NewScanner(&idleReader{r: resp.Body, t: idle, d: c.cfg.IdleTimeout})
	sc.Buffer(make([]byte, 0, 4096), maxEventBytes)
	var data []byte
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 {
			if len(data) > 0 {
				c.handleEvent(data)
				data = data[:0]
			}
			continue
		}
		if line[0] == ':' {
			continue
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		if string(field) != "data" {
			continue
		}
		value = bytes.TrimPrefix(value, []byte(" "))
		if len(data)+len(value)+1 > maxEventBytes {
			return true, 0, errors.New("events: event too large")
		}
		if len(data) > 0 {
			data = append(data, '\n')
		}
		data = append(data, value...)
	}
	if err := sc.Err(); err != nil {
		return true, 0, err
	}
	return true, 0, io.EOF
}

// idleReader resets the watchdog t on every read that returns bytes.
type idleReader struct {
	r io.Reader
	t *time.Timer
	d time.Duration
}

func (ir *idleReader) Read(p []byte) (int, error) {
	n, err := ir.r.Read(p)
	if n > 0 {
		ir.t.Reset(ir.d)
	}
	return n, err
}

// handleEvent validates one event's data and reports it: malformed or
// invalid presence, a bad signature, an unsigned presence (other than an
// offline, which the server sends for silent peers) for a peer seen signed,
// and a signed one older than the last seen are dropped; so is our own.
func (c *Client) handleEvent(data []byte) {
	var m PresenceMsg
	if err := json.Unmarshal(data, &m); err != nil {
		c.log.Debug("rendezvous: malformed event dropped", "err", err)
		return
	}
	if m.TS == 0 && m.Sig == "" {
		m.TS = unixMilli(c.cfg.Now()) // a compat server that does not stamp
	}
	if err := Validate(&m); err != nil {
		c.log.Debug("rendezvous: invalid presence dropped", "err", err)
		return
	}
	id, _ := peer.Decode(string(m.PeerID)) // Validate decoded it
	if id == c.self {
		return
	}
	m.Verified = false
	if m.Sig != "" {
		if err := VerifySignature(&m); err != nil {
			c.log.Debug("rendezvous: forged presence dropped", "peer", m.PeerID, "err", err)
			return
		}
		m.Verified = true
	}
	c.mu.Lock()
	last, seenSigned := c.signedSeen[id]
	switch {
	case m.Verified && seenSigned && m.TS < last:
		c.mu.Unlock()
		return
	case m.Verified:
		if !seenSigned && len(c.signedSeen) >= maxSignedSeen {
			for k := range c.signedSeen {
				delete(c.signedSeen, k)
				break
			}
		}
		c.signedSeen[id] = m.TS
	case seenSigned && m.Type != TypeOffline:
		c.mu.Unlock()
		c.log.Debug("rendezvous: unsigned presence for a signed peer dropped", "peer", m.PeerID)
		return
	}
	c.mu.Unlock()
	if c.cfg.OnPresence != nil {
		c.cfg.OnPresence(m)
	}
}
