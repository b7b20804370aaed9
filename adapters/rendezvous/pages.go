package rendezvous

import (
	"cmp"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"html/template"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Endpoint returns the server's own URL: ExternalURL if set, else
// http://<listen address> (empty before Serve when ServerConfig.Addr is empty).
func (s *Server) Endpoint() string {
	if s.cfg.ExternalURL != "" {
		return strings.TrimRight(s.cfg.ExternalURL, "/")
	}
	s.mu.Lock()
	addr := s.addr
	s.mu.Unlock()
	if addr == "" {
		return ""
	}
	return "http://" + addr
}

// ConnectURLs returns the URLs other peers put in presence.rendezvous_wan:
// ExternalURL if set, else http://<ip>:<port> for each non-loopback IPv4
// interface (only the bind address when bound to one specific address).
func (s *Server) ConnectURLs() []string {
	s.mu.Lock()
	addr := s.addr
	s.mu.Unlock()
	return ConnectURLs(s.cfg.ExternalURL, addr)
}

// ConnectURLs is Server.ConnectURLs for a listen address "host:port".
func ConnectURLs(externalURL, listenAddr string) []string {
	if externalURL != "" {
		return []string{strings.TrimRight(externalURL, "/")}
	}
	host, port, err := net.SplitHostPort(listenAddr)
	if err != nil {
		return nil
	}
	if ip, err := netip.ParseAddr(host); err == nil && !ip.IsUnspecified() && !ip.IsLoopback() {
		return []string{"http://" + net.JoinHostPort(host, port)}
	}
	ifaces, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var out []string
	for _, iface := range ifaces {
		if iface.Flags&net.FlagUp == 0 || iface.Flags&net.FlagLoopback != 0 {
			continue
		}
		name := strings.ToLower(iface.Name)
		if strings.HasPrefix(name, "docker") || strings.HasPrefix(name, "veth") ||
			strings.HasPrefix(name, "br-") || strings.HasPrefix(name, "virbr") {
			continue
		}
		addrs, err := iface.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip4 := ipn.IP.To4()
			if ip4 == nil || ip4.IsLoopback() || ip4.IsLinkLocalUnicast() {
				continue
			}
			out = append(out, "http://"+net.JoinHostPort(ip4.String(), port))
		}
	}
	return out
}

// loopbackOnly reports whether the server listens on a loopback address only.
func (s *Server) loopbackOnly() bool {
	s.mu.Lock()
	addr := s.addr
	s.mu.Unlock()
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

func setPageHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
}

const pageStyle = `body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
code,pre{background:#f4f4f4;padding:.1rem .3rem;border-radius:3px}pre{padding:.6rem}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.3rem;text-align:left;font-size:.9rem}
.note{background:#fff6d6;padding:.5rem;border-radius:4px}.mono{font-family:monospace;word-break:break-all}`

