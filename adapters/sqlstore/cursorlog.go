package sqlstore

// The cursor log keeps a receiver's cursors (mq.SetCursor) faster than a
// SQLite transaction can. A batch that changes nothing but cursors — the
// receiver's batch for each message it delivers, the most frequent of all —
// is appended to a file next to the database, instead of a transaction that
// writes a 4 KiB page (and its header) to the write-ahead log; on a
// message's way to the application that is about 15 µs less.
//
// On Linux the file is reserved on disk up to its rotation size (plus
// cursorLogSlack) and mapped into memory: a record is a copy into the
// mapping, no system call. With write(2) each record cost a system call on
// the persister's goroutine, now and then a wait of milliseconds behind the
// file system's journal (an append changes the file's size), and the Go
// scheduler's hand-over of the goroutine's processor while it waited.
// Elsewhere, or when the reservation or the mapping fails, each record is
// written with one pwrite(2). A mapped file's tail past its records is zero:
// a record's length is never zero, so reading stops there, and Close cuts
// the file back to its records.
//
// It keeps the database's guarantee: a write that returned survives a crash
// of the process (both the mapping and write(2) land in the operating
// system's cache; neither is synced), and a reopened store sees every cursor
// written before.
//
// Which is newer, a cursor in the log or one in _mq_cursors? The log's
// records past the point recorded in _mq_meta (key cursor_log, "G:OFFSET":
// the log file's generation and a byte offset in it) are newer than the
// table. Apply keeps that true: a transaction that writes cursors (a batch
// with other changes too) first copies the log's newest cursors into the
// table (a fold) and moves the recorded point to the end of the log, in the
// same transaction; so does Close. When the log passes cursorLogRotateAt
// bytes, and at open, the store folds and starts a new file of the next
// generation: the new file is written, the transaction records "G+1:start",
// then the file is renamed over the old one. A crash between the two leaves
// an old-generation file, whose records are ignored — they were folded.
//
// File: an 8-byte magic, the generation (uint64, little endian), then
// records. A record: crc32c of its body (uint32 LE), the body's length
// (uint32 LE), the body: the peer id and the epoch (each a uvarint length
// and bytes) and the cursor's next seq (varint). Reading stops at the first
// record that is short or fails its checksum (a torn end: nothing valid
// follows it, as records are only appended, and the open that finds it
// folds what came before and starts a new file).

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/uptrace/bun"

	"github.com/goop-p2p/goop/domain/mq"
)

// metaKeyCursorLog is the _mq_meta key of the log's folded point.
const metaKeyCursorLog = "cursor_log"

// cursorLogMagic starts a cursor log file.
const cursorLogMagic = "GOOPCUR1"

// cursorLogHeader is the size of the file header: magic and generation.
const cursorLogHeader = len(cursorLogMagic) + 8

// cursorLogRotateAt is the file size past which Apply folds the log into
// the table and starts a new file.
const cursorLogRotateAt = 1 << 20

// maxCursorRecord bounds a record's body: a longer one is not a cursor.
const maxCursorRecord = 4096

// cursorLogSlack is how far past rotateAt a mapped log reaches: room for the
// batch that crosses rotateAt (the rotation follows it). A batch of cursors
// that does not fit (hundreds of senders in one step) goes to the table.
const cursorLogSlack = 64 << 10

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// cursorLog is the open log of a SQLite store. Guarded by Store.mu.
type cursorLog struct {
	path string
	f    *os.File
	gen  uint64
	// size is the end of the file: where the next record goes.
	size int64
	// latest holds the newest cursor of each peer written to the log since
	// the last fold: these are newer than the table's.
	latest map[mq.PeerID]mq.Cursor
	buf    []byte
	// rotateAt is cursorLogRotateAt (tests lower it).
	rotateAt int64
	// beforeRename, when set (tests only), is called by rotate after the
	// fold committed and before the new file replaces the old; an error
	// stops the rotation there, as a crash would.
	beforeRename func() error
	// failed is set when a rotation failed after its fold committed: the
	// table then records a generation the file on disk does not have, and a
	// record appended to it would be ignored by the next open. Apply refuses
	// to go on.
	failed error
	// mm is the file mapped for writing, rotateAt+cursorLogSlack bytes
	// (nil: records are written with pwrite).
	mm []byte
}

