package storetest

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/domain/group"
	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/ports"
)

// HistoryLimit is the contract's bound on the history a store keeps (and
// GroupHistory returns) per group. Stores export their own constant; their
// tests check it equals this one.
const HistoryLimit = 10_000

// GroupStore is a store that also serves group history and the public group
// listing. Scenarios that need these skip stores that lack them.
type GroupStore interface {
	ports.Store
	// GroupHistory returns the newest entries of groupID, newest last: at
	// most limit, where a limit outside 1..HistoryLimit means HistoryLimit.
	GroupHistory(ctx context.Context, groupID string, limit int) ([]group.HistoryEntry, error)
	// PublicGroups returns the groups that are not invite-only, sorted by
	// creation time (to the millisecond) then id.
	PublicGroups(ctx context.Context) ([]group.Group, error)
}

func groupStore(t *testing.T, st ports.Store) GroupStore {
	t.Helper()
	gs, ok := st.(GroupStore)
	if !ok {
		t.Skipf("%T has no GroupHistory and PublicGroups", st)
	}
	return gs
}

// ---- change builders ----

// baseTime is the creation time of test records, on a whole millisecond.
var baseTime = time.UnixMilli(1_700_000_000_000).UTC()

// TestGroup returns a group record with every field set.
func TestGroup(id string) *group.Group {
	return &group.Group{
		ID: id, Name: "group " + id, Owner: "12D3KooWHost", Type: group.AppChat, Context: `{"topic":"chess"}`,
		MaxMembers: 8, CreatedAt: baseTime, HostJoined: true, Volatile: false, DefaultRole: group.DefaultRoleName,
		Roles: []string{"editor", "viewer"}, Lifecycle: group.Ephemeral, Access: group.Open,
		IdleTimeout: 90 * time.Second, State: json.RawMessage(`{"board":"rnbqkbnr","turn":1}`),
	}
}

// TestSub returns a subscription record with every field set.
func TestSub(host group.PeerID, id string) *group.Subscription {
	return &group.Subscription{
		Host: host, GroupID: id, GroupName: "remote " + id, GroupType: group.AppFiles, Role: "viewer",
		SubscribedAt: baseTime.Add(time.Minute), MaxMembers: 50, Volatile: false, HostName: "host of " + id,
		Lifecycle: group.Persistent, Access: group.InviteOnly,
	}
}

// TestInvitation returns a received invitation with every field set.
func TestInvitation(host group.PeerID, id string) *group.Invitation {
	return &group.Invitation{
		Host: host, GroupID: id, GroupName: "invited to " + id, GroupType: group.AppChat, GroupContext: `{"topic":"books"}`,
		Volatile: false, Lifecycle: group.Ephemeral, Access: group.InviteOnly, ReceivedAt: baseTime.Add(2 * time.Minute),
	}
}

// PutInvitation is the PutInvitation change of inv.
func PutInvitation(inv *group.Invitation) group.Change {
	return group.Change{Kind: group.PutInvitation, GroupID: inv.GroupID, Peer: inv.Host, Invitation: inv}
}

// DeleteInvitation is the DeleteInvitation change of (host, id).
func DeleteInvitation(host group.PeerID, id string) group.Change {
	return group.Change{Kind: group.DeleteInvitation, GroupID: id, Peer: host}
}

// PutGroup is the PutGroup change of g.
func PutGroup(g *group.Group) group.Change {
	return group.Change{Kind: group.PutGroup, GroupID: g.ID, Group: g}
}

// DeleteGroup is the DeleteGroup change of id.
func DeleteGroup(id string) group.Change { return group.Change{Kind: group.DeleteGroup, GroupID: id} }

// PutMember is the PutMember change of a member of id.
func PutMember(id string, peer group.PeerID, name, role string, joinedAt int64) group.Change {
	return group.Change{Kind: group.PutMember, GroupID: id, Peer: peer,
		Member: &group.Member{PeerID: string(peer), Name: name, Role: role, JoinedAt: joinedAt}}
}

// DeleteMember is the DeleteMember change of peer in id.
func DeleteMember(id string, peer group.PeerID) group.Change {
	return group.Change{Kind: group.DeleteMember, GroupID: id, Peer: peer}
}

