package group

import (
	"encoding/json"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/goop-p2p/goop/domain/mq"
)

// PeerID is a libp2p peer id.
type PeerID = mq.PeerID

// TypeFlags are what the core needs to know of a group app type. The app's
// type handlers (ports.GroupTypeHandler) supply them.
type TypeFlags struct {
	// HostCanJoin: the host may be a member of its own group (false for cluster).
	HostCanJoin bool
	// Volatile: no member persistence (cluster).
	Volatile bool
	// DefaultLifecycle when the creator does not say (persistent if empty).
	DefaultLifecycle string
}

// DefaultTypes are the flags of Goop2's group types.
func DefaultTypes() map[string]TypeFlags {
	return map[string]TypeFlags{
		AppGeneral:  {HostCanJoin: true},
		AppChat:     {HostCanJoin: true},
		AppFiles:    {HostCanJoin: true, DefaultLifecycle: Persistent},
		AppCluster:  {HostCanJoin: false, Volatile: true},
		AppListen:   {HostCanJoin: true},
		AppTemplate: {HostCanJoin: true},
		AppRealtime: {HostCanJoin: true},
	}
}

// Config tunes the core. Zero fields take DefaultConfig's values.
type Config struct {
	PingInterval        time.Duration // host pings members (Goop2: 60 s)
	EvictAfter          time.Duration // a member silent this long is evicted
	JoinTimeout         time.Duration // a join waits this long for welcome or error (Goop2: 5 s)
	RejoinInterval      time.Duration // a member that lost its host re-joins this often
	DefaultIdleTimeout  time.Duration // ephemeral groups without their own timeout
	MaxHostedPersistent int           // non-volatile hosted groups per peer (Goop2: 50)
	MaxMembersLimit     int           // upper bound for max_members (0 = unlimited is still allowed)
	// MembersInterval: a host sends its members a group's member list at
	// most once per interval; changes meanwhile go out together at its end.
	MembersInterval time.Duration
	Types           map[string]TypeFlags
}

// DefaultConfig returns Goop2's timings and limits.
func DefaultConfig() Config {
	return Config{
		PingInterval:        60 * time.Second,
		EvictAfter:          150 * time.Second,
		JoinTimeout:         5 * time.Second,
		RejoinInterval:      30 * time.Second,
		DefaultIdleTimeout:  30 * time.Minute,
		MaxHostedPersistent: 50,
		MaxMembersLimit:     100_000,
		MembersInterval:     100 * time.Millisecond,
		Types:               DefaultTypes(),
	}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.PingInterval <= 0 {
		c.PingInterval = d.PingInterval
	}
	if c.EvictAfter <= 0 {
		c.EvictAfter = d.EvictAfter
	}
	if c.JoinTimeout <= 0 {
		c.JoinTimeout = d.JoinTimeout
	}
	if c.RejoinInterval <= 0 {
		c.RejoinInterval = d.RejoinInterval
	}
	if c.MembersInterval <= 0 {
		c.MembersInterval = d.MembersInterval
	}
	if c.DefaultIdleTimeout <= 0 {
		c.DefaultIdleTimeout = d.DefaultIdleTimeout
	}
	if c.MaxHostedPersistent <= 0 {
		c.MaxHostedPersistent = d.MaxHostedPersistent
	}
	if c.MaxMembersLimit <= 0 {
		c.MaxMembersLimit = d.MaxMembersLimit
	}
	if c.Types == nil {
		c.Types = d.Types
	}
	return c
}

func (c Config) flags(appType string) TypeFlags {
	if f, ok := c.Types[appType]; ok {
		return f
	}
	return c.Types[AppGeneral]
}

// Group is a hosted group's durable record.
type Group struct {
	ID          string
	Name        string
	Owner       PeerID
	Type        string
	Context     string
	MaxMembers  int
	CreatedAt   time.Time
	HostJoined  bool
	Volatile    bool
	DefaultRole string
	Roles       []string
	Lifecycle   string
	Access      string
	IdleTimeout time.Duration
	State       json.RawMessage // last `state` message, handed to joiners
}

// Subscription is a joined remote group's durable record (member side).
type Subscription struct {
	Host         PeerID
	GroupID      string
	GroupName    string
	GroupType    string
	Role         string
	SubscribedAt time.Time
	MaxMembers   int
	Volatile     bool
	HostName     string
	Lifecycle    string
	Access       string
}

// Invitation is a group.invite this node received and has neither accepted
// (joined) nor declined yet (member side; ours: Goop2 shows an invitation
// only while its page is open).
type Invitation struct {
	Host         PeerID
	GroupID      string
	GroupName    string
	GroupType    string
	GroupContext string
	Volatile     bool
	Lifecycle    string
	Access       string
	ReceivedAt   time.Time
}

// Bounds of the invitations kept: a peer that invites us again and again
// replaces its own oldest invitations, never everyone else's.
const (
	MaxInvitations        = 100 // in all
	MaxInvitationsPerHost = 20  // from one host
)

// Snapshot is the core's durable state as loaded at start.
type Snapshot struct {
	Groups        []Group
	Members       map[string][]Member // by group id
	Invites       map[string][]PeerID // by group id
	Subscriptions []Subscription
	Invitations   []Invitation
}

// ChangeKind names a durable change.
type ChangeKind uint8

// Change kinds.
const (
	PutGroup ChangeKind = iota + 1
	DeleteGroup
	PutMember
	DeleteMember
	PutInvite
	DeleteInvite
	PutSubscription
	DeleteSubscription
	AppendHistory
	PutInvitation
	DeleteInvitation
)

// HistoryEntry is one relayed message kept by the host (it outlives the group).
type HistoryEntry struct {
	GroupID string
	From    PeerID
	Type    string
	Payload json.RawMessage
	At      time.Time
}

// Change is one durable change; the runtime persists it before sending.
type Change struct {
	Kind       ChangeKind
	GroupID    string
	Peer       PeerID // member / invitee / subscription or invitation host
	Group      *Group
	Member     *Member
	Sub        *Subscription
	History    *HistoryEntry
	Invitation *Invitation
}

// Send is a bus message to send.
type Send struct {
	To      PeerID
	Topic   string
	Payload []byte
	Origin  PeerID
}

// Event types published to the local application.
const (
	EvJoined       = "joined"        // we joined a group (welcome); Members, Payload = state
	EvJoinFailed   = "join_failed"   // our join was refused or timed out; Err
	EvMembers      = "members"       // member list changed; Members
	EvMsg          = TypeMsg         // application message; From = original sender
	EvState        = TypeState       // application state; From = original sender
	EvMeta         = TypeMeta        // metadata changed; Payload = Meta
	EvLeft         = "left"          // we left a group
	EvClosed       = TypeClose       // a group we were in was closed (or we were kicked: Err.Code kicked)
	EvMemberJoined = "member_joined" // (host) a member joined; From
	EvMemberLeft   = "member_left"   // (host) a member left, was evicted or kicked; From, Reason
	EvDissolved    = "dissolved"     // (host) an ephemeral group dissolved itself
	EvInvite       = "invite"        // we were invited; Payload = Invite
	EvDeclined     = "declined"      // we declined an invitation (it is forgotten)
	// EvHistory: the host answered our RequestHistory; Payload = HistoryAnswer.
	EvHistory = "history"
	EvCreated = "created" // (host) a group was created
)

// Event is published to the node's local subscribers.
type Event struct {
	Type    string
	Group   string
	Host    PeerID
	From    PeerID
	Payload json.RawMessage
	Members []Member
	Err     *Error
	Reason  string
	// GroupType lets the app route the event to the type's handler.
	GroupType string
}

