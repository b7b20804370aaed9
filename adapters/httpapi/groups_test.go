package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/group"
	"github.com/goop-p2p/goop/domain/mq"
)

// groupFixture serves both A's and B's APIs.
type groupFixture struct {
	*fixture
	bsrv *httptest.Server
}

func newGroupFixture(t *testing.T) *groupFixture {
	f := newFixture(t, nil)
	g := &groupFixture{fixture: f, bsrv: httptest.NewServer(New(Deps{Runtime: f.b.rt, Label: "bob"}))}
	t.Cleanup(g.bsrv.Close)
	return g
}

// postB posts to B's API.
func (g *groupFixture) postB(t *testing.T, path string, v any) reply {
	t.Helper()
	saved := g.srv
	g.srv = g.bsrv
	defer func() { g.srv = saved }()
	return g.post(t, path, v)
}

// getBReply gets path from B's API.
func (g *groupFixture) getBReply(t *testing.T, path string) reply {
	t.Helper()
	saved := g.srv
	g.srv = g.bsrv
	defer func() { g.srv = saved }()
	return g.do(t, http.MethodGet, path, "", nil)
}

func (g *groupFixture) getB(t *testing.T, path string) []map[string]any {
	t.Helper()
	resp, err := http.Get(g.bsrv.URL + path)
	require.NoError(t, err)
	defer resp.Body.Close()
	var out []map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	return out
}

func (g *groupFixture) getA(t *testing.T, path string) []map[string]any {
	t.Helper()
	resp, err := http.Get(g.srv.URL + path)
	require.NoError(t, err)
	defer resp.Body.Close()
	var out []map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	return out
}

func nextGroupSSE(t *testing.T, ch <-chan sseEvent, typ string) map[string]any {
	t.Helper()
	for {
		ev := nextSSE(t, ch)
		if ev.event != typ {
			continue
		}
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(ev.data), &m))
		assert.Equal(t, typ, m["type"])
		return m
	}
}

func TestGroupsCreateJoinSendOverAPI(t *testing.T) {
	g := newGroupFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, _ := openSSEPath(t, ctx, g.srv.URL+"/api/groups/events")
	require.Equal(t, "connected", nextSSE(t, events).event)

	r := g.post(t, "/api/groups", map[string]any{"name": "chess night", "group_type": "realtime",
		"max_members": 4, "lifecycle": "ephemeral", "access": "open", "idle_timeout_s": 600, "host_join": true})
	require.Equal(t, http.StatusOK, r.status, "%v", r.body)
	assert.Equal(t, "created", r.body["status"])
	id, _ := r.body["id"].(string)
	require.Len(t, id, 16)
	assert.Equal(t, "ephemeral", r.body["lifecycle"])
	assert.EqualValues(t, 600, r.body["idle_timeout_s"])

	list := g.getA(t, "/api/groups")
	require.Len(t, list, 1)
	assert.Equal(t, "chess night", list[0]["name"])
	assert.Equal(t, string(g.a.id), list[0]["owner"])

	r = g.postB(t, "/api/groups/join", map[string]any{"host_peer_id": string(g.a.id), "group_id": id})
	require.Equal(t, http.StatusOK, r.status, "%v", r.body)
	assert.Equal(t, "joined", r.body["status"])
	assert.Len(t, r.body["members"], 2)
	joined := nextGroupSSE(t, events, "member_joined")
	assert.Equal(t, string(g.b.id), joined["from"])

	subs := g.getB(t, "/api/groups/subscriptions")
	require.Len(t, subs, 1)
	assert.Equal(t, id, subs[0]["id"])
	assert.Equal(t, true, subs[0]["joined"])

	r = g.postB(t, "/api/groups/send", map[string]any{"host_peer_id": string(g.a.id), "group_id": id, "payload": map[string]any{"move": "e2e4"}})
	require.Equal(t, http.StatusOK, r.status, "%v", r.body)
	msg := nextGroupSSE(t, events, "msg")
	assert.Equal(t, string(g.b.id), msg["from"])
	assert.Equal(t, id, msg["group"])
	assert.Equal(t, map[string]any{"move": "e2e4"}, msg["payload"])

	r = g.post(t, "/api/groups/kick", map[string]any{"group_id": id, "peer_id": string(g.b.id)})
	require.Equal(t, http.StatusOK, r.status, "%v", r.body)
	left := nextGroupSSE(t, events, "member_left")
	assert.Equal(t, "kicked", left["reason"])

	r = g.post(t, "/api/groups/close", map[string]any{"group_id": id})
	require.Equal(t, http.StatusOK, r.status)
	assert.Empty(t, g.getA(t, "/api/groups"))
}

