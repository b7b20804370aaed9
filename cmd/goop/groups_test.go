package main

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/adapters/p2p"
	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/cmd/goop/node"
)

// startMesh starts n real nodes on 127.0.0.1 (SQLite, libp2p TCP/QUIC), each
// knowing the first as a static peer.
func startMesh(t *testing.T, n int) []*node.Running {
	t.Helper()
	return startMeshWith(t, n, p2p.MQOptions{})
}

// startMeshWith is startMesh with the first node's bus options (Only10: a
// host that speaks the bus as Goop2 does).
func startMeshWith(t *testing.T, n int, hostMQ p2p.MQOptions) []*node.Running {
	t.Helper()
	var nodes []*node.Running
	for i := 0; i < n; i++ {
		var peers []string
		if i > 0 {
			first := nodes[0]
			for _, a := range first.Host.Addrs() {
				if strings.Contains(a.String(), "/tcp/") {
					peers = append(peers, a.String()+"/p2p/"+first.PeerID.String())
				}
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		var mqOpts p2p.MQOptions
		if i == 0 {
			mqOpts = hostMQ
		}
		r, err := node.Start(ctx, t.TempDir(), node.Options{ListenIP: "127.0.0.1", NoAutoConnect: true, MQ: mqOpts, Init: node.InitOptions{
			Label: []string{"host", "alice", "bob", "carol"}[i],
			Configure: func(c *app.Config) {
				c.Viewer.HTTPAddr = "127.0.0.1:0"
				c.P2P.Peers = peers
			}}})
		cancel()
		require.NoError(t, err)
		t.Cleanup(func() { _ = r.Close() })
		nodes = append(nodes, r)
	}
	// Members reach the host through the static peer list; the host reaches
	// them over the connections they opened.
	for _, r := range nodes[1:] {
		require.Eventually(t, func() bool {
			return len(r.Host.Network().ConnsToPeer(nodes[0].PeerID)) > 0
		}, waitFor, 10*time.Millisecond)
	}
	return nodes
}

type groupEvent struct {
	Type    string          `json:"type"`
	Group   string          `json:"group"`
	From    string          `json:"from"`
	Payload json.RawMessage `json:"payload"`
	Reason  string          `json:"reason"`
	Members []struct {
		PeerID string `json:"peer_id"`
	} `json:"members"`
}

// groupEvents follows a node's /api/groups/events stream.
func groupEvents(t *testing.T, r *node.Running) <-chan groupEvent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(r.ViewerURL, "/")+"/api/groups/events", nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	ch := make(chan groupEvent, 256)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var ev groupEvent
				if json.Unmarshal([]byte(data), &ev) == nil && ev.Group != "" {
					ch <- ev
				}
			}
		}
	}()
	return ch
}

func waitGroupEvent(t *testing.T, ch <-chan groupEvent, typ string) groupEvent {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		select {
		case ev, ok := <-ch:
			require.True(t, ok, "event stream ended")
			if ev.Type == typ {
				return ev
			}
		case <-deadline:
			t.Fatalf("no %q event", typ)
		}
	}
}

func goopOK(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errOut := runGoop(t, args...)
	require.Equal(t, 0, code, "goop %v: %s", args, errOut)
	return strings.TrimSpace(out)
}

