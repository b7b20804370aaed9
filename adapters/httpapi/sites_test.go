package httpapi

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/base32"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/adapters/dataproto"
	"github.com/goop-p2p/goop/adapters/site"
	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/ports/memory"
)

// remoteFile is what the fake site protocol answers for one path.
type remoteFile struct {
	mime string
	body string
	err  error
}

// siteFixture serves A's viewer with a site folder, a fake site protocol
// (remote files by peer and path), a fake data protocol, and the APIs of B
// and C (to host groups).
type siteFixture struct {
	a, b, c    *testNode
	srv        *httptest.Server
	bsrv, csrv *httptest.Server
	port       string
	root       string

	mu      sync.Mutex
	remote  map[mq.PeerID]map[string]remoteFile
	fetched []string
	queries []dataproto.Request
	qerr    error
}

func newSiteFixture(t *testing.T) *siteFixture {
	t.Helper()
	net0 := memory.NewNetwork()
	f := &siteFixture{a: startNode(t, net0, newPeerID(t)), b: startNode(t, net0, newPeerID(t)), c: startNode(t, net0, newPeerID(t)),
		remote: map[mq.PeerID]map[string]remoteFile{}}
	f.root = t.TempDir()
	for name, body := range map[string]string{
		"index.html": "<h1>my own site</h1>", "style.css": "h1{}", "sub/index.html": "sub", "lua/x.lua": "secret", ".env": "TOKEN",
	} {
		p := filepath.Join(f.root, filepath.FromSlash(name))
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(body), 0o644))
	}
	pub, err := dataproto.NewRegistry(dataproto.View{Name: "_groups", Columns: []string{"id"},
		Query: func(context.Context, map[string]any) ([]map[string]any, error) {
			return []map[string]any{{"id": "public", "secret": "x"}}, nil
		}})
	require.NoError(t, err)
	local, err := dataproto.NewRegistry(dataproto.View{Name: "_groups", Columns: []string{"id"},
		Query: func(context.Context, map[string]any) ([]map[string]any, error) {
			return []map[string]any{{"id": "public"}, {"id": "invite-only"}}, nil
		}})
	require.NoError(t, err)
	deps := Deps{Runtime: f.a.rt, Label: "alice", Addrs: func() []string { return []string{"/ip4/127.0.0.1/tcp/4001"} },
		SiteRoot: f.root, FetchSite: f.fetch, QueryData: f.query, LocalViews: local, PublicViews: pub}
	f.srv = httptest.NewServer(New(deps))
	t.Cleanup(f.srv.Close)
	_, f.port, _ = net.SplitHostPort(strings.TrimPrefix(f.srv.URL, "http://"))
	f.bsrv = httptest.NewServer(New(Deps{Runtime: f.b.rt, Label: "bob"}))
	t.Cleanup(f.bsrv.Close)
	f.csrv = httptest.NewServer(New(Deps{Runtime: f.c.rt, Label: "carol"}))
	t.Cleanup(f.csrv.Close)
	return f
}

func (f *siteFixture) fetch(_ context.Context, p mq.PeerID, path string) (string, int64, io.ReadCloser, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fetched = append(f.fetched, path)
	rf, ok := f.remote[p][path]
	if !ok {
		return "", 0, nil, fmt.Errorf("%w: peer %s has no addresses", site.ErrUnreachable, p)
	}
	if rf.err != nil {
		return "", 0, nil, rf.err
	}
	return rf.mime, int64(len(rf.body)), io.NopCloser(strings.NewReader(rf.body)), nil
}

func (f *siteFixture) query(_ context.Context, _ mq.PeerID, req dataproto.Request) (json.RawMessage, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.queries = append(f.queries, req)
	if f.qerr != nil {
		return nil, f.qerr
	}
	return json.RawMessage(`[{"id":"remote"}]`), nil
}

func (f *siteFixture) serve(p mq.PeerID, path string, rf remoteFile) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.remote[p] == nil {
		f.remote[p] = map[string]remoteFile{}
	}
	f.remote[p][path] = rf
}

// originOf is the Host header of p's origin on A's viewer.
func (f *siteFixture) originOf(p mq.PeerID) string { return PeerHost(string(p)) + ":" + f.port }