func TestGroupsJoinErrorsKeepTheirCode(t *testing.T) {
	g := newGroupFixture(t)
	r := g.post(t, "/api/groups", map[string]any{"name": "private", "access": "invite-only"})
	require.Equal(t, http.StatusOK, r.status)
	id := r.body["id"].(string)

	r = g.postB(t, "/api/groups/join", map[string]any{"host_peer_id": string(g.a.id), "group_id": id})
	assert.Equal(t, http.StatusForbidden, r.status)
	assert.Equal(t, "not_invited", r.body["code"])
	assert.Contains(t, r.body["error"], "invite-only")

	r = g.postB(t, "/api/groups/join", map[string]any{"host_peer_id": string(g.a.id), "group_id": "ffffffffffffffff"})
	assert.Equal(t, http.StatusNotFound, r.status)
	assert.Equal(t, "not_found", r.body["code"])

	r = g.post(t, "/api/groups/invite", map[string]any{"group_id": id, "peer_id": string(g.b.id)})
	require.Equal(t, http.StatusOK, r.status, "%v", r.body)
	r = g.postB(t, "/api/groups/join", map[string]any{"host_peer_id": string(g.a.id), "group_id": id})
	assert.Equal(t, http.StatusOK, r.status, "%v", r.body)
}

// An invitation waits in GET /api/groups/invitations until it is accepted
// (joined) or declined.
func TestGroupsInvitationsListedUntilJoinedOrDeclined(t *testing.T) {
	g := newGroupFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	bEvents, _ := openSSEPath(t, ctx, g.bsrv.URL+"/api/groups/events")
	require.Equal(t, "connected", nextSSE(t, bEvents).event)
	assert.Empty(t, g.getB(t, "/api/groups/invitations"))

	var ids []string
	for _, name := range []string{"book club", "chess"} {
		r := g.post(t, "/api/groups", map[string]any{"name": name, "group_type": "chat", "access": "invite-only"})
		require.Equal(t, http.StatusOK, r.status, "%v", r.body)
		id := r.body["id"].(string)
		ids = append(ids, id)
		r = g.post(t, "/api/groups/invite", map[string]any{"group_id": id, "peer_id": string(g.b.id)})
		require.Equal(t, http.StatusOK, r.status, "%v", r.body)
		assert.Equal(t, id, nextGroupSSE(t, bEvents, "invite")["group"])
	}
	invs := g.getB(t, "/api/groups/invitations")
	require.Len(t, invs, 2)
	byID := map[string]map[string]any{}
	for _, inv := range invs {
		byID[inv["group_id"].(string)] = inv
	}
	club := byID[ids[0]]
	require.NotNil(t, club)
	assert.Equal(t, "book club", club["group_name"])
	assert.Equal(t, string(g.a.id), club["host_peer_id"])
	assert.Equal(t, "chat", club["group_type"])
	assert.Equal(t, "invite-only", club["access"])
	assert.NotZero(t, club["received_at"])

	r := g.postB(t, "/api/groups/join", map[string]any{"host_peer_id": string(g.a.id), "group_id": ids[0]})
	require.Equal(t, http.StatusOK, r.status, "%v", r.body)
	invs = g.getB(t, "/api/groups/invitations")
	require.Len(t, invs, 1, "joining accepts the invitation")
	assert.Equal(t, ids[1], invs[0]["group_id"])

	r = g.postB(t, "/api/groups/invitations/decline", map[string]any{"host_peer_id": string(g.a.id), "group_id": ids[1]})
	require.Equal(t, http.StatusOK, r.status, "%v", r.body)
	assert.Equal(t, "declined", r.body["status"])
	nextGroupSSE(t, bEvents, "declined")
	assert.Empty(t, g.getB(t, "/api/groups/invitations"))

	r = g.postB(t, "/api/groups/invitations/decline", map[string]any{"host_peer_id": string(g.a.id), "group_id": ids[1]})
	assert.Equal(t, http.StatusNotFound, r.status, "%v", r.body)
	assert.Equal(t, "not_found", r.body["code"])
	assert.Contains(t, r.body["error"], "no invitation")
}

