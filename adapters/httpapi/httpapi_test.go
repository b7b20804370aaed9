package httpapi

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/adapters/system"
	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/ports/memory"
)

const waitFor = 5 * time.Second

func newPeerID(t *testing.T) mq.PeerID {
	t.Helper()
	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	id, err := peer.IDFromPrivateKey(priv)
	require.NoError(t, err)
	return mq.PeerID(id.String())
}

// testNode is one node on a memory network with its runtime running.
type testNode struct {
	id     mq.PeerID
	rt     *app.Runtime
	cancel context.CancelFunc
	done   chan error
}

func startNode(t *testing.T, net *memory.Network, id mq.PeerID) *testNode {
	t.Helper()
	tr := net.Join(id)
	node := app.NewNode(id, app.State{}, system.Rand{}, app.NodeOptions{})
	rt := app.NewRuntime(node, tr, memory.NewStore(), system.Clock{}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	n := &testNode{id: id, rt: rt, cancel: cancel, done: make(chan error, 1)}
	go func() { n.done <- rt.Run(ctx) }()
	t.Cleanup(func() {
		n.stop(t)
		_ = tr.Close()
	})
	return n
}

func (n *testNode) stop(t *testing.T) {
	n.cancel()
	select {
	case <-n.rt.Done():
	case <-time.After(waitFor):
		t.Fatal("runtime did not stop")
	}
}

type fixture struct {
	a, b *testNode
	srv  *httptest.Server
	deps Deps
}

// newFixture starts nodes A and B and serves A's API.
func newFixture(t *testing.T, tweak func(*Deps)) *fixture {
	t.Helper()
	net := memory.NewNetwork()
	f := &fixture{a: startNode(t, net, newPeerID(t)), b: startNode(t, net, newPeerID(t))}
	f.deps = Deps{
		Runtime: f.a.rt,
		Label:   "alice",
		Addrs:   func() []string { return []string{"/ip4/127.0.0.1/tcp/4001"} },
	}
	if tweak != nil {
		tweak(&f.deps)
	}
	f.srv = httptest.NewServer(New(f.deps))
	t.Cleanup(f.srv.Close)
	return f
}

type reply struct {
	status int
	body   map[string]any
	header http.Header
}

func (f *fixture) do(t *testing.T, method, path, body string, hdr map[string]string) reply {
	t.Helper()
	req, err := http.NewRequest(method, f.srv.URL+path, strings.NewReader(body))
	require.NoError(t, err)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := f.srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	r := reply{status: resp.StatusCode, header: resp.Header}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		require.NoError(t, json.Unmarshal(raw, &r.body), "body %s", raw)
	} else {
		r.body = map[string]any{"text": string(raw)}
	}
	return r
}

func (f *fixture) post(t *testing.T, path string, v any) reply {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return f.do(t, http.MethodPost, path, string(b), nil)
}

// nextEvent waits for the next event of kind on sub.
func nextEvent(t *testing.T, sub *app.Subscription, kind app.EventKind) app.Event {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		select {
		case ev, ok := <-sub.C:
			require.True(t, ok, "subscription closed")
			if ev.Kind == kind {
				return ev
			}
		case <-deadline:
			t.Fatalf("no event of kind %d", kind)
		}
	}
}

func TestHealthz(t *testing.T) {
	f := newFixture(t, nil)
	r := f.do(t, http.MethodGet, "/healthz", "", nil)
	assert.Equal(t, http.StatusOK, r.status)
	assert.Equal(t, "ok", r.body["text"])
}

func TestSelf(t *testing.T) {
	f := newFixture(t, nil)
	r := f.do(t, http.MethodGet, "/api/self", "", nil)
	require.Equal(t, http.StatusOK, r.status)
	assert.Equal(t, string(f.a.id), r.body["id"])
	assert.Equal(t, "alice", r.body["label"])
	assert.Equal(t, []any{"/ip4/127.0.0.1/tcp/4001"}, r.body["addrs"])

	g := newFixture(t, func(d *Deps) { d.Addrs = nil })
	r = g.do(t, http.MethodGet, "/api/self", "", nil)
	assert.Equal(t, []any{}, r.body["addrs"], "addrs is an array even when empty")
}