var indexTmpl = template.Must(template.New("index").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Goop rendezvous</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><style>` + pageStyle + `</style></head>
<body><h1>Goop rendezvous server</h1>
<p>Peers publish their presence here and follow everyone else's, to find each other across networks.</p>
<h2>Endpoint</h2><p><code class="mono">{{.Endpoint}}</code></p>
<h2>Connect URLs</h2>
{{if .ConnectURLs}}<p>Put one of these in a peer's <code>presence.rendezvous_wan</code>:</p>
<ul>{{range .ConnectURLs}}<li><code class="mono">{{.}}</code></li>{{end}}</ul>
<pre>{"presence": {"rendezvous_wan": "{{index .ConnectURLs 0}}"}}</pre>
{{else}}<p>No non-loopback IPv4 interface found; set <code>presence.external_url</code>.</p>{{end}}
{{if .LoopbackOnly}}<p class="note">This server listens on a loopback address only: other machines reach it only
through a reverse proxy, or once <code>presence.rendezvous_bind</code> is <code>0.0.0.0</code>.</p>{{end}}
<p>{{.Peers}} peers online, {{.Clients}} following. {{if .Admin}}<a href="/admin">Admin</a>{{end}}</p>
</body></html>`))

func (s *Server) handleIndex(w http.ResponseWriter, r *http.Request) {
	if !s.allowIP(w, s.clientKey(r)) {
		return
	}
	st := s.Stats()
	setPageHeaders(w)
	_ = indexTmpl.Execute(w, map[string]any{
		"Endpoint":     s.Endpoint(),
		"ConnectURLs":  s.ConnectURLs(),
		"LoopbackOnly": s.cfg.ExternalURL == "" && s.loopbackOnly(),
		"Peers":        st.Peers,
		"Clients":      st.Clients,
		"Admin":        s.cfg.AdminPassword != "",
	})
}

// requireAdmin checks HTTP Basic auth against AdminPassword (any user name,
// constant-time compare of SHA-256 digests). Admin is closed (403) when the
// password is empty; a wrong password gets 401, and repeated failures from one
// address 429.
func (s *Server) requireAdmin(w http.ResponseWriter, r *http.Request) bool {
	ip := s.clientKey(r)
	if !s.allowIP(w, ip) {
		return false
	}
	if s.cfg.AdminPassword == "" {
		httpError(w, http.StatusForbidden, "admin is closed: set presence.admin_password to open it")
		return false
	}
	_, pw, ok := r.BasicAuth()
	sum := sha256.Sum256([]byte(pw))
	if ok && subtle.ConstantTimeCompare(sum[:], s.adminHash[:]) == 1 {
		return true
	}
	if ok {
		if allowed, wait := s.authLim.allow(ip, s.cfg.Now()); !allowed {
			w.Header().Set("Retry-After", retryAfter(wait))
			httpError(w, http.StatusTooManyRequests, "too many failed logins; wait")
			return false
		}
	}
	w.Header().Set("WWW-Authenticate", `Basic realm="goop rendezvous admin", charset="UTF-8"`)
	httpError(w, http.StatusUnauthorized, "admin password required")
	return false
}

// AdminPeer is one peer in the admin view.
type AdminPeer struct {
	PeerID   string   `json:"peerId"`
	Type     string   `json:"type"`
	Content  string   `json:"content"`
	Verified bool     `json:"verified"`
	Addrs    []string `json:"addrs"`
	TS       int64    `json:"ts"`
	LastSeen int64    `json:"lastSeen"`
	IP       string   `json:"ip"`
}

// AdminIPCount is a client address with its count of event streams.
type AdminIPCount struct {
	IP    string `json:"ip"`
	Count int    `json:"count"`
}

// AdminView is the body of GET /admin/api.
type AdminView struct {
	Now      int64  `json:"now"`
	UptimeS  int64  `json:"uptime_s"`
	Endpoint string `json:"endpoint"`
	Counts   Stats  `json:"counts"`
	// Peers are sorted by label, then peer id.
	Peers []AdminPeer `json:"peers"`
	// ClientsByIP are the 50 addresses with the most event streams.
	ClientsByIP []AdminIPCount `json:"clients_by_ip"`
}

func (s *Server) adminView() AdminView {
	now := s.cfg.Now()
	v := AdminView{Now: unixMilli(now), UptimeS: int64(now.Sub(s.started) / time.Second), Endpoint: s.Endpoint(), Counts: s.Stats()}
	s.mu.Lock()
	v.Peers = make([]AdminPeer, 0, len(s.peers))
	for _, e := range s.peers {
		v.Peers = append(v.Peers, AdminPeer{PeerID: string(e.msg.PeerID), Type: e.msg.Type, Content: e.msg.Content,
			Verified: e.msg.Verified, Addrs: e.msg.Addrs, TS: e.msg.TS, LastSeen: unixMilli(e.lastSeen), IP: e.ip})
	}
	for ip, n := range s.clientsPerIP {
		v.ClientsByIP = append(v.ClientsByIP, AdminIPCount{IP: ip, Count: n})
	}
	s.mu.Unlock()
	slices.SortFunc(v.Peers, func(a, b AdminPeer) int {
		return cmp.Or(cmp.Compare(a.Content, b.Content), cmp.Compare(a.PeerID, b.PeerID))
	})
	slices.SortFunc(v.ClientsByIP, func(a, b AdminIPCount) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.IP, b.IP))
	})
	if len(v.ClientsByIP) > 50 {
		v.ClientsByIP = v.ClientsByIP[:50]
	}
	if v.ClientsByIP == nil {
		v.ClientsByIP = []AdminIPCount{}
	}
	return v
}

func (s *Server) handleAdminAPI(w http.ResponseWriter, r *http.Request) {
	if !s.requireAdmin(w, r) {
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(s.adminView())
}

var adminTmpl = template.Must(template.New("admin").Funcs(template.FuncMap{
	"ms": func(ms int64) string { return time.UnixMilli(ms).UTC().Format("2006-01-02 15:04:05Z") },
}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Goop rendezvous admin</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><style>` + pageStyle + `</style></head>
<body><h1>Goop rendezvous admin</h1>
<p>Endpoint <code class="mono">{{.Endpoint}}</code>, up {{.UptimeS}} s. JSON: <a href="/admin/api">/admin/api</a>.</p>
<h2>Counts</h2>
<table><tr><th>peers</th><th>verified</th><th>event streams</th><th>publishes</th><th>refused 400/403/429/503</th><th>streams refused</th><th>streams dropped slow/write</th><th>peers swept</th></tr>
<tr><td>{{.Counts.Peers}}</td><td>{{.Counts.VerifiedPeers}}</td><td>{{.Counts.Clients}}</td><td>{{.Counts.Published}}</td>
<td>{{.Counts.Rejected400}} / {{.Counts.Rejected403}} / {{.Counts.Rejected429}} / {{.Counts.Rejected503}}</td>
<td>{{.Counts.StreamsRefused}}</td><td>{{.Counts.DroppedSlow}} / {{.Counts.DroppedWrite}}</td><td>{{.Counts.OfflineSwept}}</td></tr></table>
<h2>Peers</h2>
<table><tr><th>label</th><th>peer id</th><th>verified</th><th>type</th><th>addrs</th><th>last seen (UTC)</th><th>from</th></tr>
{{range .Peers}}<tr><td>{{.Content}}</td><td class="mono">{{.PeerID}}</td><td>{{if .Verified}}yes{{else}}no{{end}}</td><td>{{.Type}}</td>
<td>{{len .Addrs}}</td><td>{{ms .LastSeen}}</td><td class="mono">{{.IP}}</td></tr>{{end}}</table>
<h2>Event streams by address</h2>
<table><tr><th>address</th><th>streams</th></tr>{{range .ClientsByIP}}<tr><td class="mono">{{.IP}}</td><td>{{.Count}}</td></tr>{{end}}</table>
</body></html>`))

func (s *Server) handleAdmin(w http.ResponseWriter, r *http.Request) {
	if !s.requireAdmin(w, r) {
		return
	}
	setPageHeaders(w)
	_ = adminTmpl.Execute(w, s.adminView())
}
