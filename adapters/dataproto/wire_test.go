package dataproto

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/adapters/p2p"
)

const waitFor = 10 * time.Second

func newHost(t *testing.T) host.Host {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	h, err := p2p.NewHost(context.Background(), p2p.HostConfig{PrivKey: key, ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.Close() })
	return h
}

func connect(t *testing.T, a, b host.Host) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, a.Connect(ctx, peer.AddrInfo{ID: b.ID(), Addrs: b.Addrs()}))
}

// serving returns a host answering from the public groups surface and a
// client host connected to it.
func serving(t *testing.T) (srv, cli host.Host) {
	t.Helper()
	reg, err := NewRegistry(PublicGroupsView(fakeHosted(hostedGroups())))
	require.NoError(t, err)
	srv, cli = newHost(t), newHost(t)
	Register(srv, reg, ServerOptions{})
	connect(t, cli, srv)
	return srv, cli
}

func query(t *testing.T, cli host.Host, p peer.ID, req Request) ([]map[string]any, error) {
	t.Helper()
	raw, err := Query(context.Background(), cli, p, req)
	if err != nil {
		return nil, err
	}
	var rows []map[string]any
	require.NoError(t, json.Unmarshal(raw, &rows))
	return rows, nil
}

func TestQueryGroupsOverLibp2p(t *testing.T) {
	srv, cli := serving(t)
	rows, err := query(t, cli, srv.ID(), Request{Op: "query", Table: "_groups"})
	require.NoError(t, err)
	require.Len(t, rows, 1, "public rows only")
	assert.Equal(t, "chess", rows[0]["name"])
	assert.NotContains(t, rows[0], "state")
	assert.NotContains(t, rows[0], "roles")

	for _, table := range []string{"_group_invites", "_mq_outbox", "_migrations", "_group_history", "_peers", "games"} {
		_, err := query(t, cli, srv.ID(), Request{Table: table})
		require.Error(t, err)
		assert.True(t, errors.Is(err, ErrNotExposed), "%v", err)
		assert.Contains(t, err.Error(), `refused the query: table "`+table+`" is not exposed by this peer`)
	}
}

// raw sends line on a fresh stream, half-closes, and returns what came back.
func raw(t *testing.T, cli host.Host, p peer.ID, line []byte) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	s, err := cli.NewStream(ctx, p, Protocol)
	require.NoError(t, err)
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(waitFor))
	_, _ = s.Write(line)
	_ = s.CloseWrite()
	return io.ReadAll(s)
}

func reply(t *testing.T, b []byte) Reply {
	t.Helper()
	require.True(t, bytes.HasSuffix(b, []byte("\n")), "one line: %q", b)
	var r Reply
	require.NoError(t, json.Unmarshal(b, &r))
	return r
}

func TestServerRefusesWithClearErrors(t *testing.T) {
	srv, cli := serving(t)
	cases := []struct {
		name, line, code, msg string
	}{
		{"SQL text", `{"op":"query","sql":"SELECT * FROM _mq_outbox"}`, CodeSQLText, "SQL text is not accepted"},
		{"compat where", `{"op":"query","table":"_groups","where":"access = 'invite-only'"}`, CodeSQLText, "SQL text is not accepted"},
		{"internal table", `{"op":"query","table":"_group_invites"}`, CodeNotExposed, `table "_group_invites" is not exposed by this peer`},
		{"not exposed", `{"op":"query","table":"users"}`, CodeNotExposed, `table "users" is not exposed by this peer`},
		{"compat insert", `{"op":"insert","table":"_groups","data":{"id":"x"}}`, CodeUnsupported, `op "insert" is not supported`},
		{"compat schema op", `{"op":"delete-table","table":"_groups"}`, CodeUnsupported, `op "delete-table" is not supported`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, err := raw(t, cli, srv.ID(), []byte(c.line+"\n"))
			require.NoError(t, err)
			r := reply(t, b)
			assert.False(t, r.OK)
			assert.Equal(t, c.code, r.Code)
			assert.Contains(t, r.Error, c.msg)
		})
	}

	t.Run("compat request without newline, ended by half-close", func(t *testing.T) {
		b, err := raw(t, cli, srv.ID(), []byte(`{"op":"query","table":"_groups"}`))
		require.NoError(t, err)
		r := reply(t, b)
		require.True(t, r.OK)
		var rows []map[string]any
		require.NoError(t, json.Unmarshal(r.Data, &rows))
		assert.Len(t, rows, 1)
	})
}

