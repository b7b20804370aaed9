package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/domain/group"
	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/ports"
	"github.com/goop-p2p/goop/ports/memory"
	"github.com/goop-p2p/goop/ports/storetest"
)

var at0 = time.UnixMilli(1_700_000_000_000).UTC()

func baseGroupBatch() []group.Change {
	return []group.Change{
		storetest.PutGroup(storetest.TestGroup("g1")), storetest.PutGroup(storetest.TestGroup("g2")),
		storetest.PutMember("g1", "A", "a", "viewer", 1), storetest.PutMember("g1", "B", "b", "viewer", 2),
		storetest.PutMember("g2", "A", "a", "viewer", 1),
		storetest.PutInvite("g1", "X"), storetest.PutInvite("g2", "X"),
		storetest.PutSub(storetest.TestSub("H1", "r1")), storetest.PutSub(storetest.TestSub("H2", "r2")),
		storetest.History("g1", "A", group.TypeMsg, `1`, at0), storetest.History("g1", "B", group.TypeMsg, `2`, at0),
	}
}

// fullGroupBatch touches every group table with every kind of statement on
// top of baseGroupBatch's state.
func fullGroupBatch() []group.Change {
	g1 := storetest.TestGroup("g1")
	g1.Name = "renamed"
	return []group.Change{
		storetest.PutGroup(g1), storetest.DeleteGroup("g2"),
		storetest.DeleteMember("g1", "A"), storetest.PutMember("g1", "C", "c", "viewer", 3),
		storetest.DeleteInvite("g1", "X"), storetest.PutInvite("g1", "Y"),
		storetest.DeleteSub("H1", "r1"), storetest.PutSub(storetest.TestSub("H3", "r3")),
		storetest.History("g1", "C", group.TypeMsg, `3`, at0), storetest.History("g3", "C", group.TypeMsg, `4`, at0),
	}
}

func requireAll(t *testing.T, bm *storetest.Model, gm *storetest.GroupModel, s *Store) {
	t.Helper()
	storetest.RequireState(t, bm, s)
	storetest.RequireGroups(t, gm, s)
}

func TestHistoryLimitMatchesContract(t *testing.T) {
	assert.Equal(t, storetest.HistoryLimit, HistoryLimit)
	assert.Equal(t, storetest.HistoryLimit, memory.HistoryLimit)
}

// columns lists the columns of table in order.
func columns(t *testing.T, s *Store, table string) []string {
	t.Helper()
	rows, err := s.DB().QueryContext(context.Background(), fmt.Sprintf(`SELECT * FROM %q LIMIT 0`, table))
	require.NoError(t, err, table)
	defer rows.Close()
	cols, err := rows.Columns()
	require.NoError(t, err)
	return cols
}