type httpReply struct {
	status int
	header http.Header
	text   string
	json   map[string]any
}

// req sends a request to A's viewer with the given Host (empty: 127.0.0.1)
// and headers; redirects are not followed.
func (f *siteFixture) req(t *testing.T, method, host, path string, body any, hdr map[string]string) httpReply {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(t, err)
		rd = strings.NewReader(string(b))
	}
	req, err := http.NewRequest(method, f.srv.URL+path, rd)
	require.NoError(t, err)
	if host != "" {
		req.Host = host
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	cl := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := cl.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	r := httpReply{status: resp.StatusCode, header: resp.Header, text: string(raw)}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") && strings.HasPrefix(string(raw), "{") {
		require.NoError(t, json.Unmarshal(raw, &r.json), "%s", raw)
	}
	return r
}

func TestPeerLabel(t *testing.T) {
	id := "12D3KooWGUXhCQxayNJjY8467KtdkfaUTzscY68M2VAgRqCUSfp5"
	sum := sha256.Sum256([]byte(id))
	want := strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:16]))
	assert.Equal(t, want, PeerLabel(id))
	assert.Len(t, PeerLabel(id), 26)
	assert.Regexp(t, `^[a-z2-7]{26}$`, PeerLabel(id))
	assert.NotEqual(t, PeerLabel(id), PeerLabel(id+"x"))
	assert.Equal(t, "p-"+want+".localhost", PeerHost(id))
	assert.Equal(t, "http://p-"+want+".localhost:8080/p/"+id+"/a.html", PeerPageURL(id, "8080", "/a.html"))

	for host, want := range map[string]string{
		"p-abc.localhost:8080": "abc", "P-ABC.LOCALHOST": "abc", "p-abc.localhost.:1": "abc",
	} {
		got, ok := peerOrigin(host)
		assert.True(t, ok, host)
		assert.Equal(t, want, got, host)
	}
	for _, host := range []string{"127.0.0.1:8080", "localhost:8080", "[::1]:1", "x.p-abc.localhost", "p-abc.example.com", "abc.localhost"} {
		_, ok := peerOrigin(host)
		assert.False(t, ok, host)
	}
}

func TestOwnSiteServedFromDisk(t *testing.T) {
	f := newSiteFixture(t)
	self := "/p/" + string(f.a.id)
	cases := []struct {
		name, path string
		status     int
		mime, text string
	}{
		{"index", self + "/", 200, "text/html; charset=utf-8", "<h1>my own site</h1>"},
		{"file", self + "/style.css", 200, "text/css; charset=utf-8", "h1{}"},
		{"folder", self + "/sub/", 200, "text/html; charset=utf-8", "sub"},
		{"missing", self + "/nope.html", 404, "text/html; charset=utf-8", "This node has no file /nope.html"},
		{"lua", self + "/lua/x.lua", 403, "text/html; charset=utf-8", "lua/ and dot-files are private"},
		{"dot-file", self + "/.env", 403, "text/html; charset=utf-8", "lua/ and dot-files are private"},
		{"double-encoded traversal", self + "/%252e%252e/x", 403, "text/html; charset=utf-8", "Forbidden"},
		{"not a peer", "/p/nobody/", 404, "text/html; charset=utf-8", "is not a libp2p peer id"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := f.req(t, http.MethodGet, "", c.path, nil, nil)
			assert.Equal(t, c.status, r.status, r.text)
			assert.Equal(t, c.mime, r.header.Get("Content-Type"))
			assert.Contains(t, r.text, c.text)
			assert.Equal(t, "nosniff", r.header.Get("X-Content-Type-Options"))
			assert.Equal(t, "no-referrer", r.header.Get("Referrer-Policy"))
			assert.Contains(t, r.header.Get("Content-Security-Policy"), "frame-ancestors 'none'")
			if c.status == 200 {
				assert.Equal(t, SiteCSP, r.header.Get("Content-Security-Policy"))
			}
		})
	}
	r := f.req(t, http.MethodGet, "", self+"/sub", nil, nil)
	assert.Equal(t, http.StatusFound, r.status)
	assert.Equal(t, self+"/sub/", r.header.Get("Location"), "a folder gets its trailing slash")
	r = f.req(t, http.MethodGet, "", self, nil, nil)
	assert.Equal(t, http.StatusFound, r.status)
	assert.Equal(t, self+"/", r.header.Get("Location"))
	r = f.req(t, http.MethodHead, "", self+"/style.css", nil, nil)
	assert.Equal(t, http.StatusOK, r.status)
	assert.Equal(t, "4", r.header.Get("Content-Length"))
	assert.Empty(t, f.fetched, "our own site never goes over the network")
}

