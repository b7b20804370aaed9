package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/adapters/p2p"
	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/cmd/goop/node"
	"github.com/goop-p2p/goop/domain/group"
	"github.com/goop-p2p/goop/domain/mq"
)

// freeTCPUDPPort returns a port free on 127.0.0.1 for both TCP and UDP (a
// node listens on both with p2p.listen_port).
func freeTCPUDPPort(t *testing.T) int {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		_ = ln.Close()
		if err == nil {
			_ = pc.Close()
			return port
		}
	}
	t.Fatal("no port free for both TCP and UDP")
	return 0
}

// waitGroupMsgs waits until sub has seen a group msg of gid with each payload
// in want, and fails on a duplicate.
func waitGroupMsgs(ctx context.Context, sub *app.Subscription, gid string, want map[string]bool) error {
	got := map[string]bool{}
	for len(got) < len(want) {
		select {
		case ev, ok := <-sub.C:
			if !ok {
				return errors.New("subscription ended")
			}
			if ev.Kind != app.EventGroup || ev.Group == nil || ev.Group.Type != group.EvMsg || ev.Group.Group != gid {
				continue
			}
			p := string(ev.Group.Payload)
			if !want[p] {
				continue
			}
			if got[p] {
				return fmt.Errorf("%s delivered twice", p)
			}
			got[p] = true
		case <-ctx.Done():
			return fmt.Errorf("%d of %d msgs: %w", len(got), len(want), ctx.Err())
		}
	}
	return nil
}

// A persistent group's host restarts (same folder, same port) under twenty
// real member nodes over libp2p: the host reloads the group and its members,
// the members find it again by themselves — each sends a join when its
// connection to the host drops, which the bus delivers once the host is
// back — and messages flow both ways again, each delivered once. Without
// that join nothing dials the restarted host (the members do not have it as
// a static peer) until they find it quiet for EvictAfter (150 s), past this
// test's minute; and without the bus transport's remembered addresses, a
// member whose peerstore kept none for the host (1 run in 5-20) could not
// dial it at all.
func TestGroupSurvivesHostRestartOverLibp2p(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 22 nodes")
	}
	const members = 20
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	gcfg := group.Config{RejoinInterval: 200 * time.Millisecond, JoinTimeout: 2 * time.Second}
	port := freeTCPUDPPort(t)
	hdir := t.TempDir()
	startHost := func(before func(*app.Runtime)) *node.Running {
		r, err := node.Start(ctx, hdir, node.Options{ListenIP: "127.0.0.1", NoAutoConnect: true, Groups: gcfg, BeforeRun: before,
			Init: node.InitOptions{Label: "host", Configure: func(c *app.Config) {
				c.Viewer.HTTPAddr = "127.0.0.1:0"
				c.P2P.ListenPort = port
			}}})
		require.NoError(t, err)
		return r
	}
	host := startHost(nil)
	hostAddr := fmt.Sprintf("/ip4/127.0.0.1/tcp/%d/p2p/%s", port, host.PeerID)
	hostID := mq.PeerID(host.PeerID.String())

	var gid string
	var cerr error
	require.NoError(t, host.Runtime.Do(ctx, func(now time.Time, n *app.Node) {
		gid = n.NewGroupID()
		_, cerr = n.Group(now).Create(now, group.CreateSpec{ID: gid, Name: "town", Type: group.AppChat,
			Lifecycle: group.Persistent, Access: group.Open})
	}))
	require.NoError(t, cerr)

	ms := make([]*node.Running, members)
	subs := make([]*app.Subscription, members)
	for i := range ms {
		r, err := node.Start(ctx, t.TempDir(), node.Options{ListenIP: "127.0.0.1", NoAutoConnect: true, Groups: gcfg,
			Init: node.InitOptions{Label: fmt.Sprintf("m%d", i), Configure: func(c *app.Config) {
				c.Viewer.HTTPAddr = "127.0.0.1:0"
			}}})
		require.NoError(t, err)
		// Dialed once, not a static peer: nothing but the group dials the
		// host again after it restarts.
		require.NoError(t, p2p.ConnectPeers(ctx, r.Host, []string{hostAddr}))
		t.Cleanup(func() { _ = r.Close() })
		ms[i], subs[i] = r, r.Runtime.Subscribe(4096)
		t.Cleanup(subs[i].Close)
	}
	names := make([]int, members)
	for i := range names {
		names[i] = i
	}
	require.NoError(t, joinAll(ctx, ms, names, hostID, gid))

	send := func(r *node.Running, text string) {
		t.Helper()
		var serr error
		require.NoError(t, r.Runtime.Do(ctx, func(now time.Time, n *app.Node) {
			serr = n.Group(now).SendToGroup(now, hostID, gid, group.TypeMsg, []byte(`{"text":"`+text+`"}`))
		}))
		require.NoError(t, serr)
	}
	// Before the restart: the host's msg reaches every member.
	send(host, "before")
	for i := range ms {
		require.NoError(t, waitGroupMsgs(ctx, subs[i], gid, map[string]bool{`{"text":"before"}`: true}), "member %d", i)
	}

	require.NoError(t, host.Close())
	var hostSub *app.Subscription
	host = startHost(func(rt *app.Runtime) { hostSub = rt.Subscribe(4096) })
	t.Cleanup(func() { _ = host.Close() })
	t.Cleanup(hostSub.Close)

	// After it: the host's msg and a member's reach everyone else, once.
	send(host, "after, from the host")
	send(ms[0], "after, from m0")
	fromHost, fromM0 := `{"text":"after, from the host"}`, `{"text":"after, from m0"}`
	require.NoError(t, waitGroupMsgs(ctx, hostSub, gid, map[string]bool{fromM0: true}), "host")
	require.NoError(t, waitGroupMsgs(ctx, subs[0], gid, map[string]bool{fromHost: true}), "member 0")
	for i := 1; i < members; i++ {
		require.NoError(t, waitGroupMsgs(ctx, subs[i], gid, map[string]bool{fromHost: true, fromM0: true}), "member %d", i)
	}
}