// cursorLogPath is the log file of the database at dbPath.
func cursorLogPath(dbPath string) string { return dbPath + ".cursors" }

// appendCursorRecord appends the record of one cursor to dst (strings as
// the outbox chunks encode them: appendBytes).
func appendCursorRecord(dst []byte, peer mq.PeerID, c mq.Cursor) []byte {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0, 0, 0, 0, 0) // crc and length, set below
	dst = appendBytes(dst, peer)
	dst = appendBytes(dst, c.Epoch)
	dst = binary.AppendVarint(dst, c.Next)
	body := dst[start+8:]
	binary.LittleEndian.PutUint32(dst[start:], crc32.Checksum(body, castagnoli))
	binary.LittleEndian.PutUint32(dst[start+4:], uint32(len(body)))
	return dst
}

// readCursorRecords decodes the records of b (the file after its header)
// into latest, in order, and returns how many bytes of b were valid
// records.
func readCursorRecords(b []byte, latest map[mq.PeerID]mq.Cursor) int {
	off := 0
	for len(b)-off >= 8 {
		sum := binary.LittleEndian.Uint32(b[off:])
		n := int(binary.LittleEndian.Uint32(b[off+4:]))
		if n == 0 || n > maxCursorRecord || n > len(b)-off-8 {
			break // the zero tail of a mapped file, or a torn end
		}
		body := b[off+8 : off+8+n]
		if crc32.Checksum(body, castagnoli) != sum {
			break
		}
		peer, c, ok := decodeCursorBody(body)
		if !ok {
			break
		}
		latest[peer] = c
		off += 8 + n
	}
	return off
}

func decodeCursorBody(b []byte) (mq.PeerID, mq.Cursor, bool) {
	d := chunkDecoder{b: b}
	peer, epoch := string(d.bytes()), string(d.bytes())
	next := d.varint()
	if d.err != nil || len(d.b) > 0 || peer == "" || checkText(peer, epoch) != nil {
		return "", mq.Cursor{}, false
	}
	return mq.PeerID(peer), mq.Cursor{Epoch: epoch, Next: next}, true
}

// parseFolded parses the _mq_meta value "G:OFFSET".
func parseFolded(v string) (gen uint64, off int64, err error) {
	g, o, ok := strings.Cut(v, ":")
	if ok {
		gen, err = strconv.ParseUint(g, 10, 64)
		if err == nil {
			off, err = strconv.ParseInt(o, 10, 64)
		}
	}
	if !ok || err != nil || off < int64(cursorLogHeader) {
		return 0, 0, fmt.Errorf("bad %s %q in _mq_meta", metaKeyCursorLog, v)
	}
	return gen, off, nil
}

func formatFolded(gen uint64, off int64) string {
	return strconv.FormatUint(gen, 10) + ":" + strconv.FormatInt(off, 10)
}

