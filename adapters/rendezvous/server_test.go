package rendezvous

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/domain/presence"
)

// TestPublishEventsRoundTrip: a signed publish reaches an open stream marked
// verified, a compat (unsigned) one unverified with the server's ts, and a
// stream opened later starts with every current peer.
func TestPublishEventsRoundTrip(t *testing.T) {
	srv := startServer(t, ServerConfig{})
	a, code := openStream(t, srv.URL, "")
	require.Equal(t, http.StatusOK, code)

	key := newKey(t)
	m := signed(t, key, TypeOnline, "alice", time.Now())
	require.Equal(t, http.StatusNoContent, publish(t, srv.URL, m, ""))
	got := a.next(t)
	assert.Equal(t, m.PeerID, got.PeerID)
	assert.Equal(t, "alice", got.Content)
	assert.Equal(t, m.Addrs, got.Addrs)
	assert.Equal(t, m.TS, got.TS)
	assert.True(t, got.Verified)
	assert.Equal(t, m.Sig, got.Sig, "the signature travels on, so clients can check it themselves")

	compat := PresenceMsg{Type: TypeOnline, PeerID: idOf(t, newKey(t)), Content: "goop2 peer", Verified: true}
	require.Equal(t, http.StatusNoContent, publish(t, srv.URL, compat, ""))
	got = a.next(t)
	assert.Equal(t, compat.PeerID, got.PeerID)
	assert.False(t, got.Verified, "a sender cannot claim verified")
	assert.Positive(t, got.TS, "the server stamps an unstamped compat publish")

	b, _ := openStream(t, srv.URL, "")
	snap := map[presence.PeerID]bool{}
	for range 2 {
		p := b.next(t)
		snap[p.PeerID] = p.Verified
	}
	assert.Equal(t, map[presence.PeerID]bool{m.PeerID: true, compat.PeerID: false}, snap)
	assert.Equal(t, 2, srv.Stats().Peers)
	assert.Equal(t, 1, srv.Stats().VerifiedPeers)
}

func TestHealthzAndMethods(t *testing.T) {
	srv := startServer(t, ServerConfig{})
	resp, err := hc.Get(srv.URL + "/healthz")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	resp, err = hc.Get(srv.URL + "/publish")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
	resp, err = hc.Get(srv.URL + "/nope")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
}

// TestSignedPublishes: forged signatures, a peer id signed by another key,
// and replays (old ts, or the same ts again) are refused with 403 and change
// nothing.
func TestSignedPublishes(t *testing.T) {
	clock := newFakeClock()
	srv := startServer(t, ServerConfig{Now: clock.Now})
	key, other := newKey(t), newKey(t)
	now := clock.Now()
	first := signed(t, key, TypeOnline, "alice", now)
	require.Equal(t, http.StatusNoContent, publish(t, srv.URL, first, ""))

	cases := []struct {
		name string
		msg  func() PresenceMsg
		want int
	}{
		{"content changed after signing", func() PresenceMsg {
			m := signed(t, key, TypeUpdate, "alice", now.Add(time.Second))
			m.Content = "mallory"
			return m
		}, http.StatusForbidden},
		{"addrs changed after signing", func() PresenceMsg {
			m := signed(t, key, TypeUpdate, "alice", now.Add(time.Second))
			m.Addrs = []string{"/ip4/6.6.6.6/tcp/1"}
			return m
		}, http.StatusForbidden},
		{"signed by another key", func() PresenceMsg {
			m := signed(t, other, TypeUpdate, "alice", now.Add(time.Second))
			m.PeerID = first.PeerID
			return m
		}, http.StatusForbidden},
		{"signature of another message", func() PresenceMsg {
			m := signed(t, key, TypeUpdate, "alice", now.Add(time.Second))
			m.Sig = first.Sig
			return m
		}, http.StatusForbidden},
		{"replayed as is", func() PresenceMsg { return first }, http.StatusForbidden},
		{"ts older than the last one", func() PresenceMsg {
			return signed(t, key, TypeUpdate, "alice", now.Add(-time.Second))
		}, http.StatusForbidden},
		{"ts far in the past", func() PresenceMsg {
			return signed(t, other, TypeOnline, "bob", now.Add(-10*time.Minute))
		}, http.StatusForbidden},
		{"ts far in the future", func() PresenceMsg {
			return signed(t, other, TypeOnline, "bob", now.Add(10*time.Minute))
		}, http.StatusForbidden},
		{"signature not base64", func() PresenceMsg {
			m := signed(t, other, TypeOnline, "bob", now)
			m.Sig = "***"
			return m
		}, http.StatusBadRequest},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := srv.Stats()
			code, body := post(t, srv.URL, mustJSON(t, tc.msg()), "")
			assert.Equal(t, tc.want, code, body)
			assert.Contains(t, body, "rendezvous: ")
			after := srv.Stats()
			assert.Equal(t, before.Published, after.Published)
			assert.Equal(t, 1, after.Peers)
		})
	}
	peers := srv.Peers()
	require.Len(t, peers, 1)
	assert.Equal(t, "alice", peers[0].Content)

	next := signed(t, key, TypeUpdate, "alice 2", now.Add(time.Second))
	assert.Equal(t, http.StatusNoContent, publish(t, srv.URL, next, ""), "a newer ts is accepted")
}