// Ready is the output since the last Drain: persist Changes, then Sends, then Events.
type Ready struct {
	Changes []Change
	Sends   []Send
	Events  []Event
	// History holds members' questions about the history of hosted groups:
	// work for the application, which reads its store and answers each
	// through AnswerHistory.
	History []HistoryRequest
}

// HistoryRequest is member From's question about hosted group Group.
type HistoryRequest struct {
	Group string
	From  PeerID
	Q     HistoryQuestion
}

type memberState struct {
	m        Member
	lastSeen time.Time
}

type hosted struct {
	g            Group
	order        []PeerID // join order
	members      map[PeerID]*memberState
	invites      map[PeerID]bool
	nextPing     time.Time
	lastActivity time.Time
	everJoined   bool
	// membersSent is when the member list last went to the members;
	// membersDue, that it changed since and goes out at
	// membersSent+MembersInterval.
	membersSent time.Time
	membersDue  bool
}

type subState uint8

const (
	subJoining subState = iota + 1
	subJoined
)

type subscription struct {
	s            Subscription
	state        subState
	members      []Member
	lastHeard    time.Time
	joinDeadline time.Time // while joining: when the attempt times out
	nextRejoin   time.Time // while joined and the host is silent
	restored     bool      // re-joining after our restart: keep trying
	stored       bool      // a durable row exists for it
}

type subKey struct {
	host PeerID
	id   string
}

// Core is one node's group state machine. Not safe for concurrent use.
type Core struct {
	self   PeerID
	name   string
	cfg    Config
	hosted map[string]*hosted
	subs   map[subKey]*subscription
	// invitations received, not yet accepted or declined
	invitations map[subKey]*Invitation
	out         Ready
	// pending is the snapshot still to restore at the first step.
	pending *Snapshot
}

// NewCore restores the core from its snapshot. Restoring completes at the
// first step (any call that takes now, or Tick, which NextWake asks for at
// once): then timers start and restored subscriptions re-join their hosts, as
// Goop2 does after a restart.
func NewCore(self PeerID, name string, snap Snapshot, cfg Config) *Core {
	snap.Subscriptions = slices.Clone(snap.Subscriptions)
	snap.Invitations = slices.Clone(snap.Invitations)
	return &Core{self: self, name: name, cfg: cfg.withDefaults(), hosted: map[string]*hosted{},
		subs: map[subKey]*subscription{}, invitations: map[subKey]*Invitation{}, pending: &snap}
}

// start finishes restoring at the first step.
func (c *Core) start(now time.Time) {
	if c.pending == nil {
		return
	}
	snap := *c.pending
	c.pending = nil
	for _, g := range snap.Groups {
		h := &hosted{g: g, members: map[PeerID]*memberState{}, invites: map[PeerID]bool{},
			nextPing: now.Add(c.cfg.PingInterval), lastActivity: now}
		for _, m := range snap.Members[g.ID] {
			if g.Volatile {
				break
			}
			p := PeerID(m.PeerID)
			if _, dup := h.members[p]; dup {
				continue
			}
			h.members[p] = &memberState{m: m, lastSeen: now}
			h.order = append(h.order, p)
			h.everJoined = true
		}
		slices.SortStableFunc(h.order, func(a, b PeerID) int {
			if d := h.members[a].m.JoinedAt - h.members[b].m.JoinedAt; d != 0 {
				if d < 0 {
					return -1
				}
				return 1
			}
			return strings.Compare(string(a), string(b))
		})
		for _, p := range snap.Invites[g.ID] {
			h.invites[p] = true
		}
		c.hosted[g.ID] = h
	}
	subs := snap.Subscriptions
	slices.SortFunc(subs, func(a, b Subscription) int {
		return strings.Compare(string(a.Host)+a.GroupID, string(b.Host)+b.GroupID)
	})
	for _, s := range subs {
		sub := &subscription{s: s, state: subJoined, lastHeard: now, restored: true, stored: true, nextRejoin: now.Add(c.cfg.RejoinInterval)}
		c.subs[subKey{s.Host, s.GroupID}] = sub
		c.sendJoin(s.Host, s.GroupID)
	}
	for i := range snap.Invitations {
		inv := snap.Invitations[i]
		c.invitations[subKey{inv.Host, inv.GroupID}] = &inv
	}
}

// Self is the local peer id.
func (c *Core) Self() PeerID { return c.self }

// SetName sets the display name sent with joins.
func (c *Core) SetName(name string) { c.name = name }

// Drain returns the accumulated outputs and resets them.
func (c *Core) Drain() Ready {
	r := c.out
	c.out = Ready{}
	return r
}

func (c *Core) send(to PeerID, topic string, payload []byte, origin PeerID) {
	c.out.Sends = append(c.out.Sends, Send{To: to, Topic: topic, Payload: payload, Origin: origin})
}

// sendAll sends the same message to each of to (a fan-out: room for all of
// them is made at once).
func (c *Core) sendAll(to []PeerID, topic string, payload []byte, origin PeerID) {
	c.out.Sends = slices.Grow(c.out.Sends, len(to))
	for _, p := range to {
		c.send(p, topic, payload, origin)
	}
}

func (c *Core) change(ch Change) { c.out.Changes = append(c.out.Changes, ch) }

func (c *Core) event(ev Event) { c.out.Events = append(c.out.Events, ev) }

func (c *Core) sendJoin(host PeerID, id string) {
	c.send(host, Topic(id, TypeJoin), mustJSON(control{Type: TypeJoin, Group: id, Name: c.name}), "")
}

// ---- host side: commands ----

// CreateSpec is what a creator asks for.
type CreateSpec struct {
	ID          string // 16 hex chars, chosen by the caller from its random source
	Name        string
	Type        string
	Context     string
	MaxMembers  int
	Lifecycle   string
	Access      string
	IdleTimeout time.Duration
	DefaultRole string
	Roles       []string
	HostJoin    bool // the host joins its own group as owner (if the type allows)
}

func validText(s string, max int) bool {
	if len(s) > max || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 && r != '\t' || r == 0x7f {
			return false
		}
	}
	return true
}

// clean makes a string from a remote peer safe to store and show: valid
// UTF-8, no control characters, at most max bytes.
func clean(s string, max int) string {
	if validText(s, max) {
		return s
	}
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 && r != '\t' || r == 0x7f {
			return -1
		}
		return r
	}, s)
	for len(s) > max {
		_, size := utf8.DecodeLastRuneInString(s)
		s = s[:len(s)-size]
	}
	return s
}

// cleanWord keeps a remote identifier-like value (type, role) only if valid.
func cleanWord(s string) string {
	if ValidID(s) {
		return s
	}
	return ""
}

// cleanEnum keeps a remote value only if it is one of the allowed ones.
func cleanEnum(s string, allowed ...string) string {
	if slices.Contains(allowed, s) {
		return s
	}
	return ""
}

// cleanMembers sanitises a member list from a host.
func cleanMembers(ms []Member) []Member {
	out := make([]Member, 0, len(ms))
	for _, m := range ms {
		if m.PeerID == "" || len(m.PeerID) > mq.MaxPeerIDBytes || !validText(m.PeerID, mq.MaxPeerIDBytes) {
			continue
		}
		out = append(out, Member{PeerID: m.PeerID, Name: clean(m.Name, MaxNameBytes), Role: cleanWord(m.Role), JoinedAt: m.JoinedAt})
	}
	return out
}

func validRole(r string) bool {
	return r != "" && len(r) <= MaxRoleBytes && ValidID(r)
}