// openCursorLog reads the log of the database at dbPath (if any) and
// returns it with the cursors it holds past the folded point. The caller
// folds them and starts a new file (rotate) before using it.
func (s *Store) openCursorLog(ctx context.Context, dbPath string) (*cursorLog, error) {
	l := &cursorLog{path: cursorLogPath(dbPath), latest: map[mq.PeerID]mq.Cursor{}, rotateAt: cursorLogRotateAt}
	var meta []metaRow
	if err := s.db.NewSelect().Model(&meta).Where("key = ?", metaKeyCursorLog).Scan(ctx); err != nil {
		return nil, fmt.Errorf("sqlstore: cursor log: read %s: %w", metaKeyCursorLog, err)
	}
	foldedGen, foldedOff := uint64(0), int64(cursorLogHeader)
	known := len(meta) > 0
	if known {
		var err error
		if foldedGen, foldedOff, err = parseFolded(meta[0].Value); err != nil {
			return nil, fmt.Errorf("sqlstore: cursor log: %w", err)
		}
	}
	l.gen = foldedGen
	b, err := os.ReadFile(l.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if known { // every open leaves a log file
			s.log.Warn("cursor log missing: the receiver's cursors may be behind, some messages may be delivered again", "file", l.path)
		}
		return l, nil
	case err != nil:
		return nil, fmt.Errorf("sqlstore: cursor log: %w", err)
	case len(b) == 0:
		return l, nil
	case len(b) < cursorLogHeader || string(b[:len(cursorLogMagic)]) != cursorLogMagic:
		return nil, fmt.Errorf("sqlstore: cursor log %s: not a cursor log (bad header)", l.path)
	}
	fileGen := binary.LittleEndian.Uint64(b[len(cursorLogMagic):])
	from := int64(cursorLogHeader)
	switch {
	case fileGen < foldedGen:
		// Left by a rotation that committed its fold and stopped before its
		// rename: every record is in the table.
		return l, nil
	case fileGen == foldedGen:
		from = foldedOff
	default:
		// Newer than the database says (a database restored without its
		// log): its records are the newest cursors there are.
		s.log.Warn("cursor log is newer than the database: using its cursors", "file", l.path, "log_generation", fileGen, "database_generation", foldedGen)
		l.gen = fileGen
	}
	if from > int64(len(b)) {
		s.log.Warn("cursor log shorter than recorded: the receiver's cursors may be behind", "file", l.path)
		return l, nil
	}
	n := readCursorRecords(b[from:], l.latest)
	if rest := b[from+int64(n):]; slices.ContainsFunc(rest, func(c byte) bool { return c != 0 }) {
		s.log.Warn("cursor log: ignoring a torn end", "file", l.path, "bytes", len(rest))
	}
	return l, nil
}

// stage encodes the records of a cursor-only batch into l.buf and reports
// whether the log can take them: always when written with pwrite; when
// mapped, if they fit in the mapping.
func (l *cursorLog) stage(p *busPlan) bool {
	l.buf = l.buf[:0]
	if p.one != nil {
		l.buf = appendCursorRecord(l.buf, p.one.Peer, mq.Cursor{Epoch: p.one.Epoch, Next: p.one.Seq})
	} else {
		for _, peer := range sortedPeers(p.cursors) {
			l.buf = appendCursorRecord(l.buf, peer, p.cursors[peer])
		}
	}
	return l.mm == nil || l.size+int64(len(l.buf)) <= int64(len(l.mm))
}

// appendCursors writes the records staged (see stage) to the log: a copy
// into the mapping, or one write. On a failed write the file is cut back to
// its size before, so that a later record is never written after a partial
// one.
func (s *Store) appendCursors(p *busPlan) error {
	l := s.curlog
	if l.mm != nil {
		copy(l.mm[l.size:], l.buf)
	} else if _, err := l.f.WriteAt(l.buf, l.size); err != nil {
		if terr := l.f.Truncate(l.size); terr != nil {
			return fmt.Errorf("sqlstore: cursor log: %w (and cutting back the partial write: %v)", err, terr)
		}
		return fmt.Errorf("sqlstore: cursor log: %w", err)
	}
	l.size += int64(len(l.buf))
	if p.one != nil {
		l.latest[p.one.Peer] = mq.Cursor{Epoch: p.one.Epoch, Next: p.one.Seq}
	} else {
		for peer, c := range p.cursors {
			l.latest[peer] = c
		}
	}
	if l.buf = l.buf[:0]; cap(l.buf) > 64<<10 {
		l.buf = nil
	}
	return nil
}

// foldInto writes, inside the transaction st, the log's cursors that the
// batch does not set itself (written is the batch's cursors) and records
// gen:off as the folded point. After the commit, folded must be called.
func (s *Store) foldInto(ctx context.Context, st *stepper, written func(mq.PeerID) bool, gen uint64, off int64) error {
	l := s.curlog
	var peers []mq.PeerID
	for _, peer := range sortedPeers(l.latest) {
		if !written(peer) {
			peers = append(peers, peer)
		}
	}
	for start := 0; start < len(peers); start += maxInsertRows {
		chunk := peers[start:min(start+maxInsertRows, len(peers))]
		args := st.argsBuf(3 * len(chunk))
		for _, peer := range chunk {
			c := l.latest[peer]
			args = append(args, string(peer), c.Epoch, c.Next)
		}
		if err := st.execHot(ctx, hotCursor, args, len(chunk), nil); err != nil {
			return fmt.Errorf("fold cursor log: %w", err)
		}
	}
	row := metaRow{Key: metaKeyCursorLog, Value: formatFolded(gen, off)}
	if err := st.exec(ctx, st.tx.NewInsert().Model(&row).On("CONFLICT (key) DO UPDATE")); err != nil {
		return fmt.Errorf("fold cursor log: %w", err)
	}
	return nil
}

