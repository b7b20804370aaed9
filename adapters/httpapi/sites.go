package httpapi

// Visiting peers (SPEC §7): /p/<peer-id>/<path> renders a peer's site, and
// pages fetched from other peers are kept from acting for the user.
//
// Security design. A remote peer's site is untrusted code. It is never served
// on the viewer's main origin (http://127.0.0.1:<port>, http://localhost:<port>),
// whose pages drive the whole API. Each remote peer gets its own origin,
// http://p-<label>.localhost:<port>/p/<peer-id>/<path>, where label is
// PeerLabel(peer id) (Chromium and Firefox resolve *.localhost to loopback).
// GET /p/<peer-id>/… on the main origin answers, for a remote peer, a 302 to
// that origin; for this node it serves the node's own site from disk.
//
// On a peer origin the API is scoped to that peer (scopeRemotePage): its page
// may load the SDK, its own site's files, read {id,label} of the node, join,
// send msg/state to and leave groups hosted by that peer, read the group
// events and subscriptions of those groups, and query that peer's data. Any
// other request — the message bus, creating, inviting, kicking or closing
// groups, groups of other peers, local data, uploads, jobs, other peers'
// pages — answers 403 naming the peer. The browser's same-origin policy keeps
// the page from reading the main origin's answers, and guard() refuses
// state-changing requests whose Origin is not the request's own origin, so
// the page cannot post to the main origin either. Every site page is served
// with a strict Content-Security-Policy (no inline script, no framing,
// connections only to its own origin).

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/goop-p2p/goop/adapters/site"
	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/group"
	"github.com/goop-p2p/goop/domain/mq"
)

// SiteCSP is the Content-Security-Policy of every page served under /p/.
const SiteCSP = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; worker-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"

// errorPageCSP is the policy of the viewer's own error pages (no script at all).
const errorPageCSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

// DefaultSiteTimeout is how long a remote page waits for the peer's header.
const DefaultSiteTimeout = site.DefaultHeaderTimeout

var labelEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// PeerLabel is the DNS label that names a peer's origin: lowercase base32
// (no padding) of the first 16 bytes of sha256(peer id string), 26 characters.
func PeerLabel(peerID string) string {
	sum := sha256.Sum256([]byte(peerID))
	return strings.ToLower(labelEncoding.EncodeToString(sum[:16]))
}

// PeerHost is the host name of a peer's origin: p-<label>.localhost.
func PeerHost(peerID string) string { return "p-" + PeerLabel(peerID) + ".localhost" }

// PeerPageURL is the URL of path on peer's site, on its own origin of the
// viewer listening on port.
func PeerPageURL(peerID, port, path string) string {
	return "http://" + net.JoinHostPort(PeerHost(peerID), port) + "/p/" + peerID + "/" + strings.TrimPrefix(path, "/")
}

// peerOrigin reports whether a Host header names a peer origin and returns
// its label (which may match no peer). Other loopback names are the main origin.
func peerOrigin(hostport string) (label string, ok bool) {
	h := hostport
	if hh, _, err := net.SplitHostPort(hostport); err == nil {
		h = hh
	}
	h = strings.TrimSuffix(strings.ToLower(h), ".")
	name, ok := strings.CutSuffix(h, ".localhost")
	if !ok {
		return "", false
	}
	return strings.CutPrefix(name, "p-")
}

// labelCache remembers which peer a label stands for, to name it in errors.
type labelCache struct {
	mu sync.Mutex
	m  map[string]string
}

const labelCacheMax = 1024

func (c *labelCache) put(label, peerID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= labelCacheMax {
		c.m = map[string]string{}
	}
	c.m[label] = peerID
}

func (c *labelCache) name(label string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p, ok := c.m[label]; ok {
		return p
	}
	return "p-" + label + ".localhost"
}

// scopeRemotePage enforces the scoping of peer origins described above.
func (s *server) scopeRemotePage(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		label, scoped := peerOrigin(r.Host)
		if !scoped {
			next.ServeHTTP(w, r)
			return
		}
		if s.allowScoped(w, r, label) {
			next.ServeHTTP(w, r)
		}
	})
}