func TestGroupTablesHaveCompatColumns(t *testing.T) {
	want := map[string][]string{
		"_groups": {"id", "name", "owner", "group_type", "group_context", "max_members", "created_at", "host_joined",
			"volatile", "default_role", "roles", "lifecycle", "access", "idle_timeout_s", "state"},
		"_group_members": {"group_id", "peer_id", "role", "name", "joined_at"},
		"_group_subscriptions": {"host_peer_id", "group_id", "group_name", "group_type", "role", "subscribed_at",
			"max_members", "volatile", "host_name", "lifecycle", "access"},
		"_group_invites": {"group_id", "peer_id", "invited_at"},
		"_group_history": {"id", "group_id", "from_peer", "type", "payload", "at"},
	}
	forEachBackend(t, func(t *testing.T, newDB func(testing.TB) Config) {
		ctx := context.Background()
		s := mustOpen(t, newDB(t))
		defer s.Close()
		for table, cols := range want {
			assert.Equal(t, cols, columns(t, s, table), table)
		}

		// The history index exists.
		var n int
		q := `SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = '_group_history_group_id_id'`
		if s.Driver() == DriverPostgres {
			q = `SELECT count(*) FROM pg_indexes WHERE schemaname = current_schema() AND indexname = '_group_history_group_id_id'`
		}
		require.NoError(t, s.DB().QueryRowContext(ctx, q).Scan(&n))
		assert.Equal(t, 1, n, "index on _group_history(group_id, id)")

		// Stored forms: roles as a JSON array, times in Unix ms, no state as NULL.
		g := storetest.TestGroup("g1")
		g.State = nil
		g2 := storetest.TestGroup("g2")
		g2.Roles = nil
		s.now = func() time.Time { return at0.Add(time.Hour) }
		require.NoError(t, s.Apply(ctx, ports.Batch{Groups: []group.Change{
			storetest.PutGroup(g), storetest.PutGroup(g2), storetest.PutInvite("g1", "P"),
			storetest.PutSub(storetest.TestSub("H", "r")),
		}}))
		var roles string
		var created, idle int64
		var state []byte
		require.NoError(t, s.DB().QueryRowContext(ctx, `SELECT roles, created_at, idle_timeout_s, state FROM _groups WHERE id = 'g1'`).
			Scan(&roles, &created, &idle, &state))
		assert.Equal(t, `["editor","viewer"]`, roles)
		assert.Equal(t, g.CreatedAt.UnixMilli(), created)
		assert.Equal(t, int64(90), idle)
		assert.Nil(t, state)
		require.NoError(t, s.DB().QueryRowContext(ctx, `SELECT roles FROM _groups WHERE id = 'g2'`).Scan(&roles))
		assert.Equal(t, `[]`, roles)
		var invited, subscribed int64
		require.NoError(t, s.DB().QueryRowContext(ctx, `SELECT invited_at FROM _group_invites`).Scan(&invited))
		assert.Equal(t, at0.Add(time.Hour).UnixMilli(), invited)
		require.NoError(t, s.DB().QueryRowContext(ctx, `SELECT subscribed_at FROM _group_subscriptions`).Scan(&subscribed))
		assert.Equal(t, storetest.TestSub("H", "r").SubscribedAt.UnixMilli(), subscribed)
	})
}

func TestFailedMixedApplyChangesNothing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newDB func(testing.TB) Config) {
		ctx := context.Background()
		s := mustOpen(t, newDB(t))
		defer s.Close()
		bm, gm := storetest.NewModel(), storetest.NewGroupModel()
		// g1 has 2 history rows after the base batch: the full batch's
		// third one makes it prune.
		s.historyLimit, gm.Limit = 2, 2
		require.NoError(t, s.Apply(ctx, ports.Batch{Bus: baseBatch(), Groups: baseGroupBatch()}))
		bm.Apply(baseBatch())
		gm.Apply(baseGroupBatch())
		requireAll(t, bm, gm, s)

		// Fail after statement 1, 2, ... until the batch has fewer statements.
		steps := 0
		for stop := 1; ; stop++ {
			s.afterStep = func(n int) error {
				if n == stop {
					return fmt.Errorf("injected failure after statement %d", n)
				}
				return nil
			}
			err := s.Apply(ctx, ports.Batch{Bus: fullBatch(), Groups: fullGroupBatch()})
			if err == nil {
				break
			}
			require.ErrorContains(t, err, "injected failure")
			requireAll(t, bm, gm, s)
			steps = stop
		}
		// Bus: 5. Groups: delete, put; members and invites of g2 (2);
		// member delete, put; invite delete, put; subscription delete,
		// put; history insert; prune g1: 12.
		assert.Equal(t, 5+12, steps)
		s.afterStep = nil
		bm.Apply(fullBatch())
		gm.Apply(fullGroupBatch())
		requireAll(t, bm, gm, s)
		assert.Equal(t, 2, historyCount(t, s, "g1"))
	})
}

