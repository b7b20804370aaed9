package sqlstore

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect"

	"github.com/goop-p2p/goop/domain/group"
	"github.com/goop-p2p/goop/ports"
)

func init() {
	Register(Migration{Version: 2, Name: "group tables", Up: createGroupTables})
	Register(Migration{Version: 5, Name: "received group invitations", Up: createInvitationTable})
	Register(Migration{Version: 6, Name: "group history ids without AUTOINCREMENT", Up: historyWithoutAutoincrement})
}

// HistoryLimit is the most relayed messages kept per group: when a batch
// appends history to a group that then has more than HistoryLimit rows plus
// a slack of HistoryLimit/64, its older rows beyond the newest HistoryLimit
// are deleted in the same transaction. GroupHistory returns at most this many.
//
// The slack spares a busy group's host a deletion with every message: a
// prune writes the table's and the index's oldest pages as well as the
// newest ones the insert writes; doing it every 157th message rather than
// with every one takes the transaction that relays a member's message from
// 90 to 77 µs (BenchmarkApplySmall/SQLite/cursor+history).
const HistoryLimit = 10_000

// keptHistory is the history kept per group: HistoryLimit, or the test
// hook's bound.
func (s *Store) keptHistory() int {
	if s.historyLimit > 0 {
		return s.historyLimit
	}
	return HistoryLimit
}

// historySlack is how many rows past its limit a group's history may hold
// before it is pruned back to the limit.
func historySlack(limit int) int { return limit / 64 }

// groupRow is one hosted group. The columns up to roles are Goop2's; roles
// is a JSON array of strings and created_at is in Unix milliseconds. The
// rest are ours.
type groupRow struct {
	bun.BaseModel `bun:"table:_groups"`

	ID           string `bun:"id,pk"`
	Name         string `bun:"name,notnull"`
	Owner        string `bun:"owner,notnull"`
	GroupType    string `bun:"group_type,notnull"`
	GroupContext string `bun:"group_context,notnull"`
	MaxMembers   int64  `bun:"max_members,notnull"`
	CreatedAt    int64  `bun:"created_at,notnull"`
	HostJoined   bool   `bun:"host_joined,notnull"`
	Volatile     bool   `bun:"volatile,notnull"`
	DefaultRole  string `bun:"default_role,notnull"`
	Roles        string `bun:"roles,notnull"`
	Lifecycle    string `bun:"lifecycle,notnull"`
	Access       string `bun:"access,notnull"`
	// IdleTimeoutS is in whole seconds (rounded up).
	IdleTimeoutS int64 `bun:"idle_timeout_s,notnull"`
	// State is the last state message (JSON), NULL when there is none. It is
	// kept as bytes: JSON from a peer may hold invalid UTF-8 in its strings,
	// which a Postgres text column would refuse.
	State []byte `bun:"state"`
}

// memberRow is one member of a hosted group; name and joined_at (Unix ms)
// are ours.
type memberRow struct {
	bun.BaseModel `bun:"table:_group_members"`

	GroupID  string `bun:"group_id,pk"`
	PeerID   string `bun:"peer_id,pk"`
	Role     string `bun:"role,notnull"`
	Name     string `bun:"name,notnull"`
	JoinedAt int64  `bun:"joined_at,notnull"`
}

// subscriptionRow is one remote group this node joined (member side);
// subscribed_at is in Unix ms; lifecycle and access are ours.
type subscriptionRow struct {
	bun.BaseModel `bun:"table:_group_subscriptions"`

	HostPeerID   string `bun:"host_peer_id,pk"`
	GroupID      string `bun:"group_id,pk"`
	GroupName    string `bun:"group_name,notnull"`
	GroupType    string `bun:"group_type,notnull"`
	Role         string `bun:"role,notnull"`
	SubscribedAt int64  `bun:"subscribed_at,notnull"`
	MaxMembers   int64  `bun:"max_members,notnull"`
	Volatile     bool   `bun:"volatile,notnull"`
	HostName     string `bun:"host_name,notnull"`
	Lifecycle    string `bun:"lifecycle,notnull"`
	Access       string `bun:"access,notnull"`
}

// inviteRow lets a peer join an invite-only hosted group; invited_at (Unix
// ms) is when the invitation was stored.
type inviteRow struct {
	bun.BaseModel `bun:"table:_group_invites"`

	GroupID   string `bun:"group_id,pk"`
	PeerID    string `bun:"peer_id,pk"`
	InvitedAt int64  `bun:"invited_at,notnull"`
}