func TestHostGuardRejectsNonLoopbackHosts(t *testing.T) {
	f := newFixture(t, nil)
	cases := []struct {
		name, host string
		want       int
	}{
		{"ip", "127.0.0.1:8080", http.StatusOK},
		{"other loopback ip", "127.1.2.3", http.StatusOK},
		{"localhost", "localhost:8080", http.StatusOK},
		{"localhost subdomain", "app.localhost:8080", http.StatusOK},
		{"ipv6", "[::1]:8080", http.StatusOK},
		{"rebinding name", "evil.example:8080", http.StatusForbidden},
		{"look-alike", "localhost.evil.example", http.StatusForbidden},
		{"lan ip", "192.168.1.10:8080", http.StatusForbidden},
		{"any", "0.0.0.0:8080", http.StatusForbidden},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := f.do(t, http.MethodGet, "/healthz", "", map[string]string{"Host": tc.host})
			assert.Equal(t, tc.want, r.status)
			if tc.want == http.StatusForbidden {
				assert.Contains(t, r.body["error"], "is not allowed")
			}
		})
	}
}

func TestOriginGuardRejectsCrossSitePosts(t *testing.T) {
	f := newFixture(t, nil)
	body := `{"msg_id":"m1","from_peer_id":"` + string(f.b.id) + `"}`
	host := strings.TrimPrefix(f.srv.URL, "http://")
	cases := []struct {
		name, origin string
		want         int
	}{
		{"no origin (curl, SDK on same origin without header)", "", http.StatusOK},
		{"same origin", "http://" + host, http.StatusOK},
		{"other site", "https://evil.example", http.StatusForbidden},
		{"other local port", "http://127.0.0.1:1", http.StatusForbidden},
		{"opaque origin", "null", http.StatusForbidden},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			hdr := map[string]string{}
			if tc.origin != "" {
				hdr["Origin"] = tc.origin
			}
			r := f.do(t, http.MethodPost, "/api/mq/ack", body, hdr)
			assert.Equal(t, tc.want, r.status, "%v", r.body)
		})
	}
}

func TestSendDelivered(t *testing.T) {
	f := newFixture(t, nil)
	sub := f.b.rt.Subscribe(16)
	defer sub.Close()
	r := f.post(t, "/api/mq/send", map[string]any{"peer_id": f.b.id, "topic": "chat", "payload": map[string]any{"text": "hi"}})
	require.Equal(t, http.StatusOK, r.status, "%v", r.body)
	assert.Equal(t, "delivered", r.body["status"])
	id, _ := r.body["msg_id"].(string)
	require.NotEmpty(t, id)

	ev := nextEvent(t, sub, app.EventMessage)
	assert.Equal(t, f.a.id, ev.Peer)
	assert.Equal(t, id, ev.Msg.ID)
	assert.Equal(t, "chat", ev.Msg.Topic)
	assert.JSONEq(t, `{"text":"hi"}`, string(ev.Msg.Payload))
}

func TestSendWithoutPayloadSendsNull(t *testing.T) {
	f := newFixture(t, nil)
	sub := f.b.rt.Subscribe(16)
	defer sub.Close()
	r := f.post(t, "/api/mq/send", map[string]any{"peer_id": f.b.id, "topic": "ping"})
	require.Equal(t, http.StatusOK, r.status, "%v", r.body)
	assert.Equal(t, "null", string(nextEvent(t, sub, app.EventMessage).Msg.Payload))
}

