package node

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/adapters/p2p"
	"github.com/goop-p2p/goop/app"
)

const waitFor = 10 * time.Second

// loopbackConfig makes a new peer folder listen on free loopback ports only.
// loopbackConfig puts the viewer on a free loopback port and gives the peer
// an mDNS tag of its own, so test nodes of other tests (and other test
// processes) never discover it; a test that wants a LAN sets a shared tag.
func loopbackConfig(c *app.Config) {
	c.Viewer.HTTPAddr = "127.0.0.1:0"
	c.P2P.MDNSTag = lanTagUnique()
}

func startPeer(t *testing.T, dir string, configure func(*app.Config)) *Running {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	r, err := Start(ctx, dir, Options{ListenIP: "127.0.0.1", Init: InitOptions{Configure: func(c *app.Config) {
		loopbackConfig(c)
		if configure != nil {
			configure(c)
		}
	}}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.Close() })
	return r
}

func getJSON(t *testing.T, url string, v any) int {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	if v != nil {
		require.NoError(t, json.Unmarshal(body, v), "%s", body)
	}
	return resp.StatusCode
}

func postJSON(t *testing.T, url string, in any) (int, map[string]any) {
	t.Helper()
	b, err := json.Marshal(in)
	require.NoError(t, err)
	resp, err := http.Post(url, "application/json", bytes.NewReader(b))
	require.NoError(t, err)
	defer resp.Body.Close()
	var out map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	return resp.StatusCode, out
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	require.NoError(t, err)
	return st.Mode().Perm()
}

func TestInitCreatesPeerFolder(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "alice")
	res, err := Init(context.Background(), dir, InitOptions{})
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{".", "goop.json", "data/identity.key", "data/data.db", "site", "site/index.html", "site/game.js", "site/style.css"}, res.Created)
	assert.Equal(t, "alice", res.Config.Profile.Label, "label defaults to the folder name")

	assert.Equal(t, os.FileMode(0o600), mode(t, filepath.Join(dir, "goop.json")))
	assert.Equal(t, os.FileMode(0o600), mode(t, filepath.Join(dir, "data", "identity.key")))
	assert.Equal(t, os.FileMode(0o700), mode(t, filepath.Join(dir, "data")))
	assert.FileExists(t, filepath.Join(dir, "data", "data.db"))
	index, err := os.ReadFile(filepath.Join(dir, "site", "index.html"))
	require.NoError(t, err)
	assert.Contains(t, string(index), "Welcome to alice")

	cfg, err := app.LoadConfig(filepath.Join(dir, "goop.json"))
	require.NoError(t, err)
	assert.Equal(t, "alice", cfg.Profile.Label)
	assert.Equal(t, app.DefaultConfig().Viewer, cfg.Viewer)
}

func TestInitIsIdempotent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "bob")
	_, err := Init(context.Background(), dir, InitOptions{})
	require.NoError(t, err)
	read := func(p string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, p))
		require.NoError(t, err)
		return b
	}
	key := read("data/identity.key")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "site", "index.html"), []byte("mine"), 0o644))
	cfgBefore := read("goop.json")

	res, err := Init(context.Background(), dir, InitOptions{Label: "other", Configure: func(c *app.Config) { c.P2P.ListenPort = 1 }})
	require.NoError(t, err)
	assert.Empty(t, res.Created)
	assert.Equal(t, key, read("data/identity.key"), "identity kept")
	assert.Equal(t, "mine", string(read("site/index.html")), "user's site kept")
	assert.Equal(t, cfgBefore, read("goop.json"), "config kept; options apply to a new config only")

	// A removed part is recreated, the rest is kept.
	require.NoError(t, os.Remove(filepath.Join(dir, "site", "index.html")))
	res, err = Init(context.Background(), dir, InitOptions{})
	require.NoError(t, err)
	assert.Equal(t, []string{"site/index.html"}, res.Created)
}

func TestInitRejectsBadExistingConfig(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "goop.json"), []byte(`{"p2p":{"listen_prot":4001}}`), 0o600))
	_, err := Init(context.Background(), dir, InitOptions{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), `unknown key "p2p.listen_prot"`)
	assert.NoFileExists(t, filepath.Join(dir, "data", "identity.key"), "nothing is created next to a bad config")
}

