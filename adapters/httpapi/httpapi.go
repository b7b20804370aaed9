// Package httpapi is the viewer's HTTP API (SPEC §2 browser side): health,
// the node's identity, and the message bus (send, application receipts, and
// an SSE stream of incoming messages).
//
// It is a driving adapter: handlers turn requests into commands on the node's
// runtime and wait for the reply; they never touch node state themselves.
//
// Security: the viewer drives the node, so it only ever listens on loopback
// (config viewer.http_addr), and every request must name a loopback host in
// its Host header (localhost, *.localhost or a loopback IP). This defeats DNS
// rebinding, where a remote web page makes the browser resolve the attacker's
// own name to 127.0.0.1 and then talk to the viewer with that name as Host.
// Requests that change state (any method but GET and HEAD) that carry an
// Origin header must come from the viewer's own origin, so other web sites
// cannot post to the API from the user's browser (CSRF). Pages of other
// peers are served on their own origins, p-<label>.localhost, where the API
// is scoped to that peer (see sites.go).
package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/goop-p2p/goop/adapters/dataproto"
	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/group"
	"github.com/goop-p2p/goop/domain/mq"
)

// Defaults of Deps' optional fields.
const (
	DefaultSendTimeout = 5 * time.Second
	DefaultKeepAlive   = 15 * time.Second
	DefaultEventBuffer = 1024
	// writeTimeout bounds every write to an SSE client, so a client that
	// stops reading cannot hold its handler forever.
	writeTimeout = 10 * time.Second
)

// MaxBodyBytes bounds a request body: a maximal payload plus room for the
// other fields and JSON escaping.
const MaxBodyBytes = 2*mq.MaxPayloadBytes + 64<<10

// Runtime is what the API needs from the node's runtime (*app.Runtime
// implements it). All methods must be safe for concurrent use.
type Runtime interface {
	// Self is the node's peer id.
	Self() mq.PeerID
	// Do runs fn on the node's goroutine and returns once its effects are durable.
	Do(ctx context.Context, fn func(now time.Time, n *app.Node)) error
	// SendWait queues a message and waits for the peer's ack or ctx; a
	// message whose wait ends without the ack is stored within the linger.
	SendWait(ctx context.Context, to mq.PeerID, topic string, payload []byte) (mq.Frame, app.Event, error)
	// Subscribe returns a bounded subscription to node events.
	Subscribe(n int) *app.Subscription
	// SubscribeKinds is Subscribe for events of the given kinds only.
	SubscribeKinds(n int, kinds ...app.EventKind) *app.Subscription
	// Done is closed when the node has stopped.
	Done() <-chan struct{}
}

var _ Runtime = (*app.Runtime)(nil)

// Deps are the handler's collaborators and settings.
type Deps struct {
	// Runtime is the running node (required).
	Runtime Runtime
	// Label is the peer's display name (profile.label).
	Label string
	// Addrs returns the node's current listen multiaddrs (may be nil).
	Addrs func() []string
	// Log receives request errors (nil: discard).
	Log *slog.Logger
	// SendTimeout bounds how long POST /api/mq/send waits for the peer's ack
	// before answering 202 queued (default 5 s).
	SendTimeout time.Duration
	// KeepAlive is the interval of SSE keep-alive comments (default 15 s).
	KeepAlive time.Duration
	// EventBuffer is each SSE client's event buffer; a client that falls
	// further behind is disconnected (default 1024).
	EventBuffer int
	// GroupHistory reads the messages the host relayed in a group, newest
	// last (nil: the history route answers 501).
	GroupHistory func(ctx context.Context, groupID string, limit int) ([]group.HistoryEntry, error)
	// SpeaksOurBus reports whether a peer speaks our bus protocol, known
	// false while this node has not learned its protocols (p2p.MQTransport's
	// SpeaksOurs). A group's history is asked only of hosts that may answer:
	// a Goop2 host never does (nil: always ask).
	SpeaksOurBus func(p mq.PeerID) (ours, known bool)

	// SiteRoot is the folder of this node's own site (paths.site_root,
	// absolute), served at /p/<self>/ (empty: those pages answer 404).
	SiteRoot string
	// FetchSite fetches a file of another peer's site (site.Fetch): it must
	// bound the wait for the reply's header itself, bound each body read, and
	// return errors wrapping the site package's typed errors (nil: remote
	// pages answer 502). See sites.go for how remote pages are isolated.
	FetchSite func(ctx context.Context, peer mq.PeerID, path string) (mime string, size int64, body io.ReadCloser, err error)
	// QueryData runs a query on another peer's public data surface
	// (dataproto.Query); errors are *dataproto.Error (nil: 502).
	QueryData func(ctx context.Context, peer mq.PeerID, req dataproto.Request) (json.RawMessage, error)
	// LocalViews is the data surface of this node's own pages
	// (/api/data/query); nil exposes nothing.
	LocalViews *dataproto.Registry
	// PublicViews is the data surface other peers see; a page of this node
	// opened on its peer origin queries it.
	PublicViews *dataproto.Registry
	// DataTimeout bounds a data query, local or proxied (default 10 s).
	DataTimeout time.Duration
}