func TestRemotePageRedirectsToItsOrigin(t *testing.T) {
	f := newSiteFixture(t)
	for _, host := range []string{"", "localhost:" + f.port} {
		r := f.req(t, http.MethodGet, host, "/p/"+string(f.b.id)+"/games/chess.html?x=1", nil, nil)
		require.Equal(t, http.StatusFound, r.status)
		assert.Equal(t, "http://"+f.originOf(f.b.id)+"/p/"+string(f.b.id)+"/games/chess.html?x=1", r.header.Get("Location"))
	}
	r := f.req(t, http.MethodGet, "", "/p/"+string(f.b.id)+"/", nil, nil)
	assert.Equal(t, PeerPageURL(string(f.b.id), f.port, "/"), r.header.Get("Location"))
	assert.Empty(t, f.fetched, "nothing of a remote site is served on the main origin")
}

func TestRemotePageOnItsOrigin(t *testing.T) {
	f := newSiteFixture(t)
	b := string(f.b.id)
	f.serve(f.b.id, "/index.html", remoteFile{mime: "text/html; charset=utf-8", body: "<h1>bob</h1>"})
	f.serve(f.b.id, "/app.js", remoteFile{mime: "text/javascript", body: "1"})
	f.serve(f.b.id, "/evil.html", remoteFile{mime: "text/html\r\nSet-Cookie: x=1", body: "x"})
	f.serve(f.b.id, "/missing.html", remoteFile{err: fmt.Errorf("%w (not found)", site.ErrNotFound)})
	f.serve(f.b.id, "/deny.html", remoteFile{err: fmt.Errorf("%w (forbidden)", site.ErrForbidden)})
	f.serve(f.b.id, "/big.bin", remoteFile{err: fmt.Errorf("%w: 60 MB", site.ErrTooLarge)})
	f.serve(f.b.id, "/slow.html", remoteFile{err: fmt.Errorf("%w: no answer: %w", site.ErrUnreachable, os.ErrDeadlineExceeded)})
	f.serve(f.b.id, "/weird.html", remoteFile{err: fmt.Errorf("%w: HELLO", site.ErrProtocol)})
	origin := f.originOf(f.b.id)

	r := f.req(t, http.MethodGet, origin, "/p/"+b+"/", nil, nil)
	require.Equal(t, http.StatusOK, r.status, r.text)
	assert.Equal(t, "<h1>bob</h1>", r.text)
	assert.Equal(t, "text/html; charset=utf-8", r.header.Get("Content-Type"))
	assert.Equal(t, SiteCSP, r.header.Get("Content-Security-Policy"))
	assert.Equal(t, "nosniff", r.header.Get("X-Content-Type-Options"))
	assert.Equal(t, "no-referrer", r.header.Get("Referrer-Policy"))

	r = f.req(t, http.MethodGet, origin, "/p/"+b+"/app.js", nil, nil)
	assert.Equal(t, "text/javascript", r.header.Get("Content-Type"))
	r = f.req(t, http.MethodGet, origin, "/p/"+b+"/evil.html", nil, nil)
	assert.Equal(t, site.DefaultMIME, r.header.Get("Content-Type"), "a content type from the network is sanitized")
	assert.Empty(t, r.header.Get("Set-Cookie"))

	cases := []struct {
		path   string
		status int
		text   string
	}{
		{"/missing.html", 404, "has no file /missing.html"},
		{"/deny.html", 403, "is not served"},
		{"/big.bin", 413, "larger than the 50 MB limit"},
		{"/slow.html", 504, "did not answer in time"},
		{"/weird.html", 502, "not the site protocol"},
		{"/unknown.html", 502, "could not be reached"},
		{"/lua/x.lua", 403, "lua/ and dot-files are private"},
		{"/.git/config", 403, "lua/ and dot-files are private"},
		{"/a%5c..%5cb", 403, "Forbidden"},
	}
	for _, c := range cases {
		t.Run(c.path, func(t *testing.T) {
			r := f.req(t, http.MethodGet, origin, "/p/"+b+c.path, nil, nil)
			assert.Equal(t, c.status, r.status)
			assert.Contains(t, r.text, c.text)
			assert.Contains(t, r.text, `<p id="goop-error">`)
			assert.NotContains(t, r.header.Get("Content-Security-Policy"), "script-src", "error pages run no script")
		})
	}
	assert.NotContains(t, f.fetched, "/lua/x.lua", "forbidden paths are not even asked for")
	assert.Contains(t, f.fetched, "/index.html", "a folder is asked for as its index.html")
}

