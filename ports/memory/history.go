package memory

import (
	"bytes"
	"cmp"
	"context"
	"slices"
	"strings"

	"github.com/goop-p2p/goop/domain/group"
)

// HistoryLimit is the most history entries GroupHistory returns per group,
// as the SQL store keeps (sqlstore.HistoryLimit). The in-memory store keeps
// at most twice that per group (pruned in bulk).
const HistoryLimit = 10_000

// GroupHistory returns the newest entries kept for groupID, oldest first
// (newest last): at most limit of them, where a limit outside
// 1..HistoryLimit means HistoryLimit. History outlives its group. The
// entries are copies.
func (s *Store) GroupHistory(_ context.Context, groupID string, limit int) ([]group.HistoryEntry, error) {
	if limit <= 0 || limit > HistoryLimit {
		limit = HistoryLimit
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []group.HistoryEntry
	hist := s.groups.History
	for i := len(hist) - 1; i >= 0 && len(out) < limit; i-- {
		if h := hist[i]; h.GroupID == groupID {
			h.Payload = bytes.Clone(h.Payload)
			out = append(out, h)
		}
	}
	slices.Reverse(out)
	return out, nil
}

// PublicGroups returns the hosted groups that are not invite-only, sorted by
// creation time (to the millisecond, as stored) then id. The groups are
// copies.
func (s *Store) PublicGroups(context.Context) ([]group.Group, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]group.Group, 0, len(s.groups.groups))
	for _, g := range s.groups.groups {
		if g.Access == group.InviteOnly {
			continue
		}
		g.Roles = slices.Clone(g.Roles)
		g.State = bytes.Clone(g.State)
		out = append(out, g)
	}
	slices.SortFunc(out, func(a, b group.Group) int {
		return cmp.Or(cmp.Compare(a.CreatedAt.UnixMilli(), b.CreatedAt.UnixMilli()), strings.Compare(a.ID, b.ID))
	})
	return out, nil
}