// allowScoped answers a request on the origin of label's peer itself, or
// reports that next may answer it.
func (s *server) allowScoped(w http.ResponseWriter, r *http.Request, label string) bool {
	p := r.URL.Path
	ofPeer := func(id string) bool {
		if PeerLabel(id) != label {
			return false
		}
		s.labels.put(label, id)
		return true
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		switch {
		case p == "/sdk/goop.js":
			return true
		case strings.HasPrefix(p, "/p/"):
			id, _, _ := strings.Cut(strings.TrimPrefix(p, "/p/"), "/")
			if !ofPeer(id) {
				s.sitePage(w, http.StatusForbidden, "Wrong origin",
					fmt.Sprintf("This origin (%s) belongs to another peer than %s: each peer's site is served only from its own origin.", PeerHost(s.labels.name(label)), id))
				return false
			}
			return true
		case p == "/api/self":
			writeJSON(w, http.StatusOK, map[string]string{"id": string(s.d.Runtime.Self()), "label": s.d.Label})
			return false
		case p == "/api/groups/events":
			s.stream(w, r, []app.EventKind{app.EventGroup}, func(ev app.Event) (string, []byte) {
				if ev.Kind != app.EventGroup || ev.Group == nil || PeerLabel(s.hostOrSelf(ev.Group.Host)) != label ||
					ev.Group.Type == group.EvDeclined { // the host is not told; its page must not learn it
					return "", nil
				}
				return encodeGroupEvent(ev)
			})
			return false
		case p == "/api/groups/subscriptions":
			s.scopedSubscriptions(w, r, label)
			return false
		}
		if id, ok := dataPeerPath(p); ok && ofPeer(id) {
			return true
		}
	case http.MethodPost:
		switch p {
		case "/api/groups/join", "/api/groups/send", "/api/groups/leave":
			return s.allowScopedGroupCall(w, r, label)
		}
		if id, ok := dataPeerPath(p); ok && ofPeer(id) {
			return true
		}
	}
	s.scopeForbidden(w, r, label, "it is reserved for the viewer's own pages")
	return false
}

func (s *server) hostOrSelf(h group.PeerID) string {
	if h == "" {
		return string(s.d.Runtime.Self())
	}
	return string(h)
}

// dataPeerPath matches /api/p/<peer>/data/query.
func dataPeerPath(p string) (string, bool) {
	rest, ok := strings.CutPrefix(p, "/api/p/")
	if !ok {
		return "", false
	}
	id, tail, ok := strings.Cut(rest, "/")
	return id, ok && tail == "data/query" && id != ""
}

func (s *server) scopeForbidden(w http.ResponseWriter, r *http.Request, label, why string) {
	writeJSON(w, http.StatusForbidden, map[string]string{
		"error": fmt.Sprintf("the page of peer %s may not do that: %s %s: %s", s.labels.name(label), r.Method, truncate(r.URL.Path, 100), why),
		"code":  group.CodeForbidden,
	})
}

// allowScopedGroupCall lets join, send (msg and state) and leave through
// when they name a group hosted by label's peer. The body is read here
// (bounded) and handed on unchanged; the handler decodes the same fields
// with the same rules.
func (s *server) allowScopedGroupCall(w http.ResponseWriter, r *http.Request, label string) bool {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body is larger than %d bytes", tooBig.Limit))
		} else {
			writeError(w, http.StatusBadRequest, "reading the request: "+err.Error())
		}
		return false
	}
	var req struct {
		HostPeerID string `json:"host_peer_id"`
		Kind       string `json:"kind"`
	}
	if err := json.Unmarshal(b, &req); err != nil {
		writeError(w, http.StatusBadRequest, "bad JSON: "+strings.TrimPrefix(err.Error(), "json: "))
		return false
	}
	if PeerLabel(s.hostOrSelf(group.PeerID(req.HostPeerID))) != label {
		s.scopeForbidden(w, r, label, fmt.Sprintf("it names a group hosted by %s; a peer's page may only use the groups that peer hosts", truncate(s.hostOrSelf(group.PeerID(req.HostPeerID)), 80)))
		return false
	}
	if r.URL.Path == "/api/groups/send" && req.Kind != "" && req.Kind != group.TypeMsg && req.Kind != group.TypeState {
		s.scopeForbidden(w, r, label, fmt.Sprintf("kind %q is not one of msg, state", truncate(req.Kind, 40)))
		return false
	}
	s.labels.put(label, s.hostOrSelf(group.PeerID(req.HostPeerID)))
	r.Body = io.NopCloser(bytes.NewReader(b))
	r.ContentLength = int64(len(b))
	return true
}

func (s *server) scopedSubscriptions(w http.ResponseWriter, r *http.Request, label string) {
	var out []SubscriptionJSON
	if !s.do(w, r, func(now time.Time, n *app.Node) error {
		for _, v := range n.Groups().Subscriptions() {
			if PeerLabel(string(v.Sub.Host)) == label {
				out = append(out, subscriptionJSON(v))
			}
		}
		return nil
	}) {
		return
	}
	if out == nil {
		out = []SubscriptionJSON{}
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) registerSites(mux *http.ServeMux) {
	mux.HandleFunc("GET /p/{peer}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, r.URL.EscapedPath()+"/", http.StatusFound)
	})
	mux.HandleFunc("GET /p/{peer}/{path...}", s.sitePath)
}