func TestStartServesHealthzAndSelf(t *testing.T) {
	r := startPeer(t, filepath.Join(t.TempDir(), "carol"), nil)
	assert.True(t, strings.HasPrefix(r.ViewerURL, "http://127.0.0.1:"), r.ViewerURL)
	assert.NotContains(t, r.ViewerURL, ":0/")

	resp, err := http.Get(r.ViewerURL + "healthz")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "ok", string(body))

	var self struct {
		ID    string   `json:"id"`
		Label string   `json:"label"`
		Addrs []string `json:"addrs"`
	}
	require.Equal(t, http.StatusOK, getJSON(t, r.ViewerURL+"api/self", &self))
	assert.Equal(t, r.PeerID.String(), self.ID)
	assert.Equal(t, "carol", self.Label)
	require.NotEmpty(t, self.Addrs)
	var tcp, quic bool
	for _, a := range self.Addrs {
		assert.True(t, strings.HasPrefix(a, "/ip4/127.0.0.1/"), a)
		assert.True(t, strings.HasSuffix(a, "/p2p/"+self.ID), a)
		tcp = tcp || strings.Contains(a, "/tcp/")
		quic = quic || strings.Contains(a, "/quic-v1/")
	}
	assert.True(t, tcp && quic, "listens on TCP and QUIC: %v", self.Addrs)
	require.NoError(t, r.Close())
	require.NoError(t, r.Close(), "Close is idempotent")
	<-r.Done()
	assert.NoError(t, r.Err())
}

// TestStartSizesConnectionsFromConfig: p2p.max_connections is the
// connection manager's high water mark (half of it the low one), and the
// resource manager admits that many.
func TestStartSizesConnectionsFromConfig(t *testing.T) {
	for _, n := range []int{app.DefaultConfig().P2P.MaxConnections, 3000} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			r := startPeer(t, filepath.Join(t.TempDir(), "p"), func(c *app.Config) { c.P2P.MaxConnections = n })
			cm, ok := r.Host.ConnManager().(interface {
				CheckLimit(connmgr.GetConnLimiter) error
			})
			require.True(t, ok)
			lim, ok := r.Host.Network().ResourceManager().(connmgr.GetConnLimiter)
			require.True(t, ok)
			assert.GreaterOrEqual(t, lim.GetConnLimit(), n)
			require.NoError(t, cm.CheckLimit(lim))
			// The high water is n: a limit just under it conflicts.
			assert.Error(t, cm.CheckLimit(fixedConnLimit(n-1)))
			assert.NoError(t, cm.CheckLimit(fixedConnLimit(n)))
		})
	}
}

// The config's default and the libp2p adapter's zero-value default (used
// by hosts built outside a node: tests, benches) are one number, written
// twice because app may not import adapters.
func TestMaxConnectionsDefaultsAgree(t *testing.T) {
	assert.Equal(t, app.DefaultMaxConnections, app.DefaultConfig().P2P.MaxConnections)
	assert.Equal(t, app.DefaultMaxConnections, p2p.DefaultConnMgrHigh)
	assert.Equal(t, app.DefaultMaxConnections/2, p2p.DefaultConnMgrLow)
}

type fixedConnLimit int

func (l fixedConnLimit) GetConnLimit() int { return int(l) }

func TestStartKeepsIdentityAcrossRestarts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "dave")
	r := startPeer(t, dir, nil)
	id := r.PeerID
	require.NoError(t, r.Close())
	r = startPeer(t, dir, nil)
	assert.Equal(t, id, r.PeerID)
}

