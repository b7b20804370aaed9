package sqlstore

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect"
)

// ErrSchemaTooNew is returned by Open when the database was migrated by a
// newer program than this one: opening it could corrupt it.
var ErrSchemaTooNew = errors.New("sqlstore: database schema is newer than this program")

// Migration is one versioned, forward-only schema change.
type Migration struct {
	// Version orders the migrations; it is unique and positive. Never change
	// or reuse the version of a migration that has shipped.
	Version int
	// Name says what the migration does (recorded in _migrations).
	Name string
	// Up applies the change inside tx. It may branch on tx.Dialect().Name()
	// for dialect-specific DDL. It must not commit or roll back tx.
	Up func(ctx context.Context, tx bun.Tx) error
}

var (
	registryMu sync.Mutex
	registry   []Migration
)

// Register adds m to the migrations Open applies. Call it from an init
// function of this package. It panics on a version that is not positive, a
// duplicate version, an empty name or a nil Up: these are programming errors.
func Register(m Migration) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if m.Version <= 0 || m.Name == "" || m.Up == nil {
		panic(fmt.Sprintf("sqlstore: invalid migration %d %q", m.Version, m.Name))
	}
	for _, o := range registry {
		if o.Version == m.Version {
			panic(fmt.Sprintf("sqlstore: migration version %d registered twice (%q, %q)", m.Version, o.Name, m.Name))
		}
	}
	registry = append(registry, m)
}

// Migrations returns the registered migrations in version order.
func Migrations() []Migration {
	registryMu.Lock()
	defer registryMu.Unlock()
	out := slices.Clone(registry)
	slices.SortFunc(out, func(a, b Migration) int { return cmp.Compare(a.Version, b.Version) })
	return out
}

// migrationRow is one applied migration.
type migrationRow struct {
	bun.BaseModel `bun:"table:_migrations"`

	Version   int64     `bun:"version,pk"`
	Name      string    `bun:"name,notnull"`
	AppliedAt time.Time `bun:"applied_at,notnull"`
}

// pgMigrateLock is the PostgreSQL advisory lock key that serializes
// migrations of processes opening the same database at once.
const pgMigrateLock = 0x600b_5717_0001

// migrate applies the migrations of migs (sorted by version) that the
// database has not recorded, each in its own transaction.
func migrate(ctx context.Context, db *bun.DB, migs []Migration, log *slog.Logger) error {
	if _, err := db.NewCreateTable().Model((*migrationRow)(nil)).IfNotExists().Exec(ctx); err != nil {
		return fmt.Errorf("sqlstore: create _migrations: %w", err)
	}
	var applied []migrationRow
	if err := db.NewSelect().Model(&applied).Order("version").Scan(ctx); err != nil {
		return fmt.Errorf("sqlstore: read _migrations: %w", err)
	}
	known := 0
	if len(migs) > 0 {
		known = migs[len(migs)-1].Version
	}
	if n := len(applied); n > 0 && applied[n-1].Version > int64(known) {
		return fmt.Errorf("%w: database is at version %d (%s), this program knows up to version %d",
			ErrSchemaTooNew, applied[n-1].Version, applied[n-1].Name, known)
	}
	done := make(map[int64]string, len(applied))
	for _, a := range applied {
		done[a.Version] = a.Name
	}
	for _, m := range migs {
		if name, ok := done[int64(m.Version)]; ok {
			if name != m.Name {
				log.Warn("sqlstore: recorded migration has another name", "version", m.Version, "recorded", name, "known", m.Name)
			}
			continue
		}
		if err := applyMigration(ctx, db, m); err != nil {
			return err
		}
		log.Info("sqlstore: applied migration", "version", m.Version, "name", m.Name)
	}
	return nil
}

func applyMigration(ctx context.Context, db *bun.DB, m Migration) error {
	err := db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if tx.Dialect().Name() == dialect.PG {
			if _, err := tx.NewRaw("SELECT pg_advisory_xact_lock(?)", int64(pgMigrateLock)).Exec(ctx); err != nil {
				return fmt.Errorf("lock: %w", err)
			}
		}
		// Another process may have applied it meanwhile (SQLite's
		// transactions take the write lock at BEGIN; Postgres holds the
		// advisory lock).
		var row migrationRow
		err := tx.NewSelect().Model(&row).Where("version = ?", m.Version).Scan(ctx)
		switch {
		case err == nil:
			return nil
		case !errors.Is(err, sql.ErrNoRows):
			return err
		}
		if err := m.Up(ctx, tx); err != nil {
			return err
		}
		row = migrationRow{Version: int64(m.Version), Name: m.Name, AppliedAt: time.Now().UTC()}
		_, err = tx.NewInsert().Model(&row).Exec(ctx)
		return err
	})
	if err != nil {
		return fmt.Errorf("sqlstore: migration %d (%s): %w", m.Version, m.Name, err)
	}
	return nil
}