type server struct {
	d      Deps
	labels labelCache
}

// New returns the viewer API handler. It is safe for concurrent use.
func New(d Deps) http.Handler {
	if d.Runtime == nil {
		panic("httpapi: Deps.Runtime is required")
	}
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	if d.Addrs == nil {
		d.Addrs = func() []string { return nil }
	}
	if d.SendTimeout <= 0 {
		d.SendTimeout = DefaultSendTimeout
	}
	if d.KeepAlive <= 0 {
		d.KeepAlive = DefaultKeepAlive
	}
	if d.EventBuffer <= 0 {
		d.EventBuffer = DefaultEventBuffer
	}
	if d.DataTimeout <= 0 {
		d.DataTimeout = dataproto.DefaultTimeout
	}
	s := &server{d: d}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /api/self", s.self)
	mux.HandleFunc("POST /api/mq/send", s.send)
	mux.HandleFunc("POST /api/mq/ack", s.ack)
	mux.HandleFunc("GET /api/mq/events", s.events)
	s.registerGroups(mux)
	s.registerPeers(mux)
	s.registerUI(mux)
	s.registerSites(mux)
	s.registerData(mux)
	return guard(s.scopeRemotePage(mux))
}

// guard rejects requests whose Host is not a loopback name or address
// (DNS rebinding) and state-changing requests from another origin (CSRF).
func guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !loopbackHostHeader(r.Host) {
			writeError(w, http.StatusForbidden, fmt.Sprintf("host %q is not allowed: the viewer answers only to loopback names (localhost, 127.0.0.1, [::1])", truncate(r.Host, 100)))
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if origin := r.Header.Get("Origin"); origin != "" && !sameOrigin(origin, r.Host) {
				writeError(w, http.StatusForbidden, fmt.Sprintf("origin %q is not allowed: only the viewer's own pages may change state", truncate(origin, 100)))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func loopbackHostHeader(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	return app.IsLoopbackHost(host)
}

func sameOrigin(origin, host string) bool {
	u, err := url.Parse(origin)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return false
	}
	return strings.EqualFold(u.Host, host)
}

func (s *server) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = io.WriteString(w, "ok")
}

type selfResponse struct {
	ID    string   `json:"id"`
	Label string   `json:"label"`
	Addrs []string `json:"addrs"`
}

func (s *server) self(w http.ResponseWriter, _ *http.Request) {
	addrs := s.d.Addrs()
	if addrs == nil {
		addrs = []string{}
	}
	writeJSON(w, http.StatusOK, selfResponse{ID: string(s.d.Runtime.Self()), Label: s.d.Label, Addrs: addrs})
}

type sendRequest struct {
	PeerID  string          `json:"peer_id"`
	Topic   string          `json:"topic"`
	Payload json.RawMessage `json:"payload"`
}

type sendResponse struct {
	MsgID  string `json:"msg_id"`
	Status string `json:"status"`
	Error  string `json:"error,omitempty"`
}

// Send statuses.
const (
	StatusDelivered = "delivered" // the peer's node acknowledged the message
	StatusQueued    = "queued"    // durable in the outbox; the bus keeps retrying
	StatusFailed    = "failed"    // the bus gave up
)

