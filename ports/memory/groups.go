package memory

import (
	"context"
	"slices"

	"github.com/goop-p2p/goop/domain/group"
)

// Groups holds group state in memory, applying group.Change values as a
// durable store must. The zero value is not usable; use NewGroups.
type Groups struct {
	groups  map[string]group.Group
	members map[string]map[group.PeerID]group.Member
	invites map[string]map[group.PeerID]bool
	subs    map[[2]string]group.Subscription
	// received invitations, by (host, group id)
	invitations map[[2]string]group.Invitation
	History     []group.HistoryEntry
	// historyCount is the number of History entries per group.
	historyCount map[string]int
}

// NewGroups returns empty group state.
func NewGroups() *Groups {
	return &Groups{groups: map[string]group.Group{}, members: map[string]map[group.PeerID]group.Member{},
		invites: map[string]map[group.PeerID]bool{}, subs: map[[2]string]group.Subscription{},
		invitations: map[[2]string]group.Invitation{}}
}

// Apply applies changes in order.
func (s *Groups) Apply(cs []group.Change) {
	for _, c := range cs {
		switch c.Kind {
		case group.PutGroup:
			g := *c.Group
			g.Roles = slices.Clone(g.Roles)
			s.groups[c.GroupID] = g
		case group.DeleteGroup:
			delete(s.groups, c.GroupID)
			delete(s.members, c.GroupID)
			delete(s.invites, c.GroupID)
		case group.PutMember:
			if s.members[c.GroupID] == nil {
				s.members[c.GroupID] = map[group.PeerID]group.Member{}
			}
			s.members[c.GroupID][c.Peer] = *c.Member
		case group.DeleteMember:
			delete(s.members[c.GroupID], c.Peer)
		case group.PutInvite:
			if s.invites[c.GroupID] == nil {
				s.invites[c.GroupID] = map[group.PeerID]bool{}
			}
			s.invites[c.GroupID][c.Peer] = true
		case group.DeleteInvite:
			delete(s.invites[c.GroupID], c.Peer)
		case group.PutSubscription:
			s.subs[[2]string{string(c.Peer), c.GroupID}] = *c.Sub
		case group.DeleteSubscription:
			delete(s.subs, [2]string{string(c.Peer), c.GroupID})
		case group.AppendHistory:
			s.History = append(s.History, *c.History)
			s.pruneHistory(c.History.GroupID)
		case group.PutInvitation:
			s.invitations[[2]string{string(c.Peer), c.GroupID}] = *c.Invitation
		case group.DeleteInvitation:
			delete(s.invitations, [2]string{string(c.Peer), c.GroupID})
		}
	}
}

// Snapshot returns the state in a deterministic order.
func (s *Groups) Snapshot() group.Snapshot {
	snap := group.Snapshot{Members: map[string][]group.Member{}, Invites: map[string][]group.PeerID{}}
	for _, g := range s.groups {
		snap.Groups = append(snap.Groups, g)
	}
	slices.SortFunc(snap.Groups, func(a, b group.Group) int { return compare(a.ID, b.ID) })
	for id, ms := range s.members {
		for _, m := range ms {
			snap.Members[id] = append(snap.Members[id], m)
		}
		slices.SortFunc(snap.Members[id], func(a, b group.Member) int { return compare(a.PeerID, b.PeerID) })
	}
	for id, inv := range s.invites {
		for p := range inv {
			snap.Invites[id] = append(snap.Invites[id], p)
		}
		slices.Sort(snap.Invites[id])
	}
	for _, sub := range s.subs {
		snap.Subscriptions = append(snap.Subscriptions, sub)
	}
	slices.SortFunc(snap.Subscriptions, func(a, b group.Subscription) int {
		return compare(string(a.Host)+"/"+a.GroupID, string(b.Host)+"/"+b.GroupID)
	})
	for _, inv := range s.invitations {
		snap.Invitations = append(snap.Invitations, inv)
	}
	slices.SortFunc(snap.Invitations, func(a, b group.Invitation) int {
		return compare(string(a.Host)+"/"+a.GroupID, string(b.Host)+"/"+b.GroupID)
	})
	return snap
}

func compare(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// LoadGroups returns the store's group snapshot.
func (s *Store) LoadGroups(context.Context) (group.Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.groups.Snapshot(), nil
}

// pruneHistory bounds a group's history as the SQL store does: once the
// group holds twice HistoryLimit entries, its oldest ones go, leaving the
// newest HistoryLimit (so appending stays amortised O(1)).
func (s *Groups) pruneHistory(groupID string) {
	if s.historyCount == nil {
		s.historyCount = map[string]int{}
	}
	s.historyCount[groupID]++
	n := s.historyCount[groupID]
	if n < 2*HistoryLimit {
		return
	}
	drop := n - HistoryLimit
	kept := s.History[:0]
	for _, h := range s.History {
		if h.GroupID == groupID && drop > 0 {
			drop--
			continue
		}
		kept = append(kept, h)
	}
	clear(s.History[len(kept):])
	s.History = kept
	s.historyCount[groupID] = HistoryLimit
}
