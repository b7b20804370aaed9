package sqlstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/domain/group"
	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/ports"
	"github.com/goop-p2p/goop/ports/storetest"
)

func setCursor(peer mq.PeerID, epoch string, next int64) mq.Change {
	return mq.Change{Kind: mq.SetCursor, Peer: peer, Epoch: epoch, Seq: next}
}

// tableCursors reads _mq_cursors as it is, without the log.
func tableCursors(t *testing.T, s *Store) map[mq.PeerID]mq.Cursor {
	t.Helper()
	var rows []cursorRow
	require.NoError(t, s.DB().NewSelect().Model(&rows).Scan(context.Background()))
	out := map[mq.PeerID]mq.Cursor{}
	for _, r := range rows {
		out[mq.PeerID(r.PeerID)] = mq.Cursor{Epoch: r.Epoch, Next: r.NextSeq}
	}
	return out
}

// crashCopy copies the files of the open store at cfg, as a crash of the
// process would leave them (everything written is in the files; nothing
// was folded or checkpointed at close), to a new folder and returns that
// copy's config.
func crashCopy(t *testing.T, cfg Config) Config {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "data.db")
	for _, suffix := range []string{"", "-wal", ".cursors"} {
		b, err := os.ReadFile(cfg.Path + suffix)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(dst+suffix, b, 0o600))
	}
	return Config{Path: dst}
}

// requireStateAfterCrash opens a crash copy of the store at cfg and
// requires it to hold model m's state.
func requireStateAfterCrash(t *testing.T, m *storetest.Model, cfg Config) {
	t.Helper()
	c := mustOpen(t, crashCopy(t, cfg))
	storetest.RequireState(t, m, c)
	require.NoError(t, c.Close())
}

// logBuffer collects a store's log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A receiver's cursor-only batches go to the log, not the table, and a
// crash loses none of them; batches with other changes fold the log into
// the table in their transaction, and whichever was written last wins after
// a crash.
func TestCursorLogSurvivesACrashAndKeepsTheNewest(t *testing.T) {
	ctx := context.Background()
	cfg := sqliteDB(t)
	s := mustOpen(t, cfg)
	defer s.Close()
	m := storetest.NewModel()
	apply := func(cs ...mq.Change) {
		t.Helper()
		require.NoError(t, s.Apply(ctx, ports.Batch{Bus: cs}))
		m.Apply(cs)
	}
	crashed := func() { t.Helper(); requireStateAfterCrash(t, m, cfg) }
	apply(baseBatch()...) // C's cursor in the table
	apply(setCursor("P", "pe1", 1))
	apply(setCursor("P", "pe1", 2))
	apply(setCursor("Q", "qe1", 7), setCursor("P", "pe1", 3))
	assert.Equal(t, map[mq.PeerID]mq.Cursor{"C": {Epoch: "ce1", Next: 5}}, tableCursors(t, s), "the cursors went to the log")
	storetest.RequireState(t, m, s)
	crashed()

	// A transaction that writes P folds Q, which it does not write.
	apply(setCursor("P", "pe2", 1), mq.Change{Kind: mq.SetNextSeq, Peer: "A", Seq: 9})
	assert.Equal(t, map[mq.PeerID]mq.Cursor{"C": {Epoch: "ce1", Next: 5}, "P": {Epoch: "pe2", Next: 1}, "Q": {Epoch: "qe1", Next: 7}},
		tableCursors(t, s))
	crashed() // the log's older P is not taken over the table's newer one

	// The log again, after the table.
	apply(setCursor("P", "pe2", 2))
	crashed()

	// A batch with group changes and a cursor, in one transaction.
	g := &group.Group{ID: "0123456789abcdef", Name: "g", Owner: "H", Type: "chat", Lifecycle: group.Persistent, Access: group.Open, DefaultRole: "viewer"}
	require.NoError(t, s.Apply(ctx, ports.Batch{Bus: []mq.Change{setCursor("Q", "qe1", 8)}, Groups: []group.Change{{Kind: group.PutGroup, GroupID: g.ID, Group: g}}}))
	m.Apply([]mq.Change{setCursor("Q", "qe1", 8)})
	crashed()

	// A clean close leaves it all in the table, and the file cut back to
	// its records; the next open starts an empty log.
	size := s.curlog.size
	require.NoError(t, s.Close())
	fi, err := os.Stat(cursorLogPath(cfg.Path))
	require.NoError(t, err)
	assert.Equal(t, size, fi.Size(), "no zero tail after close")
	s = mustOpen(t, cfg)
	assert.Equal(t, m.Snapshot().Cursors, tableCursors(t, s))
	assert.Equal(t, int64(cursorLogHeader), logRecordsEnd(t, cfg.Path), "an empty log")
	storetest.RequireState(t, m, s)
}