func TestApplyRefusesInvalidGroupChange(t *testing.T) {
	withGroup := func(f func(g *group.Group)) group.Change {
		g := storetest.TestGroup("g9")
		f(g)
		return group.Change{Kind: group.PutGroup, GroupID: "g9", Group: g}
	}
	withSub := func(f func(s *group.Subscription)) group.Change {
		sub := storetest.TestSub("H", "r9")
		f(sub)
		return group.Change{Kind: group.PutSubscription, GroupID: "r9", Peer: "H", Sub: sub}
	}
	member := storetest.PutMember("g9", "P", "p", "viewer", 1)
	otherMember := member
	otherMember.Peer = "Q"
	hist := storetest.History("g9", "P", group.TypeMsg, `1`, at0)
	otherHist := hist
	otherHist.GroupID = "g8"
	tests := []struct {
		name   string
		change group.Change
		want   string
	}{
		{"put group without group", group.Change{Kind: group.PutGroup, GroupID: "g9"}, "(PutGroup group \"g9\"): without a group"},
		{"group id mismatch", withGroup(func(g *group.Group) { g.ID = "g8" }), `group id "g8" differs`},
		{"negative idle timeout", withGroup(func(g *group.Group) { g.IdleTimeout = -time.Second }), "negative idle timeout"},
		{"NUL in group name", withGroup(func(g *group.Group) { g.Name = "a\x00b" }), "NUL"},
		{"bad UTF-8 in context", withGroup(func(g *group.Group) { g.Context = "\xff" }), "UTF-8"},
		{"NUL in role", withGroup(func(g *group.Group) { g.Roles = []string{"ok", "x\x00"} }), "role:"},
		{"put member without member", group.Change{Kind: group.PutMember, GroupID: "g9", Peer: "P"}, `(PutMember group "g9" peer "P"): without a member`},
		{"member peer mismatch", otherMember, `member peer id "P" differs`},
		{"bad UTF-8 in member name", storetest.PutMember("g9", "P", "\xc3", "viewer", 1), "UTF-8"},
		{"put subscription without sub", group.Change{Kind: group.PutSubscription, GroupID: "r9", Peer: "H"}, "without a subscription"},
		{"subscription key mismatch", withSub(func(s *group.Subscription) { s.Host = "H2" }), "differs"},
		{"NUL in host name", withSub(func(s *group.Subscription) { s.HostName = "\x00" }), "NUL"},
		{"history without entry", group.Change{Kind: group.AppendHistory, GroupID: "g9"}, "(AppendHistory group \"g9\"): without a history entry"},
		{"history group mismatch", otherHist, `history group id "g9" differs`},
		{"NUL in history type", storetest.History("g9", "P", "m\x00", `1`, at0), "NUL"},
		{"unknown kind", group.Change{Kind: 99, GroupID: "g9"}, "(kind 99 group \"g9\"): unknown kind 99"},
		{"empty group id", storetest.DeleteGroup(""), "empty group id"},
		{"empty peer", storetest.DeleteInvite("g9", ""), "empty peer id"},
		{"NUL in peer", storetest.DeleteMember("g9", "P\x00"), "NUL"},
		{"NUL in group id", storetest.DeleteGroup("g\x00"), "NUL"},
	}
	forEachBackend(t, func(t *testing.T, newDB func(testing.TB) Config) {
		ctx := context.Background()
		s := mustOpen(t, newDB(t))
		defer s.Close()
		bm, gm := storetest.NewModel(), storetest.NewGroupModel()
		require.NoError(t, s.Apply(ctx, ports.Batch{Bus: baseBatch(), Groups: baseGroupBatch()}))
		bm.Apply(baseBatch())
		gm.Apply(baseGroupBatch())
		okBus := storetest.Put("A", storetest.Frame(9, "t", `9`))
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				err := s.Apply(ctx, ports.Batch{Bus: []mq.Change{okBus},
					Groups: []group.Change{storetest.PutGroup(storetest.TestGroup("g7")), tt.change}})
				require.ErrorContains(t, err, tt.want)
				assert.ErrorContains(t, err, "group change 1 (", "the error names the change")
				requireAll(t, bm, gm, s)
			})
		}
	})
}