func TestSendQueuedWhenPeerDoesNotAck(t *testing.T) {
	f := newFixture(t, func(d *Deps) { d.SendTimeout = 50 * time.Millisecond })
	offline := newPeerID(t) // valid id, not on the network
	r := f.post(t, "/api/mq/send", map[string]any{"peer_id": offline, "topic": "chat", "payload": 1})
	require.Equal(t, http.StatusAccepted, r.status, "%v", r.body)
	assert.Equal(t, "queued", r.body["status"])
	assert.NotEmpty(t, r.body["msg_id"])
	var pending int
	require.NoError(t, f.a.rt.Do(context.Background(), func(_ time.Time, n *app.Node) { pending = n.Bus().Pending(offline) }))
	assert.Equal(t, 1, pending, "the message stays in the outbox")
}

func TestSendRejectsBadRequests(t *testing.T) {
	f := newFixture(t, nil)
	b := string(f.b.id)
	big := `"` + strings.Repeat("x", mq.MaxPayloadBytes) + `"`
	cases := []struct {
		name   string
		body   string
		status int
		want   string
	}{
		{"empty body", ``, 400, "bad JSON: empty body"},
		{"bad JSON", `{"peer_id":`, 400, "bad JSON"},
		{"not an object", `[1,2]`, 400, "bad JSON"},
		{"trailing data", `{"peer_id":"` + b + `","topic":"t"} {}`, 400, "trailing data"},
		{"wrong type", `{"peer_id":42,"topic":"t"}`, 400, "bad JSON: peer_id must be a string"},
		{"missing peer_id", `{"topic":"t"}`, 400, "missing peer_id"},
		{"invalid peer_id", `{"peer_id":"bob","topic":"t"}`, 400, `invalid peer_id "bob": not a libp2p peer id`},
		{"long peer_id", `{"peer_id":"` + strings.Repeat("Q", 300) + `","topic":"t"}`, 400, "invalid peer_id: longer than 256 bytes"},
		{"self", `{"peer_id":"` + string(f.a.id) + `","topic":"t"}`, 400, "this node itself"},
		{"missing topic", `{"peer_id":"` + b + `"}`, 400, "missing topic"},
		{"control char in topic", `{"peer_id":"` + b + `","topic":"a\u0001b"}`, 400, "invalid topic: "},
		{"long topic", `{"peer_id":"` + b + `","topic":"` + strings.Repeat("t", 600) + `"}`, 400, "invalid topic: "},
		{"payload over the limit", `{"peer_id":"` + b + `","topic":"t","payload":` + big + `}`, 413, "the limit is 1048576 bytes"},
		{"body over the limit", `{"peer_id":"` + b + `","topic":"t","payload":"` + strings.Repeat("x", MaxBodyBytes) + `"}`, 413, "request body is larger than"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := f.do(t, http.MethodPost, "/api/mq/send", tc.body, nil)
			assert.Equal(t, tc.status, r.status)
			assert.Contains(t, r.body["error"], tc.want)
		})
	}
}

func TestMethodsAndUnknownRoutes(t *testing.T) {
	f := newFixture(t, nil)
	assert.Equal(t, http.StatusMethodNotAllowed, f.do(t, http.MethodGet, "/api/mq/send", "", nil).status)
	assert.Equal(t, http.StatusMethodNotAllowed, f.do(t, http.MethodPost, "/api/self", "{}", nil).status)
	assert.Equal(t, http.StatusNotFound, f.do(t, http.MethodGet, "/api/nope", "", nil).status)
}

func TestStoppedNodeAnswers503(t *testing.T) {
	f := newFixture(t, nil)
	f.a.stop(t)
	r := f.post(t, "/api/mq/send", map[string]any{"peer_id": f.b.id, "topic": "t"})
	assert.Equal(t, http.StatusServiceUnavailable, r.status)
	assert.Equal(t, "node is stopped", r.body["error"])
	r = f.post(t, "/api/mq/ack", map[string]any{"msg_id": "m", "from_peer_id": f.b.id})
	assert.Equal(t, http.StatusServiceUnavailable, r.status)
	assert.Equal(t, http.StatusOK, f.do(t, http.MethodGet, "/healthz", "", nil).status, "health stays up for diagnosis")
}