// A member's viewer asks the host for the group's newest messages: what
// the member's page shows after a reload, or after being away.
func TestGroupsHistoryFromTheHost(t *testing.T) {
	g := newGroupFixture(t)
	r := g.post(t, "/api/groups", map[string]any{"name": "chat", "group_type": "chat", "host_join": true})
	require.Equal(t, http.StatusOK, r.status, "%v", r.body)
	id := r.body["id"].(string)
	host := string(g.a.id)
	path := "/api/groups/history?group_id=" + id + "&host_peer_id=" + host

	r = g.getBReply(t, path)
	assert.Equal(t, http.StatusConflict, r.status, "%v", r.body)
	assert.Equal(t, "not_member", r.body["code"])

	r = g.postB(t, "/api/groups/join", map[string]any{"host_peer_id": host, "group_id": id})
	require.Equal(t, http.StatusOK, r.status, "%v", r.body)
	for i := range 3 {
		r = g.post(t, "/api/groups/send", map[string]any{"group_id": id, "payload": map[string]any{"n": i}})
		require.Equal(t, http.StatusOK, r.status, "%v", r.body)
	}
	// Each send returned once its history row was stored.

	got := g.getB(t, path+"&limit=2")
	require.Len(t, got, 2, "%v", got)
	assert.Equal(t, map[string]any{"n": float64(1)}, got[0]["payload"], "oldest first")
	assert.Equal(t, map[string]any{"n": float64(2)}, got[1]["payload"])
	assert.Equal(t, host, got[1]["from"])
	assert.Equal(t, "msg", got[1]["type"])
	assert.NotZero(t, got[1]["at"])
	assert.Len(t, g.getB(t, path), 3, "no limit: up to 200")

	r = g.getBReply(t, "/api/groups/history?group_id="+id+"&host_peer_id=nope")
	assert.Equal(t, http.StatusBadRequest, r.status)
	assert.Contains(t, r.body["error"], "host_peer_id")
}

// A host known to speak only /goop/mq/1.0.0 (Goop2) never answers a
// history question: the viewer says so at once instead of waiting for it.
// A host whose protocols are not known yet is asked.
func TestGroupsHistoryNotAskedOfGoop2Hosts(t *testing.T) {
	g := newGroupFixture(t)
	r := g.post(t, "/api/groups", map[string]any{"name": "chat", "group_type": "chat"})
	require.Equal(t, http.StatusOK, r.status, "%v", r.body)
	id := r.body["id"].(string)
	host := string(g.a.id)
	r = g.postB(t, "/api/groups/join", map[string]any{"host_peer_id": host, "group_id": id})
	require.Equal(t, http.StatusOK, r.status, "%v", r.body)
	path := "/api/groups/history?group_id=" + id + "&host_peer_id=" + host

	for _, tc := range []struct {
		ours, known bool
		status      int
	}{{false, true, http.StatusNotImplemented}, {false, false, http.StatusOK}, {true, true, http.StatusOK}} {
		srv := httptest.NewServer(New(Deps{Runtime: g.b.rt, SpeaksOurBus: func(p mq.PeerID) (bool, bool) {
			assert.Equal(t, g.a.id, p, "asked about the group's host")
			return tc.ours, tc.known
		}}))
		resp, err := http.Get(srv.URL + path)
		require.NoError(t, err)
		var body any
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
		resp.Body.Close()
		srv.Close()
		require.Equal(t, tc.status, resp.StatusCode, "ours %v known %v: %v", tc.ours, tc.known, body)
		if tc.status == http.StatusNotImplemented {
			m := body.(map[string]any)
			assert.Equal(t, "unsupported", m["code"])
			assert.Contains(t, m["error"], host)
			assert.Contains(t, m["error"], "Goop2")
		} else {
			assert.Empty(t, body, "no message yet")
		}
	}
}

