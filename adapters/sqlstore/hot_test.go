package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/domain/group"
	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/ports"
	"github.com/goop-p2p/goop/ports/storetest"
)

// TestHotSpecsMatchModels keeps the hand-written statements in step with
// the bun models that create the tables: an insert binds every column but
// an autoincrement id, an upsert's conflict key is the primary key.
func TestHotSpecsMatchModels(t *testing.T) {
	s := mustOpen(t, sqliteDB(t))
	defer s.Close()
	for k := hotKind(0); k < numHotKinds; k++ {
		sp := hotSpecs[k]
		t.Run(sp.name, func(t *testing.T) {
			tbl := s.DB().Table(reflect.TypeOf(sp.model).Elem())
			assert.Equal(t, sp.table, tbl.Name)
			var cols, pks []string
			for _, f := range tbl.Fields {
				if f.IsPK {
					pks = append(pks, f.Name)
				}
				if !f.AutoIncrement {
					cols = append(cols, f.Name)
				}
			}
			switch k {
			case hotDelChunk, hotDelDead:
				assert.Equal(t, sp.cols, pks, "deletes by primary key")
				return
			case hotPrune:
				assert.Equal(t, []string{"id"}, pks)
				assert.Contains(t, cols, "group_id")
				return
			}
			assert.ElementsMatch(t, cols, sp.cols, "an insert binds every column")
			if len(sp.conflict) > 0 {
				assert.Equal(t, pks, sp.conflict)
				assert.Equal(t, sp.conflict, sp.cols[:len(sp.conflict)], "the key columns come first")
			}
		})
	}
}

