package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/uptrace/bun"
)

// The write hot path. The statements Apply runs for the node's frequent
// changes (cursor and next-seq upserts, outbox inserts, outbox range deletes,
// history appends and pruning) are not built by bun, which inlines the
// values into the SQL text and so makes the database parse every statement
// anew: they are prepared once per Store, with bound parameters, for a few
// row counts each (see stmtSizes), and n rows run as the fewest statements
// of those sizes. A batch that is one such statement runs without a
// transaction around it (see Store.Apply). The other writes of Apply (rare)
// and all reads keep bun.

// hotKind names a prepared statement family of the hot path.
type hotKind uint8

const (
	hotCursor   hotKind = iota // upsert _mq_cursors rows
	hotNextSeq                 // upsert _mq_next_seq rows
	hotPutChunk                // insert _mq_outbox_chunks rows
	hotDelChunk                // delete _mq_outbox_chunks rows by id
	hotPutDead                 // upsert _mq_outbox_dead rows
	hotDelDead                 // delete _mq_outbox_dead rows by chunk id
	hotHistory                 // insert _group_history rows
	hotPrune                   // delete a group's oldest _group_history rows
	numHotKinds
)

// hotSpec describes the SQL of one family. For an insert, cols are the
// bound columns of each row, in bind order, and conflict the key an upsert
// replaces on (every other column is then overwritten); for the deletes,
// cols name the values of each term (see hotSQL).
type hotSpec struct {
	name     string
	table    string
	cols     []string
	conflict []string
	// maxRows caps the rows (terms) of one statement.
	maxRows int
	// model is the bun model of the table (tests check the columns).
	model any
	// deleteIn: the statement deletes the rows whose cols[0] is one of the
	// n values.
	deleteIn bool
}

var hotSpecs = [numHotKinds]hotSpec{
	hotCursor: {name: "set cursors", table: "_mq_cursors", cols: []string{"peer_id", "epoch", "next_seq"},
		conflict: []string{"peer_id"}, maxRows: maxInsertRows, model: (*cursorRow)(nil)},
	hotNextSeq: {name: "set next seq", table: "_mq_next_seq", cols: []string{"peer_id", "next_seq"},
		conflict: []string{"peer_id"}, maxRows: maxInsertRows, model: (*nextSeqRow)(nil)},
	hotPutChunk: {name: "put outbox chunks", table: "_mq_outbox_chunks", cols: []string{"id", "n", "frames", "created_at"},
		conflict: []string{"id"}, maxRows: maxInsertRows, model: (*outboxChunkRow)(nil)},
	hotDelChunk: {name: "delete outbox chunks", table: "_mq_outbox_chunks", cols: []string{"id"},
		maxRows: maxDeleteTerms, model: (*outboxChunkRow)(nil), deleteIn: true},
	hotPutDead: {name: "put outbox dead marks", table: "_mq_outbox_dead", cols: []string{"chunk_id", "dead"},
		conflict: []string{"chunk_id"}, maxRows: maxInsertRows, model: (*outboxDeadRow)(nil)},
	hotDelDead: {name: "delete outbox dead marks", table: "_mq_outbox_dead", cols: []string{"chunk_id"},
		maxRows: maxDeleteTerms, model: (*outboxDeadRow)(nil), deleteIn: true},
	hotHistory: {name: "history", table: "_group_history", cols: []string{"group_id", "from_peer", "type", "payload", "at"},
		maxRows: maxInsertRows, model: (*historyRow)(nil)},
	hotPrune: {name: "prune history", table: "_group_history", cols: []string{"group_id", "group_id", "offset"},
		maxRows: 1, model: (*historyRow)(nil)},
}

// stmtSizes are the row counts a hot statement is prepared for, ascending
// from 1. On Postgres every statement is a round trip, so rows are sent
// together. On SQLite a statement is a function call, and one that writes
// several rows inside a transaction must keep a statement journal (a copy of
// every page it changes, so that it can be undone alone), which costs more
// than it saves: single-row statements are the fastest there (a 256-row
// outbox batch took 1.5 ms of CPU as 256 statements, 2.6 ms as 64 of 4 rows,
// 2.8 ms with 256-row statements).
func stmtSizes(driver string) []int {
	if driver == DriverPostgres {
		return []int{1, 4, 16, 64, 256}
	}
	return []int{1}
}