// folded records a committed foldInto: the table holds every cursor of the
// log.
func (l *cursorLog) folded() { clear(l.latest) }

// rotate folds the log into the table and starts a new, empty file of the
// next generation (see the top of this file for the order and why).
func (s *Store) rotate(ctx context.Context) error {
	l := s.curlog
	next := l.gen + 1
	tmp := l.path + ".new"
	hdr := binary.LittleEndian.AppendUint64([]byte(cursorLogMagic), next)
	if err := os.WriteFile(tmp, hdr, 0o600); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("sqlstore: cursor log: %w", err)
	}
	if err := s.foldTx(ctx, next, int64(cursorLogHeader)); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("sqlstore: cursor log: rotate: %w", err)
	}
	var err error
	// Both files are closed around the rename, which Windows refuses for
	// an open file; the new one is then opened for appending.
	if l.beforeRename != nil {
		err = l.beforeRename()
	}
	if err == nil {
		err = l.closeFile()
	}
	if err == nil {
		err = os.Rename(tmp, l.path)
	}
	var f *os.File
	if err == nil {
		f, err = os.OpenFile(l.path, os.O_RDWR, 0)
	}
	if err != nil {
		l.failed = fmt.Errorf("sqlstore: cursor log: rotate: %w", err)
		return l.failed
	}
	l.f, l.gen, l.size = f, next, int64(cursorLogHeader)
	l.folded()
	l.mapFile(s.log)
	return nil
}

// mapFile maps the new file of l for writing, if this system can; if not,
// records are written with pwrite.
func (l *cursorLog) mapFile(log *slog.Logger) {
	m, err := mapCursorLog(l.f, l.rotateAt+cursorLogSlack)
	if err != nil {
		log.Debug("cursor log: written with pwrite", "file", l.path, "err", err)
		return
	}
	l.mm = m
}

// foldTx folds every cursor of the log into the table in a transaction of
// its own, recording gen:off as the folded point.
func (s *Store) foldTx(ctx context.Context, gen uint64, off int64) error {
	if err := s.hot.prepare(ctx, s.db.DB, false, 1<<hotCursor); err != nil {
		return err
	}
	return s.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		return s.foldInto(ctx, &stepper{s: s, tx: tx}, func(mq.PeerID) bool { return false }, gen, off)
	})
}

// closeLog folds what the log holds, so that data.db alone holds every
// cursor once the store is closed, and closes the file. The next open
// starts a new file.
func (s *Store) closeLog(ctx context.Context) error {
	l := s.curlog
	var err error
	if l.failed == nil && len(l.latest) > 0 {
		if err = s.foldTx(ctx, l.gen, l.size); err == nil {
			l.folded()
		} else {
			err = fmt.Errorf("sqlstore: cursor log: fold: %w", err)
		}
	}
	// The zero tail of a mapped file goes: the file holds its records.
	var cut error
	if l.mm != nil && l.f != nil {
		cut = l.unmap()
		if cut == nil {
			cut = l.f.Truncate(l.size)
		}
		if cut != nil {
			cut = fmt.Errorf("sqlstore: cursor log: cut back: %w", cut)
		}
	}
	return errors.Join(err, cut, l.closeFile())
}

// unmap drops the mapping of the log's file (if any).
func (l *cursorLog) unmap() error {
	if l.mm == nil {
		return nil
	}
	err := unmapCursorLog(l.mm)
	l.mm = nil
	return err
}

// closeFile closes the log's file, unmapping it first.
func (l *cursorLog) closeFile() error {
	if l.f == nil {
		return nil
	}
	err := errors.Join(l.unmap(), l.f.Close())
	l.f = nil
	return err
}