func TestGroupsRejectBadInput(t *testing.T) {
	g := newGroupFixture(t)
	cases := []struct {
		name, path string
		body       any
		status     int
		want       string
	}{
		{"create without name", "/api/groups", map[string]any{"group_type": "chat"}, 400, "name"},
		{"create bad lifecycle", "/api/groups", map[string]any{"name": "x", "lifecycle": "forever"}, 400, "lifecycle"},
		{"create bad access", "/api/groups", map[string]any{"name": "x", "access": "secret"}, 400, "access"},
		{"create negative max", "/api/groups", map[string]any{"name": "x", "max_members": -2}, 400, "max_members"},
		{"create bad idle", "/api/groups", map[string]any{"name": "x", "idle_timeout_s": -1}, 400, "idle_timeout_s"},
		{"create wrong type", "/api/groups", map[string]any{"name": 5}, 400, "name"},
		{"join without group", "/api/groups/join", map[string]any{"host_peer_id": "x"}, 400, "group_id"},
		{"join bad group id", "/api/groups/join", map[string]any{"host_peer_id": "x", "group_id": "a:b"}, 400, "group_id"},
		{"join without host", "/api/groups/join", map[string]any{"group_id": "0123456789abcdef"}, 400, "host_peer_id"},
		{"join bad host", "/api/groups/join", map[string]any{"host_peer_id": "nope", "group_id": "0123456789abcdef"}, 400, "host_peer_id"},
		{"send without payload", "/api/groups/send", map[string]any{"group_id": "0123456789abcdef"}, 400, "payload"},
		{"send to unknown group", "/api/groups/send", map[string]any{"group_id": "0123456789abcdef", "payload": 1}, 404, "no hosted group"},
		{"invite bad peer", "/api/groups/invite", map[string]any{"group_id": "0123456789abcdef", "peer_id": "x"}, 400, "peer_id"},
		{"close unknown", "/api/groups/close", map[string]any{"group_id": "0123456789abcdef"}, 404, "no hosted group"},
		{"max-members missing", "/api/groups/max-members", map[string]any{"group_id": "0123456789abcdef"}, 400, "max_members"},
		{"decline without host", "/api/groups/invitations/decline", map[string]any{"group_id": "0123456789abcdef"}, 400, "host_peer_id"},
		{"decline bad host", "/api/groups/invitations/decline", map[string]any{"host_peer_id": "x", "group_id": "0123456789abcdef"}, 400, "host_peer_id"},
		{"decline bad group id", "/api/groups/invitations/decline", map[string]any{"host_peer_id": "x", "group_id": "../x"}, 400, "group_id"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := g.post(t, tc.path, tc.body)
			assert.Equal(t, tc.status, r.status, "%v", r.body)
			assert.Contains(t, r.body["error"], tc.want)
		})
	}
	assert.Empty(t, g.getA(t, "/api/groups"), "refused requests changed nothing")
}

