package node

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/adapters/httpapi"
)

type viewerReply struct {
	status int
	header http.Header
	text   string
	json   map[string]any
}

// viewer sends a request to r's viewer with the given Host header (empty:
// the viewer's own address); redirects are not followed.
func viewer(t *testing.T, r *Running, method, host, path string, body any) viewerReply {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, strings.TrimSuffix(r.ViewerURL, "/")+path, rd)
	require.NoError(t, err)
	if host != "" {
		req.Host = host
		if method != http.MethodGet {
			req.Header.Set("Origin", "http://"+host)
		}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	cl := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := cl.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	out := viewerReply{status: resp.StatusCode, header: resp.Header, text: string(raw)}
	if strings.HasPrefix(string(raw), "{") {
		require.NoError(t, json.Unmarshal(raw, &out.json), "%s", raw)
	}
	return out
}

func viewerPort(t *testing.T, r *Running) string {
	u, err := url.Parse(r.ViewerURL)
	require.NoError(t, err)
	_, port, err := net.SplitHostPort(u.Host)
	require.NoError(t, err)
	return port
}

func connectNodes(t *testing.T, from, to *Running) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, from.Host.Connect(ctx, peer.AddrInfo{ID: to.PeerID, Addrs: to.Host.Addrs()}))
}