// Create makes a new hosted group.
func (c *Core) Create(now time.Time, spec CreateSpec) (Group, error) {
	c.start(now)
	if !ValidID(spec.ID) {
		return Group{}, Errorf(CodeInvalid, "group id %q is not valid", spec.ID)
	}
	if _, exists := c.hosted[spec.ID]; exists {
		return Group{}, Errorf(CodeInvalid, "group %s already exists", spec.ID)
	}
	name := strings.TrimSpace(spec.Name)
	if name == "" || !validText(name, MaxNameBytes) {
		return Group{}, Errorf(CodeInvalid, "name must be 1..%d printable characters", MaxNameBytes)
	}
	typ := spec.Type
	if typ == "" {
		typ = AppGeneral
	}
	if !ValidID(typ) {
		return Group{}, Errorf(CodeInvalid, "group_type %q is not valid", typ)
	}
	if !validText(spec.Context, MaxContextBytes) {
		return Group{}, Errorf(CodeInvalid, "group_context is over %d bytes or not text", MaxContextBytes)
	}
	if spec.MaxMembers < 0 || spec.MaxMembers > c.cfg.MaxMembersLimit {
		return Group{}, Errorf(CodeInvalid, "max_members must be 0 (unlimited) .. %d", c.cfg.MaxMembersLimit)
	}
	flags := c.cfg.flags(typ)
	lifecycle := spec.Lifecycle
	if lifecycle == "" {
		lifecycle = flags.DefaultLifecycle
	}
	if lifecycle == "" {
		lifecycle = Persistent
	}
	if lifecycle != Persistent && lifecycle != Ephemeral {
		return Group{}, Errorf(CodeInvalid, "lifecycle must be %q or %q", Persistent, Ephemeral)
	}
	access := spec.Access
	if access == "" {
		access = Open
	}
	if access != Open && access != InviteOnly {
		return Group{}, Errorf(CodeInvalid, "access must be %q or %q", Open, InviteOnly)
	}
	if spec.IdleTimeout < 0 {
		return Group{}, Errorf(CodeInvalid, "idle_timeout_s must not be negative")
	}
	defRole := spec.DefaultRole
	if defRole == "" {
		defRole = DefaultRoleName
	}
	if !validRole(defRole) {
		return Group{}, Errorf(CodeInvalid, "default_role %q is not valid", defRole)
	}
	roles, err := cleanRoles(spec.Roles)
	if err != nil {
		return Group{}, err
	}
	if !flags.Volatile && c.countPersistentHosted() >= c.cfg.MaxHostedPersistent {
		return Group{}, Errorf(CodeLimit, "a peer hosts at most %d non-volatile groups", c.cfg.MaxHostedPersistent)
	}
	if spec.HostJoin && !flags.HostCanJoin {
		return Group{}, Errorf(CodeHostCantJoin, "the host cannot join a %s group", typ)
	}
	g := Group{ID: spec.ID, Name: name, Owner: c.self, Type: typ, Context: spec.Context, MaxMembers: spec.MaxMembers,
		CreatedAt: now, Volatile: flags.Volatile, DefaultRole: defRole, Roles: roles, Lifecycle: lifecycle,
		Access: access}
	if lifecycle == Ephemeral {
		g.IdleTimeout = spec.IdleTimeout
		if g.IdleTimeout == 0 {
			g.IdleTimeout = c.cfg.DefaultIdleTimeout
		}
	}
	h := &hosted{g: g, members: map[PeerID]*memberState{}, invites: map[PeerID]bool{},
		nextPing: now.Add(c.cfg.PingInterval), lastActivity: now}
	c.hosted[g.ID] = h
	if spec.HostJoin {
		h.g.HostJoined = true
		c.addMember(now, h, c.self, c.name, RoleOwner)
	}
	c.putGroup(h)
	c.event(Event{Type: EvCreated, Group: g.ID, Host: c.self, GroupType: g.Type})
	return h.g, nil
}