func historyCount(t *testing.T, s *Store, id string) int {
	t.Helper()
	n, err := s.DB().NewSelect().Model((*historyRow)(nil)).Where("group_id = ?", id).Count(context.Background())
	require.NoError(t, err)
	return int(n)
}

func TestHistoryPrunedPerGroup(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newDB func(testing.TB) Config) {
		ctx := context.Background()
		s := mustOpen(t, newDB(t))
		defer s.Close()
		s.historyLimit = 50
		var cs []group.Change
		for i := 0; i < 120; i++ {
			cs = append(cs, storetest.History("g1", "A", group.TypeMsg, fmt.Sprintf(`%d`, i), at0))
			if i < 10 {
				cs = append(cs, storetest.History("g2", "B", group.TypeMsg, fmt.Sprintf(`%d`, i), at0))
			}
		}
		require.NoError(t, s.Apply(ctx, ports.Batch{Groups: cs}))
		assert.Equal(t, 50, historyCount(t, s, "g1"), "pruned within the batch that overflowed it")
		assert.Equal(t, 10, historyCount(t, s, "g2"))
		hs, err := s.GroupHistory(ctx, "g1", 0)
		require.NoError(t, err)
		require.Len(t, hs, 50)
		for i, h := range hs {
			require.Equal(t, fmt.Sprint(70+i), string(h.Payload), "the newest rows are kept, oldest first")
		}

		// Only groups that get new history are pruned.
		s.historyLimit = 5
		require.NoError(t, s.Apply(ctx, ports.Batch{Groups: []group.Change{
			storetest.History("g2", "B", group.TypeMsg, `"last"`, at0),
		}}))
		assert.Equal(t, 50, historyCount(t, s, "g1"))
		assert.Equal(t, 5, historyCount(t, s, "g2"))
		hs, err = s.GroupHistory(ctx, "g2", 0)
		require.NoError(t, err)
		assert.Equal(t, `"last"`, string(hs[len(hs)-1].Payload))
		assert.Equal(t, `6`, string(hs[0].Payload))

		// A deleted group's history is pruned as any other when it grows.
		require.NoError(t, s.Apply(ctx, ports.Batch{Groups: []group.Change{
			storetest.DeleteGroup("g1"), storetest.History("g1", "A", group.TypeMsg, `"after"`, at0),
		}}))
		assert.Equal(t, 5, historyCount(t, s, "g1"))

		// A failed Apply leaves the counts as committed.
		more := []group.Change{storetest.History("g2", "B", group.TypeMsg, `"x"`, at0), storetest.History("g2", "B", group.TypeMsg, `"y"`, at0)}
		s.afterStep = func(int) error { return errors.New("injected") }
		require.Error(t, s.Apply(ctx, ports.Batch{Groups: more}))
		s.afterStep = nil
		assert.Equal(t, 5, historyCount(t, s, "g2"))
		require.NoError(t, s.Apply(ctx, ports.Batch{Groups: more}))
		assert.Equal(t, 5, historyCount(t, s, "g2"))
		hs, err = s.GroupHistory(ctx, "g2", 0)
		require.NoError(t, err)
		assert.Equal(t, `"y"`, string(hs[len(hs)-1].Payload))
	})
}

// A large history is pruned once it passes its limit by the slack (1/64),
// back to the limit, not with every message; readers never see more than
// the limit.
func TestHistoryPrunedWithSlack(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newDB func(testing.TB) Config) {
		ctx := context.Background()
		s := mustOpen(t, newDB(t))
		defer s.Close()
		s.historyLimit = 640 // slack 10
		add := func(i int) {
			t.Helper()
			require.NoError(t, s.Apply(ctx, ports.Batch{Groups: []group.Change{storetest.History("g1", "A", group.TypeMsg, fmt.Sprint(i), at0)}}))
		}
		for i := 0; i < 650; i++ {
			add(i)
		}
		assert.Equal(t, 650, historyCount(t, s, "g1"), "within the slack: nothing deleted yet")
		hs, err := s.GroupHistory(ctx, "g1", 0)
		require.NoError(t, err)
		require.Equal(t, 640, len(hs))
		assert.Equal(t, "10", string(hs[0].Payload))
		assert.Equal(t, "649", string(hs[639].Payload))
		add(650)
		assert.Equal(t, 640, historyCount(t, s, "g1"), "past the slack: back to the limit")
		hs, err = s.GroupHistory(ctx, "g1", 0)
		require.NoError(t, err)
		require.Equal(t, 640, len(hs))
		assert.Equal(t, "11", string(hs[0].Payload))
	})
}

