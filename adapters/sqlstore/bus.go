package sqlstore

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/uptrace/bun"

	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/ports"
)

func init() {
	Register(Migration{Version: 1, Name: "bus tables", Up: createBusTables})
}

// metaKeyEpoch is the _mq_meta key holding the bus epoch.
const metaKeyEpoch = "epoch"

// metaRow is one bus setting (the epoch).
type metaRow struct {
	bun.BaseModel `bun:"table:_mq_meta"`

	Key   string `bun:"key,pk"`
	Value string `bun:"value,notnull"`
}

// outboxRow is one unacknowledged outgoing msg frame. Only the fields of a
// stored msg frame are kept: its type is always "msg", and epoch and floor
// are stamped by the bus at each transmission.
type outboxRow struct {
	bun.BaseModel `bun:"table:_mq_outbox"`

	PeerID  string `bun:"peer_id,pk"`
	Seq     int64  `bun:"seq,pk"`
	MsgID   string `bun:"msg_id,notnull"`
	Topic   string `bun:"topic,notnull"`
	Payload []byte `bun:"payload"`
	Origin  string `bun:"origin,notnull"`
	// CreatedAt is when the row was written, in Unix milliseconds.
	CreatedAt int64 `bun:"created_at,notnull"`
}

// nextSeqRow is the next seq to assign to messages for one destination.
type nextSeqRow struct {
	bun.BaseModel `bun:"table:_mq_next_seq"`

	PeerID  string `bun:"peer_id,pk"`
	NextSeq int64  `bun:"next_seq,notnull"`
}

// cursorRow is the receiver's position in one sender's ordered stream.
type cursorRow struct {
	bun.BaseModel `bun:"table:_mq_cursors"`

	PeerID  string `bun:"peer_id,pk"`
	Epoch   string `bun:"epoch,notnull"`
	NextSeq int64  `bun:"next_seq,notnull"`
}

func createBusTables(ctx context.Context, tx bun.Tx) error {
	for _, m := range []any{(*metaRow)(nil), (*outboxRow)(nil), (*nextSeqRow)(nil), (*cursorRow)(nil)} {
		if _, err := tx.NewCreateTable().Model(m).Exec(ctx); err != nil {
			return err
		}
	}
	return nil
}

// LoadBus implements ports.Store: it reads the whole bus state. The outbox
// is ordered by destination then seq.
func (s *Store) LoadBus(ctx context.Context) (mq.Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return mq.Snapshot{}, fmt.Errorf("sqlstore: load bus: %w", ports.ErrClosed)
	}
	snap := mq.Snapshot{NextSeq: map[mq.PeerID]int64{}, Cursors: map[mq.PeerID]mq.Cursor{}}
	// One consistent view of the four tables. SQLite's transactions are
	// serializable already; Postgres needs to be asked.
	var opts *sql.TxOptions
	if s.driver == DriverPostgres {
		opts = &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true}
	}
	err := s.db.RunInTx(ctx, opts, func(ctx context.Context, tx bun.Tx) error {
		var meta []metaRow
		if err := tx.NewSelect().Model(&meta).Where("key = ?", metaKeyEpoch).Scan(ctx); err != nil {
			return fmt.Errorf("epoch: %w", err)
		}
		if len(meta) > 0 {
			snap.Epoch = meta[0].Value
		}
		var out []outboxRow
		if err := tx.NewSelect().Model(&out).Order("peer_id", "seq").Scan(ctx); err != nil {
			return fmt.Errorf("outbox: %w", err)
		}
		if len(out) > 0 {
			snap.Outbox = make([]mq.OutboxEntry, len(out))
		}
		for i, r := range out {
			snap.Outbox[i] = mq.OutboxEntry{To: mq.PeerID(r.PeerID), Frame: mq.Frame{
				Type:    mq.TypeMsg,
				ID:      r.MsgID,
				Seq:     r.Seq,
				Topic:   r.Topic,
				Payload: json.RawMessage(r.Payload),
				Origin:  mq.PeerID(r.Origin),
			}}
		}
		var seqs []nextSeqRow
		if err := tx.NewSelect().Model(&seqs).Scan(ctx); err != nil {
			return fmt.Errorf("next seq: %w", err)
		}
		for _, r := range seqs {
			snap.NextSeq[mq.PeerID(r.PeerID)] = r.NextSeq
		}
		var curs []cursorRow
		if err := tx.NewSelect().Model(&curs).Scan(ctx); err != nil {
			return fmt.Errorf("cursors: %w", err)
		}
		for _, r := range curs {
			snap.Cursors[mq.PeerID(r.PeerID)] = mq.Cursor{Epoch: r.Epoch, Next: r.NextSeq}
		}
		return nil
	})
	if err != nil {
		return mq.Snapshot{}, fmt.Errorf("sqlstore: load bus: %w", err)
	}
	return snap, nil
}

