package presence

import (
	"container/heap"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Source tells how a peer's presence reached us.
type Source string

// Sources, best first: a peer heard on several keeps the best one heard
// within the TTL. GossipSub presence arrives as SourceLAN whatever the
// connection; the core records it as SourceStatic for a configured peer,
// and keeps SourceWAN for a peer it knows through a rendezvous and that was
// not found on the LAN (Discovered with SourceLAN).
const (
	SourceStatic Source = "static" // a configured peer (p2p.peers), over GossipSub
	SourceLAN    Source = "lan"    // GossipSub on the LAN (mDNS)
	SourceWAN    Source = "wan"    // a rendezvous server (or GossipSub with a peer it led to)
)

func (s Source) rank() int {
	switch s {
	case SourceStatic:
		return 0
	case SourceLAN:
		return 1
	case SourceWAN:
		return 2
	}
	return 3
}

// Errors of Handle(Received): why a presence message changed nothing. A
// caller may log them (at debug level: the network is not trusted) or count
// them; none is fatal.
var (
	// ErrForged: the authenticated sender is not the peer the message is about.
	ErrForged = errors.New("presence: sender is not the message's peer")
	// ErrSelf: the message claims to be from this node.
	ErrSelf = errors.New("presence: message about this node")
	// ErrStale: the message is not newer (ts) than what the table holds.
	ErrStale = errors.New("presence: stale message")
	// ErrUnverified: an unverified message about a peer that is online and
	// verified (nobody may speak for a peer that proved its identity).
	ErrUnverified = errors.New("presence: unverified message about a verified peer")
	// ErrTableFull: the table holds MaxPeers peers, none of them offline.
	ErrTableFull = errors.New("presence: peer table full")
)

// Config tunes the core. Zero fields take DefaultConfig's values, except
// Announce and Static.
type Config struct {
	// Announce publishes this node's presence: online at Start, an update
	// every Heartbeat and when its addresses or profile change, offline at
	// Stop. Without it the core only keeps the table.
	Announce bool
	// Heartbeat is the interval of our updates (presence.heartbeat_seconds; Goop2: 5 s).
	Heartbeat time.Duration
	// TTL: a peer is offline after this long without a presence (presence.ttl_seconds; 20 s).
	TTL time.Duration
	// Grace: an offline peer is removed after this long (Goop2: 15 min).
	Grace time.Duration
	// MaxPeers bounds the table; when it is full a new peer evicts the peer
	// offline the longest, or is refused (default 10,000).
	MaxPeers int
	// MaxClockSkew bounds how far in the future a peer's ts is believed: a
	// later ts is stored as now+MaxClockSkew, so a peer with a fast clock
	// cannot make its next honest messages look stale (default 10 min).
	MaxClockSkew time.Duration
	// RedialInterval is the least time between two connect hints for a peer
	// that is known and online (default 30 s).
	RedialInterval time.Duration
	// Static are the configured peers (p2p.peers): their LAN presences are
	// recorded with SourceStatic.
	Static []PeerID
}

// DefaultConfig returns the compat timings (SPEC §6), without announcing.
func DefaultConfig() Config {
	return Config{
		Heartbeat:      5 * time.Second,
		TTL:            20 * time.Second,
		Grace:          15 * time.Minute,
		MaxPeers:       10_000,
		MaxClockSkew:   10 * time.Minute,
		RedialInterval: 30 * time.Second,
	}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Heartbeat <= 0 {
		c.Heartbeat = d.Heartbeat
	}
	if c.TTL <= 0 {
		c.TTL = d.TTL
	}
	if c.Grace <= 0 {
		c.Grace = d.Grace
	}
	if c.MaxPeers <= 0 {
		c.MaxPeers = d.MaxPeers
	}
	if c.MaxClockSkew <= 0 {
		c.MaxClockSkew = d.MaxClockSkew
	}
	if c.RedialInterval <= 0 {
		c.RedialInterval = d.RedialInterval
	}
	return c
}

// AnnounceInterval is the least time between two of our announcements
// triggered by peers joining (Joined); heartbeats are not limited by it.
const AnnounceInterval = time.Second

// PersistEvery is how often a peer's row is rewritten when only its last
// seen time changed (heartbeats do not each cost a write).
const PersistEvery = time.Minute

// Profile is what this node announces about itself.
type Profile struct {
	Label               string // profile.label (content)
	Email               string
	AvatarHash          string
	ActiveTemplate      string
	PublicKey           string
	EncryptionSupported bool
	Version             string   // goopClientVersion
	Addrs               []string // our multiaddrs
}

// Peer is one row of the peer table, as persisted and shown.
type Peer struct {
	ID                  PeerID
	Label               string
	Email               string
	AvatarHash          string
	ActiveTemplate      string
	PublicKey           string
	EncryptionSupported bool
	Version             string
	Addrs               []string
	// Verified: the peer proved it owns its id (a signed GossipSub message
	// from it, or a rendezvous server that checked its signature).
	Verified bool
	Source   Source
	Online   bool
	// LastSeen is when we last accepted a presence from the peer (our clock).
	LastSeen time.Time
	// OfflineSince is when the peer went offline (zero while online).
	OfflineSince time.Time
	// TS is the newest message ts accepted (the peer's clock, Unix ms).
	TS int64
}

func (p *Peer) clone() Peer {
	c := *p
	c.Addrs = slices.Clone(p.Addrs)
	return c
}

// ChangeKind tells what a Change does to the stored peer table.
type ChangeKind uint8

// Change kinds.
const (
	// PutPeer stores Peer (insert or replace the row of ID).
	PutPeer ChangeKind = iota + 1
	// DeletePeer deletes the row of ID.
	DeletePeer
)

// Change is one durable change of the peer table (the `_peers` cache).
type Change struct {
	Kind ChangeKind
	ID   PeerID
	Peer *Peer // PutPeer only
}

// Event kinds (Event.Type).
const (
	EvOnline  = "peer_online"  // a new peer, or one back online
	EvUpdated = "peer_updated" // an online peer changed its label, addresses, ...
	EvOffline = "peer_offline" // explicit offline, or no presence for the TTL
	EvRemoved = "peer_removed" // offline for the grace period, or evicted
)

// Event reports a change of the table to the viewer.
type Event struct {
	Type string
	Peer Peer // the row after the change (before it, for EvRemoved)
}

// DialHint asks the driver to connect to Peer at Addrs (multiaddrs, with or
// without /p2p/<Peer>).
type DialHint struct {
	Peer   PeerID
	Addrs  []string
	Source Source
}

// Ready is what the core produced since the previous Drain: Changes to
// persist, Publish to send (only after Changes are stored, like everything
// else), Dial hints and Events.
type Ready struct {
	Changes []Change
	Publish []Msg
	Dial    []DialHint
	Events  []Event
}

// Input is one input of Handle: Start, Stop, Received, Discovered, Joined,
// AddrsChanged or ProfileChanged.
type Input interface{ isInput() }

// Start begins the node's presence: restored peers become offline (their
// removal clock starts now) and are hinted for connection, and when
// announcing an online message is published. Later inputs before Start are
// handled; Start itself only counts once.
type Start struct{}

// Stop ends the node's presence: when announcing, an offline message is
// published and heartbeats stop. The table keeps working.
type Stop struct{}

// Received is a presence message that arrived over Source. From is the
// authenticated sender when the transport knows it (the GossipSub message's
// signer), else empty. Verified says the transport proved Msg.PeerID
// authored the message by other means (a rendezvous server that checked its
// signature); a message is also verified when From is its peer.
type Received struct {
	Source   Source
	From     PeerID
	Verified bool
	Msg      Msg
}

// Discovered reports that Peer was found at Addrs (mDNS, a simulated LAN
// broadcast); the core answers with a connect hint unless the peer is online
// and was hinted recently.
type Discovered struct {
	Source Source
	Peer   PeerID
	Addrs  []string
}

// Joined reports that Peer can now hear our presence (it subscribed to the
// presence topic) but has not yet: an announcing core publishes an update
// at once, or AnnounceInterval after its previous announcement, so that a
// newcomer learns of us within about a second rather than a heartbeat.
type Joined struct{ Peer PeerID }

// AddrsChanged gives this node's current addresses; an announcing core
// publishes an update when they differ from the last ones.
type AddrsChanged struct{ Addrs []string }

// ProfileChanged gives this node's profile (its Addrs are ignored: use
// AddrsChanged); an announcing core publishes an update when it differs.
type ProfileChanged struct{ Profile Profile }

func (Start) isInput()          {}
func (Stop) isInput()           {}
func (Received) isInput()       {}
func (Discovered) isInput()     {}
func (Joined) isInput()         {}
func (AddrsChanged) isInput()   {}
func (ProfileChanged) isInput() {}

type entry struct {
	p         Peer
	gen       uint64       // the generation of its live deadline
	heard     [3]time.Time // last accepted message per source rank
	hintAt    time.Time    // last connect hint
	persisted time.Time    // LastSeen as last persisted
	restored  bool         // loaded from the store, not heard from since
}

// Core is the peer table and this node's presence. Not safe for concurrent
// use; it does no I/O and reads no clock.
type Core struct {
	self    PeerID
	cfg     Config
	prof    Profile
	static  map[PeerID]bool
	peers   map[PeerID]*entry
	timers  deadlines
	started bool
	stopped bool
	// nextBeat is when the next heartbeat is due (zero: none).
	nextBeat time.Time
	lastPub  time.Time // when we last published
	lastTS   int64
	gen      uint64 // deadline generations, unique across entries
	out      Ready

	// lanFound: peers found on the LAN (Discovered with SourceLAN, i.e.
	// mDNS), and when last; at most MaxPeers.
	lanFound map[PeerID]time.Time
}

// New returns a core for self restored with the peers of the stored table
// (in any order; invalid rows are skipped). prof is what the node announces.
func New(self PeerID, cfg Config, prof Profile, restored []Peer) *Core {
	c := &Core{self: self, cfg: cfg.withDefaults(), prof: cloneProfile(prof),
		static: map[PeerID]bool{}, lanFound: map[PeerID]time.Time{}, peers: make(map[PeerID]*entry, len(restored))}
	for _, id := range cfg.Static {
		c.static[id] = true
	}
	for _, p := range restored {
		if p.ID == self || ValidatePeerID(p.ID) != nil || len(c.peers) >= c.cfg.MaxPeers {
			continue
		}
		e := &entry{p: p.clone(), restored: true}
		e.persisted = p.LastSeen
		c.peers[p.ID] = e
	}
	return c
}

// Self is this node's peer id.
func (c *Core) Self() PeerID { return c.self }

// Config returns the core's configuration with defaults applied.
func (c *Core) Config() Config { return c.cfg }

// Profile returns what this node announces.
func (c *Core) Profile() Profile { return cloneProfile(c.prof) }

// Peers returns a copy of the table sorted by peer id.
func (c *Core) Peers() []Peer {
	out := make([]Peer, 0, len(c.peers))
	for _, e := range c.peers {
		out = append(out, e.p.clone())
	}
	slices.SortFunc(out, func(a, b Peer) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	return out
}

// Peer returns one row of the table.
func (c *Core) Peer(id PeerID) (Peer, bool) {
	e, ok := c.peers[id]
	if !ok {
		return Peer{}, false
	}
	return e.p.clone(), true
}

// Len is the number of peers in the table.
func (c *Core) Len() int { return len(c.peers) }

// Drain returns and forgets the outputs produced since the last call.
func (c *Core) Drain() Ready {
	r := c.out
	c.out = Ready{}
	return r
}

// Handle feeds one input at time now. It returns why a Received message
// changed nothing (an error wrapping ErrInvalid, ErrForged, ErrSelf,
// ErrStale, ErrUnverified or ErrTableFull), or why a Discovered was ignored;
// other inputs return nil.
func (c *Core) Handle(now time.Time, in Input) error {
	switch in := in.(type) {
	case Start:
		c.start(now)
	case Stop:
		c.stop(now)
	case Received:
		return c.receive(now, in)
	case Discovered:
		return c.discovered(now, in)
	case Joined:
		c.joined(now, in)
	case AddrsChanged:
		c.setAddrs(now, in.Addrs)
	case ProfileChanged:
		c.setProfile(now, in.Profile)
	default:
		panic(fmt.Sprintf("presence: unknown input %T", in))
	}
	return nil
}

// NextWake returns when Tick must next be called, if ever.
func (c *Core) NextWake() (time.Time, bool) {
	at, ok := c.timers.next(c.peers)
	if !c.nextBeat.IsZero() && (!ok || c.nextBeat.Before(at)) {
		return c.nextBeat, true
	}
	return at, ok
}

// Tick fires what is due by now: our heartbeat, peers whose TTL ran out
// (offline) and offline peers whose grace period ran out (removed).
func (c *Core) Tick(now time.Time) {
	if !c.nextBeat.IsZero() && !now.Before(c.nextBeat) {
		c.publish(now, TypeUpdate)
	}
	for {
		d, ok := c.timers.popDue(now, c.peers)
		if !ok {
			return
		}
		e := c.peers[d.id]
		if e.p.Online {
			c.goOffline(now, e)
		} else {
			c.remove(e)
		}
	}
}

func (c *Core) start(now time.Time) {
	if c.started {
		return
	}
	c.started = true
	ids := make([]PeerID, 0, len(c.peers))
	for id := range c.peers {
		ids = append(ids, id)
	}
	slices.Sort(ids) // deterministic output order
	for _, id := range ids {
		e := c.peers[id]
		if !e.restored {
			continue
		}
		if e.p.Online || e.p.OfflineSince.IsZero() {
			e.p.Online = false
			e.p.OfflineSince = now
			c.persist(e)
		}
		// The removal clock starts now: a restarted node keeps what it knew
		// for the grace period, whatever the stored times say.
		c.arm(e, now.Add(c.cfg.Grace))
		if len(e.p.Addrs) > 0 {
			c.hint(now, e, e.p.Addrs)
		}
	}
	if c.cfg.Announce && !c.stopped {
		c.publish(now, TypeOnline)
	}
}

func (c *Core) stop(now time.Time) {
	if c.stopped {
		return
	}
	c.stopped = true
	if c.cfg.Announce && c.started {
		c.publish(now, TypeOffline)
	}
	c.nextBeat = time.Time{}
}

// publish queues our presence of type typ and schedules the next heartbeat.
func (c *Core) publish(now time.Time, typ string) {
	ts := max(now.UnixMilli(), c.lastTS+1)
	c.lastTS = ts
	c.lastPub = now
	c.out.Publish = append(c.out.Publish, Msg{
		Type: typ, PeerID: c.self, Content: c.prof.Label, Email: c.prof.Email, AvatarHash: c.prof.AvatarHash,
		ActiveTemplate: c.prof.ActiveTemplate, Addrs: slices.Clone(c.prof.Addrs), PublicKey: c.prof.PublicKey,
		EncryptionSupported: c.prof.EncryptionSupported, GoopClientVersion: c.prof.Version, TS: ts,
	})
	if typ == TypeOffline {
		c.nextBeat = time.Time{}
	} else {
		c.nextBeat = now.Add(c.cfg.Heartbeat)
	}
}

// announcing reports whether our presence is live (started, not stopped).
func (c *Core) announcing() bool { return c.cfg.Announce && c.started && !c.stopped }

func (c *Core) joined(now time.Time, in Joined) {
	if !c.announcing() || in.Peer == c.self {
		return
	}
	if next := c.lastPub.Add(AnnounceInterval); now.Before(next) {
		if next.Before(c.nextBeat) {
			c.nextBeat = next // the heartbeat comes early
		}
		return
	}
	c.publish(now, TypeUpdate)
}

func (c *Core) setAddrs(now time.Time, addrs []string) {
	addrs = validAddrs(addrs)
	if slices.Equal(addrs, c.prof.Addrs) {
		return
	}
	c.prof.Addrs = addrs
	if c.announcing() {
		c.publish(now, TypeUpdate)
	}
}

func (c *Core) setProfile(now time.Time, p Profile) {
	p.Addrs = c.prof.Addrs
	if profileEqual(p, c.prof) {
		return
	}
	c.prof = cloneProfile(p)
	if c.announcing() {
		c.publish(now, TypeUpdate)
	}
}

func (c *Core) receive(now time.Time, in Received) error {
	m := &in.Msg
	if err := m.Validate(); err != nil {
		return err
	}
	if m.PeerID == c.self {
		return ErrSelf
	}
	if in.From != "" && in.From != m.PeerID {
		return fmt.Errorf("%w: %s sent a presence for %s", ErrForged, in.From, m.PeerID)
	}
	verified := in.From == m.PeerID || in.Verified
	e := c.peers[m.PeerID]
	src := in.Source
	switch {
	case src == SourceLAN && c.static[m.PeerID]:
		src = SourceStatic
	case src == SourceLAN && e != nil && e.p.Source == SourceWAN && !c.foundOnLAN(m.PeerID):
		// GossipSub over a connection a rendezvous led to: the peer is
		// still one we know through the WAN, not one on our LAN.
		src = SourceWAN
	}
	if src.rank() > SourceWAN.rank() {
		src = SourceWAN
	}
	ts := min(m.TS, now.Add(c.cfg.MaxClockSkew).UnixMilli())
	if e != nil {
		if e.p.Verified && !verified && e.p.Online {
			return fmt.Errorf("%w: %s", ErrUnverified, m.PeerID)
		}
		if ts < e.p.TS || ts == e.p.TS && !(m.Type == TypeOffline && e.p.Online) {
			return fmt.Errorf("%w: %s ts %d, have %d", ErrStale, m.PeerID, m.TS, e.p.TS)
		}
	}
	if m.Type == TypeOffline {
		if e == nil {
			return nil // nothing known to take offline
		}
		// Only the peer's own (verified) word moves its clock forward: an
		// unverified offline, e.g. stamped with a rendezvous server's clock,
		// takes the peer offline but must not make its honest heartbeats
		// look stale afterwards.
		if verified {
			e.p.TS = ts
		}
		if e.p.Online {
			e.p.Verified = verified
			c.goOffline(now, e)
		}
		return nil
	}
	isNew := e == nil
	if isNew {
		if len(c.peers) >= c.cfg.MaxPeers && !c.evict() {
			return fmt.Errorf("%w (%d peers): %s refused", ErrTableFull, len(c.peers), m.PeerID)
		}
		e = &entry{p: Peer{ID: m.PeerID}}
		c.peers[m.PeerID] = e
	}
	e.restored = false
	e.heard[src.rank()] = now
	old := e.p.clone()
	wasOnline := e.p.Online
	p := &e.p
	p.Label, p.Email, p.AvatarHash, p.ActiveTemplate = m.Content, m.Email, m.AvatarHash, m.ActiveTemplate
	p.Version = m.GoopClientVersion
	if m.PublicKey != "" { // Goop2 keeps the key when an update omits it
		p.PublicKey, p.EncryptionSupported = m.PublicKey, m.EncryptionSupported
	}
	if len(m.Addrs) > 0 {
		p.Addrs = slices.Clone(m.Addrs)
	}
	p.Verified = verified
	p.Source = c.bestSource(now, e, src)
	p.TS = ts
	p.LastSeen = now
	p.Online = true
	p.OfflineSince = time.Time{}
	c.arm(e, now.Add(c.cfg.TTL))
	changed := !sameInfo(&old, p)
	switch {
	case isNew || !wasOnline:
		c.event(EvOnline, e)
		if len(p.Addrs) > 0 {
			c.hint(now, e, p.Addrs)
		}
	case changed:
		c.event(EvUpdated, e)
		if !slices.Equal(old.Addrs, p.Addrs) && len(p.Addrs) > 0 {
			c.hint(now, e, p.Addrs)
		}
	}
	if isNew || !wasOnline || changed || now.Sub(e.persisted) >= PersistEvery {
		c.persist(e)
	}
	return nil
}

// bestSource is the best-ranked source heard from within the TTL, else src.
func (c *Core) bestSource(now time.Time, e *entry, src Source) Source {
	for r, s := range []Source{SourceStatic, SourceLAN, SourceWAN} {
		if r >= src.rank() {
			break
		}
		if t := e.heard[r]; !t.IsZero() && now.Sub(t) < c.cfg.TTL {
			return s
		}
	}
	return src
}

func (c *Core) discovered(now time.Time, in Discovered) error {
	if err := ValidatePeerID(in.Peer); err != nil {
		return err
	}
	if in.Peer == c.self {
		return ErrSelf
	}
	if in.Source == SourceLAN {
		c.markFoundOnLAN(now, in.Peer)
	}
	addrs := validAddrs(in.Addrs)
	if len(addrs) == 0 {
		return fmt.Errorf("%w: no valid address for %s", ErrInvalid, in.Peer)
	}
	if e := c.peers[in.Peer]; e != nil {
		if e.p.Online && now.Sub(e.hintAt) < c.cfg.RedialInterval {
			return nil
		}
		e.hintAt = now
	}
	c.out.Dial = append(c.out.Dial, DialHint{Peer: in.Peer, Addrs: addrs, Source: in.Source})
	return nil
}

// markFoundOnLAN records that id was found on the LAN. When MaxPeers are
// recorded, the one found the longest ago (then the smallest id) is
// forgotten: deterministic, as the core must be.
func (c *Core) markFoundOnLAN(now time.Time, id PeerID) {
	if _, ok := c.lanFound[id]; !ok && len(c.lanFound) >= c.cfg.MaxPeers {
		var oldest PeerID
		var at time.Time
		for k, t := range c.lanFound {
			if oldest == "" || t.Before(at) || t.Equal(at) && k < oldest {
				oldest, at = k, t
			}
		}
		delete(c.lanFound, oldest)
	}
	c.lanFound[id] = now
}

// foundOnLAN reports whether id was found on the LAN (mDNS).
func (c *Core) foundOnLAN(id PeerID) bool {
	_, ok := c.lanFound[id]
	return ok
}

func (c *Core) hint(now time.Time, e *entry, addrs []string) {
	e.hintAt = now
	c.out.Dial = append(c.out.Dial, DialHint{Peer: e.p.ID, Addrs: slices.Clone(addrs), Source: e.p.Source})
}

func (c *Core) goOffline(now time.Time, e *entry) {
	e.p.Online = false
	e.p.OfflineSince = now
	c.arm(e, now.Add(c.cfg.Grace))
	c.event(EvOffline, e)
	c.persist(e)
}

func (c *Core) remove(e *entry) {
	delete(c.peers, e.p.ID)
	c.event(EvRemoved, e)
	c.out.Changes = append(c.out.Changes, Change{Kind: DeletePeer, ID: e.p.ID})
}

// evict removes the peer offline the longest; false if no peer is offline.
func (c *Core) evict() bool {
	var victim *entry
	for _, e := range c.peers {
		if e.p.Online {
			continue
		}
		if victim == nil || e.p.OfflineSince.Before(victim.p.OfflineSince) ||
			e.p.OfflineSince.Equal(victim.p.OfflineSince) && e.p.ID < victim.p.ID {
			victim = e
		}
	}
	if victim == nil {
		return false
	}
	c.remove(victim)
	return true
}

func (c *Core) persist(e *entry) {
	p := e.p.clone()
	e.persisted = p.LastSeen
	c.out.Changes = append(c.out.Changes, Change{Kind: PutPeer, ID: p.ID, Peer: &p})
}

func (c *Core) event(typ string, e *entry) {
	c.out.Events = append(c.out.Events, Event{Type: typ, Peer: e.p.clone()})
}

// arm sets e's one deadline (expiry while online, removal while offline).
func (c *Core) arm(e *entry, at time.Time) {
	c.gen++
	e.gen = c.gen
	heap.Push(&c.timers, deadline{at: at, id: e.p.ID, gen: e.gen})
}

// sameInfo reports whether a and b show the same thing (times aside).
func sameInfo(a, b *Peer) bool {
	return a.Label == b.Label && a.Email == b.Email && a.AvatarHash == b.AvatarHash &&
		a.ActiveTemplate == b.ActiveTemplate && a.PublicKey == b.PublicKey &&
		a.EncryptionSupported == b.EncryptionSupported && a.Version == b.Version &&
		slices.Equal(a.Addrs, b.Addrs) && a.Verified == b.Verified && a.Source == b.Source
}

func profileEqual(a, b Profile) bool {
	return a.Label == b.Label && a.Email == b.Email && a.AvatarHash == b.AvatarHash &&
		a.ActiveTemplate == b.ActiveTemplate && a.PublicKey == b.PublicKey &&
		a.EncryptionSupported == b.EncryptionSupported && a.Version == b.Version && slices.Equal(a.Addrs, b.Addrs)
}

func cloneProfile(p Profile) Profile {
	p.Addrs = validAddrs(p.Addrs)
	return p
}

// validAddrs keeps the valid addresses, without duplicates, at most MaxAddrs.
func validAddrs(addrs []string) []string {
	var out []string
	for _, a := range addrs {
		if len(out) == MaxAddrs {
			break
		}
		if ValidateAddrs([]string{a}) != nil || slices.Contains(out, a) {
			continue
		}
		out = append(out, a)
	}
	return out
}

// deadline is a peer's expiry or removal time; stale when gen moved on.
type deadline struct {
	at  time.Time
	id  PeerID
	gen uint64
}

// deadlines is a min-heap of deadlines with lazy deletion: a deadline whose
// gen is not its peer's current gen is skipped.
type deadlines []deadline

func (h deadlines) Len() int { return len(h) }
func (h deadlines) Less(i, j int) bool {
	if !h[i].at.Equal(h[j].at) {
		return h[i].at.Before(h[j].at)
	}
	return h[i].id < h[j].id
}
func (h deadlines) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *deadlines) Push(x any)   { *h = append(*h, x.(deadline)) }
func (h *deadlines) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

func (h *deadlines) dropStale(peers map[PeerID]*entry) {
	for h.Len() > 0 {
		d := (*h)[0]
		if e, ok := peers[d.id]; ok && e.gen == d.gen {
			return
		}
		heap.Pop(h)
	}
}

func (h *deadlines) next(peers map[PeerID]*entry) (time.Time, bool) {
	h.dropStale(peers)
	if h.Len() == 0 {
		return time.Time{}, false
	}
	return (*h)[0].at, true
}

func (h *deadlines) popDue(now time.Time, peers map[PeerID]*entry) (deadline, bool) {
	h.dropStale(peers)
	if h.Len() == 0 || (*h)[0].at.After(now) {
		return deadline{}, false
	}
	return heap.Pop(h).(deadline), true
}