// logRecordsEnd reads the cursor log of the database at dbPath and returns
// where its records end; every byte after them must be zero (a mapped
// file's tail).
func logRecordsEnd(t *testing.T, dbPath string) int64 {
	t.Helper()
	b, err := os.ReadFile(cursorLogPath(dbPath))
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(b), cursorLogHeader)
	end := cursorLogHeader + readCursorRecords(b[cursorLogHeader:], map[mq.PeerID]mq.Cursor{})
	for i, c := range b[end:] {
		require.Zero(t, c, "byte %d after the records", end+i)
	}
	return int64(end)
}

// On Linux the log is written through a mapping of the file, reserved on
// disk up to its rotation size and slack.
func TestCursorLogIsMappedOnLinux(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the cursor log is mapped on Linux only")
	}
	ctx := context.Background()
	cfg := sqliteDB(t)
	s := mustOpen(t, cfg)
	defer s.Close()
	require.NotNil(t, s.curlog.mm)
	assert.Len(t, s.curlog.mm, cursorLogRotateAt+cursorLogSlack)
	fi, err := os.Stat(cursorLogPath(cfg.Path))
	require.NoError(t, err)
	assert.Equal(t, int64(cursorLogRotateAt+cursorLogSlack), fi.Size())
	require.NoError(t, s.Apply(ctx, ports.Batch{Bus: []mq.Change{setCursor("P", "pe", 1)}}))
	assert.Greater(t, logRecordsEnd(t, cfg.Path), int64(cursorLogHeader), "the record is in the file")
	assert.Empty(t, tableCursors(t, s))
}

// openMapped opens a new SQLite store, closed when the test ends, and
// skips the test where its cursor log is not mapped.
func openMapped(t *testing.T) (Config, *Store) {
	t.Helper()
	cfg := sqliteDB(t)
	s := mustOpen(t, cfg)
	t.Cleanup(func() { _ = s.Close() })
	if s.curlog.mm == nil {
		t.Skip("the cursor log is not mapped here")
	}
	return cfg, s
}

// A batch of cursors larger than the room left in the mapping goes to the
// table, in a transaction that folds the log, and the log goes on after it.
func TestCursorLogBatchPastTheMappingGoesToTheTable(t *testing.T) {
	ctx := context.Background()
	cfg, s := openMapped(t)
	m := storetest.NewModel()
	apply := func(cs ...mq.Change) {
		t.Helper()
		require.NoError(t, s.Apply(ctx, ports.Batch{Bus: cs}))
		m.Apply(cs)
	}
	// A small log: rotated into a mapping of 300 bytes and the slack.
	s.curlog.rotateAt = 300
	gen := s.curlog.gen
	for i := int64(1); s.curlog.gen == gen; i++ {
		apply(setCursor("Q", "qe", i))
	}
	require.Len(t, s.curlog.mm, 300+cursorLogSlack)
	apply(setCursor("P", "pe", 1))
	var big []mq.Change
	for i := range 2000 {
		big = append(big, setCursor(mq.PeerID(fmt.Sprintf("12D3KooWPeer%06d", i)), "an-epoch", int64(i+1)))
	}
	apply(big...)
	assert.Len(t, tableCursors(t, s), 2002, "the big batch and the folded log are in the table")
	apply(setCursor("P", "pe", 2))
	assert.Len(t, tableCursors(t, s), 2002, "the next cursor goes to the log")
	assert.Equal(t, mq.Cursor{Epoch: "pe", Next: 1}, tableCursors(t, s)["P"])
	requireStateAfterCrash(t, m, cfg)
	storetest.RequireState(t, m, s)
}