// Limits on one statement of Apply. bun inlines the values into the SQL text,
// so these bound the statement's size (and SQLite's expression depth for the
// OR-ed delete ranges) rather than a count of bound variables.
const (
	maxInsertRows  = 500
	maxInsertBytes = 4 << 20 // payload and string bytes per INSERT
	maxDeleteTerms = 100
)

// Apply implements ports.Store: it persists the batch, bus and group
// changes, in one transaction, all of it or none of it. The changes are
// coalesced first: for each outbox row, setting, cursor, group, member,
// invite and subscription only the net effect of the batch is written (a
// PutOutbox cancelled by a later DeleteOutbox of the same row is not
// inserted; of several PutGroup of a group the last wins; a DeleteGroup
// also deletes the group's members and invites, not its history), with
// multi-row statements. History rows are appended in order, and each group
// that got some keeps only its newest HistoryLimit rows. A batch holding an
// invalid change (unknown kind, PutOutbox without a msg frame or with a
// frame whose seq is not the change's, a group change without its record or
// whose record's keys are not the change's, a string with a NUL byte or
// invalid UTF-8) is refused as a whole, with an error naming the change.
func (s *Store) Apply(ctx context.Context, b ports.Batch) error {
	p, err := planBus(b.Bus)
	if err != nil {
		return fmt.Errorf("sqlstore: apply: %w", err)
	}
	gp, err := planGroups(b.Groups)
	if err != nil {
		return fmt.Errorf("sqlstore: apply: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("sqlstore: apply: %w", ports.ErrClosed)
	}
	if b.Empty() {
		return nil
	}
	err = s.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		st := &stepper{s: s}
		if err := s.applyPlan(ctx, tx, st, p); err != nil {
			return err
		}
		return s.applyGroupPlan(ctx, tx, st, gp)
	})
	if err != nil {
		// The transaction rolled back, or its commit failed and may or may
		// not have happened: recount history from the database next time.
		s.histCounts = nil
		return fmt.Errorf("sqlstore: apply %d changes: %w", len(b.Bus)+len(b.Groups), err)
	}
	if len(gp.counts) > 0 {
		if s.histCounts == nil {
			s.histCounts = make(map[string]int, len(gp.counts))
		}
		for g, n := range gp.counts {
			s.histCounts[g] = n
		}
	}
	return nil
}

type outKey struct {
	peer mq.PeerID
	seq  int64
}

// busPlan is the net effect of a batch of bus changes. puts and dels are
// disjoint, so their order does not matter.
type busPlan struct {
	epoch    string
	setEpoch bool
	puts     map[outKey]*mq.Frame
	dels     map[outKey]struct{}
	nextSeq  map[mq.PeerID]int64
	cursors  map[mq.PeerID]mq.Cursor
}