// PutInvite is the PutInvite change of peer to id.
func PutInvite(id string, peer group.PeerID) group.Change {
	return group.Change{Kind: group.PutInvite, GroupID: id, Peer: peer}
}

// DeleteInvite is the DeleteInvite change of peer to id.
func DeleteInvite(id string, peer group.PeerID) group.Change {
	return group.Change{Kind: group.DeleteInvite, GroupID: id, Peer: peer}
}

// PutSub is the PutSubscription change of s.
func PutSub(s *group.Subscription) group.Change {
	return group.Change{Kind: group.PutSubscription, GroupID: s.GroupID, Peer: s.Host, Sub: s}
}

// DeleteSub is the DeleteSubscription change of (host, id).
func DeleteSub(host group.PeerID, id string) group.Change {
	return group.Change{Kind: group.DeleteSubscription, GroupID: id, Peer: host}
}

// History is the AppendHistory change of one message relayed in id.
func History(id string, from group.PeerID, typ, payload string, at time.Time) group.Change {
	return group.Change{Kind: group.AppendHistory, GroupID: id,
		History: &group.HistoryEntry{GroupID: id, From: from, Type: typ, Payload: json.RawMessage(payload), At: at}}
}

// ---- reference model ----

// GroupModel is a reference implementation of the group semantics: changes
// apply in order, the last write wins, DeleteGroup deletes the group's
// members and invites but not its history.
type GroupModel struct {
	Groups  map[string]group.Group
	Members map[string]map[group.PeerID]group.Member
	Invites map[string]map[group.PeerID]bool
	Subs    map[[2]string]group.Subscription
	// Invitations received, by (host, group id).
	Invitations map[[2]string]group.Invitation
	History     []group.HistoryEntry
	// Limit, when positive, replaces HistoryLimit as the history a store
	// keeps per group (for stores tested with a smaller bound).
	Limit int
}

// NewGroupModel returns an empty model.
func NewGroupModel() *GroupModel {
	return &GroupModel{Groups: map[string]group.Group{}, Members: map[string]map[group.PeerID]group.Member{},
		Invites: map[string]map[group.PeerID]bool{}, Subs: map[[2]string]group.Subscription{},
		Invitations: map[[2]string]group.Invitation{}}
}

// Apply applies cs in order.
func (m *GroupModel) Apply(cs []group.Change) {
	for _, c := range cs {
		switch c.Kind {
		case group.PutGroup:
			m.Groups[c.GroupID] = *c.Group
		case group.DeleteGroup:
			delete(m.Groups, c.GroupID)
			delete(m.Members, c.GroupID)
			delete(m.Invites, c.GroupID)
		case group.PutMember:
			if m.Members[c.GroupID] == nil {
				m.Members[c.GroupID] = map[group.PeerID]group.Member{}
			}
			m.Members[c.GroupID][c.Peer] = *c.Member
		case group.DeleteMember:
			delete(m.Members[c.GroupID], c.Peer)
		case group.PutInvite:
			if m.Invites[c.GroupID] == nil {
				m.Invites[c.GroupID] = map[group.PeerID]bool{}
			}
			m.Invites[c.GroupID][c.Peer] = true
		case group.DeleteInvite:
			delete(m.Invites[c.GroupID], c.Peer)
		case group.PutSubscription:
			m.Subs[[2]string{string(c.Peer), c.GroupID}] = *c.Sub
		case group.DeleteSubscription:
			delete(m.Subs, [2]string{string(c.Peer), c.GroupID})
		case group.AppendHistory:
			m.History = append(m.History, *c.History)
		case group.PutInvitation:
			m.Invitations[[2]string{string(c.Peer), c.GroupID}] = *c.Invitation
		case group.DeleteInvitation:
			delete(m.Invitations, [2]string{string(c.Peer), c.GroupID})
		}
	}
}