// TestSignedPeerCannotBeTakenOverUnsigned: once a peer id published signed,
// unsigned publishes for it (online, update or offline) are refused, also
// after the peer went silent and was swept; compat peers that never signed
// keep publishing unsigned.
func TestSignedPeerCannotBeTakenOverUnsigned(t *testing.T) {
	clock := newFakeClock()
	srv := startServer(t, ServerConfig{Now: clock.Now})
	key := newKey(t)
	m := signed(t, key, TypeOnline, "alice", clock.Now())
	require.Equal(t, http.StatusNoContent, publish(t, srv.URL, m, ""))

	for _, typ := range []string{TypeOnline, TypeUpdate, TypeOffline} {
		imp := PresenceMsg{Type: typ, PeerID: m.PeerID, Content: "mallory", Addrs: []string{"/ip4/6.6.6.6/tcp/1"}}
		code, body := post(t, srv.URL, mustJSON(t, imp), "203.0.113.9")
		assert.Equal(t, http.StatusForbidden, code, typ)
		assert.Contains(t, body, "publishes signed presence")
	}
	clock.Advance(time.Minute)
	srv.Sweep()
	require.Equal(t, 0, srv.Stats().Peers)
	imp := PresenceMsg{Type: TypeOnline, PeerID: m.PeerID, Content: "mallory"}
	assert.Equal(t, http.StatusForbidden, publish(t, srv.URL, imp, ""), "still refused after the peer was swept")

	compat := PresenceMsg{Type: TypeOnline, PeerID: idOf(t, newKey(t)), Content: "goop2"}
	assert.Equal(t, http.StatusNoContent, publish(t, srv.URL, compat, ""))
	compat.Type = TypeUpdate
	assert.Equal(t, http.StatusNoContent, publish(t, srv.URL, compat, ""))
}

