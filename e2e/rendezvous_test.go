package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/adapters/rendezvous"
	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/cmd/goop/node"
	"github.com/goop-p2p/goop/domain/presence"
)

// rvWait bounds each wait of the rendezvous tests; things happen in seconds.
const rvWait = 30 * time.Second

const rvAdminPassword = "e2e-admin"

// buildGoop builds the goop command into a temporary folder.
func buildGoop(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "goop")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/goop")
	cmd.Dir = ".."
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "go build ./cmd/goop: %s", out)
	return bin
}

// rvProcess is a rendezvous-only peer (`goop peer DIR` with
// presence.rendezvous_only) running as a child process.
type rvProcess struct {
	*goopProcess
	URL string
}

// rvBuffer is a bytes.Buffer safe for concurrent use.
type rvBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *rvBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *rvBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// rendezvousFolder writes a rendezvous-only goop.json in a new folder:
// listening on 127.0.0.1:port (0: any free port), admin open with
// rvAdminPassword.
func rendezvousFolder(t *testing.T, port int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "server")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	cfg := app.DefaultConfig()
	cfg.Profile.Label = "server"
	cfg.Presence.RendezvousOnly, cfg.Presence.RendezvousHost = true, true
	cfg.Presence.RendezvousBind, cfg.Presence.RendezvousPort = "127.0.0.1", port
	cfg.Presence.AdminPassword = rvAdminPassword
	require.NoError(t, app.SaveConfig(filepath.Join(dir, app.ConfigFileName), cfg))
	return dir
}

// setRendezvousPort rewrites the folder's presence.rendezvous_port.
func setRendezvousPort(t *testing.T, dir string, port int) {
	t.Helper()
	path := filepath.Join(dir, app.ConfigFileName)
	cfg, err := app.LoadConfig(path)
	require.NoError(t, err)
	cfg.Presence.RendezvousPort = port
	require.NoError(t, app.SaveConfig(path, cfg))
}

// startRendezvousProcess runs `goop peer dir` and waits for its ready line.
func startRendezvousProcess(t *testing.T, bin, dir string) *rvProcess {
	t.Helper()
	p := &rvProcess{goopProcess: startGoopProcess(t, bin, dir, rvWait)}
	p.URL = p.ready["rendezvous"]
	require.NotEmpty(t, p.URL, "ready line without rendezvous=: %v", p.ready)
	return p
}

// port is the TCP port of p's URL.
func (p *rvProcess) port(t *testing.T) int {
	t.Helper()
	u, err := url.Parse(p.URL)
	require.NoError(t, err)
	n, err := strconv.Atoi(u.Port())
	require.NoError(t, err)
	return n
}

// admin returns the server's GET /admin/api.
func (p *rvProcess) admin(t *testing.T) rendezvous.AdminView {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, p.URL+"/admin/api", nil)
	require.NoError(t, err)
	req.SetBasicAuth("admin", rvAdminPassword)
	resp, err := rvHTTP.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var v rendezvous.AdminView
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&v))
	return v
}

var rvHTTP = &http.Client{Timeout: 10 * time.Second}

// startWANNode starts an in-process node that knows only the rendezvous
// URL: no mDNS, no static peers (NoAutoConnect), heartbeat every 2 s.
func startWANNode(t *testing.T, label, wan string) *node.Running {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), rvWait)
	defer cancel()
	r, err := node.Start(ctx, filepath.Join(t.TempDir(), label), node.Options{ListenIP: "127.0.0.1", NoAutoConnect: true,
		Init: node.InitOptions{Label: label, Configure: func(c *app.Config) {
			c.Viewer.HTTPAddr = "127.0.0.1:0"
			c.P2P.Peers = nil
			c.Presence.RendezvousWAN = wan
			c.Presence.HeartbeatSeconds, c.Presence.TTLSeconds = 2, 10
		}}})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, r.Close()) })
	return r
}

