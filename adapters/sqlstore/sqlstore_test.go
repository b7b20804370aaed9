package sqlstore

import (
	"cmp"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
	"github.com/uptrace/bun/driver/pgdriver"

	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/ports"
	"github.com/goop-p2p/goop/ports/storetest"
)

// pgEnv names the PostgreSQL DSN the Postgres tests run against.
const pgEnv = "GOOP_TEST_POSTGRES_DSN"

// backend opens stores of one kind: newDB returns the Config of a fresh,
// empty database that later Opens of the same Config reopen.
type backend struct {
	name  string
	newDB func(t testing.TB) Config
}

func sqliteDB(t testing.TB) Config {
	return Config{Path: filepath.Join(t.TempDir(), "data.db")}
}

// postgresDB returns the Config of a new schema in the database of
// GOOP_TEST_POSTGRES_DSN, dropped when the test ends; it skips the test when
// the variable is not set.
func postgresDB(t testing.TB) Config {
	dsn := requirePostgres(t)
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "goop_test_" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		db := bun.NewDB(sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(dsn))), pgdialect.New())
		defer db.Close()
		_, err := db.NewRaw("DROP SCHEMA IF EXISTS ? CASCADE", bun.Ident(schema)).Exec(context.Background())
		assert.NoError(t, err, "drop test schema %s", schema)
	})
	return Config{Driver: DriverPostgres, DSN: dsn, Schema: schema}
}

// requirePostgres returns GOOP_TEST_POSTGRES_DSN or skips the test.
func requirePostgres(t testing.TB) string {
	dsn := os.Getenv(pgEnv)
	if dsn == "" {
		t.Skipf("%s is not set: skipping the PostgreSQL tests (scripts/pg-test-env.sh start DIR PORT prints one)", pgEnv)
	}
	return dsn
}

var backends = []backend{
	{"SQLite", sqliteDB},
	{"Postgres", postgresDB},
}

// forEachBackend runs fn as a subtest per backend.
func forEachBackend(t *testing.T, fn func(t *testing.T, newDB func(testing.TB) Config)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			if b.name == "Postgres" {
				requirePostgres(t)
			}
			fn(t, b.newDB)
		})
	}
}

// openBefore opens cfg with only the migrations below version: a database
// as a node from before that migration left it.
func openBefore(t testing.TB, cfg Config, version int) *Store {
	t.Helper()
	var before []Migration
	for _, m := range Migrations() {
		if m.Version < version {
			before = append(before, m)
		}
	}
	s, err := openWith(context.Background(), cfg, before)
	require.NoError(t, err)
	return s
}

func mustOpen(t testing.TB, cfg Config) *Store {
	t.Helper()
	s, err := Open(context.Background(), cfg)
	require.NoError(t, err)
	return s
}

func TestStoreContract(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newDB func(testing.TB) Config) {
		storetest.RunStoreContract(t, func(t *testing.T) ports.Store { return mustOpen(t, newDB(t)) })
	})
}

func appliedMigrations(t *testing.T, s *Store) []migrationRow {
	t.Helper()
	var rows []migrationRow
	require.NoError(t, s.DB().NewSelect().Model(&rows).Order("version").Scan(context.Background()))
	return rows
}

func TestMigrationsApplyOnceAndAreRecorded(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newDB func(testing.TB) Config) {
		cfg := newDB(t)
		s := mustOpen(t, cfg)
		rows := appliedMigrations(t, s)
		require.Len(t, rows, len(Migrations()))
		assert.Equal(t, int64(1), rows[0].Version)
		assert.Equal(t, "bus tables", rows[0].Name)
		assert.False(t, rows[0].AppliedAt.IsZero())
		assert.Equal(t, int64(2), rows[1].Version)
		assert.Equal(t, "group tables", rows[1].Name)
		// A new SQLite store records its empty cursor log's point, nothing else.
		var n int
		require.NoError(t, s.DB().NewSelect().Model((*metaRow)(nil)).ColumnExpr("count(*)").Where("key <> ?", metaKeyCursorLog).Scan(context.Background(), &n))
		assert.Zero(t, n, "_mq_meta")
		for _, table := range []string{"_mq_outbox_chunks", "_mq_outbox_dead", "_mq_next_seq", "_mq_cursors",
			"_groups", "_group_members", "_group_subscriptions", "_group_invites", "_group_history"} {
			var n int
			require.NoError(t, s.DB().NewSelect().TableExpr("?", bun.Ident(table)).ColumnExpr("count(*)").Scan(context.Background(), &n), table)
			assert.Zero(t, n, table)
		}
		require.NoError(t, s.Close())

		// Reopening applies nothing again.
		s = mustOpen(t, cfg)
		defer s.Close()
		again := appliedMigrations(t, s)
		require.Len(t, again, len(rows))
		assert.True(t, rows[0].AppliedAt.Equal(again[0].AppliedAt), "migration 1 was applied again")
	})
}

