package sqlstore

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/binary"
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
	var loaded *outboxIndex
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
		out, ix, err := loadOutbox(ctx, tx)
		if err != nil {
			return err
		}
		snap.Outbox, loaded = out, ix
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
	if s.curlog != nil {
		// The log's cursors are newer than the table's (see cursorlog.go).
		for peer, c := range s.curlog.latest {
			snap.Cursors[peer] = c
		}
	}
	s.outbox = loaded
	return snap, nil
}

// Limits on one statement of Apply: they bound the statement's size (bun
// inlines the values into the SQL text; the hot path binds them) and
// SQLite's expression depth for the OR-ed delete ranges.
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
// also deletes the group's members and invites, not its history). The
// frequent statements (cursors, next seqs, outbox rows, history) are
// prepared once with bound parameters (see hot.go); the others are
// multi-row statements. History rows are appended in order, and each group
// that got some keeps only its newest HistoryLimit rows. A batch holding an
// invalid change (unknown kind, PutOutbox without a msg frame or with a
// frame whose seq is not the change's, a group change without its record or
// whose record's keys are not the change's, a string with a NUL byte or
// invalid UTF-8) is refused as a whole, with an error naming the change.
func (s *Store) Apply(ctx context.Context, b ports.Batch) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	// The plans are the store's, reused (a receiver applies one cursor per
	// message), and let go of the batch when done.
	p, gp := &s.plans.bus, &s.plans.groups
	defer func() { *p, *gp = busPlan{}, groupPlan{} }()
	if err := planBus(p, b.Bus); err != nil {
		return fmt.Errorf("sqlstore: apply: %w", err)
	}
	if err := planGroups(gp, b.Groups); err != nil {
		return fmt.Errorf("sqlstore: apply: %w", err)
	}
	if s.closed {
		return fmt.Errorf("sqlstore: apply: %w", ports.ErrClosed)
	}
	if b.Empty() {
		return nil
	}
	if s.curlog != nil && s.curlog.failed != nil {
		return fmt.Errorf("sqlstore: apply: %w", s.curlog.failed)
	}
	if len(p.putAt) > 0 || len(p.dels) > 0 {
		ix, err := s.outboxIndex(ctx)
		if err != nil {
			return fmt.Errorf("sqlstore: apply: %w", err)
		}
		p.out = stageOutbox(ix, p.puts, p.dels)
	}
	ob := p.out
	kinds := p.hotKinds() | gp.hotKinds()
	if ob != nil {
		kinds |= ob.hotKinds()
	}
	if err := s.hot.prepare(ctx, s.db.DB, s.driver == DriverPostgres, kinds); err != nil {
		return fmt.Errorf("sqlstore: apply: %w", err)
	}
	alone := gp.empty() && len(b.Peers) == 0 && s.afterStep == nil
	var err error
	switch {
	case alone && s.logTakes(p):
		// A receiver's cursors alone: appended to the cursor log.
		err = s.appendCursors(p)
		if err == nil && s.curlog.size > s.curlog.rotateAt {
			if rerr := s.rotate(ctx); rerr != nil {
				if s.curlog.failed != nil {
					err = rerr
				} else {
					// Nothing changed: the log goes on growing until a
					// later rotation succeeds.
					s.log.Warn("cursor log: cannot rotate", "err", rerr)
				}
			}
		}
	case ob != nil && ob.statements() == 0 && p.onlyOutbox() && alone:
		// Deletions of messages never stored, or already gone: nothing to do.
	case ob != nil && ob.statements() == 1 && p.onlyOutbox() && alone:
		// One outbox row to write or delete: a statement alone, as below.
		err = ob.exec(ctx, &stepper{s: s}, s.now().UnixMilli())
	case p.one != nil && alone && !(s.curlog != nil && p.writesCursors()):
		// A batch of one statement needs no transaction around it: the
		// statement alone is all or nothing, and takes the same write lock
		// (with the same busy wait) as BEGIN IMMEDIATE. Skipping BEGIN and
		// COMMIT spares their work (a goroutine per database/sql
		// transaction, two statements; two round trips on Postgres). The
		// test hook needs a transaction to fail. A cursor written to the
		// table next to a cursor log needs the transaction's fold.
		err = s.applyOne(ctx, &stepper{s: s}, p.one)
	default:
		err = s.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
			st := &stepper{s: s, tx: tx}
			if err := s.applyPlan(ctx, st, p); err != nil {
				return err
			}
			if err := s.applyGroupPlan(ctx, st, gp); err != nil {
				return err
			}
			return s.applyPeers(ctx, tx, b.Peers)
		})
	}
	if err != nil {
		// The transaction rolled back, or its commit failed and may or may
		// not have happened: recount history and reload the outbox index from
		// the database next time.
		s.histCounts = nil
		s.outbox = nil
		return fmt.Errorf("sqlstore: apply %d changes: %w", len(b.Bus)+len(b.Groups), err)
	}
	if ob != nil {
		ob.install()
	}
	if p.foldedLog {
		s.curlog.folded()
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

// ApplyNow implements ports.QuickStore: a batch of cursors alone, when the
// cursor log is mapped and they fit before its rotation point, is copied
// into the log at once; anything else (or a store busy in another call)
// is left to Apply.
func (s *Store) ApplyNow(b ports.Batch) bool {
	if len(b.Groups) > 0 || len(b.Peers) > 0 || len(b.Bus) == 0 {
		return false
	}
	// Anything but cursors is refused before it is validated and planned:
	// Apply does that.
	for i := range b.Bus {
		if b.Bus[i].Kind != mq.SetCursor {
			return false
		}
	}
	if !s.mu.TryLock() {
		return false
	}
	defer s.mu.Unlock()
	l := s.curlog
	if s.closed || l == nil || l.mm == nil || l.failed != nil || s.afterStep != nil {
		return false
	}
	p := &s.plans.bus
	defer func() { *p = busPlan{} }()
	if planBus(p, b.Bus) != nil || !s.logTakes(p) || l.size+int64(len(l.buf)) > l.rotateAt {
		return false
	}
	// The copy cannot fail: appendCursors writes to the mapping.
	return s.appendCursors(p) == nil
}

// logTakes reports whether p (a batch with no other changes) goes to the
// cursor log: cursors alone, each fitting a record, staged (see
// cursorLog.stage) and fitting the log.
func (s *Store) logTakes(p *busPlan) bool {
	return s.curlog != nil && p.onlyCursors() && p.cursorsFitLog() && s.curlog.stage(p)
}

type outKey struct {
	peer mq.PeerID
	seq  int64
}

// busPlan is the net effect of a batch of bus changes. puts and dels are
// disjoint, so their order does not matter.
type busPlan struct {
	// one, when set, is the batch's only change (a SetCursor or a
	// SetNextSeq), and the other fields are empty.
	one *mq.Change
	// out is the outbox part, staged by Apply from puts and dels.
	out *outboxStage

	epoch    string
	setEpoch bool
	// puts are the messages put, in the batch's order (f nil: deleted
	// later in the batch); putAt indexes the live ones by key.
	puts    []chunkEntry
	putAt   map[outKey]int
	dels    map[outKey]struct{}
	nextSeq map[mq.PeerID]int64
	cursors map[mq.PeerID]mq.Cursor
	// foldedLog: the transaction folded the cursor log (see maybeFold).
	foldedLog bool
}

// planBus validates cs and folds it, in order, into its net effect. A
// DeleteOutbox is always kept (the row may predate the batch, even when the
// batch put it again); a PutOutbox followed by a DeleteOutbox is dropped.
func planBus(p *busPlan, cs []mq.Change) error {
	for i := range cs {
		if err := checkBusChange(&cs[i]); err != nil {
			return fmt.Errorf("change %d: %w", i, err)
		}
	}
	if len(cs) == 1 && (cs[0].Kind == mq.SetCursor || cs[0].Kind == mq.SetNextSeq) {
		// The most frequent batch of a receiver (its cursor) has nothing to
		// fold.
		p.one = &cs[0]
		return nil
	}
	for i := range cs {
		c := &cs[i]
		switch c.Kind {
		case mq.SetEpoch:
			p.epoch, p.setEpoch = c.Epoch, true
		case mq.PutOutbox:
			k := outKey{c.Peer, c.Seq}
			if i, ok := p.putAt[k]; ok {
				p.puts[i].f = c.Frame
			} else {
				if p.putAt == nil {
					p.putAt = make(map[outKey]int, len(cs))
				}
				p.putAt[k] = len(p.puts)
				p.puts = append(p.puts, chunkEntry{peer: c.Peer, f: c.Frame})
			}
			delete(p.dels, k)
		case mq.DeleteOutbox:
			k := outKey{c.Peer, c.Seq}
			if p.dels == nil {
				p.dels = make(map[outKey]struct{}, len(cs))
			}
			p.dels[k] = struct{}{}
			if i, ok := p.putAt[k]; ok {
				p.puts[i].f = nil
				delete(p.putAt, k)
			}
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
		}
	}
	return nil
}

// checkBusChange refuses a change the store cannot keep faithfully: an
// unknown kind, a PutOutbox without a msg frame or with a frame whose seq is
// not the change's, a string with a NUL byte or invalid UTF-8.
func checkBusChange(c *mq.Change) error {
	if err := checkText(string(c.Peer), c.Epoch); err != nil {
		return err
	}
	switch c.Kind {
	case mq.SetEpoch, mq.DeleteOutbox, mq.SetNextSeq, mq.SetCursor:
	case mq.PutOutbox:
		if c.Frame == nil {
			return fmt.Errorf("PutOutbox without a frame")
		}
		if c.Frame.Type != mq.TypeMsg {
			return fmt.Errorf("PutOutbox of a %q frame, want %q", c.Frame.Type, mq.TypeMsg)
		}
		if c.Frame.Seq != c.Seq {
			return fmt.Errorf("PutOutbox seq %d but frame seq %d", c.Seq, c.Frame.Seq)
		}
		if err := checkText(c.Frame.ID, c.Frame.Topic, string(c.Frame.Origin)); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown kind %d", c.Kind)
	}
	return nil
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

// writesCursors reports whether p sets a cursor.
func (p *busPlan) writesCursors() bool {
	return (p.one != nil && p.one.Kind == mq.SetCursor) || len(p.cursors) > 0
}

// onlyCursors reports whether p changes nothing but cursors.
func (p *busPlan) onlyCursors() bool {
	if p.one != nil {
		return p.one.Kind == mq.SetCursor
	}
	return len(p.cursors) > 0 && !p.setEpoch && len(p.nextSeq) == 0 && len(p.puts) == 0 && len(p.dels) == 0
}

// cursorsFitLog reports whether every cursor of p fits in a cursor log
// record (a longer one, which the bus never makes, goes to the table).
func (p *busPlan) cursorsFitLog() bool {
	fits := func(peer mq.PeerID, epoch string) bool {
		return len(peer)+len(epoch)+2*binary.MaxVarintLen64 <= maxCursorRecord
	}
	if p.one != nil {
		return fits(p.one.Peer, p.one.Epoch)
	}
	for peer, c := range p.cursors {
		if !fits(peer, c.Epoch) {
			return false
		}
	}
	return true
}

// onlyOutbox reports whether p changes nothing but the outbox.
func (p *busPlan) onlyOutbox() bool {
	return p.one == nil && !p.setEpoch && len(p.nextSeq) == 0 && len(p.cursors) == 0
}

// hotKinds is the set (1<<kind) of hot statement families p needs.
func (p *busPlan) hotKinds() uint {
	if p.one != nil {
		switch p.one.Kind {
		case mq.SetCursor:
			return 1 << hotCursor
		case mq.SetNextSeq:
			return 1 << hotNextSeq
		}
	}
	var k uint
	if len(p.cursors) > 0 {
		k |= 1 << hotCursor
	}
	if len(p.nextSeq) > 0 {
		k |= 1 << hotNextSeq
	}
	return k
}

func (s *Store) applyPlan(ctx context.Context, st *stepper, p *busPlan) error {
	if p.one != nil {
		if err := s.applyOne(ctx, st, p.one); err != nil {
			return err
		}
		return s.maybeFold(ctx, st, p)
	}
	if p.setEpoch {
		row := metaRow{Key: metaKeyEpoch, Value: p.epoch}
		q := st.tx.NewInsert().Model(&row).On("CONFLICT (key) DO UPDATE")
		if err := st.exec(ctx, q); err != nil {
			return fmt.Errorf("set epoch: %w", err)
		}
	}
	if p.out != nil {
		if err := p.out.exec(ctx, st, s.now().UnixMilli()); err != nil {
			return err
		}
	}
	if len(p.nextSeq) > 0 {
		peers := sortedPeers(p.nextSeq)
		args := st.argsBuf(2 * len(peers))
		for _, peer := range peers {
			args = append(args, string(peer), p.nextSeq[peer])
		}
		if err := st.execHot(ctx, hotNextSeq, args, len(peers), nil); err != nil {
			return fmt.Errorf("set next seq: %w", err)
		}
	}
	if len(p.cursors) > 0 {
		peers := sortedPeers(p.cursors)
		args := st.argsBuf(3 * len(peers))
		for _, peer := range peers {
			c := p.cursors[peer]
			args = append(args, string(peer), c.Epoch, c.Next)
		}
		if err := st.execHot(ctx, hotCursor, args, len(peers), nil); err != nil {
			return fmt.Errorf("set cursors: %w", err)
		}
	}
	return s.maybeFold(ctx, st, p)
}

// maybeFold folds the cursor log into the table when p writes cursors to
// the table (see cursorlog.go: the log's cursors must stay newer than the
// table's).
func (s *Store) maybeFold(ctx context.Context, st *stepper, p *busPlan) error {
	if s.curlog == nil || len(s.curlog.latest) == 0 || !p.writesCursors() {
		return nil
	}
	err := s.foldInto(ctx, st, func(peer mq.PeerID) bool {
		if p.one != nil {
			return p.one.Peer == peer
		}
		_, ok := p.cursors[peer]
		return ok
	}, s.curlog.gen, s.curlog.size)
	p.foldedLog = err == nil
	return err
}

// applyOne writes the single change c of a batch (not a SetEpoch) as the
// general path would, without building its maps and sorted rows.
func (s *Store) applyOne(ctx context.Context, st *stepper, c *mq.Change) error {
	switch c.Kind {
	case mq.SetCursor:
		if err := st.execHot(ctx, hotCursor, append(st.argsBuf(3), string(c.Peer), c.Epoch, c.Seq), 1, nil); err != nil {
			return fmt.Errorf("set cursors: %w", err)
		}
	case mq.SetNextSeq:
		if err := st.execHot(ctx, hotNextSeq, append(st.argsBuf(2), string(c.Peer), c.Seq), 1, nil); err != nil {
			return fmt.Errorf("set next seq: %w", err)
		}
	default:
		return fmt.Errorf("change of kind %d cannot be applied alone", c.Kind)
	}
	return nil
}

// sortedPeers returns the keys of m in order.
func sortedPeers[V any](m map[mq.PeerID]V) []mq.PeerID {
	peers := make([]mq.PeerID, 0, len(m))
	for peer := range m {
		peers = append(peers, peer)
	}
	slices.Sort(peers)
	return peers
}

func compareKeys(a, b outKey) int {
	return cmp.Or(cmp.Compare(a.peer, b.peer), cmp.Compare(a.seq, b.seq))
}