// sitePath serves /p/<peer>/<path>: this node's site from disk, another
// peer's over the site protocol on that peer's origin (redirecting there
// from the main origin).
func (s *server) sitePath(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("peer")
	if len(id) > mq.MaxPeerIDBytes {
		s.sitePage(w, http.StatusNotFound, "Not a peer", "The address does not name a peer: the peer id is too long.")
		return
	}
	if _, err := peer.Decode(id); err != nil {
		s.sitePage(w, http.StatusNotFound, "Not a peer", fmt.Sprintf("The address does not name a peer: %q is not a libp2p peer id.", truncate(id, 80)))
		return
	}
	label, scoped := peerOrigin(r.Host)
	self := mq.PeerID(id) == s.d.Runtime.Self()
	switch {
	case scoped && PeerLabel(id) != label:
		s.sitePage(w, http.StatusForbidden, "Wrong origin", "This origin belongs to another peer: each peer's site is served only from its own origin.")
		return
	case !scoped && !self:
		port := ""
		if _, p, err := net.SplitHostPort(r.Host); err == nil {
			port = p
		}
		host := PeerHost(id)
		if port != "" {
			host = net.JoinHostPort(host, port)
		}
		u := "http://" + host + r.URL.EscapedPath()
		if r.URL.RawQuery != "" {
			u += "?" + r.URL.RawQuery
		}
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Referrer-Policy", "no-referrer")
		http.Redirect(w, r, u, http.StatusFound)
		return
	}
	rel, err := site.CleanPath(r.PathValue("path"))
	if err != nil {
		s.siteError(w, id, self, "/"+r.PathValue("path"), err)
		return
	}
	if self {
		s.serveOwnSite(w, r, id, rel)
		return
	}
	s.serveRemoteSite(w, r, id, rel)
}

func siteHeaders(w http.ResponseWriter, mime string) {
	h := w.Header()
	h.Set("Content-Type", mime)
	h.Set("Content-Security-Policy", SiteCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-cache")
}

func (s *server) serveOwnSite(w http.ResponseWriter, r *http.Request, id, rel string) {
	if s.d.SiteRoot == "" {
		s.sitePage(w, http.StatusNotFound, "No site", "This node has no site folder (paths.site_root).")
		return
	}
	f, err := site.Open(s.d.SiteRoot, rel)
	if err != nil {
		s.siteError(w, id, true, "/"+rel, err)
		return
	}
	defer f.Close()
	if f.Dir && !strings.HasSuffix(r.URL.Path, "/") {
		// Relative links of a folder's index.html need the trailing slash.
		http.Redirect(w, r, r.URL.EscapedPath()+"/", http.StatusFound)
		return
	}
	siteHeaders(w, f.MIME)
	http.ServeContent(w, r, f.Name, f.ModTime, f)
}

func (s *server) serveRemoteSite(w http.ResponseWriter, r *http.Request, id, rel string) {
	if s.d.FetchSite == nil {
		s.sitePage(w, http.StatusBadGateway, "Peer unreachable", "This viewer cannot fetch other peers' sites.")
		return
	}
	wire := "/" + rel
	if rel == "" || strings.HasSuffix(rel, "/") {
		wire += "index.html"
	}
	mime, size, body, err := s.d.FetchSite(r.Context(), mq.PeerID(id), wire)
	if err != nil {
		s.siteError(w, id, false, wire, err)
		return
	}
	defer body.Close()
	start, n, partial, ok := byteRange(r, size)
	if !ok {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", size))
		s.sitePage(w, http.StatusRequestedRangeNotSatisfiable, "Range not satisfiable",
			fmt.Sprintf("The file is %d bytes long.", size))
		return
	}
	siteHeaders(w, site.SanitizeMIME(mime))
	h := w.Header()
	h.Set("Accept-Ranges", "bytes")
	h.Set("Content-Length", fmt.Sprint(n))
	if partial {
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, start+n-1, size))
		w.WriteHeader(http.StatusPartialContent)
	} else {
		w.WriteHeader(http.StatusOK)
	}
	if r.Method == http.MethodHead {
		return
	}
	// The site protocol sends whole files: a range skips to its start.
	_, err = io.CopyN(io.Discard, body, start)
	if err == nil {
		_, err = io.CopyN(w, body, n)
	}
	if err != nil {
		// The status is sent: cut the connection so the browser sees a
		// broken transfer, not a complete short file.
		s.d.Log.Debug("site: remote transfer failed", "peer", id, "path", wire, "err", err)
		panic(http.ErrAbortHandler)
	}
}

