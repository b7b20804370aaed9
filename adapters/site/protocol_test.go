package site

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
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

// pair returns a server host serving root and a client host connected to it.
func pair(t *testing.T, root string) (srv, cli host.Host) {
	t.Helper()
	srv, cli = newHost(t), newHost(t)
	Register(srv, root, ServerOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, cli.Connect(ctx, peer.AddrInfo{ID: srv.ID(), Addrs: srv.Addrs()}))
	return srv, cli
}

func fetchAll(t *testing.T, cli host.Host, p peer.ID, path string) (string, []byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	mime, size, body, err := Fetch(ctx, cli, p, path)
	if err != nil {
		return "", nil, err
	}
	defer body.Close()
	b, err := io.ReadAll(body)
	if err != nil {
		return mime, b, err
	}
	require.Equal(t, size, int64(len(b)))
	return mime, b, nil
}

func TestFetchOverLibp2p(t *testing.T) {
	root, _ := siteTree(t)
	blob := make([]byte, 3<<20+17)
	_, _ = rand.Read(blob)
	require.NoError(t, os.WriteFile(filepath.Join(root, "blob.bin"), blob, 0o644))
	srv, cli := pair(t, root)

	mime, body, err := fetchAll(t, cli, srv.ID(), "/")
	require.NoError(t, err)
	assert.Equal(t, "text/html; charset=utf-8", mime, "a mime type with a space survives the framing")
	assert.Equal(t, "<h1>home</h1>", string(body))

	mime, body, err = fetchAll(t, cli, srv.ID(), "/blob.bin")
	require.NoError(t, err)
	assert.Equal(t, DefaultMIME, mime)
	assert.True(t, bytes.Equal(blob, body), "3 MiB body arrives intact")

	// Several fetches at once share the connection.
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			_, b, err := fetchAll(t, cli, srv.ID(), "/sub/")
			if err == nil && string(b) != "<p>sub</p>" {
				err = errors.New("wrong body " + string(b))
			}
			errs <- err
		}()
	}
	for range 8 {
		require.NoError(t, <-errs)
	}
}

func TestFetchErrorsAreTyped(t *testing.T) {
	root, outside := siteTree(t)
	require.NoError(t, os.Symlink(outside, filepath.Join(root, "escape.txt")))
	big := filepath.Join(root, "big.bin")
	require.NoError(t, os.WriteFile(big, nil, 0o644))
	require.NoError(t, os.Truncate(big, MaxFileBytes+1))
	srv, cli := pair(t, root)

	cases := []struct {
		name, path string
		want       error
	}{
		{"missing", "/nope.html", ErrNotFound},
		{"lua", "/lua/main.lua", ErrForbidden},
		{"dot-file", "/.env", ErrForbidden},
		{"traversal", "/../secret.txt", ErrForbidden},
		{"encoded traversal", "/%2e%2e/secret.txt", ErrForbidden},
		{"symlink out of the root", "/escape.txt", ErrForbidden},
		{"oversize (sparse file)", "/big.bin", ErrTooLarge},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := fetchAll(t, cli, srv.ID(), c.path)
			require.Error(t, err)
			assert.ErrorIs(t, err, c.want, "%v", err)
		})
	}

	t.Run("newline in the path is never sent", func(t *testing.T) {
		_, _, err := fetchAll(t, cli, srv.ID(), "/a\nGET /.env")
		assert.ErrorIs(t, err, ErrForbidden)
	})
}

func TestFetchUnreachablePeer(t *testing.T) {
	cli := newHost(t)
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	nobody, err := peer.IDFromPrivateKey(key)
	require.NoError(t, err)
	start := time.Now()
	_, _, err = fetchAll(t, cli, nobody, "/")
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrUnreachable)
	assert.Less(t, time.Since(start), 5*time.Second, "a peer without addresses fails fast")

	// A peer that does not speak the protocol.
	other := newHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, cli.Connect(ctx, peer.AddrInfo{ID: other.ID(), Addrs: other.Addrs()}))
	_, _, err = fetchAll(t, cli, other.ID(), "/")
	assert.ErrorIs(t, err, ErrUnreachable)
}

// fakeServer registers a handler that reads the request and then runs fn.
func fakeServer(t *testing.T, fn func(s network.Stream)) (srv, cli host.Host) {
	t.Helper()
	srv, cli = newHost(t), newHost(t)
	srv.SetStreamHandler(Protocol, func(s network.Stream) {
		buf := make([]byte, 512)
		_, _ = s.Read(buf)
		fn(s)
	})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, cli.Connect(ctx, peer.AddrInfo{ID: srv.ID(), Addrs: srv.Addrs()}))
	return srv, cli
}

