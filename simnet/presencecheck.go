package simnet

import (
	"fmt"
	"strings"
	"time"

	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/presence"
)

// Properties of discovery checked by PresenceChecker.
const (
	// PropPresenceLANScope: a table lists a peer with source lan (or
	// static) only if the two ever shared a LAN segment and an mDNS tag:
	// peers on different segments or tags never see each other via the LAN.
	PropPresenceLANScope = "presence/lan-scope"
	// PropPresenceExpiry: a peer goes offline in a table TTL after the last
	// presence of it the table accepted: not earlier on its own (a timer),
	// and not later than TTL + ExpirySlack.
	PropPresenceExpiry = "presence/offline-after-ttl"
	// PropPresenceReturn: a peer whose presence has been able to reach
	// another for ReturnWithin (no partition, crash or missing connection in
	// the way) is online in that peer's table: a healed peer comes back
	// within a few heartbeats.
	PropPresenceReturn = "presence/online-after-heal"
)

// Table states the checker mirrors, and what liveness wants.
const (
	rowAbsent  uint8 = iota // not in the table
	rowOffline              // listed offline
	rowLAN                  // online, source lan (or static)
	rowWAN                  // online, source wan
)

const never = int64(-1 << 63)

// PresenceChecker checks the peer tables of a world with discovery against
// what the network lets each peer hear. It mirrors every table from the
// nodes' EventPeer events, and knows from the world who shares a segment
// and tag, who uses the rendezvous, and who can reach whom.
//
// Safety: PropPresenceLANScope on every table event; PropPresenceExpiry and
// PropPresenceReturn on every table event and, for tables that do not
// change, every SweepEvery of virtual time.
//
// Liveness (Converged): every running peer lists online every other running
// peer of its segment with its tag, with source lan, and, when both use the
// rendezvous, every other such peer, with source wan. In a world without
// discovery it wants nothing.
//
// Not safe for concurrent use; give each world its own.
type PresenceChecker struct {
	// ExpirySlack is how much later than the TTL a silent peer may go
	// offline (default 50 ms).
	ExpirySlack time.Duration
	// ReturnWithin: a peer whose presence can reach another for this long
	// is online in its table (default 3 heartbeats; negative turns
	// PropPresenceReturn off).
	ReturnWithin time.Duration
	// SweepEvery is how often tables that do not change are checked
	// (default a quarter heartbeat).
	SweepEvery time.Duration

	w       *World
	ttl     int64
	slack   int64
	within  int64
	sweepIv int64
	n, cap  int
	row     []uint8 // p*cap+q: q in p's table
	want    []uint8 // p*cap+q: what liveness wants (rowLAN, rowWAN or 0)
	ever    []bool  // p*cap+q: p and q shared a segment and a tag
	heard   []int64 // p*cap+q: when p's table last accepted a presence of q
	reach   []int64 // p*cap+q: since when q's presence can reach p (never: cannot)
	seg     []string
	tag     []string
	good    int // wanted entries that are as wanted
	need    int // wanted entries
	logSeen int
	next    int64 // next sweep
	checked [3]uint64

	firstFull int64
	maxReturn int64
	maxLag    int64
}

// NewPresenceChecker returns a checker with the default slack, return time
// and sweep.
func NewPresenceChecker() *PresenceChecker {
	return &PresenceChecker{firstFull: never, maxLag: never}
}

// Name implements Checker.
func (c *PresenceChecker) Name() string { return "presence" }

// Properties implements Checker.
func (c *PresenceChecker) Properties() []PropertyCount {
	names := [...]string{PropPresenceLANScope, PropPresenceExpiry, PropPresenceReturn}
	out := make([]PropertyCount, len(names))
	for i, n := range names {
		out[i] = PropertyCount{Name: n, Checked: c.checked[i]}
	}
	return out
}

// FullDiscoveryAt returns the first time every table was as liveness
// wants it (false if it never was).
func (c *PresenceChecker) FullDiscoveryAt() (time.Duration, bool) {
	return time.Duration(c.firstFull), c.firstFull != never
}

// MaxReturn is the longest a peer took to come online in a table after its
// presence could reach it (initial discovery included).
func (c *PresenceChecker) MaxReturn() time.Duration { return time.Duration(c.maxReturn) }