func TestPeerOriginScoping(t *testing.T) {
	f := newSiteFixture(t)
	b, c := string(f.b.id), string(f.c.id)
	origin := f.originOf(f.b.id)
	hdr := map[string]string{"Origin": "http://" + origin}
	forbidden := []struct {
		name, method, path string
		body               any
	}{
		{"mq send", "POST", "/api/mq/send", map[string]any{"peer_id": c, "topic": "chat", "payload": "hi"}},
		{"mq ack", "POST", "/api/mq/ack", map[string]any{"msg_id": "x", "from_peer_id": c}},
		{"mq events", "GET", "/api/mq/events", nil},
		{"create group", "POST", "/api/groups", map[string]any{"name": "evil"}},
		{"list hosted groups", "GET", "/api/groups", nil},
		{"invite", "POST", "/api/groups/invite", map[string]any{"group_id": "0123456789abcdef", "peer_id": c}},
		{"kick", "POST", "/api/groups/kick", map[string]any{"group_id": "0123456789abcdef", "peer_id": c}},
		{"close", "POST", "/api/groups/close", map[string]any{"group_id": "0123456789abcdef"}},
		{"meta", "POST", "/api/groups/meta", map[string]any{"group_id": "0123456789abcdef", "name": "x"}},
		{"history", "GET", "/api/groups/history?group_id=0123456789abcdef", nil},
		{"invitations", "GET", "/api/groups/invitations", nil},
		{"decline", "POST", "/api/groups/invitations/decline", map[string]any{"host_peer_id": b, "group_id": "0123456789abcdef"}},
		{"join a group of another peer", "POST", "/api/groups/join", map[string]any{"host_peer_id": c, "group_id": "0123456789abcdef"}},
		{"send to a group of another peer", "POST", "/api/groups/send", map[string]any{"host_peer_id": c, "group_id": "0123456789abcdef", "payload": 1}},
		{"send to our own group", "POST", "/api/groups/send", map[string]any{"group_id": "0123456789abcdef", "payload": 1}},
		{"leave a group of another peer", "POST", "/api/groups/leave", map[string]any{"host_peer_id": c, "group_id": "0123456789abcdef"}},
		{"send a control kind", "POST", "/api/groups/send", map[string]any{"host_peer_id": b, "group_id": "0123456789abcdef", "kind": "close", "payload": 1}},
		{"local data", "POST", "/api/data/query", map[string]any{"table": "_groups"}},
		{"data of another peer", "POST", "/api/p/" + c + "/data/query", map[string]any{"table": "_groups"}},
		{"uploads", "POST", "/api/docs/upload", nil},
		{"jobs", "POST", "/api/cluster/submit", nil},
		{"viewer pages", "GET", "/groups", nil},
		{"viewer UI assets", "GET", "/ui/groups.js", nil},
		{"healthz", "GET", "/healthz", nil},
	}
	for _, tc := range forbidden {
		t.Run(tc.name, func(t *testing.T) {
			r := f.req(t, tc.method, origin, tc.path, tc.body, hdr)
			assert.Equal(t, http.StatusForbidden, r.status, r.text)
			require.NotNil(t, r.json, r.text)
			assert.Contains(t, r.json["error"], "the page of peer ")
			assert.Contains(t, r.json["error"], "may not do that")
		})
	}

	t.Run("another peer's page", func(t *testing.T) {
		r := f.req(t, http.MethodGet, origin, "/p/"+c+"/", nil, nil)
		assert.Equal(t, http.StatusForbidden, r.status)
		assert.Contains(t, r.text, "belongs to another peer")
	})
	t.Run("wrong label for the path's peer", func(t *testing.T) {
		r := f.req(t, http.MethodGet, "p-aaaaaaaaaaaaaaaaaaaaaaaaaa.localhost:"+f.port, "/p/"+b+"/", nil, nil)
		assert.Equal(t, http.StatusForbidden, r.status)
		r = f.req(t, http.MethodGet, "p-aaaaaaaaaaaaaaaaaaaaaaaaaa.localhost:"+f.port, "/api/self", nil, nil)
		assert.Equal(t, http.StatusOK, r.status, "self is the same for every origin")
	})
	t.Run("our own page on the main origin is not scoped", func(t *testing.T) {
		r := f.req(t, http.MethodGet, "", "/api/groups", nil, nil)
		assert.Equal(t, http.StatusOK, r.status)
	})
	t.Run("self shows no addresses", func(t *testing.T) {
		r := f.req(t, http.MethodGet, origin, "/api/self", nil, nil)
		require.Equal(t, http.StatusOK, r.status)
		assert.Equal(t, map[string]any{"id": string(f.a.id), "label": "alice"}, r.json)
		r = f.req(t, http.MethodGet, "", "/api/self", nil, nil)
		assert.Contains(t, r.json, "addrs", "the main origin does")
	})
	t.Run("the SDK loads", func(t *testing.T) {
		r := f.req(t, http.MethodGet, origin, "/sdk/goop.js", nil, nil)
		assert.Equal(t, http.StatusOK, r.status)
		assert.Contains(t, r.text, "Goop")
	})
	t.Run("a post from another origin is refused by the guard", func(t *testing.T) {
		r := f.req(t, http.MethodPost, "127.0.0.1:"+f.port, "/api/groups", map[string]any{"name": "x"}, hdr)
		assert.Equal(t, http.StatusForbidden, r.status)
		assert.Contains(t, r.json["error"], "only the viewer's own pages may change state")
	})
}