func TestFetchFromMisbehavingPeers(t *testing.T) {
	cases := []struct {
		name  string
		serve func(s network.Stream)
		want  error
	}{
		{"garbage header", func(s network.Stream) { _, _ = io.WriteString(s, "HELLO THERE\n"); _ = s.Close() }, ErrProtocol},
		{"header line too long", func(s network.Stream) {
			_, _ = io.WriteString(s, "OK "+strings.Repeat("x", 2000)+" 1\n")
			_ = s.Close()
		}, ErrProtocol},
		{"announces over 50 MB", func(s network.Stream) { _, _ = io.WriteString(s, "OK a/b 999999999999\n"); _ = s.Close() }, ErrTooLarge},
		{"closes without answer", func(s network.Stream) { _ = s.Close() }, ErrUnreachable},
		{"resets", func(s network.Stream) { _ = s.Reset() }, ErrUnreachable},
		{"body shorter than announced", func(s network.Stream) {
			_, _ = io.WriteString(s, "OK text/plain 100\nonly ten b")
			_ = s.Close()
		}, ErrUnreachable},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv, cli := fakeServer(t, c.serve)
			_, _, err := fetchAll(t, cli, srv.ID(), "/")
			require.Error(t, err)
			assert.ErrorIs(t, err, c.want, "%v", err)
		})
	}

	t.Run("extra bytes after the body are ignored", func(t *testing.T) {
		srv, cli := fakeServer(t, func(s network.Stream) {
			_, _ = io.WriteString(s, "OK text/plain 5\nhelloEXTRA")
			_ = s.Close()
		})
		_, b, err := fetchAll(t, cli, srv.ID(), "/")
		require.NoError(t, err)
		assert.Equal(t, "hello", string(b))
	})

	t.Run("silent peer times out", func(t *testing.T) {
		release := make(chan struct{})
		defer close(release)
		srv, cli := fakeServer(t, func(s network.Stream) { <-release; _ = s.Reset() })
		start := time.Now()
		_, _, _, err := FetchWith(context.Background(), cli, srv.ID(), "/", FetchOptions{HeaderTimeout: 300 * time.Millisecond})
		require.Error(t, err)
		assert.ErrorIs(t, err, ErrUnreachable)
		assert.ErrorIs(t, err, os.ErrDeadlineExceeded)
		assert.Less(t, time.Since(start), 5*time.Second)
	})

	t.Run("stalled body times out", func(t *testing.T) {
		release := make(chan struct{})
		defer close(release)
		srv, cli := fakeServer(t, func(s network.Stream) {
			_, _ = io.WriteString(s, "OK text/plain 100\nabc")
			<-release
			_ = s.Reset()
		})
		_, _, body, err := FetchWith(context.Background(), cli, srv.ID(), "/", FetchOptions{ReadTimeout: 300 * time.Millisecond})
		require.NoError(t, err)
		defer body.Close()
		_, err = io.ReadAll(body)
		assert.ErrorIs(t, err, ErrUnreachable)
	})

	t.Run("cancelled context ends the body", func(t *testing.T) {
		release := make(chan struct{})
		defer close(release)
		srv, cli := fakeServer(t, func(s network.Stream) {
			_, _ = io.WriteString(s, "OK text/plain 100\nabc")
			<-release
			_ = s.Reset()
		})
		ctx, cancel := context.WithCancel(context.Background())
		_, _, body, err := Fetch(ctx, cli, srv.ID(), "/")
		require.NoError(t, err)
		defer body.Close()
		buf := make([]byte, 3)
		_, err = io.ReadFull(body, buf)
		require.NoError(t, err)
		cancel()
		_, err = io.ReadAll(body)
		assert.ErrorIs(t, err, ErrUnreachable)
	})
}

// rawStream opens a Protocol stream and writes b.
func rawStream(t *testing.T, cli host.Host, p peer.ID, b []byte) network.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	s, err := cli.NewStream(ctx, p, Protocol)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Reset() })
	_ = s.SetDeadline(time.Now().Add(waitFor))
	_, _ = s.Write(b)
	return s
}

func TestServerResetsOnGarbage(t *testing.T) {
	root, _ := siteTree(t)
	srv, cli := pair(t, root)
	cases := []struct {
		name string
		req  []byte
	}{
		{"not GET", []byte("PUT /index.html\n")},
		{"HTTP", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")},
		{"binary", []byte{0xff, 0x00, 0x13, '\n'}},
		{"request line over 4 KiB", append([]byte("GET /"), bytes.Repeat([]byte("a"), MaxRequestLine+10)...)},
		{"no newline before close", []byte("GET /index.html")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := rawStream(t, cli, srv.ID(), c.req)
			_ = s.CloseWrite()
			b, err := io.ReadAll(s)
			if c.name == "HTTP" {
				// `GET / HTTP/1.1` is a (strange) path: it is just not found.
				require.NoError(t, err)
				assert.Equal(t, "ERR not found\n", string(b))
				return
			}
			require.Error(t, err, "got %q", b)
			assert.ErrorIs(t, err, network.ErrReset)
		})
	}
	// The server still serves.
	_, body, err := fetchAll(t, cli, srv.ID(), "/index.html")
	require.NoError(t, err)
	assert.Equal(t, "<h1>home</h1>", string(body))
}

func TestServerAnswersCompatRequests(t *testing.T) {
	root, _ := siteTree(t)
	srv, cli := pair(t, root)
	s := rawStream(t, cli, srv.ID(), []byte("GET /style.css\r\n"))
	b, err := io.ReadAll(s)
	require.NoError(t, err)
	assert.Equal(t, "OK text/css; charset=utf-8 6\nbody{}", string(b))

	s = rawStream(t, cli, srv.ID(), []byte("GET /lua/main.lua\n"))
	b, err = io.ReadAll(s)
	require.NoError(t, err)
	assert.Equal(t, "ERR forbidden\n", string(b))
}

func TestServerSaysBusy(t *testing.T) {
	root, _ := siteTree(t)
	srv, cli := newHost(t), newHost(t)
	s := Register(srv, root, ServerOptions{MaxConcurrent: 1})
	s.sem <- struct{}{} // one transfer under way
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, cli.Connect(ctx, peer.AddrInfo{ID: srv.ID(), Addrs: srv.Addrs()}))
	_, _, err := fetchAll(t, cli, srv.ID(), "/")
	assert.ErrorIs(t, err, ErrRefused)
	assert.Contains(t, err.Error(), "busy")
	<-s.sem
	_, _, err = fetchAll(t, cli, srv.ID(), "/")
	assert.NoError(t, err)
	s.Close()
	_, _, err = fetchAll(t, cli, srv.ID(), "/")
	assert.ErrorIs(t, err, ErrUnreachable, "after Close the protocol is gone")
}