func TestStartRejectsBadConfigNamingTheKey(t *testing.T) {
	cases := []struct {
		name, doc, want string
	}{
		{"unknown key", `{"p2p":{"listen_prot":4001}}`, `unknown key "p2p.listen_prot"`},
		{"invalid port", `{"p2p":{"listen_port":70000}}`, `p2p.listen_port: 70000 is not a port (0-65535)`},
		{"non-loopback viewer", `{"viewer":{"http_addr":"0.0.0.0:8080"}}`, `viewer.http_addr: "0.0.0.0:8080" is not a loopback address`},
		{"wrong type", `{"presence":{"ttl_seconds":"20"}}`, `presence.ttl_seconds: must be an integer`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "goop.json")
			require.NoError(t, os.WriteFile(path, []byte(tc.doc), 0o600))
			_, err := Start(context.Background(), dir, Options{ListenIP: "127.0.0.1"})
			require.Error(t, err)
			assert.Contains(t, err.Error(), path+": "+tc.want)
		})
	}
}

func TestStartFailsWhenViewerPortInUse(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	addr := busy.Addr().String()
	before := runtime.NumGoroutine()
	_, err = Start(context.Background(), t.TempDir(), Options{ListenIP: "127.0.0.1", Init: InitOptions{Configure: func(c *app.Config) { c.Viewer.HTTPAddr = addr }}})
	require.Error(t, err)
	assert.Equal(t, "viewer.http_addr: "+addr+" is in use", err.Error())
	assert.LessOrEqual(t, runtime.NumGoroutine(), before+2, "a failed start leaves nothing running")
}

func TestStartFailsWhenP2PPortInUse(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	port := busy.Addr().(*net.TCPAddr).Port
	_, err = Start(context.Background(), t.TempDir(), Options{ListenIP: "127.0.0.1", Init: InitOptions{Configure: func(c *app.Config) {
		loopbackConfig(c)
		c.P2P.ListenPort = port
	}}})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "p2p.listen_port: "+strconv.Itoa(port)+" is in use")
}

func TestStartFailsWhenAnotherPeerHasThePort(t *testing.T) {
	a := startPeer(t, t.TempDir(), nil)
	var port int
	for _, addr := range a.Addrs() {
		if _, rest, ok := strings.Cut(addr, "/tcp/"); ok {
			port, _ = strconv.Atoi(strings.SplitN(rest, "/", 2)[0])
		}
	}
	require.NotZero(t, port)
	_, err := Start(context.Background(), t.TempDir(), Options{ListenIP: "127.0.0.1", Init: InitOptions{Configure: func(c *app.Config) {
		loopbackConfig(c)
		c.P2P.ListenPort = port
	}}})
	require.Error(t, err)
	assert.Equal(t, "p2p.listen_port: "+strconv.Itoa(port)+" is in use (TCP)", err.Error())
}

func TestCloseLeaksNoGoroutines(t *testing.T) {
	// A first node warms up libp2p's process-wide goroutines.
	warm := startPeer(t, filepath.Join(t.TempDir(), "warm"), nil)
	require.NoError(t, warm.Close())
	base := runtime.NumGoroutine()

	r := startPeer(t, filepath.Join(t.TempDir(), "erin"), nil)
	// An open event stream must not hold shutdown up.
	resp, err := http.Get(r.ViewerURL + "api/mq/events")
	require.NoError(t, err)
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	require.NoError(t, err)
	assert.Equal(t, "event: connected\n", line)
	assert.Greater(t, runtime.NumGoroutine(), base)

	done := make(chan error, 1)
	go func() { done <- r.Close() }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(waitFor):
		t.Fatal("Close hung")
	}
	resp.Body.Close()
	http.DefaultClient.CloseIdleConnections()
	waitGoroutines(t, base)
}

// sseReader parses an SSE stream into (event, data) pairs on a channel.
func sseReader(t *testing.T, ctx context.Context, url string) <-chan [2]string {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	ch := make(chan [2]string, 16)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		var ev, data string
		for sc.Scan() {
			switch l := sc.Text(); {
			case l == "":
				if ev != "" {
					ch <- [2]string{ev, data}
				}
				ev, data = "", ""
			case strings.HasPrefix(l, "event: "):
				ev = l[7:]
			case strings.HasPrefix(l, "data: "):
				data = l[6:]
			}
		}
	}()
	return ch
}