func TestGroupsRolesAndMeta(t *testing.T) {
	g := newGroupFixture(t)
	r := g.post(t, "/api/groups", map[string]any{"name": "team", "roles": []string{"editor"}})
	id := r.body["id"].(string)
	require.Equal(t, 200, g.postB(t, "/api/groups/join", map[string]any{"host_peer_id": string(g.a.id), "group_id": id}).status)
	assert.Equal(t, 200, g.post(t, "/api/groups/set-role", map[string]any{"group_id": id, "peer_id": string(g.b.id), "role": "editor"}).status)
	assert.Equal(t, 400, g.post(t, "/api/groups/set-role", map[string]any{"group_id": id, "peer_id": string(g.b.id), "role": "king"}).status)
	assert.Equal(t, 200, g.post(t, "/api/groups/set-roles", map[string]any{"group_id": id, "roles": []string{"editor", "reader"}}).status)
	assert.Equal(t, 200, g.post(t, "/api/groups/set-default-role", map[string]any{"group_id": id, "role": "reader"}).status)
	assert.Equal(t, 200, g.post(t, "/api/groups/meta", map[string]any{"group_id": id, "name": "renamed"}).status)
	assert.Equal(t, 200, g.post(t, "/api/groups/max-members", map[string]any{"group_id": id, "max_members": 9}).status)
	list := g.getA(t, "/api/groups")
	require.Len(t, list, 1)
	assert.Equal(t, "renamed", list[0]["name"])
	assert.EqualValues(t, 9, list[0]["max_members"])
	assert.Equal(t, "reader", list[0]["default_role"])
	assert.Equal(t, []any{"editor", "reader"}, list[0]["roles"])
	members := list[0]["members"].([]any)
	require.Len(t, members, 1)
	assert.Equal(t, "editor", members[0].(map[string]any)["role"])
	require.Eventually(t, func() bool {
		subs := g.getB(t, "/api/groups/subscriptions")
		return len(subs) == 1 && subs[0]["role"] == "editor" && subs[0]["group_name"] == "renamed"
	}, waitFor, 5e6, "the member's view follows")
}

func TestSDKAndGroupsPageServed(t *testing.T) {
	f := newFixture(t, nil)
	r := f.do(t, http.MethodGet, "/sdk/goop.js", "", nil)
	require.Equal(t, http.StatusOK, r.status)
	assert.Contains(t, r.header.Get("Content-Type"), "javascript")
	assert.Contains(t, r.body["text"], "Goop.group")
	r = f.do(t, http.MethodGet, "/groups", "", nil)
	require.Equal(t, http.StatusOK, r.status)
	assert.True(t, strings.HasPrefix(r.header.Get("Content-Type"), "text/html"))
	assert.Contains(t, r.header.Get("Content-Security-Policy"), "default-src 'self'")
	assert.Contains(t, r.body["text"], "Create a group")
}

func TestGroupsJoinOwnGroupTwiceAnswersAtOnce(t *testing.T) {
	g := newGroupFixture(t)
	r := g.post(t, "/api/groups", map[string]any{"name": "mine", "host_join": true})
	require.Equal(t, http.StatusOK, r.status)
	id := r.body["id"].(string)
	start := time.Now()
	r = g.post(t, "/api/groups/join", map[string]any{"host_peer_id": string(g.a.id), "group_id": id})
	require.Equal(t, http.StatusOK, r.status, "%v", r.body)
	assert.Equal(t, "joined", r.body["status"])
	assert.Less(t, time.Since(start), joinWait/2, "no wait for a welcome that never comes")
}

// A wait for a group event tells a node that stopped from one whose events
// outran it (the node closed its subscription): both answer 503, each with
// its own reason.
func TestGroupWaitTellsStoppedFromFellBehind(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	sub := f.a.rt.SubscribeKinds(1, app.EventGroup)
	for i := range 3 { // three group events into a buffer of one, unread
		require.NoError(t, f.a.rt.Do(ctx, func(now time.Time, n *app.Node) {
			_, err := n.Group(now).Create(now, group.CreateSpec{ID: fmt.Sprintf("%016x", i+1), Name: "g"})
			require.NoError(t, err)
		}))
	}
	_, err := awaitGroupEvent(ctx, sub, f.a.rt.Done(), f.a.id, "0000000000000009", func(*group.Event) bool { return true })
	assert.ErrorIs(t, err, errFellBehind)

	f.a.stop(t)
	sub = f.a.rt.SubscribeKinds(1, app.EventGroup)
	_, err = awaitGroupEvent(ctx, sub, f.a.rt.Done(), f.a.id, "0000000000000009", func(*group.Event) bool { return true })
	assert.ErrorIs(t, err, errNodeStopped)
}