func (s *server) send(w http.ResponseWriter, r *http.Request) {
	var req sendRequest
	if !decodeBody(w, r, &req) {
		return
	}
	to, ok := s.checkPeer(w, "peer_id", req.PeerID)
	if !ok {
		return
	}
	if req.Topic == "" {
		writeError(w, http.StatusBadRequest, "missing topic")
		return
	}
	if err := mq.ValidateTopic(req.Topic); err != nil {
		writeError(w, http.StatusBadRequest, "invalid topic: "+strings.TrimPrefix(err.Error(), mq.ErrBadFrame.Error()+": "))
		return
	}
	payload := []byte("null")
	if len(req.Payload) > 0 {
		var buf bytes.Buffer
		if err := json.Compact(&buf, req.Payload); err != nil {
			writeError(w, http.StatusBadRequest, "invalid payload: "+err.Error())
			return
		}
		payload = buf.Bytes()
	}
	if len(payload) > mq.MaxPayloadBytes {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("payload is %d bytes; the limit is %d bytes", len(payload), mq.MaxPayloadBytes))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.d.SendTimeout)
	defer cancel()
	f, _, err := s.d.Runtime.SendWait(ctx, to, req.Topic, payload)
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, sendResponse{MsgID: f.ID, Status: StatusDelivered})
	case f.ID != "" && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)):
		// Queued, and in the durable outbox within milliseconds: the bus keeps
		// trying; the browser learns of the application's receipt on the
		// event stream.
		writeJSON(w, http.StatusAccepted, sendResponse{MsgID: f.ID, Status: StatusQueued})
	case f.ID != "" && errors.Is(err, app.ErrStopped):
		writeJSON(w, http.StatusAccepted, sendResponse{MsgID: f.ID, Status: StatusQueued, Error: "node stopped; the message is resent when it starts again"})
	case errors.Is(err, app.ErrStopped):
		writeError(w, http.StatusServiceUnavailable, "node is stopped")
	case errors.Is(err, mq.ErrQueueFull):
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusTooManyRequests, err.Error())
	case errors.Is(err, mq.ErrPayloadTooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, err.Error())
	case errors.Is(err, mq.ErrBadFrame):
		writeError(w, http.StatusBadRequest, err.Error())
	case f.ID != "":
		// The bus gave up on the message (EventFailed).
		writeJSON(w, http.StatusBadGateway, sendResponse{MsgID: f.ID, Status: StatusFailed, Error: err.Error()})
	case errors.Is(err, context.DeadlineExceeded):
		writeError(w, http.StatusServiceUnavailable, "node is busy: it did not take the message in time")
	default:
		s.d.Log.Warn("mq send", "err", err)
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

type ackRequest struct {
	MsgID      string `json:"msg_id"`
	FromPeerID string `json:"from_peer_id"`
}

func (s *server) ack(w http.ResponseWriter, r *http.Request) {
	var req ackRequest
	if !decodeBody(w, r, &req) {
		return
	}
	if req.MsgID == "" {
		writeError(w, http.StatusBadRequest, "missing msg_id")
		return
	}
	if len(req.MsgID) > mq.MaxIDBytes {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid msg_id: longer than %d bytes", mq.MaxIDBytes))
		return
	}
	from, ok := s.checkPeer(w, "from_peer_id", req.FromPeerID)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.d.SendTimeout)
	defer cancel()
	var serr error
	err := s.d.Runtime.Do(ctx, func(now time.Time, n *app.Node) {
		_, serr = n.SendReceipt(now, from, req.MsgID)
	})
	if err == nil {
		err = serr
	}
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	case errors.Is(err, app.ErrStopped):
		writeError(w, http.StatusServiceUnavailable, "node is stopped")
	case errors.Is(err, mq.ErrQueueFull):
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusTooManyRequests, err.Error())
	case errors.Is(err, mq.ErrBadFrame):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		writeError(w, http.StatusServiceUnavailable, "node is busy: it did not take the receipt in time")
	default:
		s.d.Log.Warn("mq ack", "err", err)
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

// checkPeer validates a peer id field; it writes a 400 and reports false if bad.
func (s *server) checkPeer(w http.ResponseWriter, field, v string) (mq.PeerID, bool) {
	if v == "" {
		writeError(w, http.StatusBadRequest, "missing "+field)
		return "", false
	}
	if len(v) > mq.MaxPeerIDBytes {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid %s: longer than %d bytes", field, mq.MaxPeerIDBytes))
		return "", false
	}
	if _, err := peer.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid %s %q: not a libp2p peer id", field, v))
		return "", false
	}
	if mq.PeerID(v) == s.d.Runtime.Self() {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid %s: that is this node itself", field))
		return "", false
	}
	return mq.PeerID(v), true
}

// decodeBody reads a bounded JSON object body into v; on error it writes the
// response and reports false.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	dec := json.NewDecoder(r.Body)
	err := dec.Decode(v)
	if err == nil && dec.More() {
		err = errors.New("trailing data after the JSON object")
	}
	if err == nil {
		return true
	}
	var tooBig *http.MaxBytesError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body is larger than %d bytes", tooBig.Limit))
	case errors.Is(err, io.EOF):
		writeError(w, http.StatusBadRequest, "bad JSON: empty body")
	case errors.As(err, &typ) && typ.Field != "":
		writeError(w, http.StatusBadRequest, fmt.Sprintf("bad JSON: %s must be a %s, not %s", typ.Field, typ.Type, typ.Value))
	default:
		writeError(w, http.StatusBadRequest, "bad JSON: "+strings.TrimPrefix(err.Error(), "json: "))
	}
	return false
}