func TestAckSendsReceipt(t *testing.T) {
	f := newFixture(t, nil)
	sub := f.b.rt.Subscribe(16)
	defer sub.Close()
	r := f.post(t, "/api/mq/ack", map[string]any{"msg_id": "3b1f-msg", "from_peer_id": f.b.id})
	require.Equal(t, http.StatusOK, r.status, "%v", r.body)
	assert.Equal(t, "ok", r.body["status"])
	ev := nextEvent(t, sub, app.EventReceipt)
	assert.Equal(t, "3b1f-msg", ev.MsgID)
	assert.Equal(t, f.a.id, ev.Peer)
}

func TestAckRejectsBadRequests(t *testing.T) {
	f := newFixture(t, nil)
	b := string(f.b.id)
	cases := []struct {
		name, body, want string
	}{
		{"bad JSON", `{`, "bad JSON"},
		{"missing msg_id", `{"from_peer_id":"` + b + `"}`, "missing msg_id"},
		{"long msg_id", `{"msg_id":"` + strings.Repeat("m", 200) + `","from_peer_id":"` + b + `"}`, "invalid msg_id: longer than 128 bytes"},
		{"missing from_peer_id", `{"msg_id":"m"}`, "missing from_peer_id"},
		{"invalid from_peer_id", `{"msg_id":"m","from_peer_id":"x"}`, `invalid from_peer_id "x"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := f.do(t, http.MethodPost, "/api/mq/ack", tc.body, nil)
			assert.Equal(t, http.StatusBadRequest, r.status)
			assert.Contains(t, r.body["error"], tc.want)
		})
	}
}

// sseEvent is one parsed SSE frame (event "" = comment).
type sseEvent struct {
	event, data, comment string
}

// openSSE opens the event stream and parses frames onto a channel, closed at EOF.
func openSSE(t *testing.T, ctx context.Context, url string) (<-chan sseEvent, *http.Response) {
	t.Helper()
	return openSSEPath(t, ctx, url+"/api/mq/events")
}

// openSSEPath opens the event stream at full URL u.
func openSSEPath(t *testing.T, ctx context.Context, u string) (<-chan sseEvent, *http.Response) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	ch := make(chan sseEvent, 64)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		var cur sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				ch <- cur
				cur = sseEvent{}
			case strings.HasPrefix(line, ":"):
				cur.comment = strings.TrimSpace(line[1:])
			case strings.HasPrefix(line, "event: "):
				cur.event = line[len("event: "):]
			case strings.HasPrefix(line, "data: "):
				cur.data = line[len("data: "):]
			}
		}
	}()
	return ch, resp
}

// nextSSE waits for the next frame that is not a keep-alive comment.
func nextSSE(t *testing.T, ch <-chan sseEvent) sseEvent {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		select {
		case ev, ok := <-ch:
			require.True(t, ok, "stream ended")
			if ev.event == "" {
				continue
			}
			return ev
		case <-deadline:
			t.Fatal("no SSE event")
		}
	}
}

func TestEventsStreamsMessagesAndReceipts(t *testing.T) {
	f := newFixture(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, _ := openSSE(t, ctx, f.srv.URL)

	first := nextSSE(t, ch)
	assert.Equal(t, "connected", first.event)
	assert.JSONEq(t, `{"type":"connected","peer_id":"`+string(f.a.id)+`"}`, first.data)

	// B sends to A: the browser sees the message with its frame fields.
	sent, err := f.b.rt.Send(ctx, f.a.id, "chat", []byte(`{"text":"hello <a>"}`))
	require.NoError(t, err)
	ev := nextSSE(t, ch)
	assert.Equal(t, "message", ev.event)
	var got struct {
		Type string          `json:"type"`
		From string          `json:"from"`
		Msg  json.RawMessage `json:"msg"`
	}
	require.NoError(t, json.Unmarshal([]byte(ev.data), &got))
	assert.Equal(t, "message", got.Type)
	assert.Equal(t, string(f.b.id), got.From)
	var msg map[string]any
	require.NoError(t, json.Unmarshal(got.Msg, &msg))
	assert.Equal(t, map[string]any{"type": "msg", "id": sent.ID, "seq": float64(sent.Seq), "topic": "chat",
		"payload": map[string]any{"text": "hello <a>"}}, msg, "compat frame fields only (no epoch/floor; origin when relayed)")

	// A's browser sends to B; B's application confirms: the browser sees "delivered".
	r := f.post(t, "/api/mq/send", map[string]any{"peer_id": f.b.id, "topic": "chat", "payload": "x"})
	require.Equal(t, http.StatusOK, r.status)
	require.NoError(t, f.b.rt.Do(ctx, func(now time.Time, n *app.Node) {
		_, err = n.SendReceipt(now, f.a.id, r.body["msg_id"].(string))
	}))
	require.NoError(t, err)
	ev = nextSSE(t, ch)
	assert.Equal(t, "message", ev.event)
	assert.JSONEq(t, `{"type":"delivered","msg_id":"`+r.body["msg_id"].(string)+`"}`, ev.data)
}

func TestEventsKeepAlive(t *testing.T) {
	f := newFixture(t, func(d *Deps) { d.KeepAlive = 20 * time.Millisecond })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, _ := openSSE(t, ctx, f.srv.URL)
	deadline := time.After(waitFor)
	for {
		select {
		case ev, ok := <-ch:
			require.True(t, ok)
			if ev.comment == "keep-alive" {
				return
			}
		case <-deadline:
			t.Fatal("no keep-alive comment")
		}
	}
}

func TestEventsEndsWhenNodeStops(t *testing.T) {
	f := newFixture(t, nil)
	ch, _ := openSSE(t, context.Background(), f.srv.URL)
	assert.Equal(t, "connected", nextSSE(t, ch).event)
	f.a.stop(t)
	select {
	case _, ok := <-ch:
		for ok {
			_, ok = <-ch
		}
	case <-time.After(waitFor):
		t.Fatal("stream did not end")
	}
}

func TestEventsHandlerReturnsWhenClientGoes(t *testing.T) {
	net := memory.NewNetwork()
	a := startNode(t, net, newPeerID(t))
	h := New(Deps{Runtime: a.rt})
	returned := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r)
		if r.URL.Path == "/api/mq/events" {
			close(returned)
		}
	}))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	ch, _ := openSSE(t, ctx, srv.URL)
	assert.Equal(t, "connected", nextSSE(t, ch).event)
	cancel()
	select {
	case <-returned:
	case <-time.After(waitFor):
		t.Fatal("handler still running after the client left")
	}
}

func TestEncodeEventIgnoresInternalKinds(t *testing.T) {
	assert.Nil(t, encodeEvent(app.Event{Kind: app.EventDelivered, MsgID: "x"}))
	assert.Nil(t, encodeEvent(app.Event{Kind: app.EventReceived, MsgID: "x"}))
	assert.JSONEq(t, `{"type":"failed","msg_id":"x","peer_id":"p","topic":"chat","reason":"no ack after 10 attempts"}`,
		string(encodeEvent(app.Event{Kind: app.EventFailed, MsgID: "x", Peer: "p", Topic: "chat", Reason: "no ack after 10 attempts"})),
		"a message given up is reported to the application")
	b := encodeEvent(app.Event{Kind: app.EventMessage, Peer: "p", Msg: &mq.Frame{Type: "msg", ID: "i", Seq: 1, Topic: "t", Origin: "o", Epoch: "e", Floor: 3}})
	assert.JSONEq(t, `{"type":"message","from":"p","msg":{"type":"msg","id":"i","seq":1,"topic":"t","payload":null,"origin":"o"}}`, string(b))
}