// invitationRow is one group.invite this node received and has neither
// accepted nor declined (ours); received_at is in Unix ms.
type invitationRow struct {
	bun.BaseModel `bun:"table:_group_invitations"`

	HostPeerID   string `bun:"host_peer_id,pk"`
	GroupID      string `bun:"group_id,pk"`
	GroupName    string `bun:"group_name,notnull"`
	GroupType    string `bun:"group_type,notnull"`
	GroupContext string `bun:"group_context,notnull"`
	Volatile     bool   `bun:"volatile,notnull"`
	Lifecycle    string `bun:"lifecycle,notnull"`
	Access       string `bun:"access,notnull"`
	ReceivedAt   int64  `bun:"received_at,notnull"`
}

func createInvitationTable(ctx context.Context, tx bun.Tx) error {
	_, err := tx.NewCreateTable().Model((*invitationRow)(nil)).Exec(ctx)
	return err
}

// historyRow is one message relayed by a hosted group. Rows outlive their
// group; id orders them.
type historyRow struct {
	bun.BaseModel `bun:"table:_group_history,alias:h"`

	ID       int64  `bun:"id,pk,autoincrement"`
	GroupID  string `bun:"group_id,notnull"`
	FromPeer string `bun:"from_peer,notnull"`
	Type     string `bun:"type,notnull"`
	Payload  []byte `bun:"payload"`
	// At is in Unix milliseconds.
	At int64 `bun:"at,notnull"`
}

func createGroupTables(ctx context.Context, tx bun.Tx) error {
	for _, m := range []any{(*groupRow)(nil), (*memberRow)(nil), (*subscriptionRow)(nil), (*inviteRow)(nil), (*historyRow)(nil)} {
		if _, err := tx.NewCreateTable().Model(m).Exec(ctx); err != nil {
			return err
		}
	}
	_, err := tx.NewCreateIndex().Model((*historyRow)(nil)).Index("_group_history_group_id_id").
		Column("group_id", "id").Exec(ctx)
	return err
}

// historyWithoutAutoincrement rebuilds SQLite's _group_history (created by
// migration 2 with INTEGER PRIMARY KEY AUTOINCREMENT) with a plain INTEGER
// PRIMARY KEY. AUTOINCREMENT also updates sqlite_sequence with every
// insert: one more page written by every transaction that relays a
// message, about a fifth of the cost of a member's relayed message at its
// host (BenchmarkApplySmall/SQLite/cursor+history). A plain rowid key is
// still one more than the largest when a row is added, and history is only
// ever pruned oldest first, so ids keep growing as the rows' order needs.
// (Dropping the old table drops its index and its sqlite_sequence row.)
// Postgres keeps its sequence, which costs no such write.
func historyWithoutAutoincrement(ctx context.Context, tx bun.Tx) error {
	if tx.Dialect().Name() != dialect.SQLite {
		return nil
	}
	for _, q := range []string{
		`CREATE TABLE "_group_history_v6" ("id" INTEGER NOT NULL PRIMARY KEY, "group_id" VARCHAR NOT NULL, ` +
			`"from_peer" VARCHAR NOT NULL, "type" VARCHAR NOT NULL, "payload" BLOB, "at" INTEGER NOT NULL)`,
		`INSERT INTO "_group_history_v6" ("id", "group_id", "from_peer", "type", "payload", "at") ` +
			`SELECT "id", "group_id", "from_peer", "type", "payload", "at" FROM "_group_history"`,
		`DROP TABLE "_group_history"`,
		`ALTER TABLE "_group_history_v6" RENAME TO "_group_history"`,
		`CREATE INDEX "_group_history_group_id_id" ON "_group_history" ("group_id", "id")`,
	} {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("history without AUTOINCREMENT: %w", err)
		}
	}
	return nil
}

// readTx runs fn in one consistent read-only view. SQLite's transactions are
// serializable already; Postgres needs to be asked.
func (s *Store) readTx(ctx context.Context, fn func(ctx context.Context, tx bun.Tx) error) error {
	var opts *sql.TxOptions
	if s.driver == DriverPostgres {
		opts = &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true}
	}
	return s.db.RunInTx(ctx, opts, fn)
}