func TestGroupsAcrossThreeRealNodesWithTheCLI(t *testing.T) {
	nodes := startMesh(t, 3)
	h, a, b := nodes[0], nodes[1], nodes[2]
	api := func(r *node.Running) string { return "--api=" + strings.TrimRight(r.ViewerURL, "/") }
	hostEv, aEv, bEv := groupEvents(t, h), groupEvents(t, a), groupEvents(t, b)

	id := goopOK(t, "groups", "create", api(h), "--type=chat", "--access=invite-only", "--join", "book club")
	require.Len(t, id, 16)
	goopOK(t, "groups", "invite", api(h), id, a.PeerID.String())
	goopOK(t, "groups", "invite", api(h), id, b.PeerID.String())
	assert.Equal(t, id, waitGroupEvent(t, aEv, "invite").Group, "the invite reached alice")
	assert.Equal(t, id, waitGroupEvent(t, bEv, "invite").Group, "the invite reached bob")
	invs := goopOK(t, "groups", "invitations", api(b))
	assert.Contains(t, invs, h.PeerID.String()+"  "+id+"  book club  chat  invite-only", "the full host id, to join with")
	assert.Equal(t, "joined", goopOK(t, "groups", "join", api(a), h.PeerID.String(), id))
	assert.Equal(t, "joined", goopOK(t, "groups", "join", api(b), h.PeerID.String(), id))
	assert.NotContains(t, goopOK(t, "groups", "invitations", api(b)), id, "joining accepted it")
	waitGroupEvent(t, hostEv, "member_joined")
	waitGroupEvent(t, hostEv, "member_joined")

	goopOK(t, "groups", "send", api(a), h.PeerID.String(), id, "hello from alice")
	got := waitGroupEvent(t, bEv, "msg")
	assert.Equal(t, a.PeerID.String(), got.From, "relayed by the host, named by its sender")
	assert.JSONEq(t, `{"text":"hello from alice"}`, string(got.Payload))
	got = waitGroupEvent(t, hostEv, "msg")
	assert.Equal(t, a.PeerID.String(), got.From)

	// Roles and metadata from the CLI.
	assert.Equal(t, "ok", goopOK(t, "groups", "set-roles", api(h), id, "reader", "moderator"))
	assert.Equal(t, "ok", goopOK(t, "groups", "set-role", api(h), id, a.PeerID.String(), "moderator"))
	assert.Contains(t, goopOK(t, "groups", "list", api(h)), shortID(a.PeerID.String())+"(moderator)")
	code, _, errOut := runGoop(t, "groups", "set-role", api(h), id, a.PeerID.String(), "emperor")
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "emperor", "the error names the unknown role")
	assert.Equal(t, "ok", goopOK(t, "groups", "set-default-role", api(h), id, "reader"))
	assert.Equal(t, "ok", goopOK(t, "groups", "meta", api(h), "--name", "book club II", id))
	waitGroupEvent(t, bEv, "meta")
	assert.Contains(t, goopOK(t, "groups", "list", api(b)), "book club II", "members hear of the new name")
	code, _, errOut = runGoop(t, "groups", "meta", api(h), id)
	assert.Equal(t, 2, code)
	assert.Contains(t, errOut, "goop groups meta: nothing to change: give --name or --max-members")
	code, _, errOut = runGoop(t, "groups", "set-role", api(h), id)
	assert.Equal(t, 2, code)
	assert.Contains(t, errOut, "usage: goop groups set-role GROUP_ID PEER_ID ROLE", "the usage names the whole command")

	// bob asks the host for the conversation.
	hist := goopOK(t, "groups", "history", api(b), h.PeerID.String(), id)
	assert.Contains(t, hist, shortID(a.PeerID.String())+`  {"text":"hello from alice"}`)
	assert.Equal(t, hist, goopOK(t, "groups", "history", api(h), id), "the host reads its own store")
	code, _, errOut = runGoop(t, "groups", "history", api(a), h.PeerID.String(), id, "extra")
	assert.Equal(t, 2, code, errOut)

	list := goopOK(t, "groups", "list", api(b))
	assert.Contains(t, list, id)
	assert.Contains(t, list, "book club II")

	goopOK(t, "groups", "kick", api(h), id, b.PeerID.String())
	closed := waitGroupEvent(t, bEv, "close")
	assert.Equal(t, id, closed.Group)
	for members := waitGroupEvent(t, aEv, "members"); len(members.Members) != 2; members = waitGroupEvent(t, aEv, "members") {
	} // alice sees bob gone

	code, _, errOut = runGoop(t, "groups", "join", api(b), h.PeerID.String(), id)
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "not_invited", "the error code reaches the caller")

	spare := goopOK(t, "groups", "create", api(h), "--access=invite-only", "spare")
	goopOK(t, "groups", "invite", api(h), spare, b.PeerID.String())
	waitGroupEvent(t, bEv, "invite")
	assert.Contains(t, goopOK(t, "groups", "invitations", api(b)), spare)
	assert.Equal(t, "declined", goopOK(t, "groups", "decline", api(b), h.PeerID.String(), spare))
	assert.NotContains(t, goopOK(t, "groups", "invitations", api(b)), spare)
	code, _, errOut = runGoop(t, "groups", "decline", api(b), h.PeerID.String(), spare)
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "no invitation")

	goopOK(t, "groups", "close", api(h), id)
	waitGroupEvent(t, aEv, "close")
	assert.Contains(t, goopOK(t, "groups", "list", api(a)), "JOINED", "alice's list no longer has it")
	assert.NotContains(t, goopOK(t, "groups", "list", api(a)), "book club")
}

