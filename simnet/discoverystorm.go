package simnet

import (
	"fmt"
	"strings"
	"time"

	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/presence"
)

// ScenarioDiscovery is the name of the built-in discovery scenario.
const ScenarioDiscovery = "discovery"

// DiscoverySegments is how many LAN segments the discovery scenario has.
const DiscoverySegments = 4

// DiscoveryAltTag is the second mDNS tag of the discovery scenario.
const DiscoveryAltTag = "goop-alt"

// DiscoveryLivenessHeartbeats bounds the discovery scenario's liveness phase
// in heartbeats, unless Params.Deadline differs from the default.
const DiscoveryLivenessHeartbeats = 4

// Kinds of DiscoveryFault.
const (
	FaultIsolate  = "isolate"   // Peers are cut from everybody, the rendezvous included
	FaultCutRdv   = "cut-rdv"   // Peers are cut from the rendezvous only
	FaultSegment  = "segment"   // a whole segment is cut from the rest and the rendezvous
	FaultRdvCut   = "rdv-cut"   // the rendezvous is cut from every peer
	FaultRdvCrash = "rdv-crash" // the rendezvous crashes (and forgets everything)
)

// DiscoveryFault is one network fault of a discovery plan, from At for For.
type DiscoveryFault struct {
	Kind    string        `json:"kind"`
	At      time.Duration `json:"at"`
	For     time.Duration `json:"for"`
	Peers   []int         `json:"peers,omitempty"`
	Segment string        `json:"segment,omitempty"`
	OneWay  bool          `json:"one_way,omitempty"`
}

// DiscoveryCrash is one crash of a discovery plan: Peer is down from At for
// For; a graceful one announces its offline first (World.Shutdown).
type DiscoveryCrash struct {
	Peer     int           `json:"peer"`
	At       time.Duration `json:"at"`
	For      time.Duration `json:"for"`
	Graceful bool          `json:"graceful,omitempty"`
}

// DiscoveryPlan is what a seed expands to for the discovery scenario.
type DiscoveryPlan struct {
	Places        []PeerPlace      `json:"places"`
	Link          LinkParams       `json:"link"`
	WANLink       LinkParams       `json:"wan_link"`
	LatencySpread time.Duration    `json:"latency_spread"`
	Faults        []DiscoveryFault `json:"faults"`
	Crashes       []DiscoveryCrash `json:"crashes"`
}

// String summarises the plan on one line.
func (pl *DiscoveryPlan) String() string {
	var b strings.Builder
	alt, lanOnly := 0, 0
	for _, pp := range pl.Places {
		if pp.Tag == DiscoveryAltTag {
			alt++
		}
		if pp.NoWAN {
			lanOnly++
		}
	}
	l, wl := pl.Link, pl.WANLink
	fmt.Fprintf(&b, "segments=%d alt-tag=%d lan-only=%d lan=%s+[0,%s) jitter=%s mdns-loss=%.3f reorder=%.3f wan=%s jitter=%s",
		DiscoverySegments, alt, lanOnly, l.Latency, pl.LatencySpread, l.Jitter, l.Loss, l.Reorder, wl.Latency, wl.Jitter)
	fmt.Fprintf(&b, " faults=%d", len(pl.Faults))
	for _, f := range pl.Faults {
		fmt.Fprintf(&b, " [%s", f.Kind)
		switch {
		case f.Segment != "":
			fmt.Fprintf(&b, " %s", f.Segment)
		case len(f.Peers) > 0:
			for _, i := range f.Peers {
				fmt.Fprintf(&b, " p%d", i)
			}
		}
		if f.OneWay {
			b.WriteString(" one-way")
		}
		fmt.Fprintf(&b, "@%s+%s]", f.At.Round(time.Millisecond), f.For.Round(time.Millisecond))
	}
	fmt.Fprintf(&b, " crashes=%d", len(pl.Crashes))
	const show = 8
	for i, c := range pl.Crashes {
		if i == show {
			fmt.Fprintf(&b, " …+%d", len(pl.Crashes)-show)
			break
		}
		g := ""
		if c.Graceful {
			g = " graceful"
		}
		fmt.Fprintf(&b, " [p%d%s@%s+%s]", c.Peer, g, c.At.Round(time.Millisecond), c.For.Round(time.Millisecond))
	}
	return b.String()
}

