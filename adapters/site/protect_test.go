package site

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/stretchr/testify/require"
)

// trimHost is a TCP host on 127.0.0.1 whose connection manager trims down
// to one connection once it has more than two, with no grace period.
func trimHost(t *testing.T) (host.Host, *connmgr.BasicConnMgr) {
	t.Helper()
	cm, err := connmgr.NewConnManager(1, 2, connmgr.WithGracePeriod(0))
	require.NoError(t, err)
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.ConnectionManager(cm))
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.Close() })
	return h, cm
}

// A site transfer keeps its connection, on both sides, when the connection
// managers trim: the peers each side merely happens to be connected to are
// closed instead, and the protection ends with the transfer.
func TestTransferSurvivesConnectionTrim(t *testing.T) {
	root, _ := siteTree(t)
	// Larger than yamux's first stream window: the server stays in its
	// transfer while the visitor does not read.
	blob := make([]byte, 4<<20)
	_, _ = rand.Read(blob)
	require.NoError(t, os.WriteFile(filepath.Join(root, "blob.bin"), blob, 0o644))
	srv, scm := trimHost(t)
	Register(srv, root, ServerOptions{})
	cli, ccm := trimHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	connect := func(a, b host.Host) {
		require.NoError(t, a.Connect(ctx, peer.AddrInfo{ID: b.ID(), Addrs: b.Addrs()}))
	}
	connect(cli, srv)
	others := make([]host.Host, 0, 3)
	for range 3 {
		o := newHost(t)
		connect(o, srv)
		connect(o, cli)
		// Worth more than the transfer's peer to both connection managers:
		// without the protection, that peer would be the first to go.
		scm.TagPeer(o.ID(), "test", 100)
		ccm.TagPeer(o.ID(), "test", 100)
		others = append(others, o)
	}

	_, size, body, err := Fetch(ctx, cli, srv.ID(), "/blob.bin")
	require.NoError(t, err)
	require.EqualValues(t, len(blob), size)
	require.True(t, ccm.IsProtected(srv.ID(), ""), "the visitor protects the server")
	require.True(t, scm.IsProtected(cli.ID(), ""), "the server, still sending, protects the visitor")

	ccm.TrimOpenConns(ctx)
	scm.TrimOpenConns(ctx)
	require.Equal(t, network.Connected, cli.Network().Connectedness(srv.ID()), "the transfer's connection stays")
	require.Less(t, len(cli.Network().Peers()), 1+len(others), "the trim closed other connections")

	got, err := io.ReadAll(body)
	require.NoError(t, err)
	require.True(t, bytes.Equal(blob, got), "the whole file arrives")
	require.NoError(t, body.Close())
	require.False(t, ccm.IsProtected(srv.ID(), ""), "the visitor's protection ends with the body")

	// The server lifts its protection before it ends the stream: a raw
	// request read to its end sees it gone.
	st, err := cli.NewStream(ctx, srv.ID(), Protocol)
	require.NoError(t, err)
	_, err = io.WriteString(st, "GET /\n")
	require.NoError(t, err)
	require.NoError(t, st.CloseWrite())
	reply, err := io.ReadAll(st)
	require.NoError(t, err)
	require.Contains(t, string(reply), "<h1>home</h1>")
	require.False(t, scm.IsProtected(cli.ID(), ""), "the server's protection ends with its transfers")
}

// A fetch that fails after its stream opened leaves no protection behind.
func TestFailedFetchReleasesProtection(t *testing.T) {
	root, _ := siteTree(t)
	srv, _ := trimHost(t)
	Register(srv, root, ServerOptions{})
	cli, ccm := trimHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, cli.Connect(ctx, peer.AddrInfo{ID: srv.ID(), Addrs: srv.Addrs()}))
	_, _, _, err := Fetch(ctx, cli, srv.ID(), "/missing.html")
	require.ErrorIs(t, err, ErrNotFound)
	require.False(t, ccm.IsProtected(srv.ID(), ""))
}