func TestHotSQL(t *testing.T) {
	tests := []struct {
		name string
		kind hotKind
		n    int
		pg   bool
		want string
	}{
		{"cursor upsert on SQLite", hotCursor, 1, false,
			`INSERT INTO "_mq_cursors" ("peer_id", "epoch", "next_seq") VALUES (?, ?, ?) ` +
				`ON CONFLICT ("peer_id") DO UPDATE SET "epoch" = EXCLUDED."epoch", "next_seq" = EXCLUDED."next_seq"`},
		{"next seq upsert of 2 rows on Postgres", hotNextSeq, 2, true,
			`INSERT INTO "_mq_next_seq" ("peer_id", "next_seq") VALUES ($1, $2), ($3, $4) ` +
				`ON CONFLICT ("peer_id") DO UPDATE SET "next_seq" = EXCLUDED."next_seq"`},
		{"outbox chunk insert", hotPutChunk, 1, true,
			`INSERT INTO "_mq_outbox_chunks" ("id", "n", "frames", "created_at") VALUES ($1, $2, $3, $4) ` +
				`ON CONFLICT ("id") DO UPDATE SET "n" = EXCLUDED."n", "frames" = EXCLUDED."frames", "created_at" = EXCLUDED."created_at"`},
		{"outbox chunks deleted on Postgres", hotDelChunk, 2, true,
			`DELETE FROM "_mq_outbox_chunks" WHERE "id" IN ($1, $2)`},
		{"outbox dead marks on SQLite", hotPutDead, 1, false,
			`INSERT INTO "_mq_outbox_dead" ("chunk_id", "dead") VALUES (?, ?) ON CONFLICT ("chunk_id") DO UPDATE SET "dead" = EXCLUDED."dead"`},
		{"outbox dead marks deleted on SQLite", hotDelDead, 1, false,
			`DELETE FROM "_mq_outbox_dead" WHERE "chunk_id" IN (?)`},
		{"history prune on Postgres", hotPrune, 1, true,
			`DELETE FROM "_group_history" WHERE "group_id" = $1 AND "id" <= ` +
				`(SELECT "id" FROM "_group_history" WHERE "group_id" = $2 ORDER BY "id" ASC LIMIT 1 OFFSET $3)`},
		{"history insert", hotHistory, 2, false,
			`INSERT INTO "_group_history" ("group_id", "from_peer", "type", "payload", "at") VALUES (?, ?, ?, ?, ?), (?, ?, ?, ?, ?)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, hotSQL(tt.kind, tt.n, tt.pg))
		})
	}
}

func TestStmtSizes(t *testing.T) {
	for _, d := range []string{DriverSQLite, DriverPostgres} {
		sizes := stmtSizes(d)
		require.NotEmpty(t, sizes, d)
		assert.Equal(t, 1, sizes[0], "%s: any row count can be written", d)
		assert.True(t, slices.IsSorted(sizes), d)
		assert.LessOrEqual(t, len(sizes), maxHotSizes, d)
		assert.LessOrEqual(t, sizes[len(sizes)-1], maxInsertRows, d)
	}
	assert.Equal(t, []int{1}, stmtSizes(DriverSQLite), "single-row statements need no statement journal")
}

func TestNextChunk(t *testing.T) {
	pg := []int{1, 4, 16, 64, 256}
	// chunks lists the statement sizes nextChunk picks for n rows.
	chunks := func(sizes []int, n int, size func(int) int) []int {
		var out []int
		for start := 0; start < n; {
			k := sizes[nextChunk(sizes, start, n, size)]
			out = append(out, k)
			start += k
		}
		return out
	}
	big := func(int) int { return maxInsertBytes / 3 }
	huge := func(int) int { return maxInsertBytes + 1 }
	tests := []struct {
		name  string
		sizes []int
		n     int
		size  func(int) int
		want  []int
	}{
		{"one row", pg, 1, nil, []int{1}},
		{"exact size", pg, 64, nil, []int{64}},
		{"fewest statements", pg, 300, nil, []int{256, 16, 16, 4, 4, 4}},
		{"beyond the largest size", pg, 600, nil, []int{256, 256, 64, 16, 4, 4}},
		{"bounded by bytes", pg, 8, big, []int{1, 1, 1, 1, 1, 1, 1, 1}},
		{"row over the byte bound goes alone", pg, 2, huge, []int{1, 1}},
		{"single-row sizes", []int{1}, 3, nil, []int{1, 1, 1}},
		{"delete terms", []int{1, 4, 16, 64}, 100, nil, []int{64, 16, 16, 4}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, chunks(tt.sizes, tt.n, tt.size))
		})
	}
}

// TestSingleChangeBatches covers Apply's fast path: a batch of one change of
// each kind, alone, lands as the general path would have written it, and a
// failure rolls it back.
func TestSingleChangeBatches(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newDB func(testing.TB) Config) {
		ctx := context.Background()
		cfg := newDB(t)
		s := mustOpen(t, cfg)
		defer func() { _ = s.Close() }()
		m := storetest.NewModel()
		require.NoError(t, s.Apply(ctx, ports.Batch{Bus: baseBatch()}))
		m.Apply(baseBatch())
		changes := []mq.Change{
			{Kind: mq.SetCursor, Peer: "C", Epoch: "ce9", Seq: 9},
			{Kind: mq.SetCursor, Peer: "D", Epoch: "de1", Seq: 1},
			{Kind: mq.SetNextSeq, Peer: "A", Seq: 5},
			{Kind: mq.SetNextSeq, Peer: "B", Seq: 1},
			storetest.Put("A", storetest.Frame(4, "t", `4`)),
			storetest.Put("A", storetest.Frame(1, "t2", `"again"`)), // replaces a row
			storetest.Put("B", &mq.Frame{Type: mq.TypeMsg, ID: "nil", Seq: 7, Topic: "t", Origin: "O"}),
			storetest.Put("B", &mq.Frame{Type: mq.TypeMsg, ID: "empty", Seq: 8, Topic: "t", Payload: []byte{}}),
			storetest.Del("A", 2),
			storetest.Del("A", 99), // no such row
			{Kind: mq.SetEpoch, Epoch: "e9"},
		}
		for i, c := range changes {
			// A failure after the statement leaves the state as it was
			// (with the test hook, the batch runs in a transaction). Deleting
			// a message that is not stored runs no statement.
			if !(c.Kind == mq.DeleteOutbox && c.Seq == 99) {
				s.afterStep = func(int) error { return errors.New("injected") }
				require.ErrorContains(t, s.Apply(ctx, ports.Batch{Bus: []mq.Change{c}}), "injected", "change %d", i)
				storetest.RequireState(t, m, s)
				s.afterStep = nil
			}
			require.NoError(t, s.Apply(ctx, ports.Batch{Bus: []mq.Change{c}}), "change %d", i)
			m.Apply([]mq.Change{c})
			storetest.RequireState(t, m, s)
		}
		// Committed: the store reopened sees it all.
		require.NoError(t, s.Close())
		s = mustOpen(t, cfg)
		storetest.RequireState(t, m, s)

		// Invalid single changes are refused as in any batch.
		bad := []struct {
			change mq.Change
			want   string
		}{
			{mq.Change{Kind: mq.PutOutbox, Peer: "A", Seq: 4}, "change 0: PutOutbox without a frame"},
			{mq.Change{Kind: mq.SetCursor, Peer: "A\x00", Seq: 1}, "change 0: "},
			{mq.Change{Kind: 99, Peer: "A"}, "change 0: unknown kind 99"},
		}
		for _, b := range bad {
			require.ErrorContains(t, s.Apply(ctx, ports.Batch{Bus: []mq.Change{b.change}}), b.want)
		}
		storetest.RequireState(t, m, s)
	})
}

// TestHotStatementsPreparedOnce checks that Apply prepares each family it
// needs once, on the database, and that Close releases them.
func TestHotStatementsPreparedOnce(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newDB func(testing.TB) Config) {
		ctx := context.Background()
		s := mustOpen(t, newDB(t))
		require.NoError(t, s.Apply(ctx, ports.Batch{Bus: []mq.Change{{Kind: mq.SetCursor, Peer: "C", Epoch: "e", Seq: 1}}}))
		cursor := slices.Clone(s.hot.stmts[hotCursor])
		require.NotEmpty(t, cursor)
		assert.Nil(t, s.hot.stmts[hotPutChunk], "families are prepared when first needed")
		assert.Nil(t, s.hot.stmts[hotHistory])

		for seq := int64(2); seq < 5; seq++ {
			require.NoError(t, s.Apply(ctx, ports.Batch{
				Bus: []mq.Change{{Kind: mq.SetCursor, Peer: "C", Epoch: "e", Seq: seq},
					storetest.Put("A", storetest.Frame(seq, "t", `1`))},
				Groups: []group.Change{storetest.History("g1", "A", group.TypeMsg, fmt.Sprint(seq), at0)},
			}))
		}
		assert.Equal(t, cursor, s.hot.stmts[hotCursor], "prepared once")
		for _, k := range []hotKind{hotCursor, hotPutChunk, hotHistory, hotPrune} {
			for i, st := range s.hot.stmts[k] {
				if s.hot.sizes[i] <= hotSpecs[k].maxRows {
					assert.NotNil(t, st, "%s, %d rows", hotSpecs[k].name, s.hot.sizes[i])
				}
			}
		}
		require.NoError(t, s.Close())
		for k := range s.hot.stmts {
			assert.Nil(t, s.hot.stmts[k])
		}
	})
}