type viewerPeer struct {
	PeerID   string `json:"peer_id"`
	Label    string `json:"label"`
	Online   bool   `json:"online"`
	Verified bool   `json:"verified"`
	Source   string `json:"source"`
}

// viewerPeers is a node's GET /api/peers by peer id.
func viewerPeers(t *testing.T, r *node.Running) map[string]viewerPeer {
	t.Helper()
	resp, err := rvHTTP.Get(r.ViewerURL + "api/peers")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var list []viewerPeer
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&list))
	out := map[string]viewerPeer{}
	for _, p := range list {
		out[p.PeerID] = p
	}
	return out
}

// seesAsWAN reports whether r's viewer lists every one of others online,
// verified, from the WAN, with its label, and r is connected to it.
func seesAsWAN(t *testing.T, r *node.Running, others []*node.Running) (bool, string) {
	t.Helper()
	peers := viewerPeers(t, r)
	for _, o := range others {
		p, ok := peers[o.PeerID.String()]
		want := viewerPeer{PeerID: o.PeerID.String(), Label: o.Config.Profile.Label, Online: true, Verified: true, Source: "wan"}
		if !ok || p != want {
			return false, fmt.Sprintf("%s sees %s as %+v, want %+v", r.Config.Profile.Label, o.Config.Profile.Label, p, want)
		}
		if r.Host.Network().Connectedness(o.PeerID) != network.Connected {
			return false, fmt.Sprintf("%s is not connected to %s", r.Config.Profile.Label, o.Config.Profile.Label)
		}
	}
	return true, ""
}

// waitAllSeeEachOther waits until every node sees every other (seesAsWAN).
func waitAllSeeEachOther(t *testing.T, nodes []*node.Running) {
	t.Helper()
	for i, n := range nodes {
		others := append(append([]*node.Running(nil), nodes[:i]...), nodes[i+1:]...)
		waitUntil(t, func() (bool, string) { return seesAsWAN(t, n, others) })
	}
}

// waitUntil polls cond (real state over HTTP and libp2p) every 50 ms until
// it holds, failing after rvWait with cond's last reason.
func waitUntil(t *testing.T, cond func() (bool, string)) {
	t.Helper()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(rvWait)
	for {
		ok, why := cond()
		if ok {
			return
		}
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("timed out after %v: %s", rvWait, why)
		}
	}
}

func rvKey(t *testing.T) crypto.PrivKey {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	return k
}