// TestBadPublishes400: oversize and malformed presence gets 400 with a clear
// message and changes nothing: no peer, no broadcast.
func TestBadPublishes400(t *testing.T) {
	srv := startServer(t, ServerConfig{})
	st, _ := openStream(t, srv.URL, "")
	key := newKey(t)
	good := signed(t, key, TypeOnline, "alice", time.Now())
	withField := func(f func(m map[string]any)) []byte {
		var m map[string]any
		require.NoError(t, json.Unmarshal(mustJSON(t, good), &m))
		f(m)
		return mustJSON(t, m)
	}
	many := make([]string, MaxAddrs+1)
	for i := range many {
		many[i] = fmt.Sprintf("/ip4/10.0.0.%d/tcp/1", i)
	}
	cases := []struct {
		name, want string
		body       []byte
	}{
		{"oversize body", "presence larger than", append(append([]byte(`{"type":"online","peerId":"`+good.PeerID+`","content":"`),
			strings.Repeat("x", MaxBodyBytes)...), `"}`...)},
		{"not JSON", "malformed presence JSON", []byte(`{"type":`)},
		{"not an object", "malformed presence JSON", []byte(`[1,2]`)},
		{"trailing data", "trailing data", append(mustJSON(t, good), []byte(` {}`)...)},
		{"wrong field type", "malformed presence JSON", withField(func(m map[string]any) { m["ts"] = "soon" })},
		{"bad type", "type \"hello\" is not online", withField(func(m map[string]any) { m["type"] = "hello" })},
		{"no peer id", "missing peerId", withField(func(m map[string]any) { delete(m, "peerId") })},
		{"peer id not a peer id", "not a libp2p peer id", withField(func(m map[string]any) { m["peerId"] = "alice" })},
		{"peer id too long", "peerId is 257 bytes (max 256)", withField(func(m map[string]any) { m["peerId"] = strings.Repeat("Q", MaxPeerIDBytes+1) })},
		{"content too long", "content is 8192 bytes (max 4096)", withField(func(m map[string]any) { m["content"] = strings.Repeat("é", MaxContentBytes) })},
		{"too many addrs", "21 addrs (max 20)", withField(func(m map[string]any) { m["addrs"] = many })},
		{"addr not a multiaddr", "is not a multiaddr", withField(func(m map[string]any) { m["addrs"] = []string{"1.2.3.4:5"} })},
		{"control character in email", "email is not printable", withField(func(m map[string]any) { m["email"] = "a\nb" })},
		{"signed without ts", "ts 0 is not a positive", withField(func(m map[string]any) { delete(m, "ts") })},
		{"sig not base64", "sig is not base64", withField(func(m map[string]any) { m["sig"] = "!!" })},
		{"negative ts", "ts -1 is not a positive", withField(func(m map[string]any) { m["ts"] = -1 })},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, body := post(t, srv.URL, tc.body, "")
			assert.Equal(t, http.StatusBadRequest, code)
			assert.Contains(t, body, tc.want)
			assert.Equal(t, 0, srv.Stats().Peers)
			assert.Zero(t, srv.Stats().Published)
		})
	}
	// The first event on the stream is the good publish made now: none of
	// the bad ones was broadcast.
	require.Equal(t, http.StatusNoContent, publish(t, srv.URL, good, ""))
	assert.Equal(t, good.PeerID, st.next(t).PeerID)
	assert.EqualValues(t, len(cases), srv.Stats().Rejected400)
}

// TestFloodIsLimited: a peer id flooding from one address gets 429 once its
// own budget is spent, while another peer from the same address (think NAT)
// still publishes; an address flooding with many peer ids gets 429 once the
// address's budget is spent, while other addresses are served.
func TestFloodIsLimited(t *testing.T) {
	clock := newFakeClock() // frozen: no budget refills during the test
	srv := startServer(t, ServerConfig{Now: clock.Now, PeerBurst: 5, IPBurst: 40})
	flooder, honest := newKey(t), newKey(t)
	now := clock.Now()
	codes := map[int]int{}
	for i := range 20 {
		codes[publish(t, srv.URL, signed(t, flooder, TypeUpdate, "flood", now.Add(time.Duration(i)*time.Millisecond)), "198.51.100.1")]++
	}
	assert.Equal(t, map[int]int{http.StatusNoContent: 5, http.StatusTooManyRequests: 15}, codes)
	assert.Equal(t, http.StatusNoContent, publish(t, srv.URL, signed(t, honest, TypeOnline, "honest", now), "198.51.100.1"),
		"another peer behind the same address keeps its own budget")

	// The address's budget (40) is now 21 spent; many fresh peer ids spend the rest.
	codes = map[int]int{}
	for range 25 {
		codes[publish(t, srv.URL, signed(t, newKey(t), TypeOnline, "sybil", now), "198.51.100.1")]++
	}
	assert.Equal(t, map[int]int{http.StatusNoContent: 19, http.StatusTooManyRequests: 6}, codes)
	assert.Equal(t, http.StatusNoContent, publish(t, srv.URL, signed(t, newKey(t), TypeOnline, "elsewhere", now), "198.51.100.2"),
		"other addresses are served")

	// A forger cannot spend a verified peer's budget: forged publishes are refused before it is charged.
	victim := newKey(t)
	for range 10 {
		m := signed(t, victim, TypeUpdate, "victim", now)
		m.Content = "forged"
		assert.Equal(t, http.StatusForbidden, publish(t, srv.URL, m, "198.51.100.3"))
	}
	assert.Equal(t, http.StatusNoContent, publish(t, srv.URL, signed(t, victim, TypeOnline, "victim", now), "198.51.100.4"))

	// The 429 tells when to come back.
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/publish", strings.NewReader("{}"))
	req.Header.Set("X-Forwarded-For", "198.51.100.1")
	resp, err := hc.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	assert.NotEmpty(t, resp.Header.Get("Retry-After"))
}

