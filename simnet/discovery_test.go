package simnet

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/presence"
)

// discWorld builds a world with discovery: places[i] places peer i.
func discWorld(t *testing.T, rdv bool, places []PeerPlace, checkers ...Checker) *World {
	t.Helper()
	if checkers == nil {
		checkers = []Checker{NewPresenceChecker()}
	}
	return New(1, Options{Peers: len(places), Link: DefaultLink(), Checkers: checkers,
		Discovery: &DiscoveryOptions{Rendezvous: rdv, Layout: func(i int) PeerPlace { return places[i] }}})
}

// table returns peer i's view: peer index → "lan", "wan" or "offline".
func table(w *World, i int) map[int]string {
	out := map[int]string{}
	for _, row := range w.Node(i).Peers() {
		j, ok := w.Index(row.ID)
		if !ok {
			continue
		}
		switch {
		case !row.Online:
			out[j] = "offline"
		default:
			out[j] = string(row.Source)
		}
	}
	return out
}

// peerEvents records the presence events of the peers' tables.
type peerEvents struct {
	evs []peerEvent
}

type peerEvent struct {
	at      time.Duration
	peer    int
	about   int
	typ     string
	src     presence.Source
	seenAgo time.Duration // how long before the event the row was last refreshed
}

func (r *peerEvents) onStep(w *World, s *Step) {
	for _, ev := range s.Events {
		if ev.Kind != app.EventPeer || ev.Presence == nil {
			continue
		}
		j, _ := w.Index(ev.Presence.Peer.ID)
		r.evs = append(r.evs, peerEvent{at: s.Time, peer: s.Peer, about: j, typ: ev.Presence.Type, src: ev.Presence.Peer.Source,
			seenAgo: w.Now().Sub(ev.Presence.Peer.LastSeen)})
	}
}

func (r *peerEvents) find(peer, about int, typ string, after time.Duration) (peerEvent, bool) {
	for _, e := range r.evs {
		if e.peer == peer && e.about == about && e.typ == typ && e.at >= after {
			return e, true
		}
	}
	return peerEvent{}, false
}