// Snapshot is the model's state, normalized as NormalizeGroups does.
func (m *GroupModel) Snapshot() group.Snapshot {
	snap := group.Snapshot{Members: map[string][]group.Member{}, Invites: map[string][]group.PeerID{}}
	for _, g := range m.Groups {
		snap.Groups = append(snap.Groups, g)
	}
	for id, ms := range m.Members {
		for _, mem := range ms {
			snap.Members[id] = append(snap.Members[id], mem)
		}
	}
	for id, inv := range m.Invites {
		for p := range inv {
			snap.Invites[id] = append(snap.Invites[id], p)
		}
	}
	for _, s := range m.Subs {
		snap.Subscriptions = append(snap.Subscriptions, s)
	}
	for _, inv := range m.Invitations {
		snap.Invitations = append(snap.Invitations, inv)
	}
	return NormalizeGroups(snap)
}

// HistoryOf is what GroupHistory(id, limit) must return, normalized.
func (m *GroupModel) HistoryOf(id string, limit int) []group.HistoryEntry {
	max := HistoryLimit
	if m.Limit > 0 {
		max = m.Limit
	}
	if limit <= 0 || limit > max {
		limit = max
	}
	var out []group.HistoryEntry
	for i := len(m.History) - 1; i >= 0 && len(out) < limit; i-- {
		if m.History[i].GroupID == id {
			out = append(out, m.History[i])
		}
	}
	slices.Reverse(out)
	return normalizeHistory(out)
}

// Public is what PublicGroups must return, normalized.
func (m *GroupModel) Public() []group.Group {
	var out []group.Group
	for _, g := range m.Groups {
		if g.Access != group.InviteOnly {
			out = append(out, normalizeGroup(g))
		}
	}
	sortPublic(out)
	return out
}

func sortPublic(gs []group.Group) {
	slices.SortFunc(gs, func(a, b group.Group) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), strings.Compare(a.ID, b.ID))
	})
}

// ---- normalization ----

// ms is t as stored: Unix milliseconds, UTC.
func ms(t time.Time) time.Time { return time.UnixMilli(t.UnixMilli()).UTC() }

func normalizeGroup(g group.Group) group.Group {
	g.CreatedAt = ms(g.CreatedAt)
	if len(g.Roles) == 0 {
		g.Roles = nil
	} else {
		g.Roles = slices.Clone(g.Roles)
	}
	if len(g.State) == 0 {
		g.State = nil
	}
	return g
}

func normalizeHistory(hs []group.HistoryEntry) []group.HistoryEntry {
	if len(hs) == 0 {
		return nil
	}
	out := make([]group.HistoryEntry, len(hs))
	for i, h := range hs {
		h.At = ms(h.At)
		if len(h.Payload) == 0 {
			h.Payload = nil
		}
		out[i] = h
	}
	return out
}

// NormalizeGroups returns snap in the form stores are compared in: times to
// the millisecond in UTC, empty roles, state, lists and slices as nil,
// groups by id, members by joined_at then peer id, invites by peer id,
// subscriptions and invitations by host then group id. Its maps are non-nil.
func NormalizeGroups(snap group.Snapshot) group.Snapshot {
	out := group.Snapshot{Members: map[string][]group.Member{}, Invites: map[string][]group.PeerID{}}
	for _, g := range snap.Groups {
		out.Groups = append(out.Groups, normalizeGroup(g))
	}
	slices.SortFunc(out.Groups, func(a, b group.Group) int { return strings.Compare(a.ID, b.ID) })
	for id, list := range snap.Members {
		if len(list) == 0 {
			continue
		}
		list = slices.Clone(list)
		slices.SortFunc(list, func(a, b group.Member) int {
			return cmp.Or(cmp.Compare(a.JoinedAt, b.JoinedAt), strings.Compare(a.PeerID, b.PeerID))
		})
		out.Members[id] = list
	}
	for id, list := range snap.Invites {
		if len(list) == 0 {
			continue
		}
		list = slices.Clone(list)
		slices.Sort(list)
		out.Invites[id] = list
	}
	for _, s := range snap.Subscriptions {
		s.SubscribedAt = ms(s.SubscribedAt)
		out.Subscriptions = append(out.Subscriptions, s)
	}
	slices.SortFunc(out.Subscriptions, func(a, b group.Subscription) int {
		return cmp.Or(strings.Compare(string(a.Host), string(b.Host)), strings.Compare(a.GroupID, b.GroupID))
	})
	for _, inv := range snap.Invitations {
		inv.ReceivedAt = ms(inv.ReceivedAt)
		out.Invitations = append(out.Invitations, inv)
	}
	slices.SortFunc(out.Invitations, func(a, b group.Invitation) int {
		return cmp.Or(strings.Compare(string(a.Host), string(b.Host)), strings.Compare(a.GroupID, b.GroupID))
	})
	return out
}