// MaxOfflineLag is the most a peer went offline after the TTL ran out
// (negative: before; zero if no peer expired).
func (c *PresenceChecker) MaxOfflineLag() time.Duration {
	if c.maxLag == never {
		return 0
	}
	return time.Duration(c.maxLag)
}

func (c *PresenceChecker) init(w *World) {
	c.w = w
	pc := w.opts.Node.Presence
	if w.disc == nil {
		pc = simPresence(pc)
	}
	c.ttl = int64(pc.TTL)
	if c.ExpirySlack <= 0 {
		c.ExpirySlack = 50 * time.Millisecond
	}
	if c.ReturnWithin == 0 {
		c.ReturnWithin = 3 * pc.Heartbeat
	}
	if c.SweepEvery <= 0 {
		c.SweepEvery = pc.Heartbeat / 4
	}
	c.slack, c.within, c.sweepIv = int64(c.ExpirySlack), int64(c.ReturnWithin), int64(c.SweepEvery)
	c.next = w.now + c.sweepIv
}

// grow makes room for the world's peers.
func (c *PresenceChecker) grow() {
	n := len(c.w.peers)
	if n <= c.cap {
		for i := c.n; i < n; i++ {
			c.seg = append(c.seg, "\x00") // differs from any segment: placed at the next refresh
			c.tag = append(c.tag, "")
		}
		c.n = n
		return
	}
	nc := max(2*c.cap, n, 16)
	row, want, ever := make([]uint8, nc*nc), make([]uint8, nc*nc), make([]bool, nc*nc)
	heard, reach := make([]int64, nc*nc), make([]int64, nc*nc)
	for i := range heard {
		heard[i], reach[i] = never, never
	}
	for p := 0; p < c.n; p++ {
		copy(row[p*nc:p*nc+c.n], c.row[p*c.cap:p*c.cap+c.n])
		copy(want[p*nc:p*nc+c.n], c.want[p*c.cap:p*c.cap+c.n])
		copy(ever[p*nc:p*nc+c.n], c.ever[p*c.cap:p*c.cap+c.n])
		copy(heard[p*nc:p*nc+c.n], c.heard[p*c.cap:p*c.cap+c.n])
		copy(reach[p*nc:p*nc+c.n], c.reach[p*c.cap:p*c.cap+c.n])
	}
	c.row, c.want, c.ever, c.heard, c.reach, c.cap = row, want, ever, heard, reach, nc
	c.grow()
}

// refresh follows the world's reachability changes since the last call.
func (c *PresenceChecker) refresh() {
	w := c.w
	if c.logSeen == len(w.topoLog) && c.n == len(w.peers) {
		return
	}
	c.grow()
	log := w.topoLog[c.logSeen:]
	c.logSeen = len(w.topoLog)
	for _, x := range log {
		if x == topoAllKey {
			for p := 0; p < c.n; p++ {
				c.place(p)
			}
			for p := 0; p < c.n; p++ {
				for q := 0; q < c.n; q++ {
					c.eval(p, q)
				}
			}
			return
		}
	}
	for _, x := range log {
		if x&topoPeerBit != 0 {
			i := int(uint32(x))
			c.place(i)
			for j := 0; j < c.n; j++ {
				c.eval(i, j)
				c.eval(j, i)
			}
			continue
		}
		a, b := int(x>>32), int(uint32(x))
		c.eval(a, b)
		c.eval(b, a)
	}
}

// place notes peer i's segment and tag, and the peers it shares them with.
func (c *PresenceChecker) place(i int) {
	p := c.w.peers[i]
	if c.seg[i] == p.segment && c.tag[i] == p.disc.tag {
		return
	}
	c.seg[i], c.tag[i] = p.segment, p.disc.tag
	if p.segment == "" {
		return
	}
	for _, j := range c.w.segs[p.segment] {
		if c.w.peers[j].disc.tag == p.disc.tag {
			c.ever[i*c.cap+int(j)] = true
			c.ever[int(j)*c.cap+i] = true
		}
	}
}