// TestVisitPeerSiteAndData starts two real nodes: B's viewer shows A's site
// (fetched over /goop/site/1.0.0) on A's own origin, lists A's public groups
// (over /goop/data/1.0.0), and lets A's page join A's group but nothing else.
func TestVisitPeerSiteAndData(t *testing.T) {
	a := startPeer(t, filepath.Join(t.TempDir(), "alice"), nil)
	b := startPeer(t, filepath.Join(t.TempDir(), "bob"), nil)
	connectNodes(t, b, a)
	require.NoError(t, os.WriteFile(filepath.Join(a.Visiting.SiteRoot, "game.js"), []byte("let x = 1;"), 0o644))
	require.NoError(t, os.MkdirAll(filepath.Join(a.Visiting.SiteRoot, "lua"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(a.Visiting.SiteRoot, "lua", "x.lua"), []byte("secret"), 0o644))
	aid := a.PeerID.String()
	port := viewerPort(t, b)
	origin := httpapi.PeerHost(aid) + ":" + port

	// The main origin sends A's pages to A's origin.
	r := viewer(t, b, http.MethodGet, "", "/p/"+aid+"/", nil)
	require.Equal(t, http.StatusFound, r.status)
	assert.Equal(t, "http://"+origin+"/p/"+aid+"/", r.header.Get("Location"))

	r = viewer(t, b, http.MethodGet, origin, "/p/"+aid+"/", nil)
	require.Equal(t, http.StatusOK, r.status, r.text)
	assert.Contains(t, r.text, "Welcome to alice")
	assert.Equal(t, "text/html; charset=utf-8", r.header.Get("Content-Type"))
	assert.Equal(t, httpapi.SiteCSP, r.header.Get("Content-Security-Policy"))
	r = viewer(t, b, http.MethodGet, origin, "/p/"+aid+"/game.js", nil)
	require.Equal(t, http.StatusOK, r.status, r.text)
	assert.Equal(t, "let x = 1;", r.text)
	assert.Equal(t, "text/javascript; charset=utf-8", r.header.Get("Content-Type"))
	r = viewer(t, b, http.MethodGet, origin, "/p/"+aid+"/missing.html", nil)
	assert.Equal(t, http.StatusNotFound, r.status)
	assert.Contains(t, r.text, "Peer "+aid+" has no file /missing.html")
	r = viewer(t, b, http.MethodGet, origin, "/p/"+aid+"/lua/x.lua", nil)
	assert.Equal(t, http.StatusForbidden, r.status)

	// Our own site comes from disk on the main origin.
	r = viewer(t, b, http.MethodGet, "", "/p/"+b.PeerID.String()+"/", nil)
	require.Equal(t, http.StatusOK, r.status, r.text)
	assert.Contains(t, r.text, "Welcome to bob")

	// A hosts an open and an invite-only group; B sees only the open one.
	r = viewer(t, a, http.MethodPost, "", "/api/groups", map[string]any{"name": "open game", "group_type": "realtime", "host_join": true})
	require.Equal(t, http.StatusOK, r.status, r.text)
	openID := r.json["id"].(string)
	r = viewer(t, a, http.MethodPost, "", "/api/groups", map[string]any{"name": "secret", "access": "invite-only"})
	require.Equal(t, http.StatusOK, r.status, r.text)

	r = viewer(t, b, http.MethodPost, "", "/api/p/"+aid+"/data/query", map[string]any{"op": "query", "table": "_groups"})
	require.Equal(t, http.StatusOK, r.status, r.text)
	rows := r.json["data"].([]any)
	require.Len(t, rows, 1, "public rows only")
	row := rows[0].(map[string]any)
	assert.Equal(t, openID, row["id"])
	assert.EqualValues(t, 1, row["member_count"])
	assert.NotContains(t, row, "roles")
	r = viewer(t, b, http.MethodPost, "", "/api/p/"+aid+"/data/query", map[string]any{"table": "_group_invites"})
	assert.Equal(t, http.StatusForbidden, r.status)
	assert.Contains(t, r.json["error"], `table "_group_invites" is not exposed by this peer`)
	r = viewer(t, a, http.MethodPost, "", "/api/data/query", map[string]any{"table": "_groups"})
	require.Equal(t, http.StatusOK, r.status, r.text)
	assert.Len(t, r.json["data"], 2, "the owner's own pages see every group")

	// A's page in B's viewer: A's data and groups, nothing else.
	r = viewer(t, b, http.MethodPost, origin, "/api/p/"+aid+"/data/query", map[string]any{"table": "_groups"})
	require.Equal(t, http.StatusOK, r.status, r.text)
	r = viewer(t, b, http.MethodPost, origin, "/api/groups/join", map[string]any{"host_peer_id": aid, "group_id": openID})
	require.Equal(t, http.StatusOK, r.status, r.text)
	assert.Equal(t, "joined", r.json["status"])
	r = viewer(t, b, http.MethodPost, origin, "/api/groups/send", map[string]any{"host_peer_id": aid, "group_id": openID, "payload": map[string]any{"move": "e4"}})
	require.Equal(t, http.StatusOK, r.status, r.text)
	for _, p := range []string{"/api/mq/send", "/api/groups", "/api/groups/invite"} {
		r = viewer(t, b, http.MethodPost, origin, p, map[string]any{"peer_id": aid, "topic": "chat", "name": "x", "group_id": openID})
		assert.Equal(t, http.StatusForbidden, r.status, p)
		assert.Contains(t, r.json["error"], "the page of peer "+aid+" may not do that", p)
	}
}

// TestVisitUnreachablePeer: a peer nobody can reach gets a 502 page that
// says so, quickly; its data query a 502 too.
func TestVisitUnreachablePeer(t *testing.T) {
	b := startPeer(t, filepath.Join(t.TempDir(), "bob"), nil)
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	nobody, err := peer.IDFromPrivateKey(key)
	require.NoError(t, err)
	id := nobody.String()
	origin := httpapi.PeerHost(id) + ":" + viewerPort(t, b)

	r := viewer(t, b, http.MethodGet, origin, "/p/"+id+"/", nil)
	assert.Equal(t, http.StatusBadGateway, r.status)
	assert.Contains(t, r.text, "Peer unreachable")
	assert.Contains(t, r.text, "could not be reached")
	r = viewer(t, b, http.MethodPost, "", "/api/p/"+id+"/data/query", map[string]any{"table": "_groups"})
	assert.Equal(t, http.StatusBadGateway, r.status)
	assert.Contains(t, r.json["error"], "is unreachable")
}
