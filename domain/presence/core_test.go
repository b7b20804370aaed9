package presence

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var t0 = time.UnixMilli(1_700_000_000_000).UTC()

func at(d time.Duration) time.Time { return t0.Add(d) }

// ms is the Unix millisecond time t0+d, for message ts.
func ms(d time.Duration) int64 { return at(d).UnixMilli() }

func online(id PeerID, ts int64, label string, addrs ...string) Msg {
	return Msg{Type: TypeOnline, PeerID: id, Content: label, Addrs: addrs, TS: ts}
}

func update(id PeerID, ts int64, label string, addrs ...string) Msg {
	m := online(id, ts, label, addrs...)
	m.Type = TypeUpdate
	return m
}

func offline(id PeerID, ts int64) Msg { return Msg{Type: TypeOffline, PeerID: id, TS: ts} }

// lan is a presence received over GossipSub, signed by its peer.
func lan(m Msg) Received { return Received{Source: SourceLAN, From: m.PeerID, Msg: m} }

// wan is a presence relayed by a rendezvous server (sender unknown).
func wan(m Msg, verified bool) Received {
	return Received{Source: SourceWAN, Verified: verified, Msg: m}
}

func newCore(cfg Config, restored ...Peer) *Core {
	return New(me, cfg, Profile{Label: "me", Addrs: []string{"/ip4/127.0.0.1/tcp/1"}}, restored)
}

func started(cfg Config, restored ...Peer) *Core {
	c := newCore(cfg, restored...)
	require.NoError(nil, c.Handle(t0, Start{}))
	c.Drain()
	return c
}

func eventTypes(r Ready) []string {
	var out []string
	for _, e := range r.Events {
		out = append(out, e.Type+" "+string(e.Peer.ID))
	}
	return out
}

func changeKinds(r Ready) []string {
	var out []string
	for _, c := range r.Changes {
		k := "put"
		if c.Kind == DeletePeer {
			k = "delete"
		}
		out = append(out, k+" "+string(c.ID))
	}
	return out
}

func mustPeer(t *testing.T, c *Core, id PeerID) Peer {
	t.Helper()
	p, ok := c.Peer(id)
	require.True(t, ok, "peer %s not in the table", id)
	return p
}

func TestNewPeerIsOnlinePersistedAnnouncedAndHinted(t *testing.T) {
	c := started(Config{})
	m := validMsg()
	m.TS = ms(0)
	require.NoError(t, c.Handle(at(time.Second), lan(m)))
	r := c.Drain()
	assert.Equal(t, []string{"peer_online " + string(alice)}, eventTypes(r))
	assert.Equal(t, []string{"put " + string(alice)}, changeKinds(r))
	require.Len(t, r.Dial, 1)
	assert.Equal(t, DialHint{Peer: alice, Addrs: m.Addrs, Source: SourceLAN}, r.Dial[0])
	p := mustPeer(t, c, alice)
	assert.Equal(t, Peer{ID: alice, Label: m.Content, Email: m.Email, AvatarHash: m.AvatarHash,
		ActiveTemplate: m.ActiveTemplate, PublicKey: m.PublicKey, EncryptionSupported: true, Version: m.GoopClientVersion,
		Addrs: m.Addrs, Verified: true, Source: SourceLAN, Online: true, LastSeen: at(time.Second), TS: m.TS}, p)
	assert.Equal(t, p, *r.Changes[0].Peer)
	assert.Equal(t, p, r.Events[0].Peer)
}