// openSSEHost opens an SSE stream on A's viewer with a Host header.
func openSSEHost(t *testing.T, ctx context.Context, f *siteFixture, host, path string) <-chan sseEvent {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.srv.URL+path, nil)
	require.NoError(t, err)
	req.Host = host
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	ch := make(chan sseEvent, 64)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		var cur sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				ch <- cur
				cur = sseEvent{}
			case strings.HasPrefix(line, "event: "):
				cur.event = line[len("event: "):]
			case strings.HasPrefix(line, "data: "):
				cur.data = line[len("data: "):]
			}
		}
	}()
	return ch
}

func postTo(t *testing.T, srv *httptest.Server, path string, body any) map[string]any {
	t.Helper()
	b, err := json.Marshal(body)
	require.NoError(t, err)
	resp, err := http.Post(srv.URL+path, "application/json", strings.NewReader(string(b)))
	require.NoError(t, err)
	defer resp.Body.Close()
	var out map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	require.Equal(t, http.StatusOK, resp.StatusCode, "%v", out)
	return out
}

func TestPeerOriginMayUseItsPeersGroups(t *testing.T) {
	f := newSiteFixture(t)
	b, c := string(f.b.id), string(f.c.id)
	bg := postTo(t, f.bsrv, "/api/groups", map[string]any{"name": "bob's game", "host_join": true})["id"].(string)
	cg := postTo(t, f.csrv, "/api/groups", map[string]any{"name": "carol's game", "host_join": true})["id"].(string)
	origin := f.originOf(f.b.id)
	hdr := map[string]string{"Origin": "http://" + origin}

	// Our own page joins carol's group; bob's page must not see it.
	r := f.req(t, http.MethodPost, "", "/api/groups/join", map[string]any{"host_peer_id": c, "group_id": cg}, nil)
	require.Equal(t, http.StatusOK, r.status, r.text)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := openSSEHost(t, ctx, f, origin, "/api/groups/events")
	require.Equal(t, "connected", nextSSE(t, events).event)

	r = f.req(t, http.MethodPost, origin, "/api/groups/join", map[string]any{"host_peer_id": b, "group_id": bg}, hdr)
	require.Equal(t, http.StatusOK, r.status, r.text)
	assert.Equal(t, "joined", r.json["status"])
	joined := nextSSE(t, events)
	assert.Equal(t, "joined", joined.event)
	assert.Contains(t, joined.data, bg)

	// Carol's group talks first; bob's page sees only bob's group.
	postTo(t, f.csrv, "/api/groups/send", map[string]any{"group_id": cg, "payload": map[string]any{"from": "carol"}})
	r = f.req(t, http.MethodPost, "", "/api/groups/send", map[string]any{"host_peer_id": c, "group_id": cg, "payload": 1}, nil)
	require.Equal(t, http.StatusOK, r.status, r.text)
	postTo(t, f.bsrv, "/api/groups/send", map[string]any{"group_id": bg, "payload": map[string]any{"from": "bob"}})
	for {
		ev := nextSSE(t, events)
		require.NotContains(t, ev.data, cg, "an event of another peer's group leaked: %s", ev.data)
		if ev.event == "msg" {
			assert.Contains(t, ev.data, `"from":"bob"`)
			break
		}
	}

	r = f.req(t, http.MethodPost, origin, "/api/groups/send", map[string]any{"host_peer_id": b, "group_id": bg, "payload": map[string]any{"move": "e4"}}, hdr)
	assert.Equal(t, http.StatusOK, r.status, r.text)
	r = f.req(t, http.MethodPost, origin, "/api/groups/send", map[string]any{"host_peer_id": b, "group_id": bg, "kind": "state", "payload": map[string]any{"board": 1}}, hdr)
	assert.Equal(t, http.StatusOK, r.status, r.text)

	resp, err := f.srv.Client().Do(func() *http.Request {
		req, _ := http.NewRequest(http.MethodGet, f.srv.URL+"/api/groups/subscriptions", nil)
		req.Host = origin
		return req
	}())
	require.NoError(t, err)
	var subs []map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&subs))
	_ = resp.Body.Close()
	require.Len(t, subs, 1, "only bob's groups: %v", subs)
	assert.Equal(t, bg, subs[0]["id"])
	all := f.req(t, http.MethodGet, "", "/api/groups/subscriptions", nil, nil)
	assert.Contains(t, all.text, cg, "the main origin sees every subscription")

	r = f.req(t, http.MethodPost, origin, "/api/groups/leave", map[string]any{"host_peer_id": b, "group_id": bg}, hdr)
	assert.Equal(t, http.StatusOK, r.status, r.text)
	r = f.req(t, http.MethodPost, origin, "/api/groups/leave", map[string]any{"host_peer_id": c, "group_id": cg}, hdr)
	assert.Equal(t, http.StatusForbidden, r.status, r.text)
	assert.Contains(t, r.json["error"], "the page of peer "+b+" may not do that")
	assert.Contains(t, r.json["error"], "hosted by "+c)
}

