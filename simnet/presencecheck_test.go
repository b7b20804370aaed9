package simnet

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/domain/presence"
)

// checkedWorld is a world of 6 peers, converged for longer than the
// checker's ReturnWithin: p0, p1 on segment a; p2 on segment a with another
// tag; p3..p5 on segment b; all on the rendezvous.
func checkedWorld(t *testing.T, pc *PresenceChecker) *World {
	t.Helper()
	places := []PeerPlace{{Segment: "a"}, {Segment: "a"}, {Segment: "a", Tag: "alt"}, {Segment: "b"}, {Segment: "b"}, {Segment: "b"}}
	w := discWorld(t, true, places, pc)
	require.NoError(t, w.RunFor(20*time.Second))
	require.True(t, pc.Converged(), pc.Waiting(w))
	return w
}

// futureOffline is an offline of peer i, signed by it (verified), stamped
// far ahead: a table that takes it refuses i's honest presence for minutes.
func futureOffline(w *World, i int) presence.Msg {
	return presence.Msg{Type: presence.TypeOffline, PeerID: w.PeerID(i), TS: w.Now().Add(5 * time.Minute).UnixMilli()}
}

// leakMDNS makes peer to's node believe it found peer about on its LAN (an
// mDNS that leaks across tags or segments), then hands it a LAN presence of
// about: its table lists about with source lan. Without the leak the node
// keeps a peer it knows through the rendezvous as wan.
func leakMDNS(t *testing.T, w *World, to, about int) {
	m := presence.Msg{Type: presence.TypeUpdate, PeerID: w.PeerID(about), TS: w.Now().UnixMilli()}
	require.NoError(t, w.InjectPresence(to, presence.SourceLAN, w.PeerID(about), true, m))
	require.Equal(t, "wan", table(w, to)[about], "no leak: the node keeps it as wan")
	require.NoError(t, w.Node(to).Discovered(w.Now(), presence.SourceLAN, w.PeerID(about), []string{"/dns4/x/tcp/1"}))
	m.TS++
	_ = w.InjectPresence(to, presence.SourceLAN, w.PeerID(about), true, m)
}

// TestPresenceCheckerCatchesPlantedFaults plants a bad table (or a node
// whose timing differs from the checker's) for each property and checks
// that the checker names it.
func TestPresenceCheckerCatchesPlantedFaults(t *testing.T) {
	cases := []struct {
		name  string
		tune  func(pc *PresenceChecker) // before the world runs
		plant func(t *testing.T, w *World, pc *PresenceChecker)
		prop  string
		want  string
	}{
		{"a peer of another tag listed via lan", nil, func(t *testing.T, w *World, _ *PresenceChecker) {
			leakMDNS(t, w, 0, 2)
		}, PropPresenceLANScope, "p0 lists p2 online with source lan, but they never shared a segment and an mDNS tag (p0: segment a tag goop-mdns; p2: segment a tag alt)"},
		{"a peer of another segment listed via lan", nil, func(t *testing.T, w *World, _ *PresenceChecker) {
			leakMDNS(t, w, 0, 4)
		}, PropPresenceLANScope, "p0 lists p4 online with source lan"},
		{"a node that keeps silent peers online too long", nil, func(t *testing.T, w *World, pc *PresenceChecker) {
			pc.ttl = int64(5 * time.Second) // the nodes expire after 20 s
			_, err := w.Partition([]int{1}, nil, false)
			require.NoError(t, err)
		}, PropPresenceExpiry, "still shows p1 online"},
		{"a node that takes peers offline before the TTL", nil, func(t *testing.T, w *World, pc *PresenceChecker) {
			pc.ttl = int64(60 * time.Second)
			_, err := w.Partition([]int{1}, nil, false)
			require.NoError(t, err)
		}, PropPresenceExpiry, "before the TTL (1m0s)"},
		{"a reachable peer taken offline", nil, func(t *testing.T, w *World, _ *PresenceChecker) {
			_ = w.InjectPresence(0, presence.SourceLAN, w.PeerID(1), true, futureOffline(w, 1))
		}, PropPresenceReturn, "p0 took p1 offline although its presence could reach it"},
		{"a healed peer that never comes back", nil, func(t *testing.T, w *World, _ *PresenceChecker) {
			id, err := w.Partition([]int{1}, nil, false)
			require.NoError(t, err)
			require.NoError(t, w.RunFor(25*time.Second))
			require.Equal(t, "offline", table(w, 0)[1])
			_ = w.InjectPresence(0, presence.SourceLAN, w.PeerID(1), true, futureOffline(w, 1))
			require.NoError(t, w.Heal(id))
		}, PropPresenceReturn, "p0 does not show p1 online"},
		{"a healed peer that comes back late", nil,
			func(t *testing.T, w *World, pc *PresenceChecker) {
				pc.within = int64(100 * time.Millisecond)
				id, err := w.Partition([]int{3}, nil, false)
				require.NoError(t, err)
				require.NoError(t, w.RunFor(25*time.Second))
				require.NoError(t, w.Heal(id))
			}, PropPresenceReturn, "online only"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pc := NewPresenceChecker()
			if tc.tune != nil {
				tc.tune(pc)
			}
			w := checkedWorld(t, pc)
			tc.plant(t, w, pc)
			err := w.RunFor(60 * time.Second)
			require.Error(t, err)
			v := w.Violation()
			require.NotNil(t, v)
			assert.Equal(t, tc.prop, v.Property)
			assert.Contains(t, v.Detail, tc.want)
			t.Log(v)
		})
	}
}