// testTable is a model added by a test migration.
type testTable struct {
	bun.BaseModel `bun:"table:_test_extra"`
	ID            int64 `bun:"id,pk"`
}

func TestMigrationsAppendInOrder(t *testing.T) {
	ctx := context.Background()
	base := Migrations()
	last := base[len(base)-1].Version
	v1, v2, v3 := last+1, last+2, last+3
	var order []int
	step := func(v int, name string, fail bool) Migration {
		return Migration{Version: v, Name: name, Up: func(ctx context.Context, tx bun.Tx) error {
			order = append(order, v)
			if v == v1 {
				if _, err := tx.NewCreateTable().Model((*testTable)(nil)).Exec(ctx); err != nil {
					return err
				}
			}
			if fail {
				// Something already done in this migration must be undone.
				if _, err := tx.NewInsert().Model(&testTable{ID: 1}).Exec(ctx); err != nil {
					return err
				}
				return errors.New("boom")
			}
			return nil
		}}
	}
	forEachBackend(t, func(t *testing.T, newDB func(testing.TB) Config) {
		cfg := newDB(t)
		order = nil
		// Registered out of order: applied in version order.
		migs := slices.Concat(base, []Migration{step(v2, "two", false), step(v1, "one", false)})
		s, err := openWith(ctx, cfg, sortMigs(migs))
		require.NoError(t, err)
		assert.Equal(t, []int{v1, v2}, order)
		require.NoError(t, s.Close())

		// A failing migration leaves no trace and fails Open.
		order = nil
		_, err = openWith(ctx, cfg, sortMigs(append(migs, step(v3, "three", true))))
		require.ErrorContains(t, err, fmt.Sprintf("migration %d (three): boom", v3))
		assert.Equal(t, []int{v3}, order)

		s, err = openWith(ctx, cfg, sortMigs(migs))
		require.NoError(t, err)
		defer s.Close()
		rows := appliedMigrations(t, s)
		require.Len(t, rows, len(base)+2)
		assert.Equal(t, int64(v2), rows[len(rows)-1].Version)
		n, err := s.DB().NewSelect().Model((*testTable)(nil)).Count(ctx)
		require.NoError(t, err)
		assert.Zero(t, n, "the failed migration's insert was rolled back")
	})
}

func sortMigs(ms []Migration) []Migration {
	out := slices.Clone(ms)
	slices.SortFunc(out, func(a, b Migration) int { return cmp.Compare(a.Version, b.Version) })
	return out
}

func TestRegisterRejectsBadMigrations(t *testing.T) {
	up := func(context.Context, bun.Tx) error { return nil }
	for name, m := range map[string]Migration{
		"duplicate version": {Version: 1, Name: "again", Up: up},
		"zero version":      {Version: 0, Name: "zero", Up: up},
		"no name":           {Version: 1000, Up: up},
		"no up":             {Version: 1000, Name: "x"},
	} {
		t.Run(name, func(t *testing.T) {
			assert.Panics(t, func() { Register(m) })
		})
	}
}

func TestRefusesNewerSchema(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newDB func(testing.TB) Config) {
		ctx := context.Background()
		cfg := newDB(t)
		s := mustOpen(t, cfg)
		_, err := s.DB().NewInsert().Model(&migrationRow{Version: 99, Name: "from the future"}).Exec(ctx)
		require.NoError(t, err)
		require.NoError(t, s.Close())

		_, err = Open(ctx, cfg)
		require.ErrorIs(t, err, ErrSchemaTooNew)
		known := Migrations()[len(Migrations())-1].Version
		assert.ErrorContains(t, err, "version 99 (from the future)")
		assert.ErrorContains(t, err, fmt.Sprintf("knows up to version %d", known))
	})
}