// A torn end (a partial record, or one that fails its checksum) is ignored:
// what came before it is kept and the store goes on.
func TestCursorLogIgnoresATornEnd(t *testing.T) {
	ctx := context.Background()
	cfg := sqliteDB(t)
	s := mustOpen(t, cfg)
	defer s.Close()
	for i := int64(1); i <= 3; i++ {
		require.NoError(t, s.Apply(ctx, ports.Batch{Bus: []mq.Change{setCursor("P", "pe", i)}}))
	}
	end := s.curlog.size
	whole := appendCursorRecord(nil, "P", mq.Cursor{Epoch: "pe", Next: 4})
	bad := bytes.Clone(whole)
	bad[len(bad)-1] ^= 0xff
	for name, tail := range map[string][]byte{"partial": whole[:len(whole)-3], "checksum": bad, "garbage": []byte("\x01\x02")} {
		t.Run(name, func(t *testing.T) {
			c := crashCopy(t, cfg)
			f, err := os.OpenFile(cursorLogPath(c.Path), os.O_WRONLY, 0)
			require.NoError(t, err)
			_, err = f.WriteAt(tail, end) // right after the last record
			require.NoError(t, err)
			require.NoError(t, f.Close())
			var logs logBuffer
			c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			r := mustOpen(t, c)
			defer r.Close()
			snap, err := r.LoadBus(ctx)
			require.NoError(t, err)
			assert.Equal(t, mq.Cursor{Epoch: "pe", Next: 3}, snap.Cursors["P"])
			assert.Contains(t, logs.String(), "torn end")
			// It goes on: a new cursor, a crash, and it is there.
			require.NoError(t, r.Apply(ctx, ports.Batch{Bus: []mq.Change{setCursor("P", "pe", 5)}}))
			again := mustOpen(t, crashCopy(t, c))
			defer again.Close()
			snap, err = again.LoadBus(ctx)
			require.NoError(t, err)
			assert.Equal(t, mq.Cursor{Epoch: "pe", Next: 5}, snap.Cursors["P"])
		})
	}
}

// Past its size bound the log is folded into the table and starts again,
// and a crash at any point keeps every cursor; a rotation that stops
// between its fold and its rename (as a crash there would) leaves files
// that reopen right, and the store refuses to go on.
func TestCursorLogRotates(t *testing.T) {
	ctx := context.Background()
	cfg := sqliteDB(t)
	s := mustOpen(t, cfg)
	defer s.Close()
	s.curlog.rotateAt = 300
	m := storetest.NewModel()
	gen := s.curlog.gen
	peers := []mq.PeerID{"12D3KooWAAAA", "12D3KooWBBBB", "12D3KooWCCCC"}
	for i := int64(1); i <= 60; i++ {
		c := setCursor(peers[i%3], "epoch", i)
		require.NoError(t, s.Apply(ctx, ports.Batch{Bus: []mq.Change{c}}))
		m.Apply([]mq.Change{c})
		require.LessOrEqual(t, s.curlog.size, int64(300+100), "the log stays near its bound")
		fi, err := os.Stat(cursorLogPath(cfg.Path))
		require.NoError(t, err)
		require.LessOrEqual(t, fi.Size(), max(s.curlog.size, int64(len(s.curlog.mm))))
		if i%7 == 0 {
			requireStateAfterCrash(t, m, cfg)
		}
	}
	assert.Greater(t, s.curlog.gen, gen+3, "it rotated")

	// Stop the next rotation after its fold committed.
	s.curlog.beforeRename = func() error { return errors.New("stopped before the rename") }
	var err error
	for i := int64(61); err == nil; i++ {
		c := setCursor("12D3KooWAAAA", "epoch", i)
		if err = s.Apply(ctx, ports.Batch{Bus: []mq.Change{c}}); err == nil || s.curlog.failed != nil {
			m.Apply([]mq.Change{c}) // the record was written before the rotation
		}
	}
	require.ErrorContains(t, err, "stopped before the rename")
	requireStateAfterCrash(t, m, cfg)
	// No record may go to the old file now: the next open would ignore it.
	s.curlog.beforeRename, s.curlog.rotateAt = nil, 1<<30
	require.ErrorContains(t, s.Apply(ctx, ports.Batch{Bus: []mq.Change{setCursor("12D3KooWAAAA", "epoch", 1000)}}), "stopped before the rename")
	requireStateAfterCrash(t, m, cfg)
}

// A file that is not a cursor log stops the opening, naming it; a missing
// log (deleted by hand) is reported and the store opens.
func TestCursorLogBadOrMissingFile(t *testing.T) {
	ctx := context.Background()
	cfg := sqliteDB(t)
	s := mustOpen(t, cfg)
	require.NoError(t, s.Apply(ctx, ports.Batch{Bus: []mq.Change{setCursor("P", "pe", 1)}}))

	bad := crashCopy(t, cfg)
	require.NoError(t, os.WriteFile(cursorLogPath(bad.Path), []byte("something else entirely"), 0o600))
	_, err := Open(ctx, bad)
	require.ErrorContains(t, err, cursorLogPath(bad.Path))
	require.ErrorContains(t, err, "not a cursor log")

	missing := crashCopy(t, cfg)
	require.NoError(t, os.Remove(cursorLogPath(missing.Path)))
	var logs logBuffer
	missing.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	r := mustOpen(t, missing)
	defer r.Close()
	assert.Contains(t, logs.String(), "cursor log missing")
	require.NoError(t, s.Close())
}

