package rendezvous

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/domain/presence"
)

const waitFor = 10 * time.Second

// fakeClock is a settable clock for the server.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// testServer runs a Server on 127.0.0.1 for one test.
type testServer struct {
	*Server
	URL  string
	addr string
	pubs chan PresenceMsg // accepted publishes
	rm   chan string      // removed streams' reasons
	add  chan struct{}    // added streams
}

func startServer(t *testing.T, cfg ServerConfig) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	return startServerOn(t, ln, cfg)
}

func startServerOn(t *testing.T, ln net.Listener, cfg ServerConfig) *testServer {
	t.Helper()
	ts := &testServer{
		URL:  "http://" + ln.Addr().String(),
		addr: ln.Addr().String(),
		pubs: make(chan PresenceMsg, 1024),
		rm:   make(chan string, 1024),
		add:  make(chan struct{}, 1024),
	}
	cfg.hooks = &hooks{
		published:     func(m PresenceMsg) { ts.pubs <- m },
		clientRemoved: func(r string) { ts.rm <- r },
		clientAdded:   func() { ts.add <- struct{}{} },
	}
	ts.Server = NewServer(cfg)
	done := make(chan error, 1)
	go func() { done <- ts.Serve(ln) }()
	t.Cleanup(func() {
		require.NoError(t, ts.Close())
		require.NoError(t, <-done)
	})
	return ts
}

func recv[T any](t *testing.T, c <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(waitFor):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

func newKey(t testing.TB) crypto.PrivKey {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	return k
}

func idOf(t testing.TB, k crypto.PrivKey) presence.PeerID {
	t.Helper()
	id, err := peer.IDFromPrivateKey(k)
	require.NoError(t, err)
	return presence.PeerID(id.String())
}

// signed returns a signed presence of key with ts.
func signed(t testing.TB, key crypto.PrivKey, typ, label string, ts time.Time) PresenceMsg {
	t.Helper()
	m := PresenceMsg{Type: typ, Content: label, Addrs: []string{"/ip4/127.0.0.1/tcp/4001"}, TS: ts.UnixMilli()}
	require.NoError(t, Sign(&m, key))
	return m
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return b
}

var hc = &http.Client{Timeout: waitFor}

// post sends body to /publish, from the given X-Forwarded-For address if not empty.
func post(t testing.TB, base string, body []byte, from string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, base+"/publish", bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	if from != "" {
		req.Header.Set("X-Forwarded-For", from)
	}
	resp, err := hc.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func publish(t testing.TB, base string, m PresenceMsg, from string) int {
	t.Helper()
	code, _ := post(t, base, mustJSON(t, m), from)
	return code
}

// stream is an open GET /events.
type stream struct {
	resp *http.Response
	msgs chan PresenceMsg
	done chan struct{}
}

// openStream opens /events (from the X-Forwarded-For address if not empty)
// and returns it with its status.
func openStream(t *testing.T, base, from string) (*stream, int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/events", nil)
	require.NoError(t, err)
	if from != "" {
		req.Header.Set("X-Forwarded-For", from)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		cancel()
		return nil, resp.StatusCode
	}
	s := &stream{resp: resp, msgs: make(chan PresenceMsg, 4096), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			line, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			var m PresenceMsg
			if json.Unmarshal([]byte(line), &m) == nil {
				s.msgs <- m
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		resp.Body.Close()
		<-s.done
	})
	return s, resp.StatusCode
}

func (s *stream) next(t *testing.T) PresenceMsg {
	t.Helper()
	return recv(t, s.msgs, "an event")
}

func (s *stream) close() {
	s.resp.Body.Close()
	<-s.done
}