// fullBatch returns a batch touching every table (every change kind) on top
// of the state batch 1 left.
func fullBatch() []mq.Change {
	var cs []mq.Change
	for seq := int64(10); seq < 20; seq++ {
		cs = append(cs, storetest.Put("A", storetest.Frame(seq, "t", `{"b":2}`)))
	}
	return append(cs,
		mq.Change{Kind: mq.SetEpoch, Epoch: "e2"},
		storetest.Del("A", 1), storetest.Del("A", 3), // two ranges
		storetest.Put("B", storetest.Frame(1, "t", `"b"`)), storetest.Del("B", 1), // cancelled
		mq.Change{Kind: mq.SetNextSeq, Peer: "A", Seq: 20},
		mq.Change{Kind: mq.SetCursor, Peer: "C", Epoch: "ce2", Seq: 8},
	)
}

func baseBatch() []mq.Change {
	return []mq.Change{
		{Kind: mq.SetEpoch, Epoch: "e1"},
		storetest.Put("A", storetest.Frame(1, "t", `1`)),
		storetest.Put("A", storetest.Frame(2, "t", `2`)),
		storetest.Put("A", storetest.Frame(3, "t", `3`)),
		{Kind: mq.SetNextSeq, Peer: "A", Seq: 4},
		{Kind: mq.SetCursor, Peer: "C", Epoch: "ce1", Seq: 5},
	}
}

func TestFailedApplyChangesNothing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newDB func(testing.TB) Config) {
		ctx := context.Background()
		s := mustOpen(t, newDB(t))
		defer s.Close()
		m := storetest.NewModel()
		require.NoError(t, s.Apply(ctx, ports.Batch{Bus: baseBatch()}))
		m.Apply(baseBatch())

		// Fail after statement 1, 2, ... until the batch has fewer statements.
		steps := 0
		for stop := 1; ; stop++ {
			s.afterStep = func(n int) error {
				if n == stop {
					return fmt.Errorf("injected failure after statement %d", n)
				}
				return nil
			}
			err := s.Apply(ctx, ports.Batch{Bus: fullBatch()})
			if err == nil {
				break
			}
			require.ErrorContains(t, err, "injected failure")
			storetest.RequireState(t, m, s)
			steps = stop
		}
		// Epoch, delete, put, next seq, cursor: five statements, each of
		// which was the failing one in turn.
		assert.Equal(t, 5, steps)
		s.afterStep = nil
		m.Apply(fullBatch())
		storetest.RequireState(t, m, s)
	})
}

func TestApplyRefusesInvalidBatch(t *testing.T) {
	ok := storetest.Put("A", storetest.Frame(9, "t", `9`))
	ack := storetest.Frame(4, "t", `4`)
	ack.Type = mq.TypeAck
	tests := []struct {
		name   string
		change mq.Change
		want   string
	}{
		{"put without frame", mq.Change{Kind: mq.PutOutbox, Peer: "A", Seq: 4}, "without a frame"},
		{"put of an ack", mq.Change{Kind: mq.PutOutbox, Peer: "A", Seq: 4, Frame: ack}, `"ack" frame`},
		{"seq mismatch", mq.Change{Kind: mq.PutOutbox, Peer: "A", Seq: 5, Frame: storetest.Frame(4, "t", `4`)}, "seq 5 but frame seq 4"},
		{"unknown kind", mq.Change{Kind: 99, Peer: "A"}, "unknown kind 99"},
		{"NUL in peer", mq.Change{Kind: mq.SetNextSeq, Peer: "A\x00B", Seq: 1}, "NUL"},
		{"NUL in epoch", mq.Change{Kind: mq.SetCursor, Peer: "A", Epoch: "e\x00", Seq: 1}, "NUL"},
		{"bad UTF-8", mq.Change{Kind: mq.SetEpoch, Epoch: "\xff"}, "UTF-8"},
	}
	forEachBackend(t, func(t *testing.T, newDB func(testing.TB) Config) {
		ctx := context.Background()
		s := mustOpen(t, newDB(t))
		defer s.Close()
		m := storetest.NewModel()
		require.NoError(t, s.Apply(ctx, ports.Batch{Bus: baseBatch()}))
		m.Apply(baseBatch())
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				err := s.Apply(ctx, ports.Batch{Bus: []mq.Change{ok, tt.change}})
				require.ErrorContains(t, err, tt.want)
				storetest.RequireState(t, m, s)
			})
		}
	})
}