// eval computes what liveness wants of q in p's table and whether q's
// presence can reach p now.
func (c *PresenceChecker) eval(p, q int) {
	w := c.w
	k := p*c.cap + q
	var want uint8
	reach := false
	pp, qq := w.peers[p], w.peers[q]
	if p != q && pp.node != nil && qq.node != nil && w.disc != nil {
		lan := pp.segment != "" && pp.segment == qq.segment && pp.disc.tag == qq.disc.tag
		wan := w.WAN(p) && w.WAN(q)
		switch {
		case lan:
			want = rowLAN
		case wan:
			want = rowWAN
		}
		pi, qi := int32(p), int32(q)
		reach = lan && pp.disc.lan.has(qi) && !w.blocked(qi, pi) ||
			wan && w.disc.rdv.up && !w.blocked(qi, rdvIdx) && !w.blocked(pi, rdvIdx) && !w.blocked(rdvIdx, pi)
	}
	if old := c.want[k]; old != 0 {
		c.need--
		if c.row[k] == old {
			c.good--
		}
	}
	c.want[k] = want
	if want != 0 {
		c.need++
		if c.row[k] == want {
			c.good++
		}
	}
	switch {
	case !reach:
		c.reach[k] = never
	case c.reach[k] == never:
		c.reach[k] = w.now
	}
}

// setRow records the new state of q in p's table.
func (c *PresenceChecker) setRow(k int, v uint8) {
	if want := c.want[k]; want != 0 {
		if c.row[k] == want {
			c.good--
		}
		if v == want {
			c.good++
		}
	}
	c.row[k] = v
}

// resetRow forgets p's table: a node that (re)starts lists every peer it
// restored offline, a crashed one nothing.
func (c *PresenceChecker) resetRow(p int) {
	for q := 0; q < c.n; q++ {
		k := p*c.cap + q
		c.setRow(k, rowAbsent)
		c.heard[k] = never
	}
}

// Observe implements Checker.
func (c *PresenceChecker) Observe(w *World, s *Step) *Violation {
	if c.w == nil {
		c.init(w)
	}
	c.refresh()
	now := int64(s.Time)
	p := s.Peer
	switch s.Kind {
	case StepStart, StepCrash:
		c.resetRow(p)
	case StepPresence:
		if m := s.Presence; m != nil && s.PresenceErr == nil && m.Type != presence.TypeOffline && s.From >= 0 {
			c.heard[p*c.cap+s.From] = now
		}
	}
	changed := false
	for i := range s.Events {
		ev := &s.Events[i]
		if ev.Kind != app.EventPeer || ev.Presence == nil {
			continue
		}
		changed = true
		if v := c.peerEvent(s, ev.Presence, now); v != nil {
			return v
		}
	}
	if changed && c.firstFull == never && c.need > 0 && c.good == c.need {
		c.firstFull = now
	}
	if now >= c.next {
		for c.next <= now {
			c.next += c.sweepIv
		}
		return c.sweep(now)
	}
	return nil
}

func (c *PresenceChecker) peerEvent(s *Step, ev *presence.Event, now int64) *Violation {
	w := c.w
	qi, ok := w.index(ev.Peer.ID)
	if !ok {
		return nil // a peer of no world (a forgery): nothing to compare with
	}
	p, q := s.Peer, int(qi)
	k := p*c.cap + q
	src := ev.Peer.Source
	lanSrc := src == presence.SourceLAN || src == presence.SourceStatic
	c.checked[0]++
	if lanSrc && ev.Type != presence.EvRemoved && !c.ever[k] {
		return &Violation{Property: PropPresenceLANScope, Detail: fmt.Sprintf("%s lists %s %s with source %s, but they never shared a segment and an mDNS tag (%s: %s; %s: %s)",
			w.Name(p), w.Name(q), onlineWord(ev.Peer.Online), src, w.Name(p), c.where(p), w.Name(q), c.where(q))}
	}
	switch ev.Type {
	case presence.EvOnline, presence.EvUpdated:
		state := rowWAN
		if lanSrc {
			state = rowLAN
		}
		if ev.Type == presence.EvOnline {
			if r := c.reach[k]; r != never {
				d := now - r
				c.maxReturn = max(c.maxReturn, d)
				c.checked[2]++
				if c.within > 0 && d > c.within {
					return &Violation{Property: PropPresenceReturn, Detail: fmt.Sprintf("%s shows %s online only %s after its presence could reach it (allowed %s)",
						w.Name(p), w.Name(q), time.Duration(d), time.Duration(c.within))}
				}
			}
		}
		c.setRow(k, state)
	case presence.EvOffline:
		c.checked[1]++
		if h := c.heard[k]; h != never {
			silent := now - h
			if s.Kind == StepWake {
				c.maxLag = max(c.maxLag, silent-c.ttl)
				if silent < c.ttl {
					return &Violation{Property: PropPresenceExpiry, Detail: fmt.Sprintf("%s took %s offline %s after it last accepted a presence of it, before the TTL (%s)",
						w.Name(p), w.Name(q), time.Duration(silent), time.Duration(c.ttl))}
				}
			}
			if silent > c.ttl+c.slack {
				return &Violation{Property: PropPresenceExpiry, Detail: fmt.Sprintf("%s took %s offline only %s after it last accepted a presence of it (TTL %s + slack %s)",
					w.Name(p), w.Name(q), time.Duration(silent), time.Duration(c.ttl), time.Duration(c.slack))}
			}
		}
		if r := c.reach[k]; c.within > 0 && r != never && now-r >= c.within {
			c.checked[2]++
			return &Violation{Property: PropPresenceReturn, Detail: fmt.Sprintf("%s took %s offline although its presence could reach it for %s",
				w.Name(p), w.Name(q), time.Duration(now-r))}
		}
		c.setRow(k, rowOffline)
	case presence.EvRemoved:
		c.setRow(k, rowAbsent)
	}
	return nil
}

