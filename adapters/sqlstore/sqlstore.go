// Package sqlstore is the node's durable state (ports.Store) on a SQL
// database through uptrace/bun: SQLite (the peer's data.db, pure Go) by
// default, PostgreSQL optionally, with the same models on both.
//
// The schema is versioned: the migrations registered in this package (see
// Migration and Register) are applied in order at Open, each in its own
// transaction, and recorded in the _migrations table. A database whose
// recorded version is newer than this program knows is refused.
package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
	"github.com/uptrace/bun/dialect/sqlitedialect"
	"github.com/uptrace/bun/driver/pgdriver"
	"github.com/uptrace/bun/driver/sqliteshim"

	"github.com/goop-p2p/goop/ports"
)

var _ ports.Store = (*Store)(nil)

// Drivers accepted in Config.Driver.
const (
	DriverSQLite   = "sqlite"
	DriverPostgres = "postgres"
)

// sqliteBusyTimeout is how long a SQLite statement waits for a lock held by
// another process before failing with SQLITE_BUSY. The store holds its
// database exclusively (see openSQLite), so the only such wait is for
// another program that has the file open: long enough to ride over a brief
// reader, short enough that a second node on the same folder is told at once.
const sqliteBusyTimeout = 250 * time.Millisecond

// sqliteCheckpointPages is how many pages the write-ahead log may hold
// before SQLite copies them back into the database (16 MiB of 4 KiB pages);
// sqliteWALLimit is the size the log file is cut back to afterwards.
const (
	sqliteCheckpointPages = 4000
	sqliteWALLimit        = 32 << 20
)

// ErrInUse is returned by Open when another process holds the SQLite
// database (another node running on the same folder, or a tool that has the
// file open).
var ErrInUse = errors.New("database in use by another process")

// Config says which database to open.
type Config struct {
	// Driver is DriverSQLite (the default when empty) or DriverPostgres.
	Driver string
	// Path is the SQLite database file (e.g. <peerDir>/data.db). Its
	// directory must exist; the file is created (mode 0600) when missing.
	Path string
	// DSN is the PostgreSQL connection string
	// (postgres://user@host:port/db?sslmode=disable).
	DSN string
	// Schema, for PostgreSQL only, is the schema holding the tables; it is
	// created when missing and becomes the connections' search_path. Empty
	// means the server's default search_path. It must be a plain lower-case
	// identifier (letters, digits, underscore).
	Schema string
	// Logger receives migration notices; nil discards them.
	Logger *slog.Logger
}

// Store is a ports.Store on a SQL database. It is safe for concurrent use;
// its methods (LoadBus, LoadGroups, Apply, GroupHistory, PublicGroups and
// Close) are serialized with each other and block until the database
// answers. On SQLite (WAL, synchronous=NORMAL) a committed
// Apply survives a crash of the process; the last commits before a power
// loss or OS crash may be lost, never half of one.
type Store struct {
	db     *bun.DB
	driver string
	log    *slog.Logger
	now    func() time.Time

	mu     sync.Mutex
	closed bool

	// afterStep, when set (tests only), is called after each statement of an
	// Apply transaction with the number of statements done so far; an error
	// aborts the transaction as a failing statement would.
	afterStep func(step int) error
	// historyLimit, when positive (tests only), replaces HistoryLimit as the
	// number of history rows Apply keeps per group.
	historyLimit int
	// hot holds Apply's prepared statements. Guarded by mu.
	hot hotStmts

	// histCounts caches the committed number of history rows per group, so
	// that pruning walks only the rows it deletes. Apply fills it lazily
	// (one count per group and process) and drops it when a transaction
	// fails. It relies on this Store being the only writer of
	// _group_history. Guarded by mu.
	histCounts map[string]int
	// outbox is the index of the stored outbox (see outbox.go): loaded
	// with it, kept by Apply, dropped when a transaction fails. Guarded by
	// mu.
	outbox *outboxIndex
	// plans are Apply's plans of its batch, reused. Guarded by mu.
	plans struct {
		bus    busPlan
		groups groupPlan
	}
	// curlog is the cursor log of a SQLite store (nil on Postgres): see
	// cursorlog.go. Guarded by mu.
	curlog *cursorLog
}

var schemaName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// Open opens (creating if needed) the database cfg names, applies the
// pending migrations and returns the store. It fails when the database's
// schema is newer than this program knows (ErrSchemaTooNew).
func Open(ctx context.Context, cfg Config) (*Store, error) {
	return openWith(ctx, cfg, Migrations())
}