// TestEventStreamCaps: streams beyond the per-address or global cap get 429.
func TestEventStreamCaps(t *testing.T) {
	srv := startServer(t, ServerConfig{MaxClientsPerIP: 2, MaxClients: 3})
	for range 2 {
		_, code := openStream(t, srv.URL, "192.0.2.10")
		require.Equal(t, http.StatusOK, code)
	}
	_, code := openStream(t, srv.URL, "192.0.2.10")
	assert.Equal(t, http.StatusTooManyRequests, code, "per-address cap")
	_, code = openStream(t, srv.URL, "192.0.2.11")
	assert.Equal(t, http.StatusOK, code)
	_, code = openStream(t, srv.URL, "192.0.2.12")
	assert.Equal(t, http.StatusTooManyRequests, code, "global cap")
	assert.Equal(t, 3, srv.Stats().Clients)
	assert.EqualValues(t, 2, srv.Stats().StreamsRefused)
}

// TestSlowStreamDropped: a stream that stops reading is dropped while the
// other streams get every publish, and publishers never wait for it.
func TestSlowStreamDropped(t *testing.T) {
	// The ring holds the whole burst, so the fast reader can never fall behind
	// it however loaded the machine is; the stalled one is dropped by its
	// write timeout.
	srv := startServer(t, ServerConfig{RingSize: 256, StreamSendBuffer: 4096, WriteTimeout: 300 * time.Millisecond,
		PeerBurst: 1000, IPBurst: 1000})
	fast, _ := openStream(t, srv.URL, "")
	recv(t, srv.add, "the fast stream")

	// The slow client: a tiny receive buffer, and it never reads.
	slow, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(netip.MustParseAddrPort(srv.addr)))
	require.NoError(t, err)
	defer slow.Close()
	require.NoError(t, slow.SetReadBuffer(2048))
	_, err = io.WriteString(slow, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
	require.NoError(t, err)
	recv(t, srv.add, "the slow stream")

	key := newKey(t)
	now := time.Now()
	const n = 200
	start := time.Now()
	for i := range n {
		m := signed(t, key, TypeUpdate, strings.Repeat("x", 4000), now.Add(time.Duration(i)*time.Millisecond))
		require.Equal(t, http.StatusNoContent, publish(t, srv.URL, m, ""))
	}
	publishing := time.Since(start)
	for i := range n {
		got := fast.next(t)
		require.Equal(t, now.Add(time.Duration(i)*time.Millisecond).UnixMilli(), got.TS, "event %d", i)
	}
	reason := recv(t, srv.rm, "the slow stream to be dropped")
	assert.Contains(t, []string{"slow", "write"}, reason)
	assert.Equal(t, 1, srv.Stats().Clients)
	t.Logf("%d publishes of 4 KB took %s with a stalled stream; dropped for %q", n, publishing, reason)
}

// TestStalePeerGoesOffline: a peer silent for 30 s is dropped with an offline
// broadcast; a peer that kept publishing stays.
func TestStalePeerGoesOffline(t *testing.T) {
	clock := newFakeClock()
	srv := startServer(t, ServerConfig{Now: clock.Now})
	st, _ := openStream(t, srv.URL, "")
	alice, bob := newKey(t), newKey(t)
	require.Equal(t, http.StatusNoContent, publish(t, srv.URL, signed(t, alice, TypeOnline, "alice", clock.Now()), ""))
	require.Equal(t, http.StatusNoContent, publish(t, srv.URL, signed(t, bob, TypeOnline, "bob", clock.Now()), ""))
	st.next(t)
	st.next(t)

	clock.Advance(20 * time.Second)
	require.Equal(t, http.StatusNoContent, publish(t, srv.URL, signed(t, bob, TypeUpdate, "bob", clock.Now()), ""))
	assert.Equal(t, idOf(t, bob), st.next(t).PeerID)
	srv.Sweep()
	assert.Equal(t, 2, srv.Stats().Peers, "nobody is stale yet")

	clock.Advance(10 * time.Second) // alice silent 30 s, bob 10 s
	srv.Sweep()
	off := st.next(t)
	assert.Equal(t, TypeOffline, off.Type)
	assert.Equal(t, idOf(t, alice), off.PeerID)
	assert.Equal(t, clock.Now().UnixMilli(), off.TS)
	peers := srv.Peers()
	require.Len(t, peers, 1)
	assert.Equal(t, idOf(t, bob), peers[0].PeerID)

	// A peer's own offline removes it at once.
	require.Equal(t, http.StatusNoContent, publish(t, srv.URL, signed(t, bob, TypeOffline, "bob", clock.Now()), ""))
	assert.Equal(t, TypeOffline, st.next(t).Type)
	assert.Equal(t, 0, srv.Stats().Peers)
}