// LoadGroups reads st's group snapshot, checks its maps are not nil, and
// returns it normalized.
func LoadGroups(t *testing.T, st ports.Store) group.Snapshot {
	t.Helper()
	snap, err := st.LoadGroups(context.Background())
	require.NoError(t, err)
	require.NotNil(t, snap.Members, "LoadGroups must return a non-nil Members map")
	require.NotNil(t, snap.Invites, "LoadGroups must return a non-nil Invites map")
	return NormalizeGroups(snap)
}

// RequireGroups fails unless st holds exactly the group state m holds, and,
// for a GroupStore, the same history of every group m has history for.
func RequireGroups(t *testing.T, m *GroupModel, st ports.Store) {
	t.Helper()
	require.Equal(t, m.Snapshot(), LoadGroups(t, st))
	gs, ok := st.(GroupStore)
	if !ok {
		return
	}
	seen := map[string]bool{}
	for _, h := range m.History {
		if seen[h.GroupID] {
			continue
		}
		seen[h.GroupID] = true
		require.Equal(t, m.HistoryOf(h.GroupID, 0), loadHistory(t, gs, h.GroupID, 0), "history of %q", h.GroupID)
	}
}

func loadHistory(t *testing.T, gs GroupStore, id string, limit int) []group.HistoryEntry {
	t.Helper()
	hs, err := gs.GroupHistory(context.Background(), id, limit)
	require.NoError(t, err)
	return normalizeHistory(hs)
}

func loadPublic(t *testing.T, gs GroupStore) []group.Group {
	t.Helper()
	gs2, err := gs.PublicGroups(context.Background())
	require.NoError(t, err)
	var out []group.Group
	for _, g := range gs2 {
		out = append(out, normalizeGroup(g))
	}
	return out
}

func applyGroups(t *testing.T, st ports.Store, m *GroupModel, cs ...group.Change) {
	t.Helper()
	require.NoError(t, st.Apply(context.Background(), ports.Batch{Groups: cs}))
	m.Apply(cs)
}

// ---- scenarios ----