// A write that fails is reported and changes nothing.
func TestCursorLogWriteFailure(t *testing.T) {
	ctx := context.Background()
	s := mustOpen(t, sqliteDB(t))
	defer s.Close()
	require.NoError(t, s.Apply(ctx, ports.Batch{Bus: []mq.Change{setCursor("P", "pe", 1)}}))
	require.NoError(t, s.curlog.unmap()) // written with pwrite from here on
	require.NoError(t, s.curlog.f.Close())
	err := s.Apply(ctx, ports.Batch{Bus: []mq.Change{setCursor("P", "pe", 2)}})
	require.ErrorContains(t, err, "cursor log")
	snap, err := s.LoadBus(ctx)
	require.NoError(t, err)
	assert.Equal(t, mq.Cursor{Epoch: "pe", Next: 1}, snap.Cursors["P"])
}

// A cursor too long for a log record (the bus never makes one: peer ids
// and epochs are bounded) goes to the table, and is kept like any other.
func TestCursorLogTooLongGoesToTheTable(t *testing.T) {
	ctx := context.Background()
	cfg := sqliteDB(t)
	s := mustOpen(t, cfg)
	defer s.Close()
	long := strings.Repeat("e", maxCursorRecord)
	require.NoError(t, s.Apply(ctx, ports.Batch{Bus: []mq.Change{setCursor("P", "pe", 1)}}))
	require.NoError(t, s.Apply(ctx, ports.Batch{Bus: []mq.Change{setCursor("Q", "short", 1)}}))
	require.NoError(t, s.Apply(ctx, ports.Batch{Bus: []mq.Change{setCursor("Q", long, 2)}}))
	assert.Equal(t, mq.Cursor{Epoch: long, Next: 2}, tableCursors(t, s)["Q"], "in the table")
	require.NoError(t, s.Apply(ctx, ports.Batch{Bus: []mq.Change{setCursor("P", "pe", 3)}}))
	c := mustOpen(t, crashCopy(t, cfg))
	defer c.Close()
	snap, err := c.LoadBus(ctx)
	require.NoError(t, err)
	assert.Equal(t, mq.Cursor{Epoch: long, Next: 2}, snap.Cursors["Q"])
	assert.Equal(t, mq.Cursor{Epoch: "pe", Next: 3}, snap.Cursors["P"], "records after it are read")
}

// ApplyNow stores a batch of cursors alone at once, in the mapped log, and
// leaves everything else to Apply without storing anything: other changes,
// a record that would cross the rotation point (Apply rotates), a store
// busy in another call (it never waits) and a closed store.
func TestApplyNowTakesOnlyCursorsThatFit(t *testing.T) {
	ctx := context.Background()
	cfg, s := openMapped(t)
	m := storetest.NewModel()
	cursor := func(next int64) ports.Batch { return ports.Batch{Bus: []mq.Change{setCursor("P", "pe", next)}} }

	require.True(t, s.ApplyNow(cursor(1)))
	m.Apply(cursor(1).Bus)
	requireStateAfterCrash(t, m, cfg)

	size := s.curlog.size
	assert.False(t, s.ApplyNow(ports.Batch{Bus: []mq.Change{setCursor("P", "pe", 2), {Kind: mq.SetNextSeq, Peer: "A", Seq: 9}}}),
		"a cursor with another change")
	assert.False(t, s.ApplyNow(ports.Batch{Bus: []mq.Change{setCursor("P", "pe", 2)},
		Groups: []group.Change{{Kind: group.DeleteGroup, GroupID: "0123456789abcdef"}}}), "a cursor with a group change")
	s.mu.Lock()
	assert.False(t, s.ApplyNow(cursor(2)), "the store is busy: no wait")
	s.mu.Unlock()
	s.curlog.rotateAt = s.curlog.size + 4 // the next record crosses it
	gen := s.curlog.gen
	assert.False(t, s.ApplyNow(cursor(2)), "past the rotation point")
	assert.Equal(t, size, s.curlog.size, "nothing was written")
	requireStateAfterCrash(t, m, cfg)

	require.NoError(t, s.Apply(ctx, cursor(2)))
	m.Apply(cursor(2).Bus)
	assert.Equal(t, gen+1, s.curlog.gen, "Apply wrote it and rotated")
	requireStateAfterCrash(t, m, cfg)

	require.NoError(t, s.Close())
	assert.False(t, s.ApplyNow(cursor(3)), "closed")
}