// events streams bus events as SSE (SPEC §2): `message` frames for received
// messages and application receipts.
func (s *server) events(w http.ResponseWriter, r *http.Request) {
	s.stream(w, r, []app.EventKind{app.EventMessage, app.EventReceipt, app.EventFailed}, func(ev app.Event) (string, []byte) {
		data := encodeEvent(ev)
		if data == nil {
			return "", nil
		}
		return "message", data
	})
}

// stream writes node events as SSE until the client goes or the
// subscription closes (node stopped, or the client fell too far behind).
// Only events of kinds reach encode, which names each event and gives its
// data, or "" to skip it. The first
// event is `connected`; a keep-alive comment goes out every KeepAlive.
func (s *server) stream(w http.ResponseWriter, r *http.Request, kinds []app.EventKind, encode func(app.Event) (string, []byte)) {
	rc := http.NewResponseController(w)
	sub := s.d.Runtime.SubscribeKinds(s.d.EventBuffer, kinds...)
	defer sub.Close()
	// Clear our write deadline so it cannot hit a reused connection.
	defer func() { _ = rc.SetWriteDeadline(time.Time{}) }()

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("Connection", "keep-alive")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	write := func(b []byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	hello, _ := json.Marshal(map[string]string{"type": "connected", "peer_id": string(s.d.Runtime.Self())})
	if !write(sseFrame("connected", hello)) {
		return
	}
	keep := time.NewTicker(s.d.KeepAlive)
	defer keep.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case ev, ok := <-sub.C:
			if !ok {
				return
			}
			name, data := encode(ev)
			if data == nil {
				continue
			}
			if !write(sseFrame(name, data)) {
				return
			}
		case <-keep.C:
			if !write([]byte(": keep-alive\n\n")) {
				return
			}
		}
	}
}

// MessageJSON is a received msg as the browser sees it: the compat frame
// fields plus origin for relayed messages.
type MessageJSON struct {
	Type    string          `json:"type"`
	ID      string          `json:"id"`
	Seq     int64           `json:"seq"`
	Topic   string          `json:"topic"`
	Payload json.RawMessage `json:"payload"`
	Origin  string          `json:"origin,omitempty"`
}

// EventJSON is the data of an SSE `message` event: type "message" (Msg,
// From), "delivered" (MsgID: the peer's application confirmed our
// message) or, ours, "failed" (MsgID, PeerID, Topic, Reason: the node gave
// the message up after its retries, or could not send it at all).
type EventJSON struct {
	Type   string       `json:"type"`
	Msg    *MessageJSON `json:"msg,omitempty"`
	From   string       `json:"from,omitempty"`
	MsgID  string       `json:"msg_id,omitempty"`
	PeerID string       `json:"peer_id,omitempty"`
	Topic  string       `json:"topic,omitempty"`
	Reason string       `json:"reason,omitempty"`
}

func encodeEvent(ev app.Event) []byte {
	var e EventJSON
	switch ev.Kind {
	case app.EventMessage:
		payload := ev.Msg.Payload
		if len(payload) == 0 {
			payload = json.RawMessage("null")
		}
		e = EventJSON{Type: "message", From: string(ev.Peer), Msg: &MessageJSON{
			Type: ev.Msg.Type, ID: ev.Msg.ID, Seq: ev.Msg.Seq, Topic: ev.Msg.Topic,
			Payload: payload, Origin: string(ev.Msg.Origin),
		}}
	case app.EventReceipt:
		e = EventJSON{Type: "delivered", MsgID: ev.MsgID}
	case app.EventFailed:
		e = EventJSON{Type: "failed", MsgID: ev.MsgID, PeerID: string(ev.Peer), Topic: ev.Topic, Reason: ev.Reason}
	default:
		return nil
	}
	b, err := json.Marshal(e)
	if err != nil {
		return nil // the payload was validated JSON when it arrived
	}
	return b
}

// sseFrame builds one SSE event; data is single-line JSON.
func sseFrame(event string, data []byte) []byte {
	b := make([]byte, 0, len(event)+len(data)+16)
	b = append(b, "event: "...)
	b = append(b, event...)
	b = append(b, "\ndata: "...)
	b = append(b, data...)
	return append(b, '\n', '\n')
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