func openWith(ctx context.Context, cfg Config, migs []Migration) (*Store, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Store{log: log, now: time.Now}
	s.hot.sizes = stmtSizes(cfg.Driver)
	var err error
	switch cfg.Driver {
	case "", DriverSQLite:
		s.driver = DriverSQLite
		s.db, err = openSQLite(cfg)
	case DriverPostgres:
		s.driver = DriverPostgres
		s.db, err = openPostgres(cfg)
	default:
		return nil, fmt.Errorf("sqlstore: unknown driver %q (want %q or %q)", cfg.Driver, DriverSQLite, DriverPostgres)
	}
	if err != nil {
		return nil, err
	}
	if err := s.db.PingContext(ctx); err != nil {
		_ = s.db.Close()
		if s.driver == DriverSQLite && isBusy(err) {
			return nil, inUse(cfg.Path, err)
		}
		return nil, fmt.Errorf("sqlstore: connect to %s: %w", s.driver, err)
	}
	if s.driver == DriverPostgres && cfg.Schema != "" {
		if _, err := s.db.NewRaw("CREATE SCHEMA IF NOT EXISTS ?", bun.Ident(cfg.Schema)).Exec(ctx); err != nil {
			_ = s.db.Close()
			return nil, fmt.Errorf("sqlstore: create schema %q: %w", cfg.Schema, err)
		}
	}
	if err := migrate(ctx, s.db, migs, log); err != nil {
		_ = s.db.Close()
		if s.driver == DriverSQLite && isBusy(err) {
			return nil, inUse(cfg.Path, err)
		}
		return nil, err
	}
	if s.driver == DriverSQLite {
		// Fold what the cursor log holds and start a new one.
		path, _ := filepath.Abs(cfg.Path) // openSQLite succeeded with it
		l, err := s.openCursorLog(ctx, path)
		if err == nil {
			s.curlog = l
			err = s.rotate(ctx)
		}
		if err != nil {
			_ = s.hot.close()
			_ = s.db.Close()
			return nil, err
		}
	}
	return s, nil
}

func openSQLite(cfg Config) (*bun.DB, error) {
	if cfg.Path == "" {
		return nil, errors.New("sqlstore: sqlite needs Config.Path")
	}
	if cfg.DSN != "" || cfg.Schema != "" {
		return nil, errors.New("sqlstore: Config.DSN and Config.Schema are for postgres only")
	}
	path, err := filepath.Abs(cfg.Path)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: sqlite path %q: %w", cfg.Path, err)
	}
	// Create the file ourselves so that it (and SQLite's -wal and -shm files,
	// which copy its mode) is private to the user.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: open %s: %w", path, err)
	}
	_ = f.Close()

	// A file: URI, so that any character of the path is escaped; the
	// pragmas hold for every connection the pool opens. The database is the
	// node's alone: exclusive locking, set before WAL is first used, keeps
	// the write-ahead log's index in our memory instead of a shared -shm
	// file, sparing the file locks every transaction otherwise takes (half
	// the time of a small commit). Another process cannot open the file
	// while the node runs. The log is checkpointed every sqliteCheckpointPages
	// pages instead of SQLite's 1,000: a checkpoint stalls the store while
	// it copies the (mostly same, hot) pages back and syncs the log and the
	// database (20-30 ms on a 2-core VM, almost all of it the syncs: with
	// synchronous=OFF the worst commit took 0.9 ms), so a larger log means
	// proportionally fewer stalls for the same pages.
	u := "file:" + (&url.URL{Path: path}).EscapedPath()
	busyMS := sqliteBusyTimeout.Milliseconds()
	q := url.Values{}
	switch sqliteshim.DriverName() {
	case "sqlite3": // mattn/go-sqlite3 (cgo, build tag cgosqlite)
		q.Set("_locking_mode", "EXCLUSIVE")
		q.Set("_wal_autocheckpoint", fmt.Sprint(sqliteCheckpointPages))
		q.Set("_journal_size_limit", fmt.Sprint(sqliteWALLimit))
		q.Set("_journal_mode", "WAL")
		q.Set("_synchronous", "NORMAL")
		q.Set("_busy_timeout", fmt.Sprint(busyMS))
		q.Set("_foreign_keys", "1")
		q.Set("_txlock", "immediate")
	default: // modernc.org/sqlite
		// modernc runs busy_timeout first and the rest in lexicographic
		// order, whatever order they are given in. Exclusive locking must
		// come before the first access to the write-ahead log, which
		// journal_mode makes on a database already in WAL mode (every
		// start but the first): schema-qualified ("main."), journal_mode
		// and journal_size_limit sort after locking_mode. Otherwise the
		// wal-index goes to a shared -shm file, whose locks every
		// transaction then takes.
		q["_pragma"] = []string{
			fmt.Sprintf("busy_timeout(%d)", busyMS),
			"locking_mode(EXCLUSIVE)",
			fmt.Sprintf("wal_autocheckpoint(%d)", sqliteCheckpointPages),
			fmt.Sprintf("main.journal_size_limit(%d)", sqliteWALLimit),
			"main.journal_mode(WAL)",
			"synchronous(NORMAL)",
			"foreign_keys(1)",
		}
		q.Set("_txlock", "immediate")
	}
	sqldb, err := sql.Open(sqliteshim.ShimName, u+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("sqlstore: open %s: %w", path, err)
	}
	// One connection: SQLite has one writer anyway, and a single connection
	// makes every statement see the previous one's writes. A caller of DB()
	// must not hold a result set open while issuing another query.
	sqldb.SetMaxOpenConns(1)
	sqldb.SetMaxIdleConns(1)
	sqldb.SetConnMaxLifetime(0)
	sqldb.SetConnMaxIdleTime(0)
	return bun.NewDB(sqldb, sqlitedialect.New()), nil
}