// LoadGroups implements ports.Store: it reads the whole group state in one
// consistent view. Groups come sorted by id, each group's members by
// joined_at then peer id, invites by peer id, subscriptions by host then
// group id (byte order, whatever the database's collation); the maps are
// never nil. Times come back in UTC, to the millisecond.
func (s *Store) LoadGroups(ctx context.Context) (group.Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return group.Snapshot{}, fmt.Errorf("sqlstore: load groups: %w", ports.ErrClosed)
	}
	snap := group.Snapshot{Members: map[string][]group.Member{}, Invites: map[string][]group.PeerID{}}
	err := s.readTx(ctx, func(ctx context.Context, tx bun.Tx) error {
		var gs []groupRow
		if err := tx.NewSelect().Model(&gs).Scan(ctx); err != nil {
			return fmt.Errorf("groups: %w", err)
		}
		for i := range gs {
			g, err := gs[i].group()
			if err != nil {
				return err
			}
			snap.Groups = append(snap.Groups, g)
		}
		slices.SortFunc(snap.Groups, func(a, b group.Group) int { return strings.Compare(a.ID, b.ID) })

		var ms []memberRow
		if err := tx.NewSelect().Model(&ms).Scan(ctx); err != nil {
			return fmt.Errorf("members: %w", err)
		}
		for _, r := range ms {
			snap.Members[r.GroupID] = append(snap.Members[r.GroupID],
				group.Member{PeerID: r.PeerID, Name: r.Name, Role: r.Role, JoinedAt: r.JoinedAt})
		}
		for _, list := range snap.Members {
			slices.SortFunc(list, func(a, b group.Member) int {
				return cmp.Or(cmp.Compare(a.JoinedAt, b.JoinedAt), strings.Compare(a.PeerID, b.PeerID))
			})
		}

		var inv []inviteRow
		if err := tx.NewSelect().Model(&inv).Scan(ctx); err != nil {
			return fmt.Errorf("invites: %w", err)
		}
		for _, r := range inv {
			snap.Invites[r.GroupID] = append(snap.Invites[r.GroupID], group.PeerID(r.PeerID))
		}
		for _, list := range snap.Invites {
			slices.Sort(list)
		}

		var err error
		if snap.Subscriptions, err = loadByHostGroup(ctx, tx, (*subscriptionRow).subscription,
			func(s *group.Subscription) (group.PeerID, string) { return s.Host, s.GroupID }); err != nil {
			return fmt.Errorf("subscriptions: %w", err)
		}
		if snap.Invitations, err = loadByHostGroup(ctx, tx, (*invitationRow).invitation,
			func(inv *group.Invitation) (group.PeerID, string) { return inv.Host, inv.GroupID }); err != nil {
			return fmt.Errorf("invitations: %w", err)
		}
		return nil
	})
	if err != nil {
		return group.Snapshot{}, fmt.Errorf("sqlstore: load groups: %w", err)
	}
	return snap, nil
}

// GroupHistory returns the newest messages kept for groupID, oldest first
// (newest last): at most limit of them, where a limit outside
// 1..HistoryLimit means HistoryLimit. History outlives its group.
func (s *Store) GroupHistory(ctx context.Context, groupID string, limit int) ([]group.HistoryEntry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if max := s.keptHistory(); limit <= 0 || limit > max {
		limit = max // the table may hold up to historySlack more
	}
	if s.closed {
		return nil, fmt.Errorf("sqlstore: group history: %w", ports.ErrClosed)
	}
	out, err := s.groupHistory(ctx, groupID, limit)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: group history of %q: %w", groupID, err)
	}
	return out, nil
}

// groupHistory scans the rows itself: up to HistoryLimit of them, which
// bun's reflective scanning makes several times slower.
func (s *Store) groupHistory(ctx context.Context, groupID string, limit int) ([]group.HistoryEntry, error) {
	rows, err := s.db.NewSelect().Model((*historyRow)(nil)).Column("from_peer", "type", "payload", "at").
		Where("group_id = ?", groupID).OrderExpr("id DESC").Limit(int64(limit)).Rows(ctx)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []group.HistoryEntry
	for rows.Next() {
		var from, typ string
		var payload []byte
		var at int64
		if err := rows.Scan(&from, &typ, &payload, &at); err != nil {
			return nil, err
		}
		out = append(out, group.HistoryEntry{GroupID: groupID, From: group.PeerID(from), Type: typ,
			Payload: nilIfEmpty(payload), At: fromMillis(at)})
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	slices.Reverse(out)
	return out, nil
}

// PublicGroups returns the hosted groups that are not invite-only, sorted by
// creation time then id: the rows a remote visitor may see. The caller
// chooses which fields it shows (State, for one, is the members' business).
func (s *Store) PublicGroups(ctx context.Context) ([]group.Group, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, fmt.Errorf("sqlstore: public groups: %w", ports.ErrClosed)
	}
	var rows []groupRow
	if err := s.db.NewSelect().Model(&rows).Where("access <> ?", group.InviteOnly).Scan(ctx); err != nil {
		return nil, fmt.Errorf("sqlstore: public groups: %w", err)
	}
	out := make([]group.Group, 0, len(rows))
	for i := range rows {
		g, err := rows[i].group()
		if err != nil {
			return nil, fmt.Errorf("sqlstore: public groups: %w", err)
		}
		out = append(out, g)
	}
	slices.SortFunc(out, func(a, b group.Group) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), strings.Compare(a.ID, b.ID))
	})
	return out, nil
}