func TestDataQueryLocalAndProxied(t *testing.T) {
	f := newSiteFixture(t)
	b := string(f.b.id)

	t.Run("local surface", func(t *testing.T) {
		r := f.req(t, http.MethodPost, "", "/api/data/query", map[string]any{"op": "query", "table": "_groups"}, nil)
		require.Equal(t, http.StatusOK, r.status, r.text)
		assert.Equal(t, true, r.json["ok"])
		assert.Len(t, r.json["data"], 2, "own pages see invite-only groups")
		r = f.req(t, http.MethodGet, "", "/api/data/query?table=_groups&limit=1", nil, nil)
		require.Equal(t, http.StatusOK, r.status, r.text)
		assert.Len(t, r.json["data"], 1)
		r = f.req(t, http.MethodPost, "", "/api/p/"+string(f.a.id)+"/data/query", map[string]any{"table": "_groups"}, nil)
		assert.Len(t, r.json["data"], 2, "our own peer id on the main origin is the local surface")
		r = f.req(t, http.MethodPost, PeerHost(string(f.a.id))+":"+f.port, "/api/p/"+string(f.a.id)+"/data/query", map[string]any{"table": "_groups"}, nil)
		require.Equal(t, http.StatusOK, r.status, r.text)
		assert.Equal(t, []any{map[string]any{"id": "public"}}, r.json["data"], "our page on its peer origin sees the public surface")
	})

	refused := []struct {
		name   string
		body   any
		status int
		code   string
		msg    string
	}{
		{"SQL text", map[string]any{"sql": "SELECT * FROM _mq_outbox"}, 403, dataproto.CodeSQLText, "SQL text is not accepted"},
		{"internal table", map[string]any{"table": "_group_invites"}, 403, dataproto.CodeNotExposed, `table "_group_invites" is not exposed by this peer`},
		{"write", map[string]any{"op": "insert", "table": "_groups"}, 400, dataproto.CodeUnsupported, "not supported"},
	}
	for _, c := range refused {
		t.Run(c.name, func(t *testing.T) {
			r := f.req(t, http.MethodPost, "", "/api/data/query", c.body, nil)
			assert.Equal(t, c.status, r.status)
			assert.Equal(t, false, r.json["ok"])
			assert.Equal(t, c.code, r.json["code"])
			assert.Contains(t, r.json["error"], c.msg)
		})
	}

	t.Run("proxied to the peer", func(t *testing.T) {
		r := f.req(t, http.MethodPost, "", "/api/p/"+b+"/data/query", map[string]any{"op": "query", "table": "_groups", "game": "chess"}, nil)
		require.Equal(t, http.StatusOK, r.status, r.text)
		assert.Equal(t, []any{map[string]any{"id": "remote"}}, r.json["data"])
		f.mu.Lock()
		assert.Equal(t, dataproto.Request{Op: "query", Table: "_groups", Params: map[string]any{"game": "chess"}}, f.queries[0], "SDK-style params are passed on")
		f.mu.Unlock()
		r = f.req(t, http.MethodPost, f.originOf(f.b.id), "/api/p/"+b+"/data/query", map[string]any{"table": "_groups"}, nil)
		assert.Equal(t, http.StatusOK, r.status, "the peer's own page may query it")
	})

	proxyErrors := []struct {
		name   string
		err    error
		status int
	}{
		{"unreachable", &dataproto.Error{Code: dataproto.CodeUnreachable, Msg: "peer is unreachable: no addresses"}, 502},
		{"timeout", &dataproto.Error{Code: dataproto.CodeTimeout, Msg: "did not answer"}, 504},
		{"refused", &dataproto.Error{Code: dataproto.CodeNotExposed, Msg: "peer refused the query: table \"x\" is not exposed by this peer"}, 403},
		{"bad reply", &dataproto.Error{Code: dataproto.CodeProtocol, Msg: "not JSON"}, 502},
		{"compat refusal", &dataproto.Error{Code: dataproto.CodeRefused, Msg: "no such table"}, 403},
	}
	for _, c := range proxyErrors {
		t.Run("proxy "+c.name, func(t *testing.T) {
			f.mu.Lock()
			f.qerr = c.err
			f.mu.Unlock()
			r := f.req(t, http.MethodPost, "", "/api/p/"+b+"/data/query", map[string]any{"table": "x"}, nil)
			assert.Equal(t, c.status, r.status)
			assert.Equal(t, c.err.Error(), r.json["error"])
		})
	}
	r := f.req(t, http.MethodPost, "", "/api/p/nobody/data/query", map[string]any{"table": "x"}, nil)
	assert.Equal(t, http.StatusBadRequest, r.status)
}