// TestPresenceCheckerLiveness: a table that misses a wanted peer keeps the
// checker from converging, and Waiting names it.
func TestPresenceCheckerLiveness(t *testing.T) {
	pc := NewPresenceChecker()
	pc.ReturnWithin = -1 // only liveness
	w := checkedWorld(t, pc)
	assert.Equal(t, "presence: 0 of 30 table entries not as wanted", pc.Waiting(w))
	_ = w.InjectPresence(0, presence.SourceLAN, w.PeerID(1), true, futureOffline(w, 1))
	assert.False(t, pc.Converged())
	assert.Equal(t, "presence: 1 of 30 table entries not as wanted: p0 lacks p1 online via lan (has offline)", pc.Waiting(w))
	err := w.Converge(20 * time.Second)
	var le *LivenessError
	require.ErrorAs(t, err, &le)
	assert.Contains(t, le.Waiting[0], "p0 lacks p1 online via lan")
	for _, prop := range pc.Properties() {
		assert.NotZero(t, prop.Checked, prop.Name)
	}
}

// TestPresenceCheckerMirrorsTables runs a discovery storm and compares the
// checker's incremental bookkeeping with the nodes' tables and with what it
// computes from scratch.
func TestPresenceCheckerMirrorsTables(t *testing.T) {
	p := Params{Peers: 60, Duration: 50 * time.Second}
	for seed := uint64(1); seed <= 3; seed++ {
		w, _, pc := NewDiscoveryWorld(seed, p)
		require.NoError(t, w.RunUntil(40*time.Second))
		pc.refresh()
		good, need := 0, 0
		for i := 0; i < w.NumPeers(); i++ {
			var tbl map[int]string
			if w.Up(i) {
				tbl = table(w, i)
			}
			for j := 0; j < w.NumPeers(); j++ {
				k := i*pc.cap + j
				want := map[uint8]string{rowAbsent: "", rowOffline: "offline", rowLAN: "lan", rowWAN: "wan"}[pc.row[k]]
				got := tbl[j]
				if pc.row[k] == rowAbsent && got == "offline" {
					got = "" // a restored row: offline, no event
				}
				require.Equal(t, want, got, "seed %d: p%d's row of p%d", seed, i, j)
				saved := pc.want[k]
				pc.eval(i, j)
				require.Equal(t, saved, pc.want[k], "seed %d: want p%d→p%d", seed, i, j)
				if pc.want[k] != 0 {
					need++
					if pc.row[k] == pc.want[k] {
						good++
					}
				}
			}
		}
		assert.Equal(t, need, pc.need, "seed %d", seed)
		assert.Equal(t, good, pc.good, "seed %d", seed)
	}
}