// DiscoveryPresence is the presence configuration of the discovery
// scenario: the compat timings (heartbeat 5 s, TTL 20 s, grace 15 min).
func DiscoveryPresence() presence.Config { return simPresence(presence.Config{}) }

// PlanDiscovery expands a seed into the discovery scenario's layout and
// fault mix for p: p.Peers peers on DiscoverySegments segments, 10-50% of
// them with DiscoveryAltTag, up to 20% off the rendezvous; after a warm-up
// of two heartbeats, 1-4 faults (peers isolated, peers cut from the
// rendezvous, a segment cut off, the rendezvous cut off or crashed) lasting
// past the TTL, and crashes (a third graceful) of up to a tenth of the peers.
func PlanDiscovery(seed uint64, p Params) *DiscoveryPlan {
	p = p.withDefaults()
	pc := DiscoveryPresence()
	hb, ttl := pc.Heartbeat, pc.TTL
	r := newStream(seed, streamScenario, 3)
	pl := &DiscoveryPlan{}
	alt := 0.1 + 0.4*r.Float64()
	lanOnly := 0.2 * r.Float64()
	for i := 0; i < p.Peers; i++ {
		pp := PeerPlace{Segment: fmt.Sprintf("lan%d", r.IntN(DiscoverySegments))}
		if r.Float64() < alt {
			pp.Tag = DiscoveryAltTag
		}
		pp.NoWAN = r.Float64() < lanOnly
		pl.Places = append(pl.Places, pp)
	}
	pl.Link = LinkParams{
		Latency:      uniformDur(r, time.Millisecond, 10*time.Millisecond),
		Jitter:       uniformDur(r, 0, 5*time.Millisecond),
		Loss:         0.1 * r.Float64(),
		Reorder:      0.2 * r.Float64(),
		ReorderDelay: uniformDur(r, 10*time.Millisecond, 100*time.Millisecond),
	}
	pl.WANLink = LinkParams{
		Latency: uniformDur(r, 10*time.Millisecond, 100*time.Millisecond),
		Jitter:  uniformDur(r, 0, 50*time.Millisecond),
	}
	pl.LatencySpread = uniformDur(r, 0, 20*time.Millisecond)
	warm := 2 * hb
	lastStart := max(warm, p.Duration-ttl-hb)
	for n := 1 + r.IntN(4); n > 0; n-- {
		f := DiscoveryFault{At: uniformDur(r, warm, lastStart), For: uniformDur(r, ttl+hb, ttl+3*hb)}
		switch k := r.IntN(20); {
		case k < 7:
			f.Kind = FaultIsolate
			f.Peers = sortedInts(r.Perm(p.Peers)[:1+r.IntN(min(3, p.Peers))])
			f.OneWay = r.IntN(4) == 0
		case k < 11:
			f.Kind = FaultCutRdv
			f.Peers = sortedInts(r.Perm(p.Peers)[:1+r.IntN(min(3, p.Peers))])
		case k < 15:
			f.Kind = FaultSegment
			f.Segment = fmt.Sprintf("lan%d", r.IntN(DiscoverySegments))
		case k < 17:
			f.Kind = FaultRdvCut
		default:
			f.Kind = FaultRdvCrash
			f.For = uniformDur(r, hb, ttl+3*hb)
		}
		pl.Faults = append(pl.Faults, f)
	}
	for n := r.IntN(max(3, p.Peers/10) + 1); n > 0; n-- {
		pl.Crashes = append(pl.Crashes, DiscoveryCrash{
			Peer:     r.IntN(p.Peers),
			At:       uniformDur(r, warm, max(warm, p.Duration)),
			For:      uniformDur(r, time.Second, 3*hb),
			Graceful: r.IntN(3) == 0,
		})
	}
	return pl
}

// dstorm drives a discovery plan.
type dstorm struct {
	plan *DiscoveryPlan
	ids  []int
}

const (
	dsFault int64 = iota
	dsFaultEnd
	dsCrash
	dsRestart
)