func cleanRoles(in []string) ([]string, error) {
	if len(in) > MaxRoles {
		return nil, Errorf(CodeInvalid, "at most %d roles", MaxRoles)
	}
	var out []string
	for _, r := range in {
		if !validRole(r) {
			return nil, Errorf(CodeInvalid, "role %q is not valid (1..%d of [A-Za-z0-9_-])", r, MaxRoleBytes)
		}
		if !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	return out, nil
}

func (c *Core) countPersistentHosted() int {
	n := 0
	for _, h := range c.hosted {
		if !h.g.Volatile {
			n++
		}
	}
	return n
}

func (c *Core) putGroup(h *hosted) {
	g := h.g
	g.Roles = slices.Clone(g.Roles)
	c.change(Change{Kind: PutGroup, GroupID: g.ID, Group: &g})
}

func (c *Core) group(id string) (*hosted, error) {
	h := c.hosted[id]
	if h == nil {
		return nil, Errorf(CodeNotFound, "no hosted group %s", id)
	}
	return h, nil
}

func (c *Core) addMember(now time.Time, h *hosted, p PeerID, name, role string) Member {
	m := Member{PeerID: string(p), Name: name, Role: role, JoinedAt: now.UnixMilli()}
	h.members[p] = &memberState{m: m, lastSeen: now}
	h.order = append(h.order, p)
	h.everJoined = true
	h.lastActivity = now
	if !h.g.Volatile {
		mm := m
		c.change(Change{Kind: PutMember, GroupID: h.g.ID, Peer: p, Member: &mm})
	}
	return m
}

func (c *Core) removeMember(h *hosted, p PeerID) {
	delete(h.members, p)
	h.order = slices.DeleteFunc(h.order, func(x PeerID) bool { return x == p })
	if !h.g.Volatile {
		c.change(Change{Kind: DeleteMember, GroupID: h.g.ID, Peer: p})
	}
}

func (c *Core) memberList(h *hosted) []Member {
	out := make([]Member, 0, len(h.order))
	for _, p := range h.order {
		out = append(out, h.members[p].m)
	}
	return out
}

// remote lists members other than the host itself, in join order.
func (c *Core) remote(h *hosted, except PeerID) []PeerID {
	out := make([]PeerID, 0, len(h.order))
	for _, p := range h.order {
		if p != c.self && p != except {
			out = append(out, p)
		}
	}
	return out
}

// membersChanged tells a group's members that its member list changed:
// every remote member but except (a joiner, whose welcome holds the list)
// gets the list at once, unless one went out less than MembersInterval ago;
// then all of them get it when that interval ends (Tick), with every change
// made meanwhile. A burst of joins — all the members of a restarted host
// re-joining — costs each member a list per interval, not one per join:
// O(N) lists rather than O(N²). The host's application hears of each
// change at once (EvMembers).
func (c *Core) membersChanged(now time.Time, h *hosted, except PeerID) {
	list := c.memberList(h)
	c.event(Event{Type: EvMembers, Group: h.g.ID, Host: c.self, Members: list, GroupType: h.g.Type})
	if h.membersDue || now.Before(c.membersNext(h)) {
		h.membersDue = true
		return
	}
	c.sendMembers(now, h, list, except)
}

// membersNext is when h's member list may next go out to its members.
func (c *Core) membersNext(h *hosted) time.Time { return h.membersSent.Add(c.cfg.MembersInterval) }

// sendMembers sends list to every remote member but except (if there is
// one, the interval starts).
func (c *Core) sendMembers(now time.Time, h *hosted, list []Member, except PeerID) {
	h.membersDue = false
	to := c.remote(h, except)
	if len(to) == 0 {
		return
	}
	c.sendAll(to, Topic(h.g.ID, TypeMembers), mustJSON(membersPayload{Members: list}), "")
	h.membersSent = now
}

// maxMemberJSON bounds one member's bytes in an encoded member list: each
// string at its longest, every byte escaped as \u00XX (6 bytes), and room
// for the keys and the time.
const maxMemberJSON = 6*(mq.MaxPeerIDBytes+MaxNameBytes+MaxRoleBytes) + 128

// roomFor refuses (code full) a new member m when the group's member list
// with m would no longer fit one bus message beside the largest state:
// every welcome and member list sent after it would be refused by the bus,
// leaving the joiner waiting and everyone's member list stale. With
// typical names that is several thousand members.
//
// Encoding the list costs a host time with every join, so it is done only
// when the list could come near the bound: below that the bound holds
// whatever the members' names (see maxMemberJSON).
func (c *Core) roomFor(h *hosted, m Member) *Error {
	fixed := 6*(len(h.g.Name)+len(h.g.Context)+len(h.g.Type)+len(h.g.Lifecycle)+len(h.g.Access)+len(m.Role)) + 256
	if (len(h.members)+1)*maxMemberJSON+fixed+MaxStateBytes+len(`,"state":`) <= mq.MaxPayloadBytes {
		return nil
	}
	w := Welcome{GroupName: h.g.Name, GroupType: h.g.Type, GroupContext: h.g.Context, MaxMembers: h.g.MaxMembers,
		Volatile: h.g.Volatile, Members: append(c.memberList(h), m), Lifecycle: h.g.Lifecycle, Access: h.g.Access,
		Role: m.Role}
	if len(mustJSON(w))+MaxStateBytes+len(`,"state":`) > mq.MaxPayloadBytes {
		return Errorf(CodeFull, "group is full: its member list of %d would no longer fit in one message", len(h.members)+1)
	}
	return nil
}

func (c *Core) welcome(h *hosted, to PeerID) {
	w := Welcome{GroupName: h.g.Name, GroupType: h.g.Type, GroupContext: h.g.Context, MaxMembers: h.g.MaxMembers,
		Volatile: h.g.Volatile, Members: c.memberList(h), State: h.g.State, Lifecycle: h.g.Lifecycle,
		Access: h.g.Access, Role: h.members[to].m.Role}
	c.send(to, Topic(h.g.ID, TypeWelcome), mustJSON(w), "")
}

// Close closes a hosted group: members are told, the group is deleted (its
// history stays).
func (c *Core) Close(now time.Time, id string) error {
	c.start(now)
	h, err := c.group(id)
	if err != nil {
		return err
	}
	c.closeGroup(h, EvClosed, "closed by host")
	return nil
}

func (c *Core) closeGroup(h *hosted, evType, reason string) {
	for _, p := range c.remote(h, "") {
		c.send(p, Topic(h.g.ID, TypeClose), controlPayload(TypeClose, h.g.ID), "")
	}
	// Peers invited and not joined keep the invitation until they act on
	// it: tell them too (ours: our node drops the invitation; to a peer
	// neither in the group nor invited, a close means nothing).
	invited := make([]PeerID, 0, len(h.invites))
	for p := range h.invites {
		if h.members[p] == nil && p != c.self {
			invited = append(invited, p)
		}
	}
	slices.Sort(invited) // deterministic order
	for _, p := range invited {
		c.send(p, Topic(h.g.ID, TypeClose), controlPayload(TypeClose, h.g.ID), "")
	}
	delete(c.hosted, h.g.ID)
	c.change(Change{Kind: DeleteGroup, GroupID: h.g.ID})
	c.event(Event{Type: evType, Group: h.g.ID, Host: c.self, Reason: reason, GroupType: h.g.Type})
}

// Invite lets peer join an invite-only group and sends it a group.invite.
func (c *Core) Invite(now time.Time, id string, peer PeerID) error {
	c.start(now)
	h, err := c.group(id)
	if err != nil {
		return err
	}
	if peer == "" || peer == c.self || len(peer) > mq.MaxPeerIDBytes {
		return Errorf(CodeInvalid, "cannot invite peer %q", peer)
	}
	if !h.invites[peer] {
		h.invites[peer] = true
		c.change(Change{Kind: PutInvite, GroupID: id, Peer: peer})
	}
	inv := Invite{GroupID: id, GroupName: h.g.Name, HostPeerID: string(c.self), GroupType: h.g.Type,
		GroupContext: h.g.Context, Volatile: h.g.Volatile, Lifecycle: h.g.Lifecycle, Access: h.g.Access}
	c.send(peer, TopicInvite, mustJSON(inv), "")
	return nil
}

// Kick removes a member (and its invitation); it is told with a close.
func (c *Core) Kick(now time.Time, id string, peer PeerID) error {
	c.start(now)
	h, err := c.group(id)
	if err != nil {
		return err
	}
	if peer == c.self {
		return Errorf(CodeInvalid, "the host cannot kick itself; close the group instead")
	}
	if h.members[peer] == nil {
		return Errorf(CodeNotMember, "%s is not a member of %s", peer, id)
	}
	c.removeMember(h, peer)
	if h.invites[peer] {
		delete(h.invites, peer)
		c.change(Change{Kind: DeleteInvite, GroupID: id, Peer: peer})
	}
	c.send(peer, Topic(id, TypeClose), mustJSON(control{Type: TypeClose, Group: id,
		Payload: &Error{Code: CodeKicked, Message: "removed from the group by the host"}}), "")
	c.event(Event{Type: EvMemberLeft, Group: id, Host: c.self, From: peer, Reason: "kicked", GroupType: h.g.Type})
	c.membersChanged(now, h, "")
	c.maybeDissolve(now, h)
	return nil
}

// SetRole changes a member's role to one of the group's roles.
func (c *Core) SetRole(now time.Time, id string, peer PeerID, role string) error {
	c.start(now)
	h, err := c.group(id)
	if err != nil {
		return err
	}
	ms := h.members[peer]
	if ms == nil {
		return Errorf(CodeNotMember, "%s is not a member of %s", peer, id)
	}
	if role != h.g.DefaultRole && !slices.Contains(h.g.Roles, role) && !(role == RoleOwner && peer == c.self) {
		return Errorf(CodeInvalid, "role %q is not one of the group's roles", role)
	}
	ms.m.Role = role
	if !h.g.Volatile {
		m := ms.m
		c.change(Change{Kind: PutMember, GroupID: id, Peer: peer, Member: &m})
	}
	c.membersChanged(now, h, "")
	return nil
}

// SetDefaultRole sets the role new members get.
func (c *Core) SetDefaultRole(now time.Time, id, role string) error {
	c.start(now)
	h, err := c.group(id)
	if err != nil {
		return err
	}
	if !validRole(role) {
		return Errorf(CodeInvalid, "role %q is not valid", role)
	}
	h.g.DefaultRole = role
	c.putGroup(h)
	return nil
}

// SetRoles replaces the group's custom roles.
func (c *Core) SetRoles(now time.Time, id string, roles []string) error {
	c.start(now)
	h, err := c.group(id)
	if err != nil {
		return err
	}
	clean, err := cleanRoles(roles)
	if err != nil {
		return err
	}
	h.g.Roles = clean
	c.putGroup(h)
	return nil
}

// SetMeta changes name, type and max members (nil leaves a field as is) and
// tells the members.
func (c *Core) SetMeta(now time.Time, id string, name *string, maxMembers *int) error {
	c.start(now)
	h, err := c.group(id)
	if err != nil {
		return err
	}
	if name != nil {
		n := strings.TrimSpace(*name)
		if n == "" || !validText(n, MaxNameBytes) {
			return Errorf(CodeInvalid, "name must be 1..%d printable characters", MaxNameBytes)
		}
		h.g.Name = n
	}
	if maxMembers != nil {
		if *maxMembers < 0 || *maxMembers > c.cfg.MaxMembersLimit {
			return Errorf(CodeInvalid, "max_members must be 0 (unlimited) .. %d", c.cfg.MaxMembersLimit)
		}
		h.g.MaxMembers = *maxMembers
	}
	c.putGroup(h)
	meta := mustJSON(Meta{GroupName: h.g.Name, GroupType: h.g.Type, MaxMembers: h.g.MaxMembers})
	for _, p := range c.remote(h, "") {
		c.send(p, Topic(id, TypeMeta), meta, "")
	}
	c.event(Event{Type: EvMeta, Group: id, Host: c.self, Payload: meta, GroupType: h.g.Type})
	return nil
}

// ---- both sides: join, leave, send ----

// Join joins group id hosted by host. For a remote host the result arrives
// later as an EvJoined or EvJoinFailed event.
func (c *Core) Join(now time.Time, host PeerID, id string) error {
	c.start(now)
	if !ValidID(id) {
		return Errorf(CodeInvalid, "group id %q is not valid", id)
	}
	if host == "" || len(host) > mq.MaxPeerIDBytes {
		return Errorf(CodeInvalid, "host peer id is not valid")
	}
	if host == c.self {
		h, err := c.group(id)
		if err != nil {
			return err
		}
		if !c.cfg.flags(h.g.Type).HostCanJoin {
			return Errorf(CodeHostCantJoin, "the host cannot join a %s group", h.g.Type)
		}
		if h.members[c.self] != nil {
			return nil
		}
		if h.g.MaxMembers > 0 && len(h.members) >= h.g.MaxMembers {
			return Errorf(CodeFull, "group is full")
		}
		if err := c.roomFor(h, Member{PeerID: string(c.self), Name: c.name, Role: RoleOwner, JoinedAt: now.UnixMilli()}); err != nil {
			return err
		}
		h.g.HostJoined = true
		c.putGroup(h)
		c.addMember(now, h, c.self, c.name, RoleOwner)
		c.event(Event{Type: EvJoined, Group: id, Host: c.self, Members: c.memberList(h), Payload: h.g.State, GroupType: h.g.Type})
		c.membersChanged(now, h, "")
		return nil
	}
	k := subKey{host, id}
	old := c.subs[k]
	if old != nil && old.state == subJoined {
		return nil
	}
	ns := &subscription{s: Subscription{Host: host, GroupID: id}, state: subJoining,
		joinDeadline: now.Add(c.cfg.JoinTimeout), lastHeard: now}
	if old != nil {
		ns.s, ns.stored = old.s, old.stored // keep what we knew, and that a row exists
	}
	c.subs[k] = ns
	c.sendJoin(host, id)
	return nil
}

// Leave leaves a group (our own as host-member, or a remote one).
func (c *Core) Leave(now time.Time, host PeerID, id string) error {
	c.start(now)
	if host == c.self {
		h, err := c.group(id)
		if err != nil {
			return err
		}
		if h.members[c.self] == nil {
			return Errorf(CodeNotMember, "the host is not a member of %s", id)
		}
		c.removeMember(h, c.self)
		h.g.HostJoined = false
		c.putGroup(h)
		c.event(Event{Type: EvLeft, Group: id, Host: c.self, GroupType: h.g.Type})
		c.membersChanged(now, h, "")
		c.maybeDissolve(now, h)
		return nil
	}
	k := subKey{host, id}
	s := c.subs[k]
	if s == nil {
		return Errorf(CodeNotMember, "not a member of %s at %s", id, host)
	}
	c.send(host, Topic(id, TypeLeave), controlPayload(TypeLeave, id), "")
	c.dropSub(k, s)
	c.event(Event{Type: EvLeft, Group: id, Host: host, GroupType: s.s.GroupType})
	return nil
}

func (c *Core) dropSub(k subKey, s *subscription) {
	delete(c.subs, k)
	if s.stored {
		c.change(Change{Kind: DeleteSubscription, GroupID: k.id, Peer: k.host})
	}
}

// SendToGroup sends an application message (kind msg or state) to a group:
// through its host when remote, or relayed directly when we host it.
func (c *Core) SendToGroup(now time.Time, host PeerID, id, kind string, payload []byte) error {
	c.start(now)
	if kind != TypeMsg && kind != TypeState {
		return Errorf(CodeInvalid, "kind must be %q or %q", TypeMsg, TypeState)
	}
	if !json.Valid(payload) {
		return Errorf(CodeInvalid, "payload is not JSON")
	}
	if host == c.self {
		h, err := c.group(id)
		if err != nil {
			return err
		}
		return c.relay(now, h, c.self, kind, payload)
	}
	s := c.subs[subKey{host, id}]
	if s == nil || s.state != subJoined {
		return Errorf(CodeNotMember, "not a member of %s at %s", id, host)
	}
	c.send(host, Topic(id, kind), payload, "")
	return nil
}

func (c *Core) relay(now time.Time, h *hosted, from PeerID, kind string, payload []byte) error {
	if kind == TypeState {
		if len(payload) > MaxStateBytes {
			return Errorf(CodeInvalid, "state is over %d bytes", MaxStateBytes)
		}
		h.g.State = payload
		c.putGroup(h)
	}
	h.lastActivity = now
	c.sendAll(c.remote(h, from), Topic(h.g.ID, kind), payload, from)
	if !h.g.Volatile {
		c.change(Change{Kind: AppendHistory, GroupID: h.g.ID, History: &HistoryEntry{GroupID: h.g.ID, From: from, Type: kind, Payload: payload, At: now}})
	}
	if from != c.self {
		c.event(Event{Type: kind, Group: h.g.ID, Host: c.self, From: from, Payload: payload, GroupType: h.g.Type})
	}
	return nil
}

// ---- receiving ----

// Receive handles a bus delivery. It reports whether the topic belonged to
// the group protocol. Malformed payloads are ignored (never a crash).
func (c *Core) Receive(now time.Time, from PeerID, topic string, payload []byte, origin PeerID) bool {
	c.start(now)
	if topic == TopicInvite {
		c.onInvite(now, from, payload)
		return true
	}
	id, typ, ok := ParseTopic(topic)
	if !ok {
		return strings.HasPrefix(topic, TopicPrefix)
	}
	if h := c.hosted[id]; h != nil {
		c.hostReceive(now, h, from, typ, payload)
		return true
	}
	if s := c.subs[subKey{from, id}]; s != nil {
		c.memberReceive(now, s, from, id, typ, payload, origin)
		return true
	}
	switch typ {
	case TypeJoin, TypeMsg, TypeState:
		// A join or message for a group we do not host (any more).
		c.sendError(from, id, Errorf(CodeNotFound, "group %s does not exist", id))
	case TypeWelcome, TypePing:
		// A host that thinks we are a member of a group we left: tell it.
		c.send(from, Topic(id, TypeLeave), controlPayload(TypeLeave, id), "")
	case TypeClose:
		// A group we were invited to is gone: so is the invitation.
		if inv := c.invitations[subKey{from, id}]; inv != nil {
			c.dropInvitation(subKey{from, id})
			c.event(Event{Type: EvClosed, Group: id, Host: from, GroupType: inv.GroupType,
				Err: Errorf(CodeClosed, "the group you were invited to was closed")})
		}
	}
	return true
}

func (c *Core) sendError(to PeerID, id string, e *Error) {
	c.send(to, Topic(id, TypeError), mustJSON(control{Type: TypeError, Group: id, Payload: e}), "")
}

func (c *Core) onInvite(now time.Time, from PeerID, payload []byte) {
	var inv Invite
	if json.Unmarshal(payload, &inv) != nil || !ValidID(inv.GroupID) || PeerID(inv.HostPeerID) != from ||
		!validText(inv.GroupName, MaxNameBytes) || !validText(inv.GroupContext, MaxContextBytes) {
		return // a peer can only invite to its own groups
	}
	inv.GroupType = cleanWord(inv.GroupType)
	inv.Lifecycle, inv.Access = cleanEnum(inv.Lifecycle, Persistent, Ephemeral), cleanEnum(inv.Access, Open, InviteOnly)
	k := subKey{from, inv.GroupID}
	if s := c.subs[k]; s == nil || s.state != subJoined {
		c.keepInvitation(&Invitation{Host: from, GroupID: inv.GroupID, GroupName: inv.GroupName, GroupType: inv.GroupType,
			GroupContext: inv.GroupContext, Volatile: inv.Volatile, Lifecycle: inv.Lifecycle, Access: inv.Access, ReceivedAt: now})
	}
	c.event(Event{Type: EvInvite, Group: inv.GroupID, Host: from, From: from, Payload: mustJSON(inv), GroupType: inv.GroupType})
}

// keepInvitation stores inv (replacing an earlier invitation to the same
// group), then drops the oldest invitations beyond the bounds: first the
// host's own beyond MaxInvitationsPerHost, then any beyond MaxInvitations.
func (c *Core) keepInvitation(inv *Invitation) {
	c.invitations[subKey{inv.Host, inv.GroupID}] = inv
	stored := *inv // the change keeps its own copy
	c.change(Change{Kind: PutInvitation, GroupID: inv.GroupID, Peer: inv.Host, Invitation: &stored})
	fromHost := slices.DeleteFunc(c.Invitations(), func(x Invitation) bool { return x.Host != inv.Host })
	c.dropOldest(fromHost, MaxInvitationsPerHost)
	c.dropOldest(c.Invitations(), MaxInvitations)
}

// dropOldest drops the invitations of list (newest first) past the first limit.
func (c *Core) dropOldest(list []Invitation, limit int) {
	for _, x := range list[min(limit, len(list)):] {
		c.dropInvitation(subKey{x.Host, x.GroupID})
	}
}

// dropInvitation forgets the invitation of k, if any.
func (c *Core) dropInvitation(k subKey) bool {
	if c.invitations[k] == nil {
		return false
	}
	delete(c.invitations, k)
	c.change(Change{Kind: DeleteInvitation, GroupID: k.id, Peer: k.host})
	return true
}

// DeclineInvitation forgets the invitation of host to group id. The host is
// not told: Goop2's protocol has no message for it, and the invitation
// lets us join until the host revokes it.
func (c *Core) DeclineInvitation(now time.Time, host PeerID, id string) error {
	c.start(now)
	if !c.dropInvitation(subKey{host, id}) {
		return Errorf(CodeNotFound, "no invitation to %s from %s", id, host)
	}
	c.event(Event{Type: EvDeclined, Group: id, Host: host})
	return nil
}

func (c *Core) hostReceive(now time.Time, h *hosted, from PeerID, typ string, payload []byte) {
	ms := h.members[from]
	if ms != nil {
		ms.lastSeen = now
	}
	switch typ {
	case TypeJoin:
		var j control
		_ = json.Unmarshal(payload, &j)
		name := strings.TrimSpace(j.Name)
		if !validText(name, MaxNameBytes) {
			name = ""
		}
		if ms != nil { // already a member: idempotent, send the welcome again
			if name != "" && name != ms.m.Name {
				ms.m.Name = name
				if !h.g.Volatile {
					m := ms.m
					c.change(Change{Kind: PutMember, GroupID: h.g.ID, Peer: from, Member: &m})
				}
				c.welcome(h, from)
				c.membersChanged(now, h, from)
				return
			}
			c.welcome(h, from)
			return
		}
		if from == c.self {
			return
		}
		if h.g.Access == InviteOnly && !h.invites[from] {
			c.sendError(from, h.g.ID, Errorf(CodeNotInvited, "group is invite-only and %s was not invited", from))
			return
		}
		if h.g.MaxMembers > 0 && len(h.members) >= h.g.MaxMembers {
			c.sendError(from, h.g.ID, &Error{Code: CodeFull, Message: "group is full"})
			return
		}
		if err := c.roomFor(h, Member{PeerID: string(from), Name: name, Role: h.g.DefaultRole, JoinedAt: now.UnixMilli()}); err != nil {
			c.sendError(from, h.g.ID, err)
			return
		}
		c.addMember(now, h, from, name, h.g.DefaultRole)
		c.welcome(h, from)
		c.event(Event{Type: EvMemberJoined, Group: h.g.ID, Host: c.self, From: from, GroupType: h.g.Type})
		c.membersChanged(now, h, from)
	case TypeLeave:
		if ms == nil {
			return
		}
		c.removeMember(h, from)
		c.event(Event{Type: EvMemberLeft, Group: h.g.ID, Host: c.self, From: from, Reason: "left", GroupType: h.g.Type})
		c.membersChanged(now, h, "")
		c.maybeDissolve(now, h)
	case TypeMsg, TypeState:
		if ms == nil {
			c.sendError(from, h.g.ID, Errorf(CodeNotMember, "%s is not a member of %s", from, h.g.ID))
			return
		}
		if !json.Valid(payload) {
			return
		}
		if err := c.relay(now, h, from, typ, payload); err != nil {
			if ge, ok := err.(*Error); ok {
				c.sendError(from, h.g.ID, ge)
			}
		}
	case TypeHistory:
		var q historyPayload
		if json.Unmarshal(payload, &q) != nil || !validReq(q.Req) {
			return
		}
		if ms == nil || h.g.Volatile {
			// Nothing to read: a non-member gets not_member, and a volatile
			// group keeps no history (an empty answer).
			_ = c.AnswerHistory(now, h.g.ID, from, q.Req, nil)
			return
		}
		c.out.History = append(c.out.History, HistoryRequest{Group: h.g.ID, From: from,
			Q: HistoryQuestion{Req: q.Req, Limit: min(max(q.Limit, 1), MaxHistoryItems)}})
	case TypePong, TypePing:
		// lastSeen already updated
	}
}

// validReq reports whether s can be a history request id.
func validReq(s string) bool { return ValidID(s) }

// RequestHistory asks the host of a group we joined for its newest limit
// messages (1..MaxHistoryItems); the answer comes as an EvHistory event
// whose payload carries req.
func (c *Core) RequestHistory(now time.Time, host PeerID, id, req string, limit int) error {
	c.start(now)
	if !validReq(req) {
		return Errorf(CodeInvalid, "history request id %q is not valid", req)
	}
	if limit < 1 || limit > MaxHistoryItems {
		return Errorf(CodeInvalid, "limit must be 1..%d", MaxHistoryItems)
	}
	s := c.subs[subKey{host, id}]
	if s == nil || s.state != subJoined {
		return Errorf(CodeNotMember, "not a member of %s at %s", id, host)
	}
	c.send(host, Topic(id, TypeHistory), mustJSON(historyPayload{Type: TypeHistory, Group: id, Req: req, Limit: limit}), "")
	return nil
}

// AnswerHistory sends member `to` the answer to its history request req:
// entries (oldest first, as the store returns them), of which the newest
// that fit in MaxHistoryItems and MaxHistoryBytes go. A peer that is no
// longer a member gets a not_member error instead.
func (c *Core) AnswerHistory(now time.Time, id string, to PeerID, req string, entries []HistoryEntry) error {
	c.start(now)
	h, err := c.group(id)
	if err != nil {
		return err
	}
	ans := historyPayload{Type: TypeHistory, Group: id, Req: req, Items: []HistoryItem{}}
	if h.members[to] == nil {
		ans.Items, ans.Error = nil, Errorf(CodeNotMember, "%s is not a member of %s", to, id)
	} else {
		first, size := len(entries), 0
		for first > 0 && len(entries)-first < MaxHistoryItems {
			e := entries[first-1]
			if size+len(e.Payload) > MaxHistoryBytes {
				break
			}
			size += len(e.Payload)
			first--
		}
		for _, e := range entries[first:] {
			ans.Items = append(ans.Items, HistoryItem{From: string(e.From), Type: e.Type, Payload: e.Payload, At: e.At.UnixMilli()})
		}
	}
	c.send(to, Topic(id, TypeHistory), mustJSON(ans), "")
	return nil
}

func (c *Core) memberReceive(now time.Time, s *subscription, host PeerID, id, typ string, payload []byte, origin PeerID) {
	s.lastHeard = now
	k := subKey{host, id}
	switch typ {
	case TypeWelcome:
		var w Welcome
		if json.Unmarshal(payload, &w) != nil {
			return
		}
		// Everything here came from the host: make it safe to store and show.
		w.GroupName, w.GroupType, w.Role = clean(w.GroupName, MaxNameBytes), cleanWord(w.GroupType), cleanWord(w.Role)
		w.Lifecycle, w.Access = cleanEnum(w.Lifecycle, Persistent, Ephemeral), cleanEnum(w.Access, Open, InviteOnly)
		w.Members = cleanMembers(w.Members)
		if w.MaxMembers < 0 {
			w.MaxMembers = 0
		}
		if len(w.State) > MaxStateBytes {
			w.State = nil
		}
		wasJoined := s.state == subJoined
		s.state = subJoined
		s.restored = false
		s.members = w.Members
		sub := Subscription{Host: host, GroupID: id, GroupName: w.GroupName, GroupType: w.GroupType, Role: w.Role,
			SubscribedAt: s.s.SubscribedAt, MaxMembers: w.MaxMembers, Volatile: w.Volatile, HostName: s.s.HostName,
			Lifecycle: w.Lifecycle, Access: w.Access}
		if sub.SubscribedAt.IsZero() {
			sub.SubscribedAt = now
		}
		if sub.Role == "" {
			sub.Role = roleOf(w.Members, c.self)
		}
		s.s = sub
		if !sub.Volatile {
			cp := sub
			c.change(Change{Kind: PutSubscription, GroupID: id, Peer: host, Sub: &cp})
			s.stored = true
		}
		c.dropInvitation(k) // accepted
		if wasJoined {
			c.event(Event{Type: EvMembers, Group: id, Host: host, Members: w.Members, GroupType: sub.GroupType})
			return
		}
		c.event(Event{Type: EvJoined, Group: id, Host: host, Members: w.Members, Payload: w.State, GroupType: sub.GroupType})
	case TypeError:
		var e control
		if json.Unmarshal(payload, &e) != nil || e.Payload == nil {
			return
		}
		ge := &Error{Code: truncate(e.Payload.Code, 64), Message: truncate(e.Payload.Message, 512)}
		if ge.Code == CodeNotFound || ge.Code == CodeNotInvited {
			c.dropInvitation(k) // the group is gone, or the host revoked it
		}
		switch {
		case ge.Code == CodeNotMember && s.state == subJoining && !s.restored:
			// The answer to a msg/state sent before this join (e.g. while we
			// were evicted); the join's own welcome or refusal is still to come.
		case s.state == subJoining && !s.restored:
			c.dropSub(k, s)
			c.event(Event{Type: EvJoinFailed, Group: id, Host: host, Err: ge, GroupType: s.s.GroupType})
		case ge.Code == CodeNotMember:
			c.rejoin(now, s, host, id, true)
		case ge.Code == CodeNotFound || ge.Code == CodeNotInvited || ge.Code == CodeFull:
			c.dropSub(k, s)
			c.event(Event{Type: EvClosed, Group: id, Host: host, Err: ge, GroupType: s.s.GroupType})
		}
	case TypeMembers:
		var mp membersPayload
		if json.Unmarshal(payload, &mp) != nil {
			return
		}
		mp.Members = cleanMembers(mp.Members)
		s.members = mp.Members
		if r := roleOf(mp.Members, c.self); r != "" && r != s.s.Role {
			s.s.Role = r
			if !s.s.Volatile {
				cp := s.s
				c.change(Change{Kind: PutSubscription, GroupID: id, Peer: host, Sub: &cp})
			}
		}
		c.event(Event{Type: EvMembers, Group: id, Host: host, Members: mp.Members, GroupType: s.s.GroupType})
		if s.state == subJoined && roleOf(mp.Members, c.self) == "" {
			c.rejoin(now, s, host, id, true) // the host dropped us (e.g. evicted while away)
		}
	case TypeMsg, TypeState:
		if s.state != subJoined {
			return
		}
		from := origin
		if from == "" {
			from = host
		}
		c.event(Event{Type: typ, Group: id, Host: host, From: from, Payload: payload, GroupType: s.s.GroupType})
	case TypeMeta:
		var m Meta
		if json.Unmarshal(payload, &m) != nil {
			return
		}
		m.GroupName, m.GroupType = clean(m.GroupName, MaxNameBytes), cleanWord(m.GroupType)
		if m.MaxMembers < 0 {
			m.MaxMembers = 0
		}
		payload = mustJSON(m)
		s.s.GroupName, s.s.MaxMembers = m.GroupName, m.MaxMembers
		if m.GroupType != "" {
			s.s.GroupType = m.GroupType
		}
		if s.state == subJoined && !s.s.Volatile {
			cp := s.s
			c.change(Change{Kind: PutSubscription, GroupID: id, Peer: host, Sub: &cp})
		}
		c.event(Event{Type: EvMeta, Group: id, Host: host, Payload: payload, GroupType: s.s.GroupType})
	case TypeHistory:
		var a historyPayload
		if json.Unmarshal(payload, &a) != nil || !validReq(a.Req) || len(a.Items) > MaxHistoryItems {
			return
		}
		ans := HistoryAnswer{Req: a.Req, Items: make([]HistoryItem, 0, len(a.Items))}
		if a.Error != nil {
			ans.Error = &Error{Code: truncate(a.Error.Code, 64), Message: truncate(a.Error.Message, 512)}
		}
		for _, it := range a.Items {
			if (it.Type != TypeMsg && it.Type != TypeState) || len(it.From) > mq.MaxPeerIDBytes || !validText(it.From, mq.MaxPeerIDBytes) ||
				len(it.Payload) == 0 {
				continue
			}
			ans.Items = append(ans.Items, it)
		}
		c.event(Event{Type: EvHistory, Group: id, Host: host, Payload: mustJSON(ans), GroupType: s.s.GroupType})
	case TypePing:
		c.send(host, Topic(id, TypePong), controlPayload(TypePong, id), "")
	case TypeClose:
		var e control
		_ = json.Unmarshal(payload, &e)
		c.dropSub(k, s)
		ev := Event{Type: EvClosed, Group: id, Host: host, GroupType: s.s.GroupType}
		if e.Payload != nil {
			ev.Err = &Error{Code: truncate(e.Payload.Code, 64), Message: truncate(e.Payload.Message, 512)}
		}
		c.event(ev)
	}
}

// HostDisconnected tells the core that the transport lost its last
// connection to peer p. For each group we joined at p, a join goes out at
// once, as the refresh to a host that went quiet does (we stay joined
// meanwhile): if p restarted, the join is what finds it again — the bus
// dials p and delivers the join when p is back, and p's own messages for us
// follow over that connection — instead of waiting for p to go quiet for
// EvictAfter; if the connection only blinked, the host welcomes a member it
// already has.
func (c *Core) HostDisconnected(now time.Time, p PeerID) {
	ids := make([]string, 0, 1)
	for k, s := range c.subs {
		if k.host == p && s.state == subJoined {
			ids = append(ids, k.id)
		}
	}
	slices.Sort(ids) // deterministic order of the joins
	for _, id := range ids {
		c.rejoin(now, c.subs[subKey{p, id}], p, id, false)
	}
}

// rejoin sends a join again. lost: the host no longer counts us as a member,
// so we stop treating the group as joined until its welcome; otherwise it is
// a refresh to a host that went quiet, and we stay joined meanwhile.
func (c *Core) rejoin(now time.Time, s *subscription, host PeerID, id string, lost bool) {
	if lost {
		if s.state == subJoining && now.Before(s.nextRejoin) {
			return
		}
		s.state = subJoining
		s.restored = true // keep trying: this is not a caller's join attempt
	}
	s.nextRejoin = now.Add(c.cfg.RejoinInterval)
	c.sendJoin(host, id)
}

func roleOf(ms []Member, p PeerID) string {
	for _, m := range ms {
		if PeerID(m.PeerID) == p {
			if m.Role == "" {
				return DefaultRoleName
			}
			return m.Role
		}
	}
	return ""
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// ---- time ----

func (c *Core) maybeDissolve(now time.Time, h *hosted) {
	if h.g.Lifecycle != Ephemeral {
		return
	}
	if h.everJoined && len(h.members) == 0 {
		c.closeGroup(h, EvDissolved, "last member left")
		return
	}
	if h.g.IdleTimeout > 0 && !now.Before(h.lastActivity.Add(h.g.IdleTimeout)) {
		c.closeGroup(h, EvDissolved, "idle")
	}
}

// Tick runs keep-alive, eviction, join timeouts, re-joins and dissolution.
func (c *Core) Tick(now time.Time) {
	c.start(now)
	ids := make([]string, 0, len(c.hosted))
	for id := range c.hosted {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		h := c.hosted[id]
		if !now.Before(h.nextPing) {
			h.nextPing = now.Add(c.cfg.PingInterval)
			evicted := false
			for _, p := range c.remote(h, "") {
				ms := h.members[p]
				if now.Sub(ms.lastSeen) >= c.cfg.EvictAfter {
					c.removeMember(h, p)
					c.event(Event{Type: EvMemberLeft, Group: id, Host: c.self, From: p, Reason: "timeout", GroupType: h.g.Type})
					evicted = true
					continue
				}
				c.send(p, Topic(id, TypePing), controlPayload(TypePing, id), "")
			}
			if evicted {
				c.membersChanged(now, h, "")
			}
		}
		if h.membersDue && !now.Before(c.membersNext(h)) {
			c.sendMembers(now, h, c.memberList(h), "")
		}
		c.maybeDissolve(now, h)
	}
	keys := make([]subKey, 0, len(c.subs))
	for k := range c.subs {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b subKey) int {
		if a.host != b.host {
			return strings.Compare(string(a.host), string(b.host))
		}
		return strings.Compare(a.id, b.id)
	})
	for _, k := range keys {
		s := c.subs[k]
		switch {
		case s.state == subJoining && !s.restored && !now.Before(s.joinDeadline):
			c.dropSub(k, s)
			c.event(Event{Type: EvJoinFailed, Group: k.id, Host: k.host, GroupType: s.s.GroupType,
				Err: Errorf(CodeTimeout, "host %s did not answer the join within %s", k.host, c.cfg.JoinTimeout)})
		case s.restored && !now.Before(s.nextRejoin):
			s.nextRejoin = now.Add(c.cfg.RejoinInterval)
			c.sendJoin(k.host, k.id)
		case s.state == subJoined && now.Sub(s.lastHeard) >= c.cfg.EvictAfter && !now.Before(s.nextRejoin):
			c.rejoin(now, s, k.host, k.id, false) // the host went quiet: it may have restarted or evicted us
		}
	}
}

// NextWake returns when Tick must next run, if ever.
func (c *Core) NextWake() (time.Time, bool) {
	if c.pending != nil {
		return time.Time{}, true // restore at once
	}
	var at time.Time
	ok := false
	consider := func(t time.Time) {
		if !ok || t.Before(at) {
			at, ok = t, true
		}
	}
	for _, h := range c.hosted {
		if len(h.order) > 0 && (len(h.order) > 1 || h.members[c.self] == nil) {
			consider(h.nextPing)
		}
		if h.g.Lifecycle == Ephemeral && h.g.IdleTimeout > 0 {
			consider(h.lastActivity.Add(h.g.IdleTimeout))
		}
		if h.membersDue {
			consider(c.membersNext(h))
		}
	}
	for _, s := range c.subs {
		switch {
		case s.state == subJoining && !s.restored:
			consider(s.joinDeadline)
		case s.restored:
			consider(s.nextRejoin)
		default:
			consider(maxTime(s.lastHeard.Add(c.cfg.EvictAfter), s.nextRejoin))
		}
	}
	return at, ok
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// ---- queries ----

// HostedView is a hosted group with its members, for listings.
type HostedView struct {
	Group   Group
	Members []Member
	Invited []PeerID
}

// Hosted lists hosted groups sorted by creation time then id.
func (c *Core) Hosted() []HostedView {
	out := make([]HostedView, 0, len(c.hosted))
	for _, h := range c.hosted {
		v := HostedView{Group: h.g, Members: c.memberList(h)}
		for p := range h.invites {
			v.Invited = append(v.Invited, p)
		}
		slices.Sort(v.Invited)
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b HostedView) int {
		if c := a.Group.CreatedAt.Compare(b.Group.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.Group.ID, b.Group.ID)
	})
	return out
}

// HostedGroup returns one hosted group.
func (c *Core) HostedGroup(id string) (HostedView, bool) {
	h := c.hosted[id]
	if h == nil {
		return HostedView{}, false
	}
	return HostedView{Group: h.g, Members: c.memberList(h)}, true
}

// SubView is a joined (or joining) remote group.
type SubView struct {
	Sub     Subscription
	Joined  bool
	Members []Member
}

// Subscriptions lists our memberships of remote groups, sorted by host and id.
func (c *Core) Subscriptions() []SubView {
	out := make([]SubView, 0, len(c.subs))
	for _, s := range c.subs {
		out = append(out, SubView{Sub: s.s, Joined: s.state == subJoined, Members: slices.Clone(s.members)})
	}
	slices.SortFunc(out, func(a, b SubView) int {
		return strings.Compare(string(a.Sub.Host)+a.Sub.GroupID, string(b.Sub.Host)+b.Sub.GroupID)
	})
	return out
}

// Subscription returns one membership of a remote group.
func (c *Core) Subscription(host PeerID, id string) (SubView, bool) {
	s := c.subs[subKey{host, id}]
	if s == nil {
		return SubView{}, false
	}
	return SubView{Sub: s.s, Joined: s.state == subJoined, Members: slices.Clone(s.members)}, true
}

// Invitations lists the invitations received and neither accepted nor
// declined, newest first (then by host and group id).
func (c *Core) Invitations() []Invitation {
	out := make([]Invitation, 0, len(c.invitations))
	for _, inv := range c.invitations {
		out = append(out, *inv)
	}
	slices.SortFunc(out, func(a, b Invitation) int {
		if d := b.ReceivedAt.Compare(a.ReceivedAt); d != 0 {
			return d
		}
		if a.Host != b.Host {
			return strings.Compare(string(a.Host), string(b.Host))
		}
		return strings.Compare(a.GroupID, b.GroupID)
	})
	return out
}