func TestServerResetsOnGarbage(t *testing.T) {
	srv, cli := serving(t)
	cases := []struct {
		name string
		line []byte
	}{
		{"not JSON", []byte("hello there\n")},
		{"binary", []byte{0xff, 0xfe, 0x00, '\n'}},
		{"over 64 KiB", append(append([]byte(`{"op":"query","table":"_groups","x":"`), bytes.Repeat([]byte("a"), MaxRequestBytes)...), []byte("\"}\n")...)},
		{"empty", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, err := raw(t, cli, srv.ID(), c.line)
			require.Error(t, err, "got %q", b)
			assert.ErrorIs(t, err, network.ErrReset)
		})
	}
	rows, err := query(t, cli, srv.ID(), Request{Table: "_groups"})
	require.NoError(t, err, "the server still answers")
	assert.Len(t, rows, 1)
}

func fakeDataServer(t *testing.T, fn func(s network.Stream)) (srv, cli host.Host) {
	t.Helper()
	srv, cli = newHost(t), newHost(t)
	srv.SetStreamHandler(Protocol, func(s network.Stream) {
		_, _ = io.ReadAll(io.LimitReader(s, 1<<16))
		fn(s)
	})
	connect(t, cli, srv)
	return srv, cli
}

func TestQueryAgainstMisbehavingPeers(t *testing.T) {
	cases := []struct {
		name  string
		serve func(s network.Stream)
		code  string
		msg   string
	}{
		{"garbage", func(s network.Stream) { _, _ = io.WriteString(s, "nope\n"); _ = s.Close() }, CodeProtocol, "not a JSON object"},
		{"data not a list", func(s network.Stream) { _, _ = io.WriteString(s, `{"ok":true,"data":{"a":1}}`+"\n"); _ = s.Close() }, CodeProtocol, "not a list of rows"},
		{"compat error without ok", func(s network.Stream) {
			_, _ = io.WriteString(s, `{"error":"no such table: foo\u0007\n<script>"}`+"\n")
			_ = s.Close()
		}, CodeRefused, "refused the query: no such table: foo  <script>"},
		{"unknown code", func(s network.Stream) {
			_, _ = io.WriteString(s, `{"ok":false,"error":"x","code":"owned"}`+"\n")
			_ = s.Close()
		}, CodeRefused, "refused the query: x"},
		{"closes without reply", func(s network.Stream) { _ = s.Close() }, CodeUnreachable, "closed the stream without a reply"},
		{"resets", func(s network.Stream) { _ = s.Reset() }, CodeUnreachable, "unreachable"},
		{"reply too long", func(s network.Stream) {
			_, _ = io.WriteString(s, `{"ok":true,"data":["`+strings.Repeat("a", MaxReplyBytes)+`"]}`+"\n")
			_ = s.Close()
		}, CodeProtocol, "over"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv, cli := fakeDataServer(t, c.serve)
			_, err := Query(context.Background(), cli, srv.ID(), Request{Table: "_groups"})
			require.Error(t, err)
			assert.Equal(t, c.code, CodeOf(err), "%v", err)
			assert.Contains(t, err.Error(), c.msg)
		})
	}

	t.Run("compat null data is an empty list", func(t *testing.T) {
		srv, cli := fakeDataServer(t, func(s network.Stream) { _, _ = io.WriteString(s, `{"ok":true}`+"\n"); _ = s.Close() })
		got, err := Query(context.Background(), cli, srv.ID(), Request{Table: "_groups"})
		require.NoError(t, err)
		assert.JSONEq(t, `[]`, string(got))
	})

	t.Run("silent peer times out", func(t *testing.T) {
		release := make(chan struct{})
		defer close(release)
		srv, cli := fakeDataServer(t, func(s network.Stream) { <-release; _ = s.Reset() })
		start := time.Now()
		_, err := QueryWith(context.Background(), cli, srv.ID(), Request{Table: "_groups"}, QueryOptions{Timeout: 300 * time.Millisecond})
		assert.Equal(t, CodeTimeout, CodeOf(err), "%v", err)
		assert.Less(t, time.Since(start), 5*time.Second)
	})

	t.Run("unreachable peer", func(t *testing.T) {
		cli := newHost(t)
		key, _, err := crypto.GenerateEd25519Key(rand.Reader)
		require.NoError(t, err)
		nobody, err := peer.IDFromPrivateKey(key)
		require.NoError(t, err)
		_, err = Query(context.Background(), cli, nobody, Request{Table: "_groups"})
		assert.Equal(t, CodeUnreachable, CodeOf(err), "%v", err)
	})

	t.Run("bad request is not sent", func(t *testing.T) {
		cli := newHost(t)
		_, err := Query(context.Background(), cli, cli.ID(), Request{Table: "x; DROP TABLE y"})
		assert.Equal(t, CodeNotExposed, CodeOf(err))
	})
}