// TestDiscoveryScopes proves who finds whom: mDNS and GossipSub stay within
// a segment and a tag; the rendezvous links everybody who uses it, with
// source wan; a lan-only peer sees only its LAN.
func TestDiscoveryScopes(t *testing.T) {
	a, b := PeerPlace{Segment: "a"}, PeerPlace{Segment: "b"}
	aAlt := PeerPlace{Segment: "a", Tag: "alt"}
	cases := []struct {
		name   string
		rdv    bool
		places []PeerPlace
		want   map[int]map[int]string // peer → its table
	}{
		{"one segment, one tag", false, []PeerPlace{a, a, a},
			map[int]map[int]string{0: {1: "lan", 2: "lan"}, 2: {0: "lan", 1: "lan"}}},
		{"tags stay apart on one segment", false, []PeerPlace{a, a, aAlt, aAlt},
			map[int]map[int]string{0: {1: "lan"}, 2: {3: "lan"}}},
		{"segments stay apart", false, []PeerPlace{a, a, b, b},
			map[int]map[int]string{0: {1: "lan"}, 3: {2: "lan"}}},
		{"the rendezvous links tags and segments, via wan", true, []PeerPlace{a, a, aAlt, b},
			map[int]map[int]string{0: {1: "lan", 2: "wan", 3: "wan"}, 2: {0: "wan", 1: "wan", 3: "wan"}, 3: {0: "wan", 1: "wan", 2: "wan"}}},
		{"a lan-only peer sees its LAN only", true, []PeerPlace{a, {Segment: "a", NoWAN: true}, b},
			map[int]map[int]string{0: {1: "lan", 2: "wan"}, 1: {0: "lan"}, 2: {0: "wan"}}},
		{"no segment: the rendezvous only", true, []PeerPlace{{}, {}, a},
			map[int]map[int]string{0: {1: "wan", 2: "wan"}, 2: {0: "wan", 1: "wan"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := discWorld(t, tc.rdv, tc.places)
			require.NoError(t, w.RunFor(10*time.Second))
			for p, want := range tc.want {
				assert.Equal(t, want, table(w, p), "table of p%d", p)
			}
			assert.True(t, w.Checkers()[0].Converged(), w.Checkers()[0].Waiting(w))
		})
	}
}

// TestDiscoveryPartitionedPeerGoesOfflineAfterTTLAndReturns cuts a peer off:
// every other table takes it offline exactly the TTL after its last
// heartbeat, and after the heal it is back within a heartbeat.
func TestDiscoveryPartitionedPeerGoesOfflineAfterTTLAndReturns(t *testing.T) {
	rec := &peerEvents{}
	places := []PeerPlace{{Segment: "a"}, {Segment: "a"}, {Segment: "b"}, {Segment: "a"}}
	w := New(1, Options{Peers: len(places), Link: DefaultLink(), OnStep: rec.onStep,
		Discovery: &DiscoveryOptions{Rendezvous: true, Layout: func(i int) PeerPlace { return places[i] }}})
	pc := presence.DefaultConfig()
	require.NoError(t, w.RunFor(10*time.Second))
	cut := w.Elapsed()
	id, err := w.Partition([]int{3}, nil, false)
	require.NoError(t, err)
	require.NoError(t, w.RunFor(40*time.Second))
	for _, p := range []int{0, 1, 2} {
		e, ok := rec.find(p, 3, presence.EvOffline, cut)
		require.True(t, ok, "p%d takes p3 offline", p)
		assert.Equal(t, pc.TTL, e.seenAgo, "p%d: offline exactly the TTL after p3 was last heard", p)
		assert.LessOrEqual(t, e.at-cut, pc.TTL+pc.Heartbeat, "p%d", p)
		assert.Equal(t, "offline", table(w, p)[3])
	}
	known, _ := w.RendezvousPeers()
	assert.NotContains(t, known, 3, "the rendezvous dropped the silent peer")
	assert.NotZero(t, w.Stats().Presence.RdvSwept)

	healed := w.Elapsed()
	require.NoError(t, w.Heal(id))
	require.NoError(t, w.RunFor(10*time.Second))
	for p, src := range map[int]presence.Source{0: presence.SourceLAN, 1: presence.SourceLAN, 2: presence.SourceWAN} {
		e, ok := rec.find(p, 3, presence.EvOnline, healed)
		require.True(t, ok, "p%d sees p3 again", p)
		assert.LessOrEqual(t, e.at-healed, pc.Heartbeat+time.Second, "p%d: back within a heartbeat", p)
		assert.Equal(t, src, e.src, "p%d", p)
	}
	require.NoError(t, w.Err())
}

// TestDiscoveryRestartStartsFromCachedTable: the sim store keeps the peer
// table, so a restarted node lists what it knew (offline) before it hears
// anybody, then sees them online again.
func TestDiscoveryRestartStartsFromCachedTable(t *testing.T) {
	w := discWorld(t, true, []PeerPlace{{Segment: "a"}, {Segment: "a"}, {Segment: "b"}})
	require.NoError(t, w.RunFor(10*time.Second))
	require.NoError(t, w.Crash(1))
	cached, err := w.peers[1].store.LoadPeers(context.Background())
	require.NoError(t, err)
	require.Len(t, cached, 2)
	require.NoError(t, w.RunFor(3*time.Second))
	require.NoError(t, w.Restart(1))
	assert.Equal(t, map[int]string{0: "offline", 2: "offline"}, table(w, 1), "restored before hearing anybody")
	require.NoError(t, w.RunFor(6*time.Second))
	assert.Equal(t, map[int]string{0: "lan", 2: "wan"}, table(w, 1))
	require.NoError(t, w.Err())
}

// TestDiscoveryCutFromRendezvousOnly: a peer that loses only the rendezvous
// stays online for its LAN and goes offline for the other segments.
func TestDiscoveryCutFromRendezvousOnly(t *testing.T) {
	w := discWorld(t, true, []PeerPlace{{Segment: "a"}, {Segment: "a"}, {Segment: "b"}})
	require.NoError(t, w.RunFor(10*time.Second))
	_, err := w.Partition([]int{1}, []int{Rendezvous}, false)
	require.NoError(t, err)
	assert.False(t, w.Subscribed(1), "the cut breaks p1's event stream")
	require.NoError(t, w.RunFor(40*time.Second))
	assert.Equal(t, "lan", table(w, 0)[1])
	assert.Equal(t, "offline", table(w, 2)[1])
	assert.Equal(t, map[int]string{0: "lan", 2: "offline"}, table(w, 1))
	require.NoError(t, w.Err())
}

// TestDiscoveryRendezvousCrashIsSurvived: the rendezvous forgets everybody;
// the clients come back with their next heartbeat, and no table notices.
func TestDiscoveryRendezvousCrashIsSurvived(t *testing.T) {
	rec := &peerEvents{}
	places := []PeerPlace{{Segment: "a"}, {Segment: "b"}, {Segment: "c"}}
	w := New(1, Options{Peers: 3, Link: DefaultLink(), OnStep: rec.onStep, Checkers: []Checker{NewPresenceChecker()},
		Discovery: &DiscoveryOptions{Rendezvous: true, Layout: func(i int) PeerPlace { return places[i] }}})
	require.NoError(t, w.RunFor(10*time.Second))
	before := len(rec.evs)
	require.NoError(t, w.CrashRendezvous())
	require.ErrorIs(t, w.CrashRendezvous(), ErrPeerDown)
	known, subs := w.RendezvousPeers()
	assert.Empty(t, known)
	assert.Zero(t, subs)
	require.NoError(t, w.RunFor(3*time.Second))
	require.NoError(t, w.RestartRendezvous())
	require.NoError(t, w.RunFor(6*time.Second))
	known, subs = w.RendezvousPeers()
	assert.Equal(t, []int{0, 1, 2}, known)
	assert.Equal(t, 3, subs)
	assert.Len(t, rec.evs, before, "no table changed")
	require.NoError(t, w.Err())
}

// TestDiscoveryShutdownIsSeenAtOnce: a peer that shuts down announces its
// offline on the LAN and to the rendezvous; nobody waits for the TTL.
func TestDiscoveryShutdownIsSeenAtOnce(t *testing.T) {
	rec := &peerEvents{}
	places := []PeerPlace{{Segment: "a"}, {Segment: "a"}, {Segment: "b"}}
	w := New(1, Options{Peers: 3, Link: DefaultLink(), OnStep: rec.onStep,
		Discovery: &DiscoveryOptions{Rendezvous: true, Layout: func(i int) PeerPlace { return places[i] }}})
	require.NoError(t, w.RunFor(10*time.Second))
	at := w.Elapsed()
	require.NoError(t, w.Shutdown(1))
	assert.False(t, w.Up(1))
	require.NoError(t, w.RunFor(time.Second))
	for _, p := range []int{0, 2} {
		e, ok := rec.find(p, 1, presence.EvOffline, at)
		require.True(t, ok, "p%d", p)
		assert.Less(t, e.at-at, 500*time.Millisecond, "p%d", p)
	}
	require.ErrorIs(t, w.Shutdown(1), ErrPeerDown)
}

// TestDiscoveryMoving: a peer that changes segment or tag loses its LAN
// connections and finds its new neighbours; its old ones list it as wan once
// they have not heard it on the LAN for a TTL.
func TestDiscoveryMoving(t *testing.T) {
	w := discWorld(t, true, []PeerPlace{{Segment: "a"}, {Segment: "a"}, {Segment: "b"}})
	require.NoError(t, w.RunFor(10*time.Second))
	require.True(t, w.LANConnected(0, 1))
	w.SetSegment(1, "b")
	assert.False(t, w.LANConnected(0, 1))
	require.NoError(t, w.RunFor(10*time.Second))
	assert.True(t, w.LANConnected(1, 2))
	assert.Equal(t, "lan", table(w, 1)[2])
	assert.Equal(t, "wan", table(w, 2)[0])
	w.SetTag(2, "alt")
	assert.False(t, w.LANConnected(1, 2))
	assert.Equal(t, "alt", w.Tag(2))
	require.NoError(t, w.RunFor(10*time.Second))
	assert.Equal(t, "lan", table(w, 1)[2], "the best source heard within the TTL")
	require.NoError(t, w.RunFor(15*time.Second))
	assert.Equal(t, "wan", table(w, 1)[2])
	w.SetWAN(0, false)
	assert.False(t, w.WAN(0))
	assert.False(t, w.Subscribed(0))
}

// TestDiscoveryInvalidPartitions: the rendezvous can be named only in a
// world that has one, and only on one side.
func TestDiscoveryInvalidPartitions(t *testing.T) {
	w := discWorld(t, true, []PeerPlace{{}, {}})
	_, err := w.Partition([]int{Rendezvous}, []int{Rendezvous}, false)
	require.Error(t, err)
	nw := discWorld(t, false, []PeerPlace{{}, {}})
	_, err = nw.Partition([]int{Rendezvous}, nil, false)
	require.ErrorIs(t, err, ErrNoPeer)
	require.ErrorIs(t, nw.CrashRendezvous(), ErrNoRendezvous)
	assert.Equal(t, "rdv", w.Name(Rendezvous))
}

// TestDiscoveryPresenceSurvivesTheCodec: presence travels through Encode and
// Decode (every message here).
func TestDiscoveryPresenceSurvivesTheCodec(t *testing.T) {
	w := New(1, Options{Peers: 3, Link: DefaultLink(), CodecEvery: 1,
		Discovery: &DiscoveryOptions{Rendezvous: true}})
	require.NoError(t, w.RunFor(10*time.Second))
	assert.NotZero(t, w.Stats().CodecChecked)
	require.NoError(t, w.Err())
}