// sweep checks the tables that did not change: no peer stays online past
// TTL + slack without a presence, and none stays away from a table longer
// than ReturnWithin after its presence could reach it.
func (c *PresenceChecker) sweep(now int64) *Violation {
	w := c.w
	for p := 0; p < c.n; p++ {
		if w.peers[p].node == nil {
			continue
		}
		base := p * c.cap
		for q := 0; q < c.n; q++ {
			k := base + q
			online := c.row[k] >= rowLAN
			if online {
				c.checked[1]++
				if h := c.heard[k]; h != never && now-h > c.ttl+c.slack {
					return &Violation{Property: PropPresenceExpiry, Detail: fmt.Sprintf("%s still shows %s online %s after it last accepted a presence of it (TTL %s + slack %s)",
						w.Name(p), w.Name(q), time.Duration(now-h), time.Duration(c.ttl), time.Duration(c.slack))}
				}
			} else if r := c.reach[k]; c.within > 0 && r != never {
				c.checked[2]++
				if now-r > c.within {
					return &Violation{Property: PropPresenceReturn, Detail: fmt.Sprintf("%s does not show %s online %s after its presence could reach it (allowed %s)",
						w.Name(p), w.Name(q), time.Duration(now-r), time.Duration(c.within))}
				}
			}
		}
	}
	return nil
}

func onlineWord(on bool) string {
	if on {
		return "online"
	}
	return "offline"
}

func (c *PresenceChecker) where(i int) string {
	p := c.w.peers[i]
	seg := p.segment
	if seg == "" {
		seg = "no segment"
	} else {
		seg = "segment " + seg
	}
	return seg + " tag " + p.disc.tag
}

// Converged implements Checker: every table lists what liveness wants.
func (c *PresenceChecker) Converged() bool {
	if c.w == nil {
		return true
	}
	c.refresh()
	return c.good == c.need
}

// Waiting implements Checker.
func (c *PresenceChecker) Waiting(w *World) string {
	if c.w == nil {
		return "presence: nothing observed"
	}
	c.refresh()
	var b strings.Builder
	fmt.Fprintf(&b, "presence: %d of %d table entries not as wanted", c.need-c.good, c.need)
	shown := 0
	for p := 0; p < c.n && shown < 5; p++ {
		for q := 0; q < c.n && shown < 5; q++ {
			k := p*c.cap + q
			if c.want[k] == 0 || c.row[k] == c.want[k] {
				continue
			}
			sep := ", "
			if shown == 0 {
				sep = ": "
			}
			fmt.Fprintf(&b, "%s%s lacks %s online via %s (has %s)", sep, w.Name(p), w.Name(q), rowWord(c.want[k]), rowWord(c.row[k]))
			shown++
		}
	}
	if c.need-c.good > shown {
		b.WriteString(", …")
	}
	return b.String()
}

func rowWord(v uint8) string {
	switch v {
	case rowOffline:
		return "offline"
	case rowLAN:
		return "lan"
	case rowWAN:
		return "wan"
	}
	return "nothing"
}