// planBus validates cs and folds it, in order, into its net effect. A
// DeleteOutbox is always kept (the row may predate the batch, even when the
// batch put it again); a PutOutbox followed by a DeleteOutbox is dropped.
func planBus(cs []mq.Change) (*busPlan, error) {
	p := &busPlan{}
	for i, c := range cs {
		if err := checkText(string(c.Peer), c.Epoch); err != nil {
			return nil, fmt.Errorf("change %d: %w", i, err)
		}
		switch c.Kind {
		case mq.SetEpoch:
			p.epoch, p.setEpoch = c.Epoch, true
		case mq.PutOutbox:
			if c.Frame == nil {
				return nil, fmt.Errorf("change %d: PutOutbox without a frame", i)
			}
			if c.Frame.Type != mq.TypeMsg {
				return nil, fmt.Errorf("change %d: PutOutbox of a %q frame, want %q", i, c.Frame.Type, mq.TypeMsg)
			}
			if c.Frame.Seq != c.Seq {
				return nil, fmt.Errorf("change %d: PutOutbox seq %d but frame seq %d", i, c.Seq, c.Frame.Seq)
			}
			if err := checkText(c.Frame.ID, c.Frame.Topic, string(c.Frame.Origin)); err != nil {
				return nil, fmt.Errorf("change %d: %w", i, err)
			}
			k := outKey{c.Peer, c.Seq}
			if p.puts == nil {
				p.puts = make(map[outKey]*mq.Frame, len(cs))
			}
			p.puts[k] = c.Frame
			delete(p.dels, k)
		case mq.DeleteOutbox:
			k := outKey{c.Peer, c.Seq}
			if p.dels == nil {
				p.dels = make(map[outKey]struct{}, len(cs))
			}
			p.dels[k] = struct{}{}
			delete(p.puts, k)
		case mq.SetNextSeq:
			if p.nextSeq == nil {
				p.nextSeq = map[mq.PeerID]int64{}
			}
			p.nextSeq[c.Peer] = c.Seq
		case mq.SetCursor:
			if p.cursors == nil {
				p.cursors = map[mq.PeerID]mq.Cursor{}
			}
			p.cursors[c.Peer] = mq.Cursor{Epoch: c.Epoch, Next: c.Seq}
		default:
			return nil, fmt.Errorf("change %d: unknown kind %d", i, c.Kind)
		}
	}
	return p, nil
}

// checkText refuses strings that a SQL text column cannot hold the same way
// on every backend: invalid UTF-8 and NUL bytes (Postgres rejects both, and
// bun will not inline a NUL).
func checkText(ss ...string) error {
	for _, s := range ss {
		if !utf8.ValidString(s) {
			return fmt.Errorf("%q is not valid UTF-8", s)
		}
		if strings.IndexByte(s, 0) >= 0 {
			return fmt.Errorf("%q holds a NUL byte", s)
		}
	}
	return nil
}

// stepper runs the statements of one Apply, calling the test hook after each.
type stepper struct {
	s *Store
	n int
}

// execQuery is what the bun query types have in common here.
type execQuery interface {
	Exec(ctx context.Context, dest ...any) (sql.Result, error)
}

func (st *stepper) exec(ctx context.Context, q execQuery) error {
	if _, err := q.Exec(ctx); err != nil {
		return err
	}
	st.n++
	if st.s.afterStep != nil {
		return st.s.afterStep(st.n)
	}
	return nil
}

func (s *Store) applyPlan(ctx context.Context, tx bun.Tx, st *stepper, p *busPlan) error {
	if p.setEpoch {
		row := metaRow{Key: metaKeyEpoch, Value: p.epoch}
		q := tx.NewInsert().Model(&row).On("CONFLICT (key) DO UPDATE")
		if err := st.exec(ctx, q); err != nil {
			return fmt.Errorf("set epoch: %w", err)
		}
	}
	if err := s.deleteOutbox(ctx, tx, st, p.dels); err != nil {
		return fmt.Errorf("delete outbox: %w", err)
	}
	if err := s.putOutbox(ctx, tx, st, p.puts); err != nil {
		return fmt.Errorf("put outbox: %w", err)
	}
	if len(p.nextSeq) > 0 {
		rows := make([]nextSeqRow, 0, len(p.nextSeq))
		for peer, n := range p.nextSeq {
			rows = append(rows, nextSeqRow{PeerID: string(peer), NextSeq: n})
		}
		slices.SortFunc(rows, func(a, b nextSeqRow) int { return cmp.Compare(a.PeerID, b.PeerID) })
		for chunk := range slices.Chunk(rows, maxInsertRows) {
			q := tx.NewInsert().Model(&chunk).On("CONFLICT (peer_id) DO UPDATE")
			if err := st.exec(ctx, q); err != nil {
				return fmt.Errorf("set next seq: %w", err)
			}
		}
	}
	if len(p.cursors) > 0 {
		rows := make([]cursorRow, 0, len(p.cursors))
		for peer, c := range p.cursors {
			rows = append(rows, cursorRow{PeerID: string(peer), Epoch: c.Epoch, NextSeq: c.Next})
		}
		slices.SortFunc(rows, func(a, b cursorRow) int { return cmp.Compare(a.PeerID, b.PeerID) })
		for chunk := range slices.Chunk(rows, maxInsertRows) {
			q := tx.NewInsert().Model(&chunk).On("CONFLICT (peer_id) DO UPDATE")
			if err := st.exec(ctx, q); err != nil {
				return fmt.Errorf("set cursors: %w", err)
			}
		}
	}
	return nil
}