func TestHistoryBoundAcrossRestart(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newDB func(testing.TB) Config) {
		ctx := context.Background()
		cfg := newDB(t)
		add := func(s *Store, from, n int) {
			var cs []group.Change
			for i := from; i < from+n; i++ {
				cs = append(cs, storetest.History("g1", "A", group.TypeMsg, fmt.Sprint(i), at0))
			}
			require.NoError(t, s.Apply(ctx, ports.Batch{Groups: cs}))
		}
		s := mustOpen(t, cfg)
		s.historyLimit = 20
		add(s, 0, 15)
		require.NoError(t, s.Close())

		// A new process counts the rows it did not write.
		s = mustOpen(t, cfg)
		defer s.Close()
		s.historyLimit = 20
		add(s, 15, 10)
		assert.Equal(t, 20, historyCount(t, s, "g1"))
		add(s, 25, 1)
		assert.Equal(t, 20, historyCount(t, s, "g1"))
		hs, err := s.GroupHistory(ctx, "g1", 0)
		require.NoError(t, err)
		require.Len(t, hs, 20)
		assert.Equal(t, "6", string(hs[0].Payload))
		assert.Equal(t, "25", string(hs[19].Payload))
	})
}

func TestIdleTimeoutKeptInWholeSeconds(t *testing.T) {
	tests := []struct {
		name    string
		in, out time.Duration
	}{
		{"none", 0, 0},
		{"whole", 30 * time.Minute, 30 * time.Minute},
		{"fraction rounds up", 1500 * time.Millisecond, 2 * time.Second},
		{"under a second", time.Nanosecond, time.Second},
	}
	forEachBackend(t, func(t *testing.T, newDB func(testing.TB) Config) {
		s := mustOpen(t, newDB(t))
		defer s.Close()
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				g := storetest.TestGroup("g1")
				g.IdleTimeout = tt.in
				require.NoError(t, s.Apply(context.Background(), ports.Batch{Groups: []group.Change{storetest.PutGroup(g)}}))
				snap, err := s.LoadGroups(context.Background())
				require.NoError(t, err)
				require.Len(t, snap.Groups, 1)
				assert.Equal(t, tt.out, snap.Groups[0].IdleTimeout)
			})
		}
	})
}

func TestGroupsDurableAcrossRestart(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newDB func(testing.TB) Config) {
		ctx := context.Background()
		cfg := newDB(t)
		s := mustOpen(t, cfg)
		gm := storetest.NewGroupModel()
		for _, b := range [][]group.Change{baseGroupBatch(), fullGroupBatch()} {
			require.NoError(t, s.Apply(ctx, ports.Batch{Groups: b}))
			gm.Apply(b)
		}
		require.NoError(t, s.Close())
		s = mustOpen(t, cfg)
		defer s.Close()
		storetest.RequireGroups(t, gm, s)
		pub, err := s.PublicGroups(ctx)
		require.NoError(t, err)
		assert.Len(t, pub, 1)
	})
}