const (
	// maxHotSizes bounds the length of stmtSizes.
	maxHotSizes = 5
	// maxKeptArgs bounds the buffer of bound values kept between Applies.
	maxKeptArgs = 4096
)

// hotSQL is the statement of kind for n rows (terms); pg selects $n
// placeholders instead of ?.
func hotSQL(kind hotKind, n int, pg bool) string {
	sp := &hotSpecs[kind]
	var b strings.Builder
	arg := 0
	ph := func() {
		arg++
		if pg {
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(arg))
		} else {
			b.WriteByte('?')
		}
	}
	quoted := func(cols []string) {
		for i, c := range cols {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(strconv.Quote(c))
		}
	}
	if kind == hotPrune {
		// The id of the newest row to drop is the (offset+1)-th oldest of
		// the group: the index is walked from the oldest end over the
		// dropped rows only.
		b.WriteString(`DELETE FROM "_group_history" WHERE "group_id" = `)
		ph()
		b.WriteString(` AND "id" <= (SELECT "id" FROM "_group_history" WHERE "group_id" = `)
		ph()
		b.WriteString(` ORDER BY "id" ASC LIMIT 1 OFFSET `)
		ph()
		b.WriteByte(')')
		return b.String()
	}
	if sp.deleteIn {
		b.WriteString("DELETE FROM " + strconv.Quote(sp.table) + " WHERE " + strconv.Quote(sp.cols[0]) + " IN (")
		for i := 0; i < n; i++ {
			if i > 0 {
				b.WriteString(", ")
			}
			ph()
		}
		b.WriteByte(')')
		return b.String()
	}
	b.WriteString("INSERT INTO ")
	b.WriteString(strconv.Quote(sp.table))
	b.WriteString(" (")
	quoted(sp.cols)
	b.WriteString(") VALUES ")
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('(')
		for j := range sp.cols {
			if j > 0 {
				b.WriteString(", ")
			}
			ph()
		}
		b.WriteByte(')')
	}
	if len(sp.conflict) > 0 {
		b.WriteString(" ON CONFLICT (")
		quoted(sp.conflict)
		b.WriteString(") DO UPDATE SET ")
		first := true
		for _, c := range sp.cols[len(sp.conflict):] {
			if !first {
				b.WriteString(", ")
			}
			first = false
			q := strconv.Quote(c)
			b.WriteString(q + " = EXCLUDED." + q)
		}
	}
	return b.String()
}

// hotStmts are the prepared statements of a Store, prepared on its
// database (not on a transaction) the first time Apply needs a family, and
// bound to each Apply's transaction with Tx.StmtContext (or run as they are
// by a batch of one statement). Guarded by Store.mu.
type hotStmts struct {
	sizes []int // at most maxHotSizes
	// args is the buffer of bound values (see stepper.argsBuf).
	args []any
	// stmts[kind][i] is kind's statement for sizes[i] rows (nil when the
	// size is over the kind's maxRows); a nil stmts[kind] is not prepared.
	stmts [numHotKinds][]*sql.Stmt
}

// prepare prepares the families of kinds (a bit set of 1<<kind) not yet
// prepared. It must not run inside a transaction: on SQLite the only
// connection would be taken.
func (h *hotStmts) prepare(ctx context.Context, db *sql.DB, pg bool, kinds uint) error {
	for k := hotKind(0); k < numHotKinds; k++ {
		if kinds&(1<<k) == 0 || h.stmts[k] != nil {
			continue
		}
		stmts := make([]*sql.Stmt, len(h.sizes))
		for i, n := range h.sizes {
			if n > hotSpecs[k].maxRows {
				break
			}
			st, err := db.PrepareContext(ctx, hotSQL(k, n, pg))
			if err != nil {
				closeStmts(stmts)
				return fmt.Errorf("prepare %s (%d rows): %w", hotSpecs[k].name, n, err)
			}
			stmts[i] = st
		}
		h.stmts[k] = stmts
	}
	return nil
}