func (r *groupRow) group() (group.Group, error) {
	var roles []string
	if r.Roles != "" {
		if err := json.Unmarshal([]byte(r.Roles), &roles); err != nil {
			return group.Group{}, fmt.Errorf("group %q: roles %q: %w", r.ID, r.Roles, err)
		}
	}
	if len(roles) == 0 {
		roles = nil
	}
	return group.Group{
		ID:          r.ID,
		Name:        r.Name,
		Owner:       group.PeerID(r.Owner),
		Type:        r.GroupType,
		Context:     r.GroupContext,
		MaxMembers:  int(r.MaxMembers),
		CreatedAt:   fromMillis(r.CreatedAt),
		HostJoined:  r.HostJoined,
		Volatile:    r.Volatile,
		DefaultRole: r.DefaultRole,
		Roles:       roles,
		Lifecycle:   r.Lifecycle,
		Access:      r.Access,
		IdleTimeout: time.Duration(r.IdleTimeoutS) * time.Second,
		State:       nilIfEmpty(r.State),
	}, nil
}

func newGroupRow(g *group.Group) groupRow {
	roles := []byte("[]")
	if len(g.Roles) > 0 {
		roles, _ = json.Marshal(g.Roles) // []string always marshals
	}
	secs := int64(g.IdleTimeout / time.Second)
	if g.IdleTimeout%time.Second > 0 {
		secs++
	}
	return groupRow{
		ID:           g.ID,
		Name:         g.Name,
		Owner:        string(g.Owner),
		GroupType:    g.Type,
		GroupContext: g.Context,
		MaxMembers:   int64(g.MaxMembers),
		CreatedAt:    g.CreatedAt.UnixMilli(),
		HostJoined:   g.HostJoined,
		Volatile:     g.Volatile,
		DefaultRole:  g.DefaultRole,
		Roles:        string(roles),
		Lifecycle:    g.Lifecycle,
		Access:       g.Access,
		IdleTimeoutS: secs,
		State:        nilIfEmpty(g.State),
	}
}

func (r *subscriptionRow) subscription() group.Subscription {
	return group.Subscription{
		Host:         group.PeerID(r.HostPeerID),
		GroupID:      r.GroupID,
		GroupName:    r.GroupName,
		GroupType:    r.GroupType,
		Role:         r.Role,
		SubscribedAt: fromMillis(r.SubscribedAt),
		MaxMembers:   int(r.MaxMembers),
		Volatile:     r.Volatile,
		HostName:     r.HostName,
		Lifecycle:    r.Lifecycle,
		Access:       r.Access,
	}
}

func (r *invitationRow) invitation() group.Invitation {
	return group.Invitation{
		Host:         group.PeerID(r.HostPeerID),
		GroupID:      r.GroupID,
		GroupName:    r.GroupName,
		GroupType:    r.GroupType,
		GroupContext: r.GroupContext,
		Volatile:     r.Volatile,
		Lifecycle:    r.Lifecycle,
		Access:       r.Access,
		ReceivedAt:   fromMillis(r.ReceivedAt),
	}
}