// TestRemoteSiteRanges: a remote file is served with byte ranges (a media
// player seeks with them): a single range gets 206 and just those bytes;
// several ranges, bad syntax or an If-Range get the whole file; a range past
// the end gets 416.
func TestRemoteSiteRanges(t *testing.T) {
	f := newSiteFixture(t)
	b := string(f.b.id)
	f.serve(f.b.id, "/clip.bin", remoteFile{mime: "application/octet-stream", body: "0123456789"})
	f.serve(f.b.id, "/empty.txt", remoteFile{mime: "text/plain", body: ""})
	origin := f.originOf(f.b.id)
	get := func(path string, hdr map[string]string) httpReply {
		return f.req(t, http.MethodGet, origin, "/p/"+b+path, nil, hdr)
	}

	r := get("/clip.bin", nil)
	require.Equal(t, http.StatusOK, r.status)
	assert.Equal(t, "0123456789", r.text)
	assert.Equal(t, "bytes", r.header.Get("Accept-Ranges"))

	cases := []struct {
		rng, ifRange string
		status       int
		text, crange string
	}{
		{"bytes=2-5", "", 206, "2345", "bytes 2-5/10"},
		{"bytes=7-", "", 206, "789", "bytes 7-9/10"},
		{"bytes=-3", "", 206, "789", "bytes 7-9/10"},
		{"bytes=-30", "", 206, "0123456789", "bytes 0-9/10"},
		{"bytes=8-100", "", 206, "89", "bytes 8-9/10"},
		{"bytes=0-0", "", 206, "0", "bytes 0-0/10"},
		{"bytes=0-1,4-5", "", 200, "0123456789", ""},
		{"bytes=5-2", "", 200, "0123456789", ""},
		{"bytes=x-", "", 200, "0123456789", ""},
		{"items=0-1", "", 200, "0123456789", ""},
		{"bytes=2-5", `"etag"`, 200, "0123456789", ""},
		{"bytes=10-", "", 416, "10 bytes long", "bytes */10"},
		{"bytes=-0", "", 416, "10 bytes long", "bytes */10"},
	}
	for _, c := range cases {
		t.Run(c.rng+c.ifRange, func(t *testing.T) {
			hdr := map[string]string{"Range": c.rng}
			if c.ifRange != "" {
				hdr["If-Range"] = c.ifRange
			}
			r := get("/clip.bin", hdr)
			require.Equal(t, c.status, r.status, r.text)
			assert.Contains(t, r.text, c.text)
			if c.status != 416 {
				assert.Equal(t, c.text, r.text)
			}
			assert.Equal(t, c.crange, r.header.Get("Content-Range"))
		})
	}
	r = get("/empty.txt", map[string]string{"Range": "bytes=0-"})
	assert.Equal(t, http.StatusRequestedRangeNotSatisfiable, r.status, "an empty file has no byte to send")
	r = get("/empty.txt", nil)
	assert.Equal(t, http.StatusOK, r.status)
	assert.Equal(t, "", r.text)
}