var groupScenarios = []scenario{
	{"GroupsEmptyStore", func(t *testing.T, st ports.Store) {
		snap := LoadGroups(t, st)
		assert.Empty(t, snap.Groups)
		assert.Empty(t, snap.Members)
		assert.Empty(t, snap.Invites)
		assert.Empty(t, snap.Subscriptions)
		assert.Empty(t, snap.Invitations)
		if gs, ok := st.(GroupStore); ok {
			assert.Empty(t, loadHistory(t, gs, "g1", 0))
			assert.Empty(t, loadPublic(t, gs))
		}
	}},
	{"EveryGroupChangeKindRoundTrips", func(t *testing.T, st ports.Store) {
		m := NewGroupModel()
		g2 := TestGroup("g2")
		g2.Roles, g2.State, g2.HostJoined, g2.Volatile, g2.IdleTimeout = nil, nil, false, true, 0
		g2.Lifecycle, g2.Access, g2.MaxMembers, g2.Type = group.Persistent, group.InviteOnly, 0, group.AppCluster
		g2.CreatedAt = baseTime.Add(1500 * time.Millisecond)
		sub2 := TestSub("12D3KooWOther", "g9")
		sub2.Volatile, sub2.Access, sub2.MaxMembers = true, group.Open, 0
		inv2 := TestInvitation("12D3KooWOther", "g8")
		inv2.Volatile, inv2.Access, inv2.GroupContext, inv2.Lifecycle = true, group.Open, "", ""
		t0 := baseTime.UnixMilli()
		applyGroups(t, st, m,
			PutGroup(TestGroup("g1")), PutGroup(g2),
			// Joined out of peer order: members come back by joined_at.
			PutMember("g1", "12D3KooWZed", "zed", group.RoleOwner, t0),
			PutMember("g1", "12D3KooWAmy", "amy", "editor", t0+10),
			PutMember("g1", "12D3KooWBob", "", group.DefaultRoleName, t0+10),
			PutMember("g2", "12D3KooWAmy", "amy", group.DefaultRoleName, t0+5),
			PutInvite("g2", "12D3KooWBob"), PutInvite("g2", "12D3KooWAmy"),
			PutSub(TestSub("12D3KooWRemote", "g7")), PutSub(sub2),
			PutInvitation(TestInvitation("12D3KooWRemote", "g8")), PutInvitation(inv2),
			History("g1", "12D3KooWAmy", group.TypeMsg, `{"move":"e2e4"}`, baseTime.Add(time.Second)),
			History("g1", "12D3KooWZed", group.TypeState, `{"board":"x","turn":2}`, baseTime.Add(2*time.Second)),
			History("g2", "12D3KooWAmy", group.TypeMsg, `"hi"`, baseTime.Add(3*time.Second)),
		)
		RequireGroups(t, m, st)
		snap := LoadGroups(t, st)
		require.Len(t, snap.Groups, 2)
		assert.Equal(t, normalizeGroup(*TestGroup("g1")), snap.Groups[0], "every field of the group round-trips")
		assert.Equal(t, []string{"12D3KooWZed", "12D3KooWAmy", "12D3KooWBob"},
			[]string{snap.Members["g1"][0].PeerID, snap.Members["g1"][1].PeerID, snap.Members["g1"][2].PeerID})
		assert.Equal(t, []group.PeerID{"12D3KooWAmy", "12D3KooWBob"}, snap.Invites["g2"])
		require.Len(t, snap.Subscriptions, 2)
		assert.Equal(t, *TestSub("12D3KooWRemote", "g7"), snap.Subscriptions[1], "every field of the subscription round-trips")
		require.Len(t, snap.Invitations, 2)
		assert.Equal(t, *TestInvitation("12D3KooWRemote", "g8"), snap.Invitations[1], "every field of the invitation round-trips")

		// A later batch updates and deletes one of each.
		g1 := TestGroup("g1")
		g1.Name, g1.State, g1.Roles, g1.HostJoined = "renamed", json.RawMessage(`[1,2,3]`), []string{"player"}, false
		renamedInv := TestInvitation("12D3KooWRemote", "g8")
		renamedInv.GroupName, renamedInv.ReceivedAt = "invited again", baseTime.Add(time.Hour)
		applyGroups(t, st, m,
			PutGroup(g1),
			PutMember("g1", "12D3KooWAmy", "amy b.", "player", t0+10),
			DeleteMember("g1", "12D3KooWZed"),
			DeleteInvite("g2", "12D3KooWBob"),
			DeleteSub("12D3KooWOther", "g9"),
			DeleteInvitation("12D3KooWOther", "g8"), PutInvitation(renamedInv),
			History("g1", "12D3KooWAmy", group.TypeMsg, `{"move":"e7e5"}`, baseTime.Add(4*time.Second)),
		)
		RequireGroups(t, m, st)
		// Deletes of rows that do not exist are no-ops.
		applyGroups(t, st, m, DeleteGroup("nope"), DeleteMember("nope", "P"), DeleteInvite("nope", "P"), DeleteSub("P", "nope"),
			DeleteInvitation("P", "nope"))
		RequireGroups(t, m, st)
	}},
	{"DeleteGroupKeepsHistory", func(t *testing.T, st ports.Store) {
		gs := groupStore(t, st)
		m := NewGroupModel()
		applyGroups(t, st, m,
			PutGroup(TestGroup("g1")), PutGroup(TestGroup("g2")),
			PutMember("g1", "A", "a", "viewer", 1), PutMember("g1", "B", "b", "viewer", 2),
			PutMember("g2", "A", "a", "viewer", 1),
			PutInvite("g1", "C"), PutInvite("g2", "C"),
			// A subscription to another host's group with the same id is not ours to delete.
			PutSub(TestSub("H", "g1")),
			History("g1", "A", group.TypeMsg, `1`, baseTime), History("g1", "B", group.TypeMsg, `2`, baseTime),
		)
		applyGroups(t, st, m, DeleteGroup("g1"))
		RequireGroups(t, m, st)
		snap := LoadGroups(t, st)
		require.Len(t, snap.Groups, 1)
		assert.Equal(t, "g2", snap.Groups[0].ID)
		assert.NotContains(t, snap.Members, "g1")
		assert.NotContains(t, snap.Invites, "g1")
		assert.Len(t, snap.Members["g2"], 1)
		assert.Len(t, snap.Invites["g2"], 1)
		assert.Len(t, snap.Subscriptions, 1)
		assert.Len(t, loadHistory(t, gs, "g1", 0), 2, "history outlives its group")

		// The group comes back empty: its old members and invites stay gone.
		applyGroups(t, st, m, PutGroup(TestGroup("g1")), History("g1", "A", group.TypeMsg, `3`, baseTime))
		RequireGroups(t, m, st)
		assert.NotContains(t, LoadGroups(t, st).Members, "g1")
		assert.Len(t, loadHistory(t, gs, "g1", 0), 3)
	}},
	{"GroupChangesApplyInOrderWithinBatch", func(t *testing.T, st ports.Store) {
		m := NewGroupModel()
		applyGroups(t, st, m,
			PutGroup(TestGroup("g1")), PutMember("g1", "A", "a", "viewer", 1), PutInvite("g1", "X"),
			PutGroup(TestGroup("g2")), PutMember("g2", "A", "a", "viewer", 1), PutInvite("g2", "X"),
			PutSub(TestSub("H1", "r1")),
		)
		named := func(id, name string) *group.Group {
			g := TestGroup(id)
			g.Name = name
			return g
		}
		sub := TestSub("H1", "r1")
		sub.Role = "editor"
		applyGroups(t, st, m,
			PutGroup(named("g1", "two")), PutGroup(named("g1", "three")),
			PutMember("g1", "B", "b", "viewer", 2), // wiped by the DeleteGroup below
			DeleteGroup("g1"),
			PutMember("g1", "C", "c", "viewer", 3), PutInvite("g1", "Y"), // after it: kept
			PutGroup(named("g1", "four")),
			DeleteGroup("g2"),
			PutGroup(TestGroup("g3")), DeleteGroup("g3"),
			DeleteSub("H1", "r1"), PutSub(sub),
			PutSub(TestSub("H2", "r2")), DeleteSub("H2", "r2"),
			PutInvite("g4", "Z"), DeleteInvite("g4", "Z"),
			PutInvitation(TestInvitation("H3", "r3")), DeleteInvitation("H3", "r3"),
			DeleteInvitation("H4", "r4"), PutInvitation(TestInvitation("H4", "r4")),
			PutMember("g4", "Q", "q1", "viewer", 1), DeleteMember("g4", "Q"), PutMember("g4", "Q", "q2", "viewer", 2),
		)
		RequireGroups(t, m, st)
		snap := LoadGroups(t, st)
		require.Len(t, snap.Groups, 1)
		assert.Equal(t, "four", snap.Groups[0].Name, "the last PutGroup wins")
		assert.Equal(t, []group.Member{{PeerID: "C", Name: "c", Role: "viewer", JoinedAt: 3}}, snap.Members["g1"])
		assert.Equal(t, []group.PeerID{"Y"}, snap.Invites["g1"])
		assert.NotContains(t, snap.Members, "g2")
		assert.NotContains(t, snap.Invites, "g4")
		assert.Equal(t, "q2", snap.Members["g4"][0].Name)
		require.Len(t, snap.Subscriptions, 1)
		assert.Equal(t, "editor", snap.Subscriptions[0].Role)
		require.Len(t, snap.Invitations, 1)
		assert.Equal(t, group.PeerID("H4"), snap.Invitations[0].Host)
	}},
	{"BusAndGroupChangesInOneBatch", func(t *testing.T, st ports.Store) {
		bm, gm := NewModel(), NewGroupModel()
		bus := []mq.Change{Put("A", Frame(1, "group:g1:msg", `{"move":"e2e4"}`)), {Kind: mq.SetNextSeq, Peer: "A", Seq: 2}}
		groups := []group.Change{PutGroup(TestGroup("g1")), PutMember("g1", "A", "a", "viewer", 1),
			History("g1", "A", group.TypeMsg, `{"move":"e2e4"}`, baseTime)}
		require.NoError(t, st.Apply(context.Background(), ports.Batch{Bus: bus, Groups: groups}))
		bm.Apply(bus)
		gm.Apply(groups)
		RequireState(t, bm, st)
		RequireGroups(t, gm, st)
	}},
	{"GroupAwkwardStrings", func(t *testing.T, st ports.Store) {
		m := NewGroupModel()
		odd := []string{`it's`, `"quoted"`, `'); DROP TABLE _groups; --`, `back\slash`, `ünï ✓ 🚀`, `?$1 %s`, "tab\there"}
		var cs []group.Change
		for i, s := range odd {
			g := TestGroup(s)
			g.Name, g.Context, g.Owner, g.Type, g.DefaultRole = s, s, group.PeerID(s), s, s
			g.Lifecycle, g.Access, g.Roles = s, s, []string{s, "x" + s}
			enc, err := json.Marshal(map[string]string{"s": s})
			require.NoError(t, err)
			g.State = enc
			g.CreatedAt = baseTime.Add(time.Duration(i) * time.Second)
			sub := TestSub(group.PeerID(s), s)
			sub.GroupName, sub.GroupType, sub.Role, sub.HostName, sub.Lifecycle, sub.Access = s, s, s, s, s, s
			inv := TestInvitation(group.PeerID(s), s)
			inv.GroupName, inv.GroupType, inv.GroupContext, inv.Lifecycle, inv.Access = s, s, s, s, s
			cs = append(cs, PutGroup(g), PutMember(s, group.PeerID(s), s, s, int64(i)), PutInvite(s, group.PeerID(s)),
				PutInvite(s, "other"), PutSub(sub), PutInvitation(inv), History(s, group.PeerID(s), s, string(enc), baseTime))
		}
		applyGroups(t, st, m, cs...)
		RequireGroups(t, m, st)
		// Deletes keyed by awkward strings hit exactly their rows.
		applyGroups(t, st, m, DeleteGroup(odd[2]), DeleteInvite(odd[0], "other"), DeleteMember(odd[1], group.PeerID(odd[1])),
			DeleteSub(group.PeerID(odd[3]), odd[3]), DeleteInvitation(group.PeerID(odd[4]), odd[4]))
		RequireGroups(t, m, st)
		if gs, ok := st.(GroupStore); ok {
			assert.Equal(t, m.Public(), loadPublic(t, gs))
		}
	}},
	{"HistoryKeepsNewest", func(t *testing.T, st ports.Store) {
		gs := groupStore(t, st)
		m := NewGroupModel()
		total := HistoryLimit + 30
		n := 0
		for _, size := range []int{4000, 4000, total - 8000} {
			cs := make([]group.Change, 0, size+1)
			for i := 0; i < size; i++ {
				cs = append(cs, History("g1", "A", group.TypeMsg, fmt.Sprintf(`{"n":%d}`, n), baseTime.Add(time.Duration(n)*time.Millisecond)))
				n++
			}
			cs = append(cs, History("g2", "B", group.TypeState, fmt.Sprintf(`{"batch":%d}`, n), baseTime))
			applyGroups(t, st, m, cs...)
		}
		all := loadHistory(t, gs, "g1", 0)
		require.Len(t, all, HistoryLimit)
		assert.JSONEq(t, `{"n":30}`, string(all[0].Payload), "the oldest kept is the 31st")
		assert.JSONEq(t, fmt.Sprintf(`{"n":%d}`, total-1), string(all[HistoryLimit-1].Payload), "newest last")
		assert.Equal(t, m.HistoryOf("g1", 0), all)
		assert.Equal(t, m.HistoryOf("g1", 3), loadHistory(t, gs, "g1", 3))
		assert.Len(t, loadHistory(t, gs, "g1", HistoryLimit+5), HistoryLimit, "limit is capped")
		assert.Len(t, loadHistory(t, gs, "g2", -1), 3)
		assert.Equal(t, m.HistoryOf("g2", 0), loadHistory(t, gs, "g2", 0))
		assert.Empty(t, loadHistory(t, gs, "g3", 0))
	}},
	{"PublicGroupsExcludeInviteOnly", func(t *testing.T, st ports.Store) {
		gs := groupStore(t, st)
		m := NewGroupModel()
		mk := func(id, access string, created time.Duration, volatile bool) group.Change {
			g := TestGroup(id)
			g.Access, g.CreatedAt, g.Volatile = access, baseTime.Add(created), volatile
			return PutGroup(g)
		}
		applyGroups(t, st, m,
			mk("a", group.Open, 3*time.Second, false),
			mk("b", group.InviteOnly, time.Second, false),
			mk("c", "", 2*time.Second, false), // no access recorded: open
			mk("d", group.Open, 3*time.Second, true),
			mk("e", group.InviteOnly, 0, true),
		)
		ids := func() []string {
			var out []string
			for _, g := range loadPublic(t, gs) {
				out = append(out, g.ID)
			}
			return out
		}
		assert.Equal(t, []string{"c", "a", "d"}, ids(), "by creation time then id")
		assert.Equal(t, m.Public(), loadPublic(t, gs))
		applyGroups(t, st, m, DeleteGroup("c"), mk("b", group.Open, time.Second, false), mk("a", group.InviteOnly, 3*time.Second, false))
		assert.Equal(t, []string{"b", "d"}, ids())
		assert.Equal(t, m.Public(), loadPublic(t, gs))
	}},
	{"RandomGroupBatchesMatchModel", func(t *testing.T, st ports.Store) {
		rng := rand.New(rand.NewPCG(3, 4))
		m := NewGroupModel()
		ids := []string{"g1", "g2", "g3"}
		peers := []group.PeerID{"A", "B", "C"}
		for batch := 0; batch < 40; batch++ {
			n := rng.IntN(40)
			cs := make([]group.Change, 0, n)
			for i := 0; i < n; i++ {
				id, p := ids[rng.IntN(len(ids))], peers[rng.IntN(len(peers))]
				at := baseTime.Add(time.Duration(batch*100+i) * time.Millisecond)
				switch r := rng.IntN(100); {
				case r < 12:
					g := TestGroup(id)
					g.Name = fmt.Sprintf("n%d.%d", batch, i)
					g.HostJoined = rng.IntN(2) == 0
					g.State = json.RawMessage(fmt.Sprintf(`{"v":%d}`, rng.IntN(5)))
					if rng.IntN(3) == 0 {
						g.State = nil
					}
					cs = append(cs, PutGroup(g))
				case r < 18:
					cs = append(cs, DeleteGroup(id))
				case r < 38:
					cs = append(cs, PutMember(id, p, fmt.Sprintf("m%d", batch), "viewer", int64(rng.IntN(4))))
				case r < 50:
					cs = append(cs, DeleteMember(id, p))
				case r < 60:
					cs = append(cs, PutInvite(id, p))
				case r < 66:
					cs = append(cs, DeleteInvite(id, p))
				case r < 76:
					s := TestSub(p, id)
					s.Role = fmt.Sprintf("r%d", batch)
					s.SubscribedAt = at
					cs = append(cs, PutSub(s))
				case r < 82:
					cs = append(cs, DeleteSub(p, id))
				case r < 86:
					inv := TestInvitation(p, id)
					inv.GroupName = fmt.Sprintf("i%d", batch)
					inv.ReceivedAt = at
					cs = append(cs, PutInvitation(inv))
				case r < 88:
					cs = append(cs, DeleteInvitation(p, id))
				default:
					cs = append(cs, History(id, p, group.TypeMsg, fmt.Sprintf(`[%d,%d]`, batch, i), at))
				}
			}
			applyGroups(t, st, m, cs...)
			RequireGroups(t, m, st)
		}
	}},
}