// byteRange reads r's Range header against a file of size bytes: the
// bytes to send (from start, n of them) and whether that is a part. Only a
// single range of bytes is honoured; several ranges, a syntax this does not
// know, or an If-Range (remote files have no validators to compare) get the
// whole file. ok is false when the range is not satisfiable (416).
func byteRange(r *http.Request, size int64) (start, n int64, partial, ok bool) {
	spec, found := strings.CutPrefix(r.Header.Get("Range"), "bytes=")
	if !found || r.Header.Get("If-Range") != "" || strings.Contains(spec, ",") {
		return 0, size, false, true
	}
	first, last, found := strings.Cut(strings.TrimSpace(spec), "-")
	if !found {
		return 0, size, false, true
	}
	parse := func(v string) (int64, bool) {
		if v == "" || strings.TrimLeft(v, "0123456789") != "" || len(v) > 18 {
			return 0, false
		}
		x, err := strconv.ParseInt(v, 10, 64)
		return x, err == nil
	}
	switch {
	case first == "": // the last `last` bytes
		k, valid := parse(last)
		if !valid {
			return 0, size, false, true
		}
		if k == 0 || size == 0 {
			return 0, 0, false, false
		}
		k = min(k, size)
		return size - k, k, true, true
	default:
		a, valid := parse(first)
		if !valid {
			return 0, size, false, true
		}
		b := size - 1
		if last != "" {
			if b, valid = parse(last); !valid || b < a {
				return 0, size, false, true
			}
			b = min(b, size-1)
		}
		if a >= size {
			return 0, 0, false, false
		}
		return a, b - a + 1, true, true
	}
}

// siteError writes the page for a site error: what happened, and whose fault.
func (s *server) siteError(w http.ResponseWriter, id string, self bool, path string, err error) {
	who := "Peer " + id
	if self {
		who = "This node"
	}
	path = truncate(path, 200)
	switch {
	case errors.Is(err, site.ErrNotFound):
		s.sitePage(w, http.StatusNotFound, "File not found", fmt.Sprintf("%s has no file %s in its site (%s).", who, path, errText(err)))
	case errors.Is(err, site.ErrForbidden):
		s.sitePage(w, http.StatusForbidden, "Forbidden", fmt.Sprintf("%s is not served: paths must stay inside the site folder, and lua/ and dot-files are private (%s).", path, errText(err)))
	case errors.Is(err, site.ErrTooLarge):
		s.sitePage(w, http.StatusRequestEntityTooLarge, "File too large", fmt.Sprintf("%s of %s is larger than the %d MB limit.", path, who, site.MaxFileBytes>>20))
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		s.sitePage(w, http.StatusGatewayTimeout, "Peer did not answer", fmt.Sprintf("%s did not answer in time: it may be offline or far away. Try again later.", who))
	case errors.Is(err, site.ErrUnreachable):
		s.sitePage(w, http.StatusBadGateway, "Peer unreachable", fmt.Sprintf("%s could not be reached: it is offline, or no connection to it can be made (%s).", who, errText(err)))
	case errors.Is(err, site.ErrProtocol):
		s.sitePage(w, http.StatusBadGateway, "Bad answer", fmt.Sprintf("%s answered something that is not the site protocol (%s).", who, errText(err)))
	case errors.Is(err, site.ErrRefused):
		s.sitePage(w, http.StatusBadGateway, "Refused", fmt.Sprintf("%s refused to send %s (%s).", who, path, errText(err)))
	default:
		s.d.Log.Warn("site", "peer", id, "path", path, "err", err)
		s.sitePage(w, http.StatusInternalServerError, "Error", fmt.Sprintf("%s could not be served: %s.", path, errText(err)))
	}
}

func errText(err error) string { return truncate(err.Error(), 300) }

// sitePage writes an HTML page saying what happened.
func (s *server) sitePage(w http.ResponseWriter, status int, title, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", errorPageCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>%d %s</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:4em auto;padding:0 1em;color:#222}h1{font-size:1.4em}code{background:#eee;padding:0 .2em}</style>
</head><body><h1>%d %s</h1><p id="goop-error">%s</p></body></html>
`, status, html.EscapeString(title), status, html.EscapeString(title), html.EscapeString(msg))
}