// fromMillis is the UTC time of ms Unix milliseconds; it maps the zero
// time's milliseconds back to the zero time.
func fromMillis(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

func nilIfEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

// ---- Apply ----

type memberKey struct {
	group string
	peer  group.PeerID
}

type subKey struct {
	host  group.PeerID
	group string
}

// groupPlan is the net effect of a batch of group changes, applied in this
// order: group deletes and puts, wipes (the members and invites of deleted
// groups), member/invite/subscription deletes and puts, history appends,
// then pruning. In the maps a nil value (false for invites) is a delete. A
// change that a later one in the batch supersedes is dropped: a put followed
// by a delete of the same row, or any member or invite change of a group
// before its DeleteGroup.
type groupPlan struct {
	groups  map[string]*group.Group
	wipe    map[string]struct{}
	members map[string]map[group.PeerID]*group.Member
	invites map[string]map[group.PeerID]bool
	subs    map[subKey]*group.Subscription
	invs    map[subKey]*group.Invitation
	history []*group.HistoryEntry
	// counts is filled while the plan runs: the history row count of each
	// group that got history, once the transaction commits.
	counts map[string]int
}

func (p *groupPlan) empty() bool {
	return len(p.groups) == 0 && len(p.wipe) == 0 && len(p.members) == 0 && len(p.invites) == 0 &&
		len(p.subs) == 0 && len(p.invs) == 0 && len(p.history) == 0
}

var kindNames = map[group.ChangeKind]string{
	group.PutGroup:           "PutGroup",
	group.DeleteGroup:        "DeleteGroup",
	group.PutMember:          "PutMember",
	group.DeleteMember:       "DeleteMember",
	group.PutInvite:          "PutInvite",
	group.DeleteInvite:       "DeleteInvite",
	group.PutSubscription:    "PutSubscription",
	group.DeleteSubscription: "DeleteSubscription",
	group.AppendHistory:      "AppendHistory",
	group.PutInvitation:      "PutInvitation",
	group.DeleteInvitation:   "DeleteInvitation",
}

// describe names change i of a batch for errors, with its keys quoted (they
// may be what is wrong with it).
func describe(i int, c *group.Change) string {
	name, ok := kindNames[c.Kind]
	if !ok {
		name = fmt.Sprintf("kind %d", c.Kind)
	}
	s := fmt.Sprintf("group change %d (%s group %q", i, name, c.GroupID)
	if c.Peer != "" {
		s += fmt.Sprintf(" peer %q", c.Peer)
	}
	return s + ")"
}

// planGroups validates cs and folds it, in order, into its net effect.
func planGroups(p *groupPlan, cs []group.Change) error {
	for i := range cs {
		c := &cs[i]
		if err := checkGroupChange(c); err != nil {
			return fmt.Errorf("%s: %w", describe(i, c), err)
		}
		switch c.Kind {
		case group.PutGroup:
			if p.groups == nil {
				p.groups = map[string]*group.Group{}
			}
			p.groups[c.GroupID] = c.Group
		case group.DeleteGroup:
			if p.groups == nil {
				p.groups = map[string]*group.Group{}
			}
			if p.wipe == nil {
				p.wipe = map[string]struct{}{}
			}
			p.groups[c.GroupID] = nil
			p.wipe[c.GroupID] = struct{}{}
			delete(p.members, c.GroupID)
			delete(p.invites, c.GroupID)
		case group.PutMember, group.DeleteMember:
			if p.members == nil {
				p.members = map[string]map[group.PeerID]*group.Member{}
			}
			m := p.members[c.GroupID]
			if m == nil {
				m = map[group.PeerID]*group.Member{}
				p.members[c.GroupID] = m
			}
			m[c.Peer] = nil
			if c.Kind == group.PutMember {
				m[c.Peer] = c.Member
			}
		case group.PutInvite, group.DeleteInvite:
			if p.invites == nil {
				p.invites = map[string]map[group.PeerID]bool{}
			}
			m := p.invites[c.GroupID]
			if m == nil {
				m = map[group.PeerID]bool{}
				p.invites[c.GroupID] = m
			}
			m[c.Peer] = c.Kind == group.PutInvite
		case group.PutSubscription, group.DeleteSubscription:
			if p.subs == nil {
				p.subs = map[subKey]*group.Subscription{}
			}
			p.subs[subKey{c.Peer, c.GroupID}] = nil
			if c.Kind == group.PutSubscription {
				p.subs[subKey{c.Peer, c.GroupID}] = c.Sub
			}
		case group.PutInvitation, group.DeleteInvitation:
			if p.invs == nil {
				p.invs = map[subKey]*group.Invitation{}
			}
			p.invs[subKey{c.Peer, c.GroupID}] = nil
			if c.Kind == group.PutInvitation {
				p.invs[subKey{c.Peer, c.GroupID}] = c.Invitation
			}
		case group.AppendHistory:
			p.history = append(p.history, c.History)
		}
	}
	return nil
}

// checkGroupChange refuses a change the store cannot keep faithfully: an
// unknown kind, a missing or extra pointer, a record whose keys disagree with
// the change's, or a string with a NUL byte or invalid UTF-8.
func checkGroupChange(c *group.Change) error {
	if _, ok := kindNames[c.Kind]; !ok {
		return fmt.Errorf("unknown kind %d", c.Kind)
	}
	if c.GroupID == "" {
		return fmt.Errorf("empty group id")
	}
	if err := checkText(c.GroupID, string(c.Peer)); err != nil {
		return err
	}
	needPeer := false
	switch c.Kind {
	case group.PutGroup:
		g := c.Group
		if g == nil {
			return fmt.Errorf("without a group")
		}
		if g.ID != c.GroupID {
			return fmt.Errorf("group id %q differs from the change's", g.ID)
		}
		if g.IdleTimeout < 0 {
			return fmt.Errorf("negative idle timeout %s", g.IdleTimeout)
		}
		if err := checkText(g.Name, string(g.Owner), g.Type, g.Context, g.DefaultRole, g.Lifecycle, g.Access); err != nil {
			return err
		}
		if err := checkText(g.Roles...); err != nil {
			return fmt.Errorf("role: %w", err)
		}
	case group.PutMember:
		needPeer = true
		m := c.Member
		if m == nil {
			return fmt.Errorf("without a member")
		}
		if m.PeerID != string(c.Peer) {
			return fmt.Errorf("member peer id %q differs from the change's", m.PeerID)
		}
		if err := checkText(m.Name, m.Role); err != nil {
			return err
		}
	case group.PutSubscription:
		needPeer = true
		s := c.Sub
		if s == nil {
			return fmt.Errorf("without a subscription")
		}
		if s.Host != c.Peer || s.GroupID != c.GroupID {
			return fmt.Errorf("subscription (host %q, group %q) differs from the change's", s.Host, s.GroupID)
		}
		if err := checkText(s.GroupName, s.GroupType, s.Role, s.HostName, s.Lifecycle, s.Access); err != nil {
			return err
		}
	case group.PutInvitation:
		needPeer = true
		inv := c.Invitation
		if inv == nil {
			return fmt.Errorf("without an invitation")
		}
		if inv.Host != c.Peer || inv.GroupID != c.GroupID {
			return fmt.Errorf("invitation (host %q, group %q) differs from the change's", inv.Host, inv.GroupID)
		}
		if err := checkText(inv.GroupName, inv.GroupType, inv.GroupContext, inv.Lifecycle, inv.Access); err != nil {
			return err
		}
	case group.AppendHistory:
		h := c.History
		if h == nil {
			return fmt.Errorf("without a history entry")
		}
		if h.GroupID != c.GroupID {
			return fmt.Errorf("history group id %q differs from the change's", h.GroupID)
		}
		if err := checkText(string(h.From), h.Type); err != nil {
			return err
		}
	case group.DeleteMember, group.PutInvite, group.DeleteInvite, group.DeleteSubscription, group.DeleteInvitation:
		needPeer = true
	}
	if needPeer && c.Peer == "" {
		return fmt.Errorf("empty peer id")
	}
	return nil
}

// hotKinds is the set (1<<kind) of hot statement families p needs.
func (p *groupPlan) hotKinds() uint {
	if len(p.history) > 0 {
		return 1<<hotHistory | 1<<hotPrune
	}
	return 0
}

// applyGroupPlan runs the statements of p in st's transaction.
func (s *Store) applyGroupPlan(ctx context.Context, st *stepper, p *groupPlan) error {
	if p.empty() {
		return nil
	}
	tx := st.tx
	if err := s.applyGroupRows(ctx, tx, st, p.groups); err != nil {
		return fmt.Errorf("groups: %w", err)
	}
	if len(p.wipe) > 0 {
		ids := sortedKeys(p.wipe)
		for chunk := range slices.Chunk(ids, maxInsertRows) {
			for _, m := range []any{(*memberRow)(nil), (*inviteRow)(nil)} {
				q := tx.NewDelete().Model(m).Where("group_id IN (?)", bun.In(chunk))
				if err := st.exec(ctx, q); err != nil {
					return fmt.Errorf("delete members and invites of deleted groups: %w", err)
				}
			}
		}
	}
	if err := applyMembers(ctx, tx, st, p.members); err != nil {
		return fmt.Errorf("members: %w", err)
	}
	if err := s.applyInvites(ctx, tx, st, p.invites); err != nil {
		return fmt.Errorf("invites: %w", err)
	}
	if err := applySubs(ctx, tx, st, p.subs); err != nil {
		return fmt.Errorf("subscriptions: %w", err)
	}
	if err := applyInvitations(ctx, tx, st, p.invs); err != nil {
		return fmt.Errorf("invitations: %w", err)
	}
	if err := s.appendHistory(ctx, st, p); err != nil {
		return fmt.Errorf("history: %w", err)
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// insertChunks inserts rows (already sorted) with multi-row statements of at
// most maxInsertRows rows and about maxInsertBytes bytes (size estimates one
// row), finishing each statement with finish (an ON CONFLICT clause, ...).
func insertChunks[R any](ctx context.Context, tx bun.Tx, st *stepper, rows []R, size func(*R) int,
	finish func(*bun.InsertQuery) *bun.InsertQuery) error {
	for start := 0; start < len(rows); {
		end, total := start, 0
		for end < len(rows) && end-start < maxInsertRows {
			n := size(&rows[end])
			if end > start && total+n > maxInsertBytes {
				break
			}
			total += n
			end++
		}
		chunk := rows[start:end]
		if err := st.exec(ctx, finish(tx.NewInsert().Model(&chunk))); err != nil {
			return err
		}
		start = end
	}
	return nil
}

func (s *Store) applyGroupRows(ctx context.Context, tx bun.Tx, st *stepper, groups map[string]*group.Group) error {
	var dels []string
	var puts []groupRow
	for _, id := range sortedKeys(groups) {
		if g := groups[id]; g != nil {
			puts = append(puts, newGroupRow(g))
		} else {
			dels = append(dels, id)
		}
	}
	for chunk := range slices.Chunk(dels, maxInsertRows) {
		if err := st.exec(ctx, tx.NewDelete().Model((*groupRow)(nil)).Where("id IN (?)", bun.In(chunk))); err != nil {
			return err
		}
	}
	size := func(r *groupRow) int {
		return 2*len(r.State) + len(r.ID) + len(r.Name) + len(r.Owner) + len(r.GroupType) + len(r.GroupContext) +
			len(r.DefaultRole) + len(r.Roles) + len(r.Lifecycle) + len(r.Access) + 128
	}
	return insertChunks(ctx, tx, st, puts, size, func(q *bun.InsertQuery) *bun.InsertQuery {
		return q.On("CONFLICT (id) DO UPDATE")
	})
}

// deletePairs deletes the rows of model whose (col1, col2) is one of pairs,
// with OR-ed terms in chunks of maxDeleteTerms.
func deletePairs(ctx context.Context, tx bun.Tx, st *stepper, model any, col1, col2 string, pairs [][2]string) error {
	for chunk := range slices.Chunk(pairs, maxDeleteTerms) {
		q := tx.NewDelete().Model(model)
		for _, k := range chunk {
			q = q.WhereOr("(? = ? AND ? = ?)", bun.Ident(col1), k[0], bun.Ident(col2), k[1])
		}
		if err := st.exec(ctx, q); err != nil {
			return err
		}
	}
	return nil
}

func applyMembers(ctx context.Context, tx bun.Tx, st *stepper, members map[string]map[group.PeerID]*group.Member) error {
	var dels [][2]string
	var puts []memberRow
	for _, gid := range sortedKeys(members) {
		m := members[gid]
		peers := make([]group.PeerID, 0, len(m))
		for p := range m {
			peers = append(peers, p)
		}
		slices.Sort(peers)
		for _, p := range peers {
			if mem := m[p]; mem != nil {
				puts = append(puts, memberRow{GroupID: gid, PeerID: string(p), Role: mem.Role, Name: mem.Name, JoinedAt: mem.JoinedAt})
			} else {
				dels = append(dels, [2]string{gid, string(p)})
			}
		}
	}
	if err := deletePairs(ctx, tx, st, (*memberRow)(nil), "group_id", "peer_id", dels); err != nil {
		return err
	}
	size := func(r *memberRow) int { return len(r.GroupID) + len(r.PeerID) + len(r.Role) + len(r.Name) + 64 }
	return insertChunks(ctx, tx, st, puts, size, func(q *bun.InsertQuery) *bun.InsertQuery {
		return q.On("CONFLICT (group_id, peer_id) DO UPDATE")
	})
}

func (s *Store) applyInvites(ctx context.Context, tx bun.Tx, st *stepper, invites map[string]map[group.PeerID]bool) error {
	var dels [][2]string
	var puts []inviteRow
	now := s.now().UnixMilli()
	for _, gid := range sortedKeys(invites) {
		m := invites[gid]
		peers := make([]group.PeerID, 0, len(m))
		for p := range m {
			peers = append(peers, p)
		}
		slices.Sort(peers)
		for _, p := range peers {
			if m[p] {
				puts = append(puts, inviteRow{GroupID: gid, PeerID: string(p), InvitedAt: now})
			} else {
				dels = append(dels, [2]string{gid, string(p)})
			}
		}
	}
	if err := deletePairs(ctx, tx, st, (*inviteRow)(nil), "group_id", "peer_id", dels); err != nil {
		return err
	}
	size := func(r *inviteRow) int { return len(r.GroupID) + len(r.PeerID) + 32 }
	return insertChunks(ctx, tx, st, puts, size, func(q *bun.InsertQuery) *bun.InsertQuery {
		return q.On("CONFLICT (group_id, peer_id) DO UPDATE")
	})
}

// sortedSubKeys returns m's keys by host, then group id.
func sortedSubKeys[V any](m map[subKey]V) []subKey {
	keys := make([]subKey, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b subKey) int { return byHostGroup(a.host, a.group, b.host, b.group) })
	return keys
}

// byHostGroup orders by host, then group id (byte order).
func byHostGroup(h1 group.PeerID, g1 string, h2 group.PeerID, g2 string) int {
	return cmp.Or(strings.Compare(string(h1), string(h2)), strings.Compare(g1, g2))
}

// loadByHostGroup reads every row R of a table keyed by (host_peer_id,
// group_id) — subscriptions, invitations — and returns them converted by
// conv, by host then group id (byte order, whatever the database's
// collation); key gives a value's host and group id.
func loadByHostGroup[R, V any](ctx context.Context, tx bun.Tx, conv func(*R) V, key func(*V) (group.PeerID, string)) ([]V, error) {
	var rows []R
	if err := tx.NewSelect().Model(&rows).Scan(ctx); err != nil {
		return nil, err
	}
	var out []V
	for i := range rows {
		out = append(out, conv(&rows[i]))
	}
	slices.SortFunc(out, func(a, b V) int {
		ha, ga := key(&a)
		hb, gb := key(&b)
		return byHostGroup(ha, ga, hb, gb)
	})
	return out, nil
}

// applyByHostGroup applies the puts and deletes (nil values) of rows keyed
// by (host_peer_id, group_id): subscriptions and invitations. row makes the
// row of a value, size estimates a row's bytes.
func applyByHostGroup[V, R any](ctx context.Context, tx bun.Tx, st *stepper, m map[subKey]*V, row func(*V) R, size func(*R) int) error {
	var dels [][2]string
	var puts []R
	for _, k := range sortedSubKeys(m) {
		if v := m[k]; v != nil {
			puts = append(puts, row(v))
		} else {
			dels = append(dels, [2]string{string(k.host), k.group})
		}
	}
	if err := deletePairs(ctx, tx, st, (*R)(nil), "host_peer_id", "group_id", dels); err != nil {
		return err
	}
	return insertChunks(ctx, tx, st, puts, size, func(q *bun.InsertQuery) *bun.InsertQuery {
		return q.On("CONFLICT (host_peer_id, group_id) DO UPDATE")
	})
}

func applyInvitations(ctx context.Context, tx bun.Tx, st *stepper, invs map[subKey]*group.Invitation) error {
	return applyByHostGroup(ctx, tx, st, invs, func(inv *group.Invitation) invitationRow {
		return invitationRow{HostPeerID: string(inv.Host), GroupID: inv.GroupID, GroupName: inv.GroupName,
			GroupType: inv.GroupType, GroupContext: inv.GroupContext, Volatile: inv.Volatile, Lifecycle: inv.Lifecycle,
			Access: inv.Access, ReceivedAt: inv.ReceivedAt.UnixMilli()}
	}, func(r *invitationRow) int {
		return len(r.HostPeerID) + len(r.GroupID) + len(r.GroupName) + len(r.GroupType) + len(r.GroupContext) +
			len(r.Lifecycle) + len(r.Access) + 64
	})
}

func applySubs(ctx context.Context, tx bun.Tx, st *stepper, subs map[subKey]*group.Subscription) error {
	return applyByHostGroup(ctx, tx, st, subs, func(sub *group.Subscription) subscriptionRow {
		return subscriptionRow{HostPeerID: string(sub.Host), GroupID: sub.GroupID, GroupName: sub.GroupName,
			GroupType: sub.GroupType, Role: sub.Role, SubscribedAt: sub.SubscribedAt.UnixMilli(),
			MaxMembers: int64(sub.MaxMembers), Volatile: sub.Volatile, HostName: sub.HostName,
			Lifecycle: sub.Lifecycle, Access: sub.Access}
	}, func(r *subscriptionRow) int {
		return len(r.HostPeerID) + len(r.GroupID) + len(r.GroupName) + len(r.GroupType) + len(r.Role) +
			len(r.HostName) + len(r.Lifecycle) + len(r.Access) + 96
	})
}

// appendHistory inserts hs in order, then prunes each group that got new
// rows to its newest historyLimit rows. It records the groups' new row
// counts in p.counts for Apply to cache once the transaction commits.
func (s *Store) appendHistory(ctx context.Context, st *stepper, p *groupPlan) error {
	if len(p.history) == 0 {
		return nil
	}
	tx := st.tx
	args := st.argsBuf(len(hotSpecs[hotHistory].cols) * len(p.history))
	added := map[string]int{}
	var gid, from, typ any
	for _, h := range p.history {
		args = append(args, strArg(&gid, h.GroupID), strArg(&from, string(h.From)), strArg(&typ, h.Type),
			nilIfEmpty(h.Payload), h.At.UnixMilli())
		added[h.GroupID]++
	}
	size := func(i int) int {
		h := p.history[i]
		return 2*len(h.Payload) + len(h.GroupID) + len(h.From) + len(h.Type) + 64
	}
	if err := st.execHot(ctx, hotHistory, args, len(p.history), size); err != nil {
		return err
	}
	limit := s.keptHistory()
	p.counts = make(map[string]int, len(added))
	for _, gid := range sortedKeys(added) {
		n, known := s.histCounts[gid]
		if known {
			n += added[gid]
		} else {
			// First history of the group in this process: count its rows
			// once (they include this batch's).
			c, err := tx.NewSelect().Model((*historyRow)(nil)).Where("group_id = ?", gid).Count(ctx)
			if err != nil {
				return fmt.Errorf("count %q: %w", gid, err)
			}
			n = int(c)
		}
		if excess := n - limit; excess > historySlack(limit) {
			// The id of the newest row to drop is the excess-th oldest: the
			// index is walked from the oldest end over the dropped rows only.
			args := append(st.argsBuf(3), gid, gid, int64(excess-1))
			if err := st.execHot(ctx, hotPrune, args, 1, nil); err != nil {
				return fmt.Errorf("prune %q: %w", gid, err)
			}
			n = limit
		}
		p.counts[gid] = n
	}
	return nil
}