func TestReceiveRules(t *testing.T) {
	tests := []struct {
		name    string
		first   *Received // accepted before the checked message (at t0)
		in      Received  // the checked message (at t0+1s)
		err     error
		events  []string
		label   string // expected label of alice afterwards ("" = not in the table)
		verifed bool
	}{
		{"newer ts wins", ptr(lan(online(alice, ms(0), "old"))), lan(update(alice, ms(time.Second), "new")),
			nil, []string{"peer_updated " + string(alice)}, "new", true},
		{"older ts is stale", ptr(lan(online(alice, ms(5*time.Second), "kept"))), lan(update(alice, ms(time.Second), "older")),
			ErrStale, nil, "kept", true},
		{"same ts is stale", ptr(lan(online(alice, ms(0), "kept"))), lan(update(alice, ms(0), "dup")),
			ErrStale, nil, "kept", true},
		{"sender not the peer is forged", nil, Received{Source: SourceLAN, From: bob, Msg: online(alice, ms(0), "fake")},
			ErrForged, nil, "", false},
		{"forged update of a known peer changes nothing", ptr(lan(online(alice, ms(0), "real"))),
			Received{Source: SourceLAN, From: bob, Msg: update(alice, ms(time.Second), "fake")}, ErrForged, nil, "real", true},
		{"unknown sender is accepted unverified", nil, wan(online(alice, ms(0), "wan"), false),
			nil, []string{"peer_online " + string(alice)}, "wan", false},
		{"server-verified message is verified", nil, wan(online(alice, ms(0), "wan"), true),
			nil, []string{"peer_online " + string(alice)}, "wan", true},
		{"the wire's verified claim is ignored", nil, wan(Msg{Type: TypeOnline, PeerID: alice, TS: 1, Verified: true}, false),
			nil, []string{"peer_online " + string(alice)}, "", false},
		{"unverified message about a verified online peer is refused", ptr(lan(online(alice, ms(0), "real"))),
			wan(update(alice, ms(time.Second), "impostor"), false), ErrUnverified, nil, "real", true},
		{"message about ourselves is refused", nil, lan(online(me, ms(0), "me?")), ErrSelf, nil, "", false},
		{"invalid message is refused", nil, lan(online(alice, 0, "no ts")), ErrInvalid, nil, "", false},
		{"offline of an unknown peer does nothing", nil, lan(offline(alice, ms(0))), nil, nil, "", false},
		{"explicit offline", ptr(lan(online(alice, ms(0), "a"))), lan(offline(alice, ms(time.Second))),
			nil, []string{"peer_offline " + string(alice)}, "a", true},
		{"offline wins a ts tie", ptr(lan(online(alice, ms(0), "a"))), lan(offline(alice, ms(0))),
			nil, []string{"peer_offline " + string(alice)}, "a", true},
		{"unverified offline of a verified peer is refused", ptr(lan(online(alice, ms(0), "a"))),
			wan(offline(alice, ms(time.Second)), false), ErrUnverified, nil, "a", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := started(Config{})
			if tt.first != nil {
				require.NoError(t, c.Handle(t0, *tt.first))
				c.Drain()
			}
			err := c.Handle(at(time.Second), tt.in)
			if tt.err != nil {
				assert.ErrorIs(t, err, tt.err)
			} else {
				assert.NoError(t, err)
			}
			r := c.Drain()
			assert.Equal(t, tt.events, eventTypes(r))
			if tt.err != nil {
				assert.Empty(t, r.Changes, "a refused message persists nothing")
			}
			p, ok := c.Peer(alice)
			if tt.label == "" && tt.events == nil {
				assert.False(t, ok && tt.first == nil, "alice must not be in the table")
				return
			}
			require.True(t, ok)
			assert.Equal(t, tt.label, p.Label)
			assert.Equal(t, tt.verifed, p.Verified)
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestUnverifiedTakesOverOnceVerifiedPeerIsOffline(t *testing.T) {
	c := started(Config{})
	require.NoError(t, c.Handle(t0, lan(online(alice, ms(0), "real"))))
	require.NoError(t, c.Handle(at(time.Second), lan(offline(alice, ms(time.Second)))))
	require.NoError(t, c.Handle(at(2*time.Second), wan(online(alice, ms(2*time.Second), "compat"), false)))
	p := mustPeer(t, c, alice)
	assert.True(t, p.Online)
	assert.False(t, p.Verified)
	assert.Equal(t, "compat", p.Label)
}

func TestOfflineAfterTTLWithoutHeartbeat(t *testing.T) {
	c := started(Config{TTL: 20 * time.Second})
	require.NoError(t, c.Handle(t0, lan(online(alice, ms(0), "a"))))
	c.Drain()
	wake, ok := c.NextWake()
	require.True(t, ok)
	assert.Equal(t, at(20*time.Second), wake)

	c.Tick(at(19 * time.Second))
	assert.Empty(t, eventTypes(c.Drain()), "nothing before the TTL")
	assert.True(t, mustPeer(t, c, alice).Online)

	c.Tick(at(20 * time.Second))
	r := c.Drain()
	assert.Equal(t, []string{"peer_offline " + string(alice)}, eventTypes(r))
	assert.Equal(t, []string{"put " + string(alice)}, changeKinds(r))
	p := mustPeer(t, c, alice)
	assert.False(t, p.Online)
	assert.Equal(t, at(20*time.Second), p.OfflineSince)
	assert.False(t, r.Changes[0].Peer.Online)
}

func TestHeartbeatsKeepPeerOnline(t *testing.T) {
	c := started(Config{TTL: 20 * time.Second})
	for i := 0; i <= 6; i++ {
		d := time.Duration(i) * 5 * time.Second
		require.NoError(t, c.Handle(at(d), lan(update(alice, ms(d), "a"))))
		c.Tick(at(d))
	}
	r := c.Drain()
	assert.Equal(t, []string{"peer_online " + string(alice)}, eventTypes(r), "heartbeats that change nothing raise no event")
	wake, ok := c.NextWake()
	require.True(t, ok)
	assert.Equal(t, at(50*time.Second), wake, "the TTL runs from the last heartbeat")
	c.Tick(at(49 * time.Second))
	assert.True(t, mustPeer(t, c, alice).Online)
	c.Tick(at(50 * time.Second))
	assert.False(t, mustPeer(t, c, alice).Online)
}

func TestHeartbeatsPersistOnlyNowAndThen(t *testing.T) {
	c := started(Config{TTL: 20 * time.Second})
	var puts int
	for d := time.Duration(0); d <= 2*time.Minute; d += 5 * time.Second {
		require.NoError(t, c.Handle(at(d), lan(update(alice, ms(d), "a"))))
		puts += len(c.Drain().Changes)
	}
	// The first presence, then one row a minute.
	assert.Equal(t, 3, puts)
}

func TestRemovedAfterGrace(t *testing.T) {
	c := started(Config{TTL: 20 * time.Second, Grace: 15 * time.Minute})
	require.NoError(t, c.Handle(t0, lan(online(alice, ms(0), "a"))))
	require.NoError(t, c.Handle(at(time.Second), lan(offline(alice, ms(time.Second)))))
	c.Drain()
	wake, ok := c.NextWake()
	require.True(t, ok)
	assert.Equal(t, at(time.Second+15*time.Minute), wake)
	c.Tick(wake.Add(-time.Millisecond))
	assert.Equal(t, 1, c.Len())
	c.Tick(wake)
	r := c.Drain()
	assert.Equal(t, []string{"peer_removed " + string(alice)}, eventTypes(r))
	assert.Equal(t, []string{"delete " + string(alice)}, changeKinds(r))
	assert.Equal(t, 0, c.Len())
	_, ok = c.NextWake()
	assert.False(t, ok, "nothing left to wake for")
}

func TestBackOnlineAfterOffline(t *testing.T) {
	c := started(Config{TTL: 20 * time.Second})
	require.NoError(t, c.Handle(t0, lan(online(alice, ms(0), "a", "/ip4/10.0.0.1/tcp/1"))))
	c.Tick(at(20 * time.Second))
	c.Drain()
	require.NoError(t, c.Handle(at(30*time.Second), lan(update(alice, ms(30*time.Second), "a"))))
	r := c.Drain()
	assert.Equal(t, []string{"peer_online " + string(alice)}, eventTypes(r))
	require.Len(t, r.Dial, 1, "a peer back online is dialed again")
	assert.Equal(t, []string{"/ip4/10.0.0.1/tcp/1"}, r.Dial[0].Addrs, "addresses are kept when an update omits them")
	p := mustPeer(t, c, alice)
	assert.True(t, p.Online)
	assert.True(t, p.OfflineSince.IsZero())
	// The removal deadline of the offline period no longer applies.
	wake, _ := c.NextWake()
	assert.Equal(t, at(50*time.Second), wake)
}

func TestRemovedPeerComesBackFresh(t *testing.T) {
	c := started(Config{TTL: time.Second, Grace: time.Second})
	require.NoError(t, c.Handle(t0, lan(online(alice, ms(0), "a"))))
	c.Tick(at(time.Second))
	c.Tick(at(2 * time.Second))
	require.Equal(t, 0, c.Len())
	require.NoError(t, c.Handle(at(3*time.Second), lan(online(alice, ms(3*time.Second), "again"))))
	c.Tick(at(3*time.Second + 500*time.Millisecond))
	assert.True(t, mustPeer(t, c, alice).Online, "deadlines of the removed row do not apply to the new one")
	c.Tick(at(4 * time.Second))
	assert.False(t, mustPeer(t, c, alice).Online)
}

func TestAddrsChangeHintsAndUpdates(t *testing.T) {
	c := started(Config{})
	require.NoError(t, c.Handle(t0, lan(online(alice, ms(0), "a", "/ip4/10.0.0.1/tcp/1"))))
	c.Drain()
	require.NoError(t, c.Handle(at(time.Second), lan(update(alice, ms(time.Second), "a", "/ip4/10.0.0.2/tcp/1"))))
	r := c.Drain()
	assert.Equal(t, []string{"peer_updated " + string(alice)}, eventTypes(r))
	require.Len(t, r.Dial, 1)
	assert.Equal(t, []string{"/ip4/10.0.0.2/tcp/1"}, r.Dial[0].Addrs)
	// A label change is an update without a hint.
	require.NoError(t, c.Handle(at(2*time.Second), lan(update(alice, ms(2*time.Second), "renamed"))))
	r = c.Drain()
	assert.Equal(t, []string{"peer_updated " + string(alice)}, eventTypes(r))
	assert.Empty(t, r.Dial)
}

func TestPublicKeyKeptWhenOmitted(t *testing.T) {
	c := started(Config{})
	m := online(alice, ms(0), "a")
	m.PublicKey, m.EncryptionSupported = "pk", true
	require.NoError(t, c.Handle(t0, lan(m)))
	require.NoError(t, c.Handle(at(time.Second), lan(update(alice, ms(time.Second), "a"))))
	p := mustPeer(t, c, alice)
	assert.Equal(t, "pk", p.PublicKey)
	assert.True(t, p.EncryptionSupported)
}

func TestClockSkewIsClamped(t *testing.T) {
	c := started(Config{MaxClockSkew: time.Minute})
	// A peer whose clock is a day ahead, then corrected.
	require.NoError(t, c.Handle(t0, lan(online(alice, ms(24*time.Hour), "fast"))))
	assert.Equal(t, ms(time.Minute), mustPeer(t, c, alice).TS)
	require.NoError(t, c.Handle(at(2*time.Minute), lan(update(alice, ms(2*time.Minute), "fixed"))))
	assert.Equal(t, "fixed", mustPeer(t, c, alice).Label)
}

func TestSourcesStaticLANAndWAN(t *testing.T) {
	c := started(Config{TTL: 20 * time.Second, Static: []PeerID{bob}})
	require.NoError(t, c.Handle(t0, lan(online(bob, ms(0), "b"))))
	assert.Equal(t, SourceStatic, mustPeer(t, c, bob).Source)

	require.NoError(t, c.Handle(t0, lan(online(alice, ms(0), "a"))))
	require.NoError(t, c.Handle(at(5*time.Second), wan(update(alice, ms(5*time.Second), "a"), true)))
	assert.Equal(t, SourceLAN, mustPeer(t, c, alice).Source, "LAN heard within the TTL is kept")
	c.Drain()
	require.NoError(t, c.Handle(at(25*time.Second), wan(update(alice, ms(25*time.Second), "a"), true)))
	assert.Equal(t, SourceWAN, mustPeer(t, c, alice).Source, "LAN silent for the TTL: WAN it is")
	assert.Equal(t, []string{"peer_updated " + string(alice)}, eventTypes(c.Drain()))
}

// TestGossipSubWithAWANPeerStaysWAN: a peer learnt through a rendezvous
// whose presence then arrives over GossipSub (on the connection the
// rendezvous led to) is still a WAN peer, unless mDNS finds it on the LAN.
func TestGossipSubWithAWANPeerStaysWAN(t *testing.T) {
	c := started(Config{TTL: 20 * time.Second})
	require.NoError(t, c.Handle(t0, wan(online(alice, ms(0), "a"), true)))
	require.NoError(t, c.Handle(at(time.Second), lan(update(alice, ms(time.Second), "a"))))
	p := mustPeer(t, c, alice)
	assert.Equal(t, SourceWAN, p.Source, "GossipSub from a WAN peer")
	assert.True(t, p.Verified)

	require.NoError(t, c.Handle(at(2*time.Second), Discovered{Source: SourceLAN, Peer: alice, Addrs: []string{"/ip4/10.0.0.1/tcp/1"}}))
	require.NoError(t, c.Handle(at(3*time.Second), lan(update(alice, ms(3*time.Second), "a"))))
	assert.Equal(t, SourceLAN, mustPeer(t, c, alice).Source, "found by mDNS: a LAN peer")

	// A peer first heard over GossipSub is LAN, as before.
	require.NoError(t, c.Handle(t0, lan(online(bob, ms(0), "b"))))
	assert.Equal(t, SourceLAN, mustPeer(t, c, bob).Source)
}

// TestLANFoundIsBounded: the record of peers found on the LAN holds at most
// MaxPeers, forgetting the one found the longest ago.
func TestLANFoundIsBounded(t *testing.T) {
	c := started(Config{MaxPeers: 2})
	addrs := []string{"/ip4/10.0.0.1/tcp/1"}
	for i, id := range []PeerID{alice, bob, carol} {
		require.NoError(t, c.Handle(at(time.Duration(i)*time.Second), Discovered{Source: SourceLAN, Peer: id, Addrs: addrs}))
	}
	assert.False(t, c.foundOnLAN(alice))
	assert.True(t, c.foundOnLAN(bob))
	assert.True(t, c.foundOnLAN(carol))
}

func TestOwnPresence(t *testing.T) {
	c := New(me, Config{Announce: true, Heartbeat: 5 * time.Second},
		Profile{Label: "me", Email: "me@x", Version: "v1", Addrs: []string{"/ip4/127.0.0.1/tcp/1"}}, nil)
	_, ok := c.NextWake()
	assert.False(t, ok, "nothing scheduled before Start")

	require.NoError(t, c.Handle(t0, Start{}))
	r := c.Drain()
	require.Len(t, r.Publish, 1)
	assert.Equal(t, Msg{Type: TypeOnline, PeerID: me, Content: "me", Email: "me@x", GoopClientVersion: "v1",
		Addrs: []string{"/ip4/127.0.0.1/tcp/1"}, TS: ms(0)}, r.Publish[0])
	require.NoError(t, r.Publish[0].Validate())

	wake, ok := c.NextWake()
	require.True(t, ok)
	assert.Equal(t, at(5*time.Second), wake)
	c.Tick(at(4 * time.Second))
	assert.Empty(t, c.Drain().Publish)
	c.Tick(at(5 * time.Second))
	r = c.Drain()
	require.Len(t, r.Publish, 1)
	assert.Equal(t, TypeUpdate, r.Publish[0].Type)
	assert.Equal(t, ms(5*time.Second), r.Publish[0].TS)

	// Same addresses: nothing; new addresses: an update at once, and the
	// heartbeat restarts from it. Invalid and duplicate addresses are dropped.
	require.NoError(t, c.Handle(at(6*time.Second), AddrsChanged{Addrs: []string{"/ip4/127.0.0.1/tcp/1"}}))
	assert.Empty(t, c.Drain().Publish)
	require.NoError(t, c.Handle(at(6*time.Second), AddrsChanged{Addrs: []string{"/ip4/10.0.0.9/tcp/1", "bad addr", "/ip4/10.0.0.9/tcp/1"}}))
	r = c.Drain()
	require.Len(t, r.Publish, 1)
	assert.Equal(t, []string{"/ip4/10.0.0.9/tcp/1"}, r.Publish[0].Addrs)
	wake, _ = c.NextWake()
	assert.Equal(t, at(11*time.Second), wake)

	// A profile change is announced too; two messages in the same
	// millisecond still get increasing ts.
	require.NoError(t, c.Handle(at(6*time.Second), ProfileChanged{Profile: Profile{Label: "renamed", Email: "me@x", Version: "v1"}}))
	r = c.Drain()
	require.Len(t, r.Publish, 1)
	assert.Equal(t, "renamed", r.Publish[0].Content)
	assert.Equal(t, []string{"/ip4/10.0.0.9/tcp/1"}, r.Publish[0].Addrs, "ProfileChanged keeps the addresses")
	assert.Equal(t, ms(6*time.Second)+1, r.Publish[0].TS)

	require.NoError(t, c.Handle(at(7*time.Second), Stop{}))
	r = c.Drain()
	require.Len(t, r.Publish, 1)
	assert.Equal(t, TypeOffline, r.Publish[0].Type)
	_, ok = c.NextWake()
	assert.False(t, ok, "no heartbeat after Stop")
	require.NoError(t, c.Handle(at(8*time.Second), Stop{}))
	require.NoError(t, c.Handle(at(8*time.Second), AddrsChanged{Addrs: []string{"/ip4/10.0.0.7/tcp/1"}}))
	assert.Empty(t, c.Drain().Publish, "nothing is announced after Stop")
}

func TestNoAnnounceWithoutConfig(t *testing.T) {
	c := newCore(Config{})
	require.NoError(t, c.Handle(t0, Start{}))
	require.NoError(t, c.Handle(t0, AddrsChanged{Addrs: []string{"/ip4/10.0.0.9/tcp/1"}}))
	require.NoError(t, c.Handle(t0, Stop{}))
	assert.Empty(t, c.Drain().Publish)
	_, ok := c.NextWake()
	assert.False(t, ok)
}

func TestRestoredPeers(t *testing.T) {
	stored := []Peer{
		{ID: alice, Label: "a", Addrs: []string{"/ip4/10.0.0.1/tcp/1"}, Online: true, Source: SourceLAN,
			LastSeen: at(-time.Hour), TS: ms(-time.Hour)},
		{ID: bob, Label: "b", Online: false, OfflineSince: at(-2 * time.Hour), LastSeen: at(-3 * time.Hour), TS: 5},
		{ID: me, Label: "our own row is never restored"},
		{ID: "not/valid", Label: "skipped"},
	}
	c := New(me, Config{Grace: 15 * time.Minute}, Profile{}, stored)
	require.Equal(t, 2, c.Len())
	require.NoError(t, c.Handle(t0, Start{}))
	r := c.Drain()
	assert.Empty(t, r.Events, "restoring raises no events")
	assert.Equal(t, []string{"put " + string(alice)}, changeKinds(r), "a row stored online is stored offline")
	require.Len(t, r.Dial, 1, "known peers with addresses are dialed at start")
	assert.Equal(t, alice, r.Dial[0].Peer)
	a := mustPeer(t, c, alice)
	assert.False(t, a.Online)
	assert.Equal(t, t0, a.OfflineSince)
	assert.Equal(t, at(-2*time.Hour), mustPeer(t, c, bob).OfflineSince)

	// Both are kept for the grace period from the start, then removed.
	wake, ok := c.NextWake()
	require.True(t, ok)
	assert.Equal(t, at(15*time.Minute), wake)
	c.Tick(wake)
	assert.ElementsMatch(t, []string{"peer_removed " + string(alice), "peer_removed " + string(bob)}, eventTypes(c.Drain()))

	// Start counts once.
	require.NoError(t, c.Handle(at(time.Hour), Start{}))
	assert.Empty(t, c.Drain().Dial)
}

func TestRestoredPeerHeardAgain(t *testing.T) {
	c := New(me, Config{}, Profile{}, []Peer{{ID: alice, Label: "old", Online: false, OfflineSince: at(-time.Hour), TS: ms(-time.Hour)}})
	require.NoError(t, c.Handle(t0, Start{}))
	c.Drain()
	require.NoError(t, c.Handle(at(time.Second), lan(online(alice, ms(time.Second), "new"))))
	r := c.Drain()
	assert.Equal(t, []string{"peer_online " + string(alice)}, eventTypes(r))
	assert.True(t, mustPeer(t, c, alice).Online)
}

func TestDiscovered(t *testing.T) {
	c := started(Config{RedialInterval: 30 * time.Second})
	addrs := []string{"/ip4/10.0.0.1/tcp/1"}
	require.NoError(t, c.Handle(t0, Discovered{Source: SourceLAN, Peer: alice, Addrs: addrs}))
	assert.Equal(t, []DialHint{{Peer: alice, Addrs: addrs, Source: SourceLAN}}, c.Drain().Dial, "an unknown peer is dialed")
	assert.Equal(t, 0, c.Len(), "discovery alone does not list a peer")

	require.NoError(t, c.Handle(t0, lan(online(alice, ms(0), "a", addrs...))))
	c.Drain()
	require.NoError(t, c.Handle(at(10*time.Second), Discovered{Source: SourceLAN, Peer: alice, Addrs: addrs}))
	assert.Empty(t, c.Drain().Dial, "an online peer hinted recently is not dialed again")
	require.NoError(t, c.Handle(at(15*time.Second), lan(update(alice, ms(15*time.Second), "a"))))
	require.NoError(t, c.Handle(at(31*time.Second), Discovered{Source: SourceLAN, Peer: alice, Addrs: addrs}))
	assert.Len(t, c.Drain().Dial, 1, "after the redial interval it is")

	assert.ErrorIs(t, c.Handle(t0, Discovered{Peer: me, Addrs: addrs}), ErrSelf)
	assert.ErrorIs(t, c.Handle(t0, Discovered{Peer: bob, Addrs: []string{"junk"}}), ErrInvalid)
	assert.ErrorIs(t, c.Handle(t0, Discovered{Peer: "bad id", Addrs: addrs}), ErrInvalid)
	assert.Empty(t, c.Drain().Dial)
}

func TestTableBound(t *testing.T) {
	c := started(Config{MaxPeers: 2, TTL: 20 * time.Second})
	require.NoError(t, c.Handle(t0, lan(online(alice, ms(0), "a"))))
	require.NoError(t, c.Handle(t0, lan(online(bob, ms(0), "b"))))
	err := c.Handle(t0, lan(online(carol, ms(0), "c")))
	assert.ErrorIs(t, err, ErrTableFull, "all online: the newcomer is refused")
	c.Drain()

	// Bob goes offline first, then alice: carol evicts bob.
	require.NoError(t, c.Handle(at(time.Second), lan(offline(bob, ms(time.Second)))))
	require.NoError(t, c.Handle(at(2*time.Second), lan(offline(alice, ms(2*time.Second)))))
	c.Drain()
	require.NoError(t, c.Handle(at(3*time.Second), lan(online(carol, ms(3*time.Second), "c"))))
	r := c.Drain()
	assert.Equal(t, []string{"peer_removed " + string(bob), "peer_online " + string(carol)}, eventTypes(r))
	assert.Equal(t, []string{"delete " + string(bob), "put " + string(carol)}, changeKinds(r))
	assert.Equal(t, 2, c.Len())
}

func TestPeersSortedCopies(t *testing.T) {
	c := started(Config{})
	for _, id := range []PeerID{carol, alice, bob} {
		require.NoError(t, c.Handle(t0, lan(online(id, ms(0), string(id), "/ip4/10.0.0.1/tcp/1"))))
	}
	ps := c.Peers()
	require.Len(t, ps, 3)
	assert.Equal(t, []PeerID{alice, bob, carol}, []PeerID{ps[0].ID, ps[1].ID, ps[2].ID})
	ps[0].Addrs[0] = "mutated"
	assert.Equal(t, "/ip4/10.0.0.1/tcp/1", mustPeer(t, c, alice).Addrs[0], "Peers returns copies")
}

// TestManyPeersDeadlines checks the deadline heap under churn: every peer
// goes offline exactly at its own TTL whatever the interleaving.
func TestManyPeersDeadlines(t *testing.T) {
	c := started(Config{TTL: 20 * time.Second, Grace: time.Minute})
	const n = 200
	ids := make([]PeerID, n)
	for i := range ids {
		ids[i] = PeerID(fmt.Sprintf("12D3KooWPeer%d", i))
	}
	// Peer i heartbeats every 5 s until second i%40, then falls silent.
	last := map[PeerID]time.Time{}
	for s := 0; s < 40; s++ {
		now := at(time.Duration(s) * time.Second)
		for i, id := range ids {
			if s%5 == i%5 && s <= i%40 {
				require.NoError(t, c.Handle(now, lan(update(id, now.UnixMilli(), "p"))))
				last[id] = now
			}
		}
		c.Tick(now)
	}
	var evs []Event
	for s := 0; s < 200; s++ {
		c.Tick(at(time.Duration(40+s) * time.Second))
		evs = append(evs, c.Drain().Events...)
	}
	offlineAt := map[PeerID]time.Time{}
	removed := map[PeerID]bool{}
	for _, ev := range evs {
		switch ev.Type {
		case EvOffline:
			offlineAt[ev.Peer.ID] = ev.Peer.OfflineSince
		case EvRemoved:
			removed[ev.Peer.ID] = true
		}
	}
	assert.Equal(t, 0, c.Len(), "all removed after TTL + grace")
	for _, id := range ids {
		require.Contains(t, offlineAt, id)
		assert.Equal(t, last[id].Add(20*time.Second), offlineAt[id], "%s goes offline exactly at its TTL", id)
		assert.True(t, removed[id], "%s removed", id)
	}
}

func TestJoinedAnnouncesSoon(t *testing.T) {
	c := New(me, Config{Announce: true, Heartbeat: 5 * time.Second}, Profile{Label: "me"}, nil)
	require.NoError(t, c.Handle(t0, Start{}))
	c.Drain()

	// A peer joins right after our online: the update waits for the
	// announce interval (the heartbeat comes early), not a whole heartbeat.
	require.NoError(t, c.Handle(at(200*time.Millisecond), Joined{Peer: alice}))
	assert.Empty(t, c.Drain().Publish)
	wake, _ := c.NextWake()
	assert.Equal(t, at(AnnounceInterval), wake)
	c.Tick(wake)
	r := c.Drain()
	require.Len(t, r.Publish, 1)
	assert.Equal(t, TypeUpdate, r.Publish[0].Type)

	// Long after: at once. A burst of joins costs one message.
	for i := 0; i < 10; i++ {
		require.NoError(t, c.Handle(at(3*time.Second), Joined{Peer: bob}))
	}
	assert.Len(t, c.Drain().Publish, 1)
	wake, _ = c.NextWake()
	assert.Equal(t, at(3*time.Second+AnnounceInterval), wake, "and one more, a second later, at most")

	// Not announcing: nothing.
	q := newCore(Config{})
	require.NoError(t, q.Handle(t0, Start{}))
	require.NoError(t, q.Handle(at(time.Minute), Joined{Peer: alice}))
	assert.Empty(t, q.Drain().Publish)
}

func TestUnverifiedOfflineDoesNotLockOutHeartbeats(t *testing.T) {
	c := started(Config{TTL: 20 * time.Second})
	require.NoError(t, c.Handle(t0, lan(online(alice, ms(0), "a"))))
	c.Tick(at(20 * time.Second)) // offline by TTL
	c.Drain()
	// A rendezvous whose clock runs five minutes ahead relays an offline.
	require.NoError(t, c.Handle(at(21*time.Second), wan(offline(alice, ms(5*time.Minute)), false)))
	// The peer comes back with its own, honest clock.
	require.NoError(t, c.Handle(at(30*time.Second), lan(online(alice, ms(30*time.Second), "a"))))
	assert.True(t, mustPeer(t, c, alice).Online, "its heartbeat is not refused as stale")
}