// TestAdminAuth: admin is closed without a password, 401 with a wrong one,
// and shows the peers (escaped) with the right one.
func TestAdminAuth(t *testing.T) {
	closed := startServer(t, ServerConfig{})
	open := startServer(t, ServerConfig{AdminPassword: "s3cret"})
	m := signed(t, newKey(t), TypeOnline, "<script>alert(1)</script>", time.Now())
	require.Equal(t, http.StatusNoContent, publish(t, open.URL, m, ""))

	get := func(url, user, pw string) (int, http.Header, string) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if user != "" || pw != "" {
			req.SetBasicAuth(user, pw)
		}
		resp, err := hc.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, string(b)
	}
	cases := []struct {
		name     string
		base     string
		user, pw string
		want     int
	}{
		{"closed without password", closed.URL, "admin", "", http.StatusForbidden},
		{"closed even with a guess", closed.URL, "admin", "s3cret", http.StatusForbidden},
		{"no credentials", open.URL, "", "", http.StatusUnauthorized},
		{"wrong password", open.URL, "admin", "s3cre", http.StatusUnauthorized},
		{"right password", open.URL, "admin", "s3cret", http.StatusOK},
		{"any user name", open.URL, "root", "s3cret", http.StatusOK},
	}
	for _, tc := range cases {
		for _, path := range []string{"/admin", "/admin/api"} {
			t.Run(tc.name+" "+path, func(t *testing.T) {
				code, h, _ := get(tc.base+path, tc.user, tc.pw)
				assert.Equal(t, tc.want, code)
				if code == http.StatusUnauthorized {
					assert.Contains(t, h.Get("WWW-Authenticate"), "Basic")
				}
			})
		}
	}
	_, _, page := get(open.URL+"/admin", "admin", "s3cret")
	assert.Contains(t, page, "&lt;script&gt;alert(1)&lt;/script&gt;")
	assert.NotContains(t, page, "<script>")
	_, h, body := get(open.URL+"/admin/api", "admin", "s3cret")
	assert.Equal(t, "application/json", h.Get("Content-Type"))
	var v AdminView
	require.NoError(t, json.Unmarshal([]byte(body), &v))
	assert.Equal(t, 1, v.Counts.Peers)
	require.Len(t, v.Peers, 1)
	assert.Equal(t, string(m.PeerID), v.Peers[0].PeerID)
	assert.True(t, v.Peers[0].Verified)
}

// TestPublicPage shows the endpoint and the connect URLs: external_url when
// set, else one per non-loopback IPv4 interface.
func TestPublicPage(t *testing.T) {
	get := func(url string) string {
		resp, err := hc.Get(url + "/")
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Contains(t, resp.Header.Get("Content-Security-Policy"), "default-src 'none'")
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	ext := startServer(t, ServerConfig{ExternalURL: "https://rv.example.org/"})
	page := get(ext.URL)
	assert.Contains(t, page, "https://rv.example.org")
	assert.Contains(t, page, `{"presence": {"rendezvous_wan": "https://rv.example.org"}}`)
	assert.Equal(t, []string{"https://rv.example.org"}, ext.ConnectURLs())

	local := startServer(t, ServerConfig{})
	page = get(local.URL)
	assert.Contains(t, page, local.URL, "the endpoint")
	assert.Contains(t, page, "loopback address only")
	_, port, _ := net.SplitHostPort(local.addr)
	for _, u := range local.ConnectURLs() {
		assert.True(t, strings.HasPrefix(u, "http://") && strings.HasSuffix(u, ":"+port), u)
		assert.NotContains(t, u, "127.0.0.1")
		assert.Contains(t, page, u)
	}
	assert.Equal(t, []string{"http://192.0.2.7:8787"}, ConnectURLs("", "192.0.2.7:8787"), "bound to one address")
	for _, u := range ConnectURLs("", "0.0.0.0:8787") {
		assert.True(t, strings.HasSuffix(u, ":8787"), u)
	}
}

func TestClientKey(t *testing.T) {
	cases := []struct {
		name, remote, xff string
		trust             bool
		want              string
	}{
		{"ipv4", "203.0.113.5:1234", "", true, "203.0.113.5"},
		{"ipv6 by /64", "[2001:db8:1:2:3:4:5:6]:1", "", true, "2001:db8:1:2::/64"},
		{"mapped ipv4", "[::ffff:203.0.113.5]:1", "", true, "203.0.113.5"},
		{"proxy on loopback", "127.0.0.1:5", "10.0.0.1, 198.51.100.7", true, "198.51.100.7"},
		{"proxy header ignored when not trusted", "127.0.0.1:5", "198.51.100.7", false, "127.0.0.1"},
		{"proxy header ignored from a remote address", "203.0.113.5:1", "198.51.100.7", true, "203.0.113.5"},
		{"garbage header", "127.0.0.1:5", "nonsense", true, "127.0.0.1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := http.NewRequest(http.MethodGet, "/", nil)
			r.RemoteAddr = tc.remote
			if tc.xff != "" {
				r.Header.Set("X-Forwarded-For", tc.xff)
			}
			assert.Equal(t, tc.want, clientKey(r, tc.trust))
		})
	}
}