func TestDurableAcrossRestart(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newDB func(testing.TB) Config) {
		ctx := context.Background()
		cfg := newDB(t)
		s := mustOpen(t, cfg)
		m := storetest.NewModel()
		for _, b := range [][]mq.Change{baseBatch(), fullBatch()} {
			require.NoError(t, s.Apply(ctx, ports.Batch{Bus: b}))
			m.Apply(b)
		}
		require.NoError(t, s.Close())

		s = mustOpen(t, cfg)
		storetest.RequireState(t, m, s)
		more := []mq.Change{storetest.Del("A", 2), mq.Change{Kind: mq.SetNextSeq, Peer: "B", Seq: 2}}
		require.NoError(t, s.Apply(ctx, ports.Batch{Bus: more}))
		m.Apply(more)
		require.NoError(t, s.Close())

		s = mustOpen(t, cfg)
		defer s.Close()
		storetest.RequireState(t, m, s)
	})
}

func TestClosedStore(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newDB func(testing.TB) Config) {
		s := mustOpen(t, newDB(t))
		require.NoError(t, s.Close())
		require.NoError(t, s.Close(), "Close is idempotent")
		_, err := s.LoadBus(context.Background())
		assert.ErrorIs(t, err, ports.ErrClosed)
		err = s.Apply(context.Background(), ports.Batch{Bus: baseBatch()})
		assert.ErrorIs(t, err, ports.ErrClosed)
		_, err = s.LoadGroups(context.Background())
		assert.ErrorIs(t, err, ports.ErrClosed)
		_, err = s.GroupHistory(context.Background(), "g1", 10)
		assert.ErrorIs(t, err, ports.ErrClosed)
		_, err = s.PublicGroups(context.Background())
		assert.ErrorIs(t, err, ports.ErrClosed)
		err = s.Apply(context.Background(), ports.Batch{Groups: baseGroupBatch()})
		assert.ErrorIs(t, err, ports.ErrClosed)
	})
}

// TestSQLiteSettings checks the connection's settings on a new database and
// on one opened again (in WAL mode already: the order of the pragmas then
// decides whether the wal-index goes to a shared -shm file).
func TestSQLiteSettings(t *testing.T) {
	cfg := sqliteDB(t)
	for _, when := range []string{"new", "opened again"} {
		s := mustOpen(t, cfg)
		ctx := context.Background()
		pragma := func(name string) string {
			var v string
			require.NoError(t, s.DB().QueryRowContext(ctx, "PRAGMA "+name).Scan(&v), name)
			return v
		}
		assert.Equal(t, "wal", pragma("journal_mode"), when)
		assert.Equal(t, "1", pragma("synchronous"), "NORMAL, %s", when)
		assert.Equal(t, "1", pragma("foreign_keys"), when)
		assert.Equal(t, "250", pragma("busy_timeout"), when)
		assert.Equal(t, "exclusive", pragma("locking_mode"), when)
		assert.Equal(t, "4000", pragma("wal_autocheckpoint"), when)
		assert.Equal(t, fmt.Sprint(32<<20), pragma("journal_size_limit"), when)
		assert.Equal(t, 1, s.DB().Stats().MaxOpenConnections, when)
		fi, err := os.Stat(cfg.Path)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), when)
		_, err = os.Stat(cfg.Path + "-shm")
		assert.ErrorIs(t, err, fs.ErrNotExist, "exclusive WAL keeps its index in memory: no -shm file (%s)", when)
		require.NoError(t, s.Close())
	}
}