// rvPublish posts body to the server's /publish (from X-Forwarded-For
// address from, when set: the server is on loopback, so it trusts it as a
// local proxy's) and returns the status.
func rvPublish(t *testing.T, base string, body []byte, from string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, base+"/publish", bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	if from != "" {
		req.Header.Set("X-Forwarded-For", from)
	}
	resp, err := rvHTTP.Do(req)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func rvJSON(t *testing.T, m rendezvous.PresenceMsg) []byte {
	t.Helper()
	b, err := json.Marshal(m)
	require.NoError(t, err)
	return b
}

// TestRendezvousThreePeersAndAbuse: a rendezvous-only server runs as a
// real process (`goop peer DIR` with presence.rendezvous_only); three
// in-process nodes that know only its URL (no mDNS, no static peers) all
// list each other in GET /api/peers as verified WAN peers and get
// connected. Forged, impersonating, oversize and flooding publishes and an
// /events flood are refused (403, 400, 429) while the three honest peers,
// on the same address as the flooder, keep being served and stay visible.
func TestRendezvousThreePeersAndAbuse(t *testing.T) {
	bin := buildGoop(t)
	srv := startRendezvousProcess(t, bin, rendezvousFolder(t, 0))
	start := time.Now()
	nodes := []*node.Running{
		startWANNode(t, "alice", srv.URL),
		startWANNode(t, "bob", srv.URL),
		startWANNode(t, "carol", srv.URL),
	}
	waitAllSeeEachOther(t, nodes)
	t.Logf("three nodes started and saw each other (verified, wan, connected) in %v", time.Since(start).Round(time.Millisecond))
	alice := presence.PeerID(nodes[0].PeerID.String())

	// Forged: alice's id, signed by another key.
	forged := rendezvous.PresenceMsg{Type: rendezvous.TypeUpdate, Content: "mallory", TS: time.Now().UnixMilli()}
	require.NoError(t, rendezvous.Sign(&forged, rvKey(t)))
	forged.PeerID = alice
	assert.Equal(t, http.StatusForbidden, rvPublish(t, srv.URL, rvJSON(t, forged), ""), "bad signature")
	// Impersonation: alice's id, unsigned (a compat publish).
	assert.Equal(t, http.StatusForbidden, rvPublish(t, srv.URL,
		rvJSON(t, rendezvous.PresenceMsg{Type: rendezvous.TypeUpdate, PeerID: alice, Content: "mallory"}), ""),
		"unsigned presence for a peer that publishes signed")
	// Oversize: a label over 4096 bytes, and a body over 64 KiB.
	big := rendezvous.PresenceMsg{Type: rendezvous.TypeOnline, Content: strings.Repeat("x", presence.MaxContentBytes+1), TS: time.Now().UnixMilli()}
	require.NoError(t, rendezvous.Sign(&big, rvKey(t)))
	assert.Equal(t, http.StatusBadRequest, rvPublish(t, srv.URL, rvJSON(t, big), ""), "oversize label")
	assert.Equal(t, http.StatusBadRequest, rvPublish(t, srv.URL,
		[]byte(`{"type":"online","content":"`+strings.Repeat("x", rendezvous.MaxBodyBytes)+`"}`), ""), "oversize body")
	// Flood: one peer id publishing as fast as it can, from the honest
	// peers' address (think NAT): its own budget (1/s, burst 10) runs out.
	flooder := rvKey(t)
	codes := map[int]int{}
	now := time.Now()
	for i := range 100 {
		m := rendezvous.PresenceMsg{Type: rendezvous.TypeUpdate, Content: "flood", TS: now.Add(time.Duration(i) * time.Millisecond).UnixMilli()}
		require.NoError(t, rendezvous.Sign(&m, flooder))
		codes[rvPublish(t, srv.URL, rvJSON(t, m), "")]++
	}
	t.Logf("flood of 100 publishes of one peer id: %v", codes)
	assert.GreaterOrEqual(t, codes[http.StatusTooManyRequests], 80, "%v", codes)
	assert.Equal(t, 100, codes[http.StatusNoContent]+codes[http.StatusTooManyRequests], "%v", codes)
	// /events flood from one address: 64 streams, then 429.
	var streams []*http.Response
	defer func() {
		for _, s := range streams {
			s.Body.Close()
		}
	}()
	refused := 0
	for range 70 {
		req, err := http.NewRequest(http.MethodGet, srv.URL+"/events", nil)
		require.NoError(t, err)
		req.Header.Set("X-Forwarded-For", "198.51.100.7")
		resp, err := http.DefaultTransport.RoundTrip(req)
		require.NoError(t, err)
		if resp.StatusCode == http.StatusOK {
			streams = append(streams, resp)
			continue
		}
		assert.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
		resp.Body.Close()
		refused++
	}
	assert.Equal(t, 64, len(streams), "per-address cap on /events")
	assert.Equal(t, 6, refused)
	attackEnd := time.Now()

	// The honest peers are still served: each publishes again after the
	// attacks, verified, with its own label; each still sees the others.
	require.Eventually(t, func() bool {
		v := srv.admin(t)
		fresh := 0
		for _, p := range v.Peers {
			for _, n := range nodes {
				if p.PeerID == n.PeerID.String() && p.Verified && p.Content == n.Config.Profile.Label && p.LastSeen > attackEnd.UnixMilli() {
					fresh++
				}
			}
		}
		return fresh == len(nodes)
	}, rvWait, 100*time.Millisecond, "the honest peers publish again after the attacks")
	waitAllSeeEachOther(t, nodes)
	for _, n := range nodes {
		for id, p := range viewerPeers(t, n) {
			assert.NotEqual(t, "mallory", p.Label, "%s: %s", n.Config.Profile.Label, id)
		}
	}
	c := srv.admin(t).Counts
	t.Logf("server counts after the attacks: %+v", c)
	assert.GreaterOrEqual(t, c.Rejected403, int64(2))
	assert.GreaterOrEqual(t, c.Rejected400, int64(2))
	assert.GreaterOrEqual(t, c.Rejected429, int64(80))
	assert.GreaterOrEqual(t, c.StreamsRefused, int64(6))
}

// TestRendezvousServerRestart: the rendezvous process stops and starts
// again on the same port; the nodes' clients re-subscribe and publish to
// the new server, and a node that joins afterwards, knowing only the URL,
// is seen by all of them.
func TestRendezvousServerRestart(t *testing.T) {
	bin := buildGoop(t)
	dir := rendezvousFolder(t, 0)
	srv := startRendezvousProcess(t, bin, dir)
	nodes := []*node.Running{
		startWANNode(t, "alice", srv.URL),
		startWANNode(t, "bob", srv.URL),
		startWANNode(t, "carol", srv.URL),
	}
	waitAllSeeEachOther(t, nodes)

	port := srv.port(t)
	srv.stop(t, rvWait)
	setRendezvousPort(t, dir, port)
	restarted := time.Now()
	srv = startRendezvousProcess(t, bin, dir)
	require.Eventually(t, func() bool {
		v := srv.admin(t)
		return v.Counts.VerifiedPeers == len(nodes) && v.Counts.Clients == len(nodes)
	}, rvWait, 100*time.Millisecond, "the nodes publish to and follow the new server")
	t.Logf("all three nodes back on the restarted server in %v", time.Since(restarted).Round(time.Millisecond))

	dave := startWANNode(t, "dave", srv.URL)
	nodes = append(nodes, dave)
	waitAllSeeEachOther(t, nodes)
}

// TestNodeHostsRendezvous: a node with presence.rendezvous_host runs the
// server (and follows it); a node that knows its URL finds it; a second
// node asking for the same port fails to start, naming the key.
func TestNodeHostsRendezvous(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), rvWait)
	defer cancel()
	host, err := node.Start(ctx, filepath.Join(t.TempDir(), "hub"), node.Options{ListenIP: "127.0.0.1", NoAutoConnect: true,
		Init: node.InitOptions{Label: "hub", Configure: func(c *app.Config) {
			c.Viewer.HTTPAddr = "127.0.0.1:0"
			c.Presence.RendezvousHost, c.Presence.RendezvousBind, c.Presence.RendezvousPort = true, "127.0.0.1", 0
			c.Presence.HeartbeatSeconds, c.Presence.TTLSeconds = 2, 10
		}}})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, host.Close()) })
	require.NotEmpty(t, host.RendezvousURL)
	resp, err := rvHTTP.Get(host.RendezvousURL + "/healthz")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)

	guest := startWANNode(t, "guest", host.RendezvousURL)
	waitAllSeeEachOther(t, []*node.Running{host, guest})

	u, err := url.Parse(host.RendezvousURL)
	require.NoError(t, err)
	port, err := strconv.Atoi(u.Port())
	require.NoError(t, err)
	_, err = node.Start(ctx, filepath.Join(t.TempDir(), "busy"), node.Options{ListenIP: "127.0.0.1", NoAutoConnect: true,
		Init: node.InitOptions{Configure: func(c *app.Config) {
			c.Viewer.HTTPAddr = "127.0.0.1:0"
			c.Presence.RendezvousHost, c.Presence.RendezvousBind, c.Presence.RendezvousPort = true, "127.0.0.1", port
		}}})
	require.Error(t, err)
	assert.Contains(t, err.Error(), fmt.Sprintf("presence.rendezvous_port: 127.0.0.1:%d is in use", port))
}