func TestLimiterBoundedAndRefills(t *testing.T) {
	l := newLimiter(1, 2, 100)
	now := time.Unix(0, 0)
	ok, _ := l.allow("a", now)
	assert.True(t, ok)
	ok, _ = l.allow("a", now)
	assert.True(t, ok)
	ok, wait := l.allow("a", now)
	assert.False(t, ok)
	assert.Equal(t, time.Second, wait)
	ok, _ = l.allow("a", now.Add(time.Second))
	assert.True(t, ok)
	for i := range 1000 {
		l.allow(fmt.Sprint(i), now)
	}
	assert.LessOrEqual(t, l.len(), 100)
	l.prune(now.Add(time.Hour))
	assert.Zero(t, l.len())
}

// TestSweepIsBounded: a mass departure goes out RingSize/4 offlines per
// sweep, so that it cannot push every stream out of the ring; an offline for
// an unknown peer is accepted but not broadcast.
func TestSweepIsBounded(t *testing.T) {
	clock := newFakeClock()
	srv := startServer(t, ServerConfig{Now: clock.Now, RingSize: 8})
	st, _ := openStream(t, srv.URL, "")
	unknown := PresenceMsg{Type: TypeOffline, PeerID: idOf(t, newKey(t))}
	require.Equal(t, http.StatusNoContent, publish(t, srv.URL, unknown, ""))
	for range 5 {
		m := signed(t, newKey(t), TypeOnline, "p", clock.Now())
		require.Equal(t, http.StatusNoContent, publish(t, srv.URL, m, ""))
		assert.Equal(t, TypeOnline, st.next(t).Type, "the unknown peer's offline was not broadcast")
	}
	clock.Advance(time.Minute)
	for _, want := range []int{3, 1, 0} {
		srv.Sweep()
		assert.Equal(t, want, srv.Stats().Peers)
	}
	for range 5 {
		assert.Equal(t, TypeOffline, st.next(t).Type)
	}
	assert.EqualValues(t, 5, srv.Stats().OfflineSwept)
}

// noHijack hides http.Hijacker, as HTTP/2 or a wrapping middleware would.
type noHijack struct{ http.ResponseWriter }

func (n noHijack) Unwrap() http.ResponseWriter { return n.ResponseWriter }

// TestEventsWithoutHijack: streams work through a ResponseWriter that
// cannot be hijacked, and end when the server closes.
func TestEventsWithoutHijack(t *testing.T) {
	s := NewServer(ServerConfig{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.ServeHTTP(noHijack{w}, r)
	})}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	base := "http://" + ln.Addr().String()
	st, code := openStream(t, base, "")
	require.Equal(t, http.StatusOK, code)
	m := signed(t, newKey(t), TypeOnline, "alice", time.Now())
	require.Equal(t, http.StatusNoContent, publish(t, base, m, ""))
	assert.Equal(t, m.PeerID, st.next(t).PeerID)
	require.NoError(t, s.Close()) // ends the stream's handler
	recv(t, st.done, "the stream to end")
	require.NoError(t, hs.Close())
	assert.ErrorIs(t, <-served, http.ErrServerClosed)
}