// close closes every prepared statement.
func (h *hotStmts) close() error {
	var errs []error
	for k := range h.stmts {
		errs = append(errs, closeStmts(h.stmts[k]))
		h.stmts[k] = nil
	}
	return errors.Join(errs...)
}

func closeStmts(stmts []*sql.Stmt) error {
	var errs []error
	for _, st := range stmts {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	return errors.Join(errs...)
}

// stepper runs the statements of one Apply in its transaction, calling the
// test hook after each step: a bun statement, or the statements of one hot
// family.
type stepper struct {
	s *Store
	// tx is the transaction; a zero tx runs a single hot statement alone
	// (see Apply).
	tx bun.Tx
	n  int
	// txStmts[kind][i] is hotStmts.stmts[kind][i] bound to tx, once used.
	txStmts [numHotKinds][maxHotSizes]*sql.Stmt
}

// execQuery is what the bun query types have in common here.
type execQuery interface {
	Exec(ctx context.Context, dest ...any) (sql.Result, error)
}

// exec runs a bun statement as one step.
func (st *stepper) exec(ctx context.Context, q execQuery) error {
	if _, err := q.Exec(ctx); err != nil {
		return err
	}
	return st.step()
}

// step ends a step.
func (st *stepper) step() error {
	st.n++
	if st.s.afterStep != nil {
		return st.s.afterStep(st.n)
	}
	return nil
}

// argsBuf returns the Store's empty buffer of bound values with room for n
// values. execHot clears it after use; it is kept between Applies while it
// is small.
func (st *stepper) argsBuf(n int) []any {
	h := &st.s.hot
	if cap(h.args) < n {
		h.args = make([]any, 0, n)
	}
	return h.args[:0]
}

// strArg returns v as a bound value, reusing *last when it holds the same
// string: consecutive rows often share their peer, group or topic, and each
// conversion to an interface allocates.
func strArg(last *any, v string) any {
	if s, ok := (*last).(string); ok && s == v {
		return *last
	}
	*last = v
	return *last
}

// nextChunk returns the index in sizes (ascending from 1) of the statement
// for the next rows, from start, of n: the largest size within the rows that
// fit in about maxInsertBytes as told by size (the estimated bytes of row i;
// nil for no bound). A row bigger than that goes alone.
func nextChunk(sizes []int, start, n int, size func(i int) int) int {
	fit := min(n-start, sizes[len(sizes)-1])
	if size != nil {
		total := 0
		for i := start; i < start+fit; i++ {
			total += size(i)
			if i > start && total > maxInsertBytes {
				fit = i - start
				break
			}
		}
	}
	idx := 0
	for i, sz := range sizes {
		if sz <= fit {
			idx = i
		}
	}
	return idx
}

// execHot runs kind's statements, as one step, over the n rows whose bound
// values are args (the same number for each row, in order). A statement
// holds as many rows as the largest prepared size allows, within about
// maxInsertBytes when size (the estimated bytes of row i) is not nil.
func (st *stepper) execHot(ctx context.Context, kind hotKind, args []any, n int, size func(i int) int) error {
	if n == 0 {
		return nil
	}
	h := &st.s.hot
	defer func() {
		clear(args) // drop the references to the batch
		if cap(h.args) > maxKeptArgs {
			h.args = nil
		}
	}()
	stmts := h.stmts[kind]
	usable := 0 // the prepared sizes are a prefix of h.sizes
	for usable < len(stmts) && stmts[usable] != nil {
		usable++
	}
	if usable == 0 {
		return fmt.Errorf("%s: statements not prepared", hotSpecs[kind].name)
	}
	cols := len(args) / n
	for start := 0; start < n; {
		idx := nextChunk(h.sizes[:usable], start, n, size)
		k := h.sizes[idx]
		ts := st.txStmts[kind][idx]
		if ts == nil {
			ts = stmts[idx] // no transaction: a statement alone
			if st.tx.Tx != nil {
				ts = st.tx.Tx.StmtContext(ctx, ts)
			}
			st.txStmts[kind][idx] = ts
		}
		if _, err := ts.ExecContext(ctx, args[start*cols:(start+k)*cols]...); err != nil {
			return err
		}
		start += k
	}
	return st.step()
}