// TestPruneUsesIndex checks that SQLite finds the cut-off row of a group
// through the (group_id, id) index rather than by scanning the table.
func TestPruneUsesIndex(t *testing.T) {
	s := mustOpen(t, sqliteDB(t))
	defer s.Close()
	cut := s.DB().NewSelect().Model((*historyRow)(nil)).Column("id").Where("group_id = ?", "g1").
		OrderExpr("id ASC").Limit(1).Offset(10)
	q := s.DB().NewDelete().Model((*historyRow)(nil)).Where("group_id = ?", "g1").Where("id <= (?)", cut)
	rows, err := s.DB().QueryContext(context.Background(), "EXPLAIN QUERY PLAN "+q.String())
	require.NoError(t, err)
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		require.NoError(t, rows.Scan(&id, &parent, &unused, &detail))
		plan = append(plan, detail)
	}
	require.NoError(t, rows.Err())
	require.NotEmpty(t, plan)
	joined := strings.Join(plan, "\n")
	assert.Contains(t, joined, "_group_history_group_id_id", "plan: %q", plan)
	assert.NotRegexp(t, `(?m)^SCAN (h|_group_history)$`, joined, "no full scan; plan: %q", plan)
}

// BenchmarkApplyGroupHistory measures a busy group's relay step: batches of
// 256 history appends to a group already at HistoryLimit rows, so that
// every batch also prunes 256 rows. "spread" appends to 8 groups (8 prune
// statements); "with-bus" adds what the bus writes for the same messages
// (256 outbox rows, the previous batch's acks) and a state update (PutGroup).
func BenchmarkApplyGroupHistory(b *testing.B) {
	const perBatch = 256
	payload := `{"action":"doc-added","file":{"name":"report.pdf","size":123456}}`
	for _, be := range backends {
		for _, mode := range []string{"one-group", "spread", "with-bus", "single"} {
			b.Run(be.name+"/"+mode, func(b *testing.B) {
				if be.name == "Postgres" {
					requirePostgres(b)
				}
				s := mustOpen(b, be.newDB(b))
				defer s.Close()
				ctx := context.Background()
				groups := []string{"g0"}
				if mode == "spread" {
					groups = []string{"g0", "g1", "g2", "g3", "g4", "g5", "g6", "g7"}
				}
				// Fill every group to the limit first.
				for _, id := range groups {
					cs := make([]group.Change, 0, HistoryLimit)
					for i := 0; i < HistoryLimit; i++ {
						cs = append(cs, storetest.History(id, "12D3KooWPeerA", group.TypeMsg, payload, at0))
					}
					if err := s.Apply(ctx, ports.Batch{Groups: cs}); err != nil {
						b.Fatal(err)
					}
				}
				g := storetest.TestGroup("g0")
				cs := make([]group.Change, 0, perBatch+1)
				bus := make([]mq.Change, 0, 2*perBatch+1)
				seq := int64(1)
				b.ReportAllocs()
				b.ResetTimer()
				n := perBatch
				if mode == "single" {
					n = 1
				}
				for i := 0; i < b.N; i++ {
					cs, bus = cs[:0], bus[:0]
					for j := 0; j < n; j++ {
						cs = append(cs, storetest.History(groups[j%len(groups)], "12D3KooWPeerA", group.TypeMsg, payload, at0))
					}
					if mode == "with-bus" {
						cs = append(cs, storetest.PutGroup(g))
						for j := 0; j < perBatch; j++ {
							f := &mq.Frame{Type: mq.TypeMsg, ID: fmt.Sprintf("msg-%d", seq), Seq: seq, Topic: "group:g0:msg",
								Payload: []byte(payload), Origin: "12D3KooWPeerA"}
							bus = append(bus, mq.Change{Kind: mq.PutOutbox, Peer: "12D3KooWPeerB", Seq: seq, Frame: f})
							if seq > perBatch {
								bus = append(bus, storetest.Del("12D3KooWPeerB", seq-perBatch))
							}
							seq++
						}
						bus = append(bus, mq.Change{Kind: mq.SetNextSeq, Peer: "12D3KooWPeerB", Seq: seq})
					}
					if err := s.Apply(ctx, ports.Batch{Bus: bus, Groups: cs}); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "msgs/s")
				b.StopTimer()
				for _, id := range groups {
					var n int
					if err := s.DB().NewSelect().Model((*historyRow)(nil)).ColumnExpr("count(*)").
						Where("group_id = ?", id).Scan(ctx, &n); err != nil {
						b.Fatal(err)
					}
					// A prune leaves HistoryLimit rows; appends then add up
					// to the slack before the next one.
					if n < HistoryLimit || n > HistoryLimit+historySlack(HistoryLimit) {
						b.Fatalf("group %s holds %d history rows, want %d to %d", id, n, HistoryLimit, HistoryLimit+historySlack(HistoryLimit))
					}
				}
			})
		}
	}
}