// A peer's page sees that peer's invitations to us, but not that we
// declined one: the host is not told, and its page must not learn it.
func TestPeerOriginDoesNotSeeWhatWeDecline(t *testing.T) {
	f := newSiteFixture(t)
	a, b := string(f.a.id), string(f.b.id)
	origin := f.originOf(f.b.id)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := openSSEHost(t, ctx, f, origin, "/api/groups/events")
	require.Equal(t, "connected", nextSSE(t, events).event)
	mine := openSSEHost(t, ctx, f, "", "/api/groups/events")
	require.Equal(t, "connected", nextSSE(t, mine).event)

	var ids []string
	for _, name := range []string{"first", "second"} {
		id := postTo(t, f.bsrv, "/api/groups", map[string]any{"name": name, "access": "invite-only"})["id"].(string)
		postTo(t, f.bsrv, "/api/groups/invite", map[string]any{"group_id": id, "peer_id": a})
		ids = append(ids, id)
	}
	for _, id := range ids {
		ev := nextSSE(t, events)
		assert.Equal(t, "invite", ev.event)
		assert.Contains(t, ev.data, id)
	}
	r := f.req(t, http.MethodPost, "", "/api/groups/invitations/decline", map[string]any{"host_peer_id": b, "group_id": ids[0]}, nil)
	require.Equal(t, http.StatusOK, r.status, r.text)
	for ev := nextSSE(t, mine); ev.event != "declined"; ev = nextSSE(t, mine) {
	} // our own page hears it
	// Then the second invitation is declined too: bob's page hears nothing
	// in between, and still nothing after.
	r = f.req(t, http.MethodPost, "", "/api/groups/invitations/decline", map[string]any{"host_peer_id": b, "group_id": ids[1]}, nil)
	require.Equal(t, http.StatusOK, r.status, r.text)
	for ev := nextSSE(t, mine); ev.event != "declined"; ev = nextSSE(t, mine) {
	}
	postTo(t, f.bsrv, "/api/groups/invite", map[string]any{"group_id": ids[1], "peer_id": a})
	ev := nextSSE(t, events)
	assert.Equal(t, "invite", ev.event, "the next event bob's page gets is the new invitation: %s", ev.data)
}