// TestSecondOpenIsRefused: the store holds its SQLite file exclusively; a
// second store on the same file (a second node on the same folder) is
// refused with ErrInUse, and can open it once the first is closed.
func TestSecondOpenIsRefused(t *testing.T) {
	cfg := sqliteDB(t)
	s := mustOpen(t, cfg)
	_, err := Open(context.Background(), cfg)
	require.ErrorIs(t, err, ErrInUse)
	assert.Contains(t, err.Error(), cfg.Path)
	require.NoError(t, s.Close())
	s2 := mustOpen(t, cfg)
	require.NoError(t, s2.Close())
}

func TestSQLitePathWithURICharacters(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "we?ird #dir%20")
	require.NoError(t, os.Mkdir(dir, 0o700))
	cfg := Config{Path: filepath.Join(dir, "data.db")}
	s := mustOpen(t, cfg)
	require.NoError(t, s.Apply(context.Background(), ports.Batch{Bus: baseBatch()}))
	require.NoError(t, s.Close())
	_, err := os.Stat(cfg.Path)
	require.NoError(t, err, "the database is at the path given, not an unescaped one")
	s = mustOpen(t, cfg)
	defer s.Close()
	m := storetest.NewModel()
	m.Apply(baseBatch())
	storetest.RequireState(t, m, s)
}

func TestOpenErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"unknown driver", Config{Driver: "mysql"}, `unknown driver "mysql"`},
		{"sqlite without path", Config{}, "needs Config.Path"},
		{"sqlite with schema", Config{Path: "x.db", Schema: "s"}, "postgres only"},
		{"missing directory", Config{Path: "/nonexistent/dir/data.db"}, "/nonexistent/dir/data.db"},
		{"postgres without DSN", Config{Driver: DriverPostgres}, "needs Config.DSN"},
		{"postgres bad schema", Config{Driver: DriverPostgres, DSN: "postgres://u@127.0.0.1:1/db", Schema: `x"; DROP`}, "bad postgres schema name"},
		{"postgres bad DSN", Config{Driver: DriverPostgres, DSN: "mysql://nope"}, "bad postgres DSN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Open(context.Background(), tt.cfg)
			require.Error(t, err)
			assert.Nil(t, s)
			assert.ErrorContains(t, err, tt.want)
		})
	}
}

// BenchmarkApplyBatch measures the bus's hot path: batches of 256 messages,
// each a PutOutbox and later a DeleteOutbox. "coalesced" acks within the same
// batch (the put and delete cancel); "next-batch" acks the previous batch's
// messages (rows are really inserted, then deleted).
func BenchmarkApplyBatch(b *testing.B) {
	const perBatch = 256
	for _, be := range backends {
		for _, mode := range []string{"coalesced", "next-batch"} {
			b.Run(be.name+"/"+mode, func(b *testing.B) {
				if be.name == "Postgres" {
					requirePostgres(b)
				}
				s := mustOpen(b, be.newDB(b))
				defer s.Close()
				ctx := context.Background()
				payload := []byte(`{"action":"doc-added","file":{"name":"report.pdf","size":123456}}`)
				cs := make([]mq.Change, 0, 2*perBatch+1)
				seq := int64(1)
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					cs = cs[:0]
					for j := 0; j < perBatch; j++ {
						f := &mq.Frame{Type: mq.TypeMsg, ID: fmt.Sprintf("msg-%d", seq), Seq: seq, Topic: "chat", Payload: payload}
						cs = append(cs, mq.Change{Kind: mq.PutOutbox, Peer: "12D3KooWPeerB", Seq: seq, Frame: f})
						if mode == "coalesced" {
							cs = append(cs, storetest.Del("12D3KooWPeerB", seq))
						} else if seq > perBatch {
							cs = append(cs, storetest.Del("12D3KooWPeerB", seq-perBatch))
						}
						seq++
					}
					cs = append(cs, mq.Change{Kind: mq.SetNextSeq, Peer: "12D3KooWPeerB", Seq: seq})
					if err := s.Apply(ctx, ports.Batch{Bus: cs}); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N*perBatch)/b.Elapsed().Seconds(), "msgs/s")
			})
		}
	}
}