func (s *dstorm) Fire(w *World, arg int64) {
	kind, k := arg>>32, int(arg&0xffffffff)
	switch kind {
	case dsFault:
		f := &s.plan.Faults[k]
		var id int
		var err error
		switch f.Kind {
		case FaultIsolate:
			id, err = w.Partition(f.Peers, nil, f.OneWay)
		case FaultCutRdv:
			id, err = w.Partition(f.Peers, []int{Rendezvous}, false)
		case FaultSegment:
			id, err = w.Partition(w.SegmentPeers(f.Segment), nil, false)
		case FaultRdvCut:
			id, err = w.Partition([]int{Rendezvous}, nil, false)
		case FaultRdvCrash:
			_ = w.CrashRendezvous() // already down: overlapping crashes
		}
		if err == nil {
			s.ids[k] = id
		}
	case dsFaultEnd:
		if s.plan.Faults[k].Kind == FaultRdvCrash {
			_ = w.RestartRendezvous() // already up
		} else if id := s.ids[k]; id != 0 {
			_ = w.Heal(id) // Converge may have healed it already
		}
	case dsCrash:
		c := &s.plan.Crashes[k]
		if c.Graceful {
			_ = w.Shutdown(c.Peer) // already down: overlapping crashes
		} else {
			_ = w.Crash(c.Peer)
		}
	case dsRestart:
		_ = w.Restart(s.plan.Crashes[k].Peer) // already up
	}
}

// NewDiscoveryWorld builds the discovery world for seed with its plan
// scheduled, checked by a PresenceChecker (returned).
func NewDiscoveryWorld(seed uint64, p Params) (*World, *DiscoveryPlan, *PresenceChecker) {
	p = p.withDefaults()
	plan := PlanDiscovery(seed, p)
	pc := NewPresenceChecker()
	w := New(seed, Options{Peers: p.Peers, Link: plan.Link, LatencySpread: plan.LatencySpread,
		Node:     app.NodeOptions{Presence: DiscoveryPresence()},
		Checkers: []Checker{pc},
		Discovery: &DiscoveryOptions{Rendezvous: true, WANLink: plan.WANLink,
			Layout: func(i int) PeerPlace { return plan.Places[i] }}})
	s := &dstorm{plan: plan, ids: make([]int, len(plan.Faults))}
	for k, f := range plan.Faults {
		w.Schedule(f.At, s, dsFault<<32|int64(k))
		w.Schedule(f.At+f.For, s, dsFaultEnd<<32|int64(k))
	}
	for k, c := range plan.Crashes {
		w.Schedule(c.At, s, dsCrash<<32|int64(k))
		w.Schedule(c.At+c.For, s, dsRestart<<32|int64(k))
	}
	return w, plan, pc
}

// RunDiscovery runs the discovery scenario for one seed: discovery from
// scratch, the fault phase (p.Duration), then the liveness phase: heal
// everything, restart every crashed peer and the rendezvous, and require
// every table complete within DiscoveryLivenessHeartbeats heartbeats (or
// p.Deadline when it is not the default). Its metrics give the time to full
// discovery and to convergence after the heal, in heartbeats.
func RunDiscovery(seed uint64, p Params) *Report {
	p = p.withDefaults()
	start := time.Now()
	w, plan, pc := NewDiscoveryWorld(seed, p)
	hb := DiscoveryPresence().Heartbeat
	deadline := p.Deadline
	if deadline == DefaultParams().Deadline {
		deadline = DiscoveryLivenessHeartbeats * hb
	}
	rep, healAt := runPhases(ScenarioDiscovery, seed, p, start, w, plan, deadline)
	rep.Metrics = map[string]float64{}
	if at, ok := pc.FullDiscoveryAt(); ok {
		rep.Metrics["full_discovery_s"] = at.Seconds()
		rep.Metrics["full_discovery_heartbeats"] = at.Seconds() / hb.Seconds()
	}
	if rep.Liveness.Converged && healAt >= 0 {
		d := rep.Liveness.At - healAt
		rep.Metrics["converge_after_heal_s"] = d.Seconds()
		rep.Metrics["converge_after_heal_heartbeats"] = d.Seconds() / hb.Seconds()
	}
	rep.Metrics["max_return_s"] = pc.MaxReturn().Seconds()
	rep.Metrics["max_offline_lag_s"] = pc.MaxOfflineLag().Seconds()
	return rep
}