// seqRange is the rows lo..hi (inclusive) of one destination's outbox.
type seqRange struct {
	peer   mq.PeerID
	lo, hi int64
}

// deleteOutbox deletes the keys of dels, as runs of consecutive seqs: an
// acknowledgement usually removes a contiguous run, which is one range term.
func (s *Store) deleteOutbox(ctx context.Context, tx bun.Tx, st *stepper, dels map[outKey]struct{}) error {
	if len(dels) == 0 {
		return nil
	}
	keys := make([]outKey, 0, len(dels))
	for k := range dels {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, compareKeys)
	var ranges []seqRange
	for _, k := range keys {
		if n := len(ranges); n > 0 && ranges[n-1].peer == k.peer && ranges[n-1].hi+1 == k.seq {
			ranges[n-1].hi = k.seq
			continue
		}
		ranges = append(ranges, seqRange{peer: k.peer, lo: k.seq, hi: k.seq})
	}
	for chunk := range slices.Chunk(ranges, maxDeleteTerms) {
		q := tx.NewDelete().Model((*outboxRow)(nil))
		for _, r := range chunk {
			if r.lo == r.hi {
				q = q.WhereOr("(peer_id = ? AND seq = ?)", string(r.peer), r.lo)
			} else {
				q = q.WhereOr("(peer_id = ? AND seq BETWEEN ? AND ?)", string(r.peer), r.lo, r.hi)
			}
		}
		if err := st.exec(ctx, q); err != nil {
			return err
		}
	}
	return nil
}

// putOutbox upserts the frames of puts with multi-row inserts, chunked by
// row count and bytes.
func (s *Store) putOutbox(ctx context.Context, tx bun.Tx, st *stepper, puts map[outKey]*mq.Frame) error {
	if len(puts) == 0 {
		return nil
	}
	now := s.now().UnixMilli()
	rows := make([]outboxRow, 0, len(puts))
	for k, f := range puts {
		rows = append(rows, outboxRow{
			PeerID:    string(k.peer),
			Seq:       k.seq,
			MsgID:     f.ID,
			Topic:     f.Topic,
			Payload:   f.Payload,
			Origin:    string(f.Origin),
			CreatedAt: now,
		})
	}
	slices.SortFunc(rows, func(a, b outboxRow) int {
		return cmp.Or(cmp.Compare(a.PeerID, b.PeerID), cmp.Compare(a.Seq, b.Seq))
	})
	for start := 0; start < len(rows); {
		end, size := start, 0
		for end < len(rows) && end-start < maxInsertRows {
			r := &rows[end]
			n := 2*len(r.Payload) + len(r.PeerID) + len(r.MsgID) + len(r.Topic) + len(r.Origin) + 64
			if end > start && size+n > maxInsertBytes {
				break
			}
			size += n
			end++
		}
		chunk := rows[start:end]
		q := tx.NewInsert().Model(&chunk).On("CONFLICT (peer_id, seq) DO UPDATE")
		if err := st.exec(ctx, q); err != nil {
			return err
		}
		start = end
	}
	return nil
}

func compareKeys(a, b outKey) int {
	return cmp.Or(cmp.Compare(a.peer, b.peer), cmp.Compare(a.seq, b.seq))
}