func nextSSE(t *testing.T, ch <-chan [2]string) (string, map[string]any) {
	t.Helper()
	select {
	case ev, ok := <-ch:
		require.True(t, ok, "event stream ended")
		var data map[string]any
		require.NoError(t, json.Unmarshal([]byte(ev[1]), &data), ev[1])
		return ev[0], data
	case <-time.After(waitFor):
		t.Fatal("no event")
	}
	return "", nil
}

// TestTwoPeersMessageEachOtherOverHTTP is the end-to-end path of the viewer
// API: B dials A as a static peer; each sends through POST /api/mq/send and
// the other's browser receives it on GET /api/mq/events, and B's
// application receipt reaches A's browser as "delivered".
func TestTwoPeersMessageEachOtherOverHTTP(t *testing.T) {
	root := t.TempDir()
	a := startPeer(t, filepath.Join(root, "a"), nil)
	b := startPeer(t, filepath.Join(root, "b"), func(c *app.Config) { c.P2P.Peers = a.Addrs() })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	evA := sseReader(t, ctx, a.ViewerURL+"api/mq/events")
	evB := sseReader(t, ctx, b.ViewerURL+"api/mq/events")
	for _, ch := range []<-chan [2]string{evA, evB} {
		ev, _ := nextSSE(t, ch)
		require.Equal(t, "connected", ev)
	}

	// A → B: delivered (acked by B's node).
	st, out := postJSON(t, a.ViewerURL+"api/mq/send", map[string]any{"peer_id": b.PeerID.String(), "topic": "chat", "payload": map[string]string{"text": "hi b"}})
	require.Equal(t, http.StatusOK, st, "%v", out)
	assert.Equal(t, "delivered", out["status"])
	msgID := out["msg_id"].(string)
	ev, data := nextSSE(t, evB)
	assert.Equal(t, "message", ev)
	assert.Equal(t, "message", data["type"])
	assert.Equal(t, a.PeerID.String(), data["from"])
	msg := data["msg"].(map[string]any)
	assert.Equal(t, msgID, msg["id"])
	assert.Equal(t, "chat", msg["topic"])
	assert.Equal(t, map[string]any{"text": "hi b"}, msg["payload"])

	// B's application confirms: A's browser sees "delivered".
	st, out = postJSON(t, b.ViewerURL+"api/mq/ack", map[string]any{"msg_id": msgID, "from_peer_id": a.PeerID.String()})
	require.Equal(t, http.StatusOK, st, "%v", out)
	ev, data = nextSSE(t, evA)
	assert.Equal(t, "message", ev)
	assert.Equal(t, map[string]any{"type": "delivered", "msg_id": msgID}, data)

	// B → A.
	st, out = postJSON(t, b.ViewerURL+"api/mq/send", map[string]any{"peer_id": a.PeerID.String(), "topic": "chat", "payload": "hi a"})
	require.Equal(t, http.StatusOK, st, "%v", out)
	_, data = nextSSE(t, evA)
	assert.Equal(t, "message", data["type"])
	assert.Equal(t, b.PeerID.String(), data["from"])
	assert.Equal(t, "hi a", data["msg"].(map[string]any)["payload"])
}

// waitGoroutines waits until no more than base goroutines run. It polls on
// the test goroutine itself (assert.Eventually would add goroutines of its
// own to the count) and dumps the stacks on timeout.
func waitGoroutines(t *testing.T, base int) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(waitFor)
	for runtime.NumGoroutine() > base {
		select {
		case <-tick.C:
		case <-deadline:
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines still running, %d before:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
	}
}

// TestNoPresence: a node started with NoPresence runs a presence core that
// does not announce (the core's own tests show such a core publishes
// nothing); a default node announces.
func TestNoPresence(t *testing.T) {
	announces := func(r *Running) bool {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		var on bool
		require.NoError(t, r.Runtime.Do(ctx, func(now time.Time, n *app.Node) { on = n.Presence(now).Config().Announce }))
		return on
	}
	assert.True(t, announces(startPeer(t, t.TempDir(), nil)))

	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	r, err := Start(ctx, t.TempDir(), Options{ListenIP: "127.0.0.1", NoPresence: true, Init: InitOptions{Configure: loopbackConfig}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.Close() })
	assert.False(t, announces(r))
}