func openPostgres(cfg Config) (*bun.DB, error) {
	if cfg.DSN == "" {
		return nil, errors.New("sqlstore: postgres needs Config.DSN")
	}
	if cfg.Path != "" {
		return nil, errors.New("sqlstore: Config.Path is for sqlite only")
	}
	if cfg.Schema != "" && !schemaName.MatchString(cfg.Schema) {
		return nil, fmt.Errorf("sqlstore: bad postgres schema name %q (want %s)", cfg.Schema, schemaName)
	}
	connector, err := pgConnector(cfg)
	if err != nil {
		return nil, err
	}
	sqldb := sql.OpenDB(connector)
	sqldb.SetMaxOpenConns(4 * runtime.GOMAXPROCS(0))
	sqldb.SetMaxIdleConns(4 * runtime.GOMAXPROCS(0))
	return bun.NewDB(sqldb, pgdialect.New()), nil
}

// pgConnector builds the pgdriver connector; pgdriver panics on a malformed
// DSN, which is turned into an error here.
func pgConnector(cfg Config) (c *pgdriver.Connector, err error) {
	defer func() {
		if r := recover(); r != nil {
			c, err = nil, fmt.Errorf("sqlstore: bad postgres DSN: %v", r)
		}
	}()
	opts := []pgdriver.Option{pgdriver.WithDSN(cfg.DSN)}
	if cfg.Schema != "" {
		opts = append(opts, func(c *pgdriver.Config) {
			params := make(map[string]any, len(c.ConnParams)+1)
			for k, v := range c.ConnParams {
				params[k] = v
			}
			params["search_path"] = cfg.Schema
			c.ConnParams = params
		})
	}
	return pgdriver.NewConnector(opts...), nil
}

func inUse(path string, err error) error {
	return fmt.Errorf("sqlstore: %s: %w (is another goop running on this folder?): %v", path, ErrInUse, err)
}

// isBusy reports whether err is SQLite's "database is locked" (SQLITE_BUSY).
func isBusy(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "database is locked") || strings.Contains(msg, "SQLITE_BUSY")
}

// DB is the underlying bun database, for packages that add their own models
// (with migrations registered in this package). It stays owned by the Store:
// do not close it. On SQLite it has a single connection.
func (s *Store) DB() *bun.DB { return s.db }

// Driver is DriverSQLite or DriverPostgres.
func (s *Store) Driver() string { return s.driver }

// Close checkpoints the SQLite write-ahead log and closes the database. It is
// idempotent; the other methods return ports.ErrClosed afterwards.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	if s.curlog != nil {
		if err := s.closeLog(context.Background()); err != nil {
			errs = append(errs, err)
		}
	}
	if err := s.hot.close(); err != nil {
		errs = append(errs, fmt.Errorf("sqlstore: close statements: %w", err))
	}
	if s.driver == DriverSQLite {
		if _, err := s.db.ExecContext(context.Background(), "PRAGMA wal_checkpoint(TRUNCATE)"); err != nil {
			errs = append(errs, fmt.Errorf("sqlstore: checkpoint: %w", err))
		}
	}
	if err := s.db.Close(); err != nil {
		errs = append(errs, fmt.Errorf("sqlstore: close: %w", err))
	}
	return errors.Join(errs...)
}