func TestChessUseCaseEphemeralGroupKeepsHistory(t *testing.T) {
	nodes := startMesh(t, 2)
	h, o := nodes[0], nodes[1]
	hostURL := strings.TrimRight(h.ViewerURL, "/")
	post := func(base, path string, body any) map[string]any {
		t.Helper()
		b, _ := json.Marshal(body)
		resp, err := http.Post(base+path, "application/json", strings.NewReader(string(b)))
		require.NoError(t, err)
		defer resp.Body.Close()
		var out map[string]any
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s: %v", path, out)
		return out
	}
	hostEv, oppEv := groupEvents(t, h), groupEvents(t, o)

	// The host creates an ephemeral game and plays in it; the opponent joins.
	res := post(hostURL, "/api/groups", map[string]any{"name": "chess", "group_type": "realtime",
		"lifecycle": "ephemeral", "max_members": 2, "host_join": true})
	id := res["id"].(string)
	oppURL := strings.TrimRight(o.ViewerURL, "/")
	post(oppURL, "/api/groups/join", map[string]any{"host_peer_id": h.PeerID.String(), "group_id": id})

	moves := []string{"e2e4", "e7e5", "g1f3", "b8c6"}
	for i, mv := range moves {
		if i%2 == 0 {
			post(hostURL, "/api/groups/send", map[string]any{"group_id": id, "payload": map[string]any{"move": mv}})
			got := waitGroupEvent(t, oppEv, "msg")
			assert.JSONEq(t, `{"move":"`+mv+`"}`, string(got.Payload))
			assert.Equal(t, h.PeerID.String(), got.From)
		} else {
			post(oppURL, "/api/groups/send", map[string]any{"host_peer_id": h.PeerID.String(), "group_id": id, "payload": map[string]any{"move": mv}})
			got := waitGroupEvent(t, hostEv, "msg")
			assert.JSONEq(t, `{"move":"`+mv+`"}`, string(got.Payload))
			assert.Equal(t, o.PeerID.String(), got.From)
		}
	}

	// The game ends: both leave, the group dissolves, the history remains.
	post(oppURL, "/api/groups/leave", map[string]any{"host_peer_id": h.PeerID.String(), "group_id": id})
	post(hostURL, "/api/groups/leave", map[string]any{"group_id": id})
	ev := waitGroupEvent(t, hostEv, "dissolved")
	assert.Equal(t, id, ev.Group)
	resp, err := http.Get(hostURL + "/api/groups")
	require.NoError(t, err)
	var hosted []map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&hosted))
	resp.Body.Close()
	assert.Empty(t, hosted, "the group is gone")

	resp, err = http.Get(hostURL + "/api/groups/history?group_id=" + id)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var hist []struct {
		From    string          `json:"from"`
		Type    string          `json:"type"`
		Payload json.RawMessage `json:"payload"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&hist))
	require.Len(t, hist, len(moves), "every move is in the host's database")
	for i, mv := range moves {
		assert.JSONEq(t, `{"move":"`+mv+`"}`, string(hist[i].Payload))
	}
	assert.Equal(t, o.PeerID.String(), hist[1].From)
	_ = peer.ID("")
}

// A member of a group whose host speaks the bus as Goop2 does (only
// /goop/mq/1.0.0) is told at once that this host keeps no history for
// members, instead of waiting for an answer that never comes. (This host
// is ours with only 1.0.0 on the wire, so it would answer: the error shows
// the member did not ask.)
func TestHistoryOfAGoop2HostIsRefusedAtOnce(t *testing.T) {
	nodes := startMeshWith(t, 2, p2p.MQOptions{Only10: true})
	h, a := nodes[0], nodes[1]
	api := func(r *node.Running) string { return "--api=" + strings.TrimRight(r.ViewerURL, "/") }
	id := goopOK(t, "groups", "create", api(h), "--type=chat", "lobby")
	assert.Equal(t, "joined", goopOK(t, "groups", "join", api(a), h.PeerID.String(), id))
	code, _, errOut := runGoop(t, "groups", "history", api(a), h.PeerID.String(), id)
	assert.NotEqual(t, 0, code)
	assert.Contains(t, errOut, "unsupported")
	assert.Contains(t, errOut, "speaks only /goop/mq/1.0.0 (Goop2)")
}