func TestDeleteIgnoresAttachedRecord(t *testing.T) {
	s := mustOpen(t, sqliteDB(t))
	defer s.Close()
	ctx := context.Background()
	gm := storetest.NewGroupModel()
	setup := []group.Change{storetest.PutMember("g1", "A", "a", "viewer", 1), storetest.PutSub(storetest.TestSub("H", "r"))}
	require.NoError(t, s.Apply(ctx, ports.Batch{Groups: setup}))
	gm.Apply(setup)
	delMember := storetest.DeleteMember("g1", "A")
	delMember.Member = &group.Member{PeerID: "A", Name: "stale"}
	delSub := storetest.DeleteSub("H", "r")
	delSub.Sub = storetest.TestSub("H", "r")
	dels := []group.Change{delMember, delSub}
	require.NoError(t, s.Apply(ctx, ports.Batch{Groups: dels}))
	gm.Apply(dels)
	storetest.RequireGroups(t, gm, s)
	snap := storetest.LoadGroups(t, s)
	assert.Empty(t, snap.Members)
	assert.Empty(t, snap.Subscriptions)
}

// TestHistoryMigrationKeepsRowsWithoutAutoincrement opens a database whose
// history table has an AUTOINCREMENT key (migrations 1-5): the history is
// kept, in order, new rows come after it, and on SQLite the table no longer
// has AUTOINCREMENT (one page less written by every relayed message).
func TestHistoryMigrationKeepsRowsWithoutAutoincrement(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newDB func(testing.TB) Config) {
		ctx := context.Background()
		cfg := newDB(t)
		s := openBefore(t, cfg, 6)
		require.NoError(t, s.Apply(ctx, ports.Batch{Groups: []group.Change{
			storetest.History("g1", "A", group.TypeMsg, `{"n":1}`, at0),
			storetest.History("g2", "B", group.TypeMsg, `{"n":2}`, at0),
			storetest.History("g1", "C", group.TypeState, `{"n":3}`, at0),
		}}))
		require.NoError(t, s.Close())

		s = mustOpen(t, cfg)
		defer func() { _ = s.Close() }()
		require.NoError(t, s.Apply(ctx, ports.Batch{Groups: []group.Change{storetest.History("g1", "D", group.TypeMsg, `{"n":4}`, at0)}}))
		hist, err := s.GroupHistory(ctx, "g1", 0)
		require.NoError(t, err)
		var got []string
		for _, h := range hist {
			got = append(got, string(h.Payload))
		}
		assert.Equal(t, []string{`{"n":1}`, `{"n":3}`, `{"n":4}`}, got, "kept, in order, the new row last")
		if s.driver == DriverPostgres {
			return
		}
		var ddl string
		require.NoError(t, s.DB().NewRaw(`SELECT sql FROM sqlite_master WHERE name = '_group_history'`).Scan(ctx, &ddl))
		assert.NotContains(t, strings.ToUpper(ddl), "AUTOINCREMENT")
		var seqs int
		require.NoError(t, s.DB().NewRaw(`SELECT count(*) FROM sqlite_sequence WHERE name = '_group_history'`).Scan(ctx, &seqs))
		assert.Zero(t, seqs)
		var ids []int64
		require.NoError(t, s.DB().NewRaw(`SELECT id FROM _group_history ORDER BY id`).Scan(ctx, &ids))
		assert.Equal(t, []int64{1, 2, 3, 4}, ids)
	})
}
