package sqlstore

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/uptrace/bun"

	"github.com/goop-p2p/goop/domain/mq"
)

// The outbox is stored in chunks. Each Apply writes the messages it puts as
// one row of _mq_outbox_chunks (a few for a very large batch) holding a
// compact encoding of all of them, instead of a row per message: a node that
// sends 100,000 messages a second, or a group host that fans one message out
// to 50 members, writes a handful of rows a second instead of a B-tree entry
// (two, with the key's index) per message, and a payload relayed to many
// members is stored once per chunk.
//
// A DeleteOutbox marks its message dead in an in-memory index of the chunks
// (loaded with the outbox). A chunk whose messages are all dead is deleted;
// one that still holds live messages records which are dead in
// _mq_outbox_dead (a bitmap, one small row per chunk), so that a reload
// returns exactly the live messages, as a row per message did. The index
// relies on this Store being the only writer of the two tables.

func init() {
	Register(Migration{Version: 4, Name: "chunked outbox", Up: chunkOutbox})
}

// outboxChunkRow is one chunk of outgoing msg frames (see appendChunk).
type outboxChunkRow struct {
	bun.BaseModel `bun:"table:_mq_outbox_chunks"`

	ID int64 `bun:"id,pk"`
	// N is the number of messages in Frames.
	N      int64  `bun:"n,notnull"`
	Frames []byte `bun:"frames,notnull"`
	// CreatedAt is when the chunk was written, in Unix milliseconds.
	CreatedAt int64 `bun:"created_at,notnull"`
}

// outboxDeadRow marks the dead (acknowledged or abandoned) messages of a
// chunk that still has live ones: bit i (byte i/8, bit i%8) is message i.
type outboxDeadRow struct {
	bun.BaseModel `bun:"table:_mq_outbox_dead"`

	ChunkID int64  `bun:"chunk_id,pk"`
	Dead    []byte `bun:"dead,notnull"`
}

// Bounds of one chunk: Apply splits larger batches.
const (
	maxChunkEntries = 4096
	maxChunkBytes   = 4 << 20
)

// chunkOutbox is migration 4: it moves the rows of _mq_outbox (one per
// message) into chunks and drops the table.
func chunkOutbox(ctx context.Context, tx bun.Tx) error {
	for _, m := range []any{(*outboxChunkRow)(nil), (*outboxDeadRow)(nil)} {
		if _, err := tx.NewCreateTable().Model(m).Exec(ctx); err != nil {
			return err
		}
	}
	var old []outboxRow
	if err := tx.NewSelect().Model(&old).Order("peer_id", "seq").Scan(ctx); err != nil {
		return fmt.Errorf("read _mq_outbox: %w", err)
	}
	es := make([]chunkEntry, len(old))
	frames := make([]mq.Frame, len(old))
	for i, r := range old {
		frames[i] = mq.Frame{Type: mq.TypeMsg, ID: r.MsgID, Seq: r.Seq, Topic: r.Topic, Payload: r.Payload, Origin: mq.PeerID(r.Origin)}
		es[i] = chunkEntry{peer: mq.PeerID(r.PeerID), f: &frames[i]}
	}
	var id int64
	for start := 0; start < len(es); {
		end := chunkEnd(es, start)
		id++
		row := outboxChunkRow{ID: id, N: int64(end - start), Frames: appendChunk(nil, es[start:end]), CreatedAt: old[start].CreatedAt}
		if _, err := tx.NewInsert().Model(&row).Exec(ctx); err != nil {
			return fmt.Errorf("write chunk: %w", err)
		}
		start = end
	}
	if _, err := tx.NewDropTable().Model((*outboxRow)(nil)).Exec(ctx); err != nil {
		return fmt.Errorf("drop _mq_outbox: %w", err)
	}
	return nil
}

// chunkEntry is one message of a chunk.
type chunkEntry struct {
	peer mq.PeerID
	f    *mq.Frame
}

func (e chunkEntry) key() outKey { return outKey{e.peer, e.f.Seq} }

// chunkEnd returns the end of the chunk that starts at es[start]: at most
// maxChunkEntries messages and about maxChunkBytes (at least one message).
func chunkEnd(es []chunkEntry, start int) int {
	size := 0
	for i := start; i < len(es); i++ {
		f := es[i].f
		size += len(f.Payload) + len(f.ID) + len(f.Topic) + len(f.Origin) + len(es[i].peer) + 16
		if i > start && (i-start >= maxChunkEntries || size > maxChunkBytes) {
			return i
		}
	}
	return len(es)
}

// The chunk encoding: a version byte, the number of messages (uvarint),
// then each message: a flags byte; its peer id unless the same as the
// previous message's; its seq (varint); its id; its topic and origin unless
// the same as the previous message's; its payload, or the index (uvarint)
// of an identical payload earlier in the chunk (of those of 64 bytes or
// more). Strings and payloads are a uvarint length and the bytes; a nil
// payload is flagged (and empty).
const chunkVersion = 1

const (
	entSamePeer = 1 << iota
	entSameTopic
	entSameOrigin
	entPayloadRef
	entNilPayload // a nil payload, as opposed to an empty one
	entKnownFlags = entSamePeer | entSameTopic | entSameOrigin | entPayloadRef | entNilPayload
)

// payloadKey identifies a payload by its memory: the frames a relay or a
// group send queues for many members share their payload's bytes.
type payloadKey struct {
	p *byte
	n int
}

// chunkSizeHint is about the size of es's encoding (a little more, for
// strings and numbers of usual sizes): the capacity to give appendChunk's
// dst (a chunk of a fan-out to 50 members grew its buffer ten times, a
// fifth of the fan-out's Apply). A payload is counted once for a run of
// entries sharing it.
func chunkSizeHint(es []chunkEntry) int {
	n := 1 + binary.MaxVarintLen64
	var last *byte
	for _, e := range es {
		f := e.f
		n += 1 + len(e.peer) + len(f.ID) + len(f.Topic) + len(f.Origin) + 5*binary.MaxVarintLen64
		if len(f.Payload) == 0 || &f.Payload[0] != last {
			n += len(f.Payload)
		}
		if len(f.Payload) > 0 {
			last = &f.Payload[0]
		}
	}
	return n
}

// appendChunk appends the encoding of es to dst.
func appendChunk(dst []byte, es []chunkEntry) []byte {
	dst = append(dst, chunkVersion)
	dst = binary.AppendUvarint(dst, uint64(len(es)))
	var seen map[payloadKey]int
	npay := 0
	for i, e := range es {
		f := e.f
		var flags byte
		if i > 0 {
			p := es[i-1]
			if p.peer == e.peer {
				flags |= entSamePeer
			}
			if p.f.Topic == f.Topic {
				flags |= entSameTopic
			}
			if p.f.Origin == f.Origin {
				flags |= entSameOrigin
			}
		}
		ref := -1
		if f.Payload == nil {
			flags |= entNilPayload
		}
		if len(f.Payload) >= 64 {
			k := payloadKey{&f.Payload[0], len(f.Payload)} // len >= 64
			if j, ok := seen[k]; ok {
				ref = j
				flags |= entPayloadRef
			} else {
				if seen == nil {
					seen = map[payloadKey]int{}
				}
				seen[k] = npay
				npay++
			}
		}
		dst = append(dst, flags)
		if flags&entSamePeer == 0 {
			dst = appendBytes(dst, e.peer)
		}
		dst = binary.AppendVarint(dst, f.Seq)
		dst = appendBytes(dst, f.ID)
		if flags&entSameTopic == 0 {
			dst = appendBytes(dst, f.Topic)
		}
		if flags&entSameOrigin == 0 {
			dst = appendBytes(dst, f.Origin)
		}
		if ref >= 0 {
			dst = binary.AppendUvarint(dst, uint64(ref))
		} else {
			dst = appendBytes(dst, f.Payload)
		}
	}
	return dst
}

func appendBytes[S ~string | ~[]byte](dst []byte, s S) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// errBadChunk is wrapped by every decoding error of a chunk.
var errBadChunk = errors.New("malformed outbox chunk")

// decodeChunk decodes a chunk into entries (msg frames); the payloads share
// b's memory.
func decodeChunk(b []byte) ([]mq.OutboxEntry, error) {
	d := chunkDecoder{b: b}
	if v := d.u8(); v != chunkVersion {
		if d.err != nil {
			return nil, d.err
		}
		return nil, fmt.Errorf("%w: version %d", errBadChunk, v)
	}
	n := d.uvarint()
	if d.err == nil && n > uint64(len(b)) { // every message takes bytes
		d.fail("%d messages in %d bytes", n, len(b))
	}
	if d.err != nil {
		return nil, d.err
	}
	out := make([]mq.OutboxEntry, 0, n)
	var payloads [][]byte
	var peer, topic, origin string
	for i := uint64(0); i < n && d.err == nil; i++ {
		flags := d.u8()
		if flags&^entKnownFlags != 0 || (i == 0 && flags&(entSamePeer|entSameTopic|entSameOrigin) != 0) {
			d.fail("message %d: bad flags %#x", i, flags)
			break
		}
		if flags&entSamePeer == 0 {
			peer = string(d.bytes())
		}
		seq := d.varint()
		id := string(d.bytes())
		if flags&entSameTopic == 0 {
			topic = string(d.bytes())
		}
		if flags&entSameOrigin == 0 {
			origin = string(d.bytes())
		}
		var payload []byte
		if flags&entPayloadRef != 0 {
			j := d.uvarint()
			if d.err == nil && j >= uint64(len(payloads)) {
				d.fail("message %d: payload reference %d of %d", i, j, len(payloads))
				break
			}
			if d.err == nil {
				payload = payloads[j]
			}
		} else {
			payload = d.bytes()
			if len(payload) >= 64 {
				payloads = append(payloads, payload)
			} else if flags&entNilPayload != 0 {
				payload = nil
			}
		}
		out = append(out, mq.OutboxEntry{To: mq.PeerID(peer), Frame: mq.Frame{
			Type: mq.TypeMsg, ID: id, Seq: seq, Topic: topic, Payload: payload, Origin: mq.PeerID(origin),
		}})
	}
	if d.err == nil && len(d.b) > 0 {
		d.fail("%d bytes after the last message", len(d.b))
	}
	if d.err != nil {
		return nil, d.err
	}
	return out, nil
}

// chunkDecoder reads a chunk; the first error sticks.
type chunkDecoder struct {
	b   []byte
	err error
}

func (d *chunkDecoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", errBadChunk, fmt.Sprintf(format, args...))
	}
}

func (d *chunkDecoder) u8() byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) == 0 {
		d.fail("truncated")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *chunkDecoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad uvarint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// varint reads a zig-zag encoded signed varint (binary.AppendVarint).
func (d *chunkDecoder) varint() int64 {
	u := d.uvarint()
	return int64(u>>1) ^ -int64(u&1)
}

func (d *chunkDecoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail("length %d past the end", n)
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

// chunkState is what the index knows of one stored chunk.
type chunkState struct {
	n    int    // messages in the chunk
	live int    // of which not dead
	dead []byte // bitmap of the dead ones (nil: none)
	// deadStored: the chunk has a row in _mq_outbox_dead.
	deadStored bool
}

func (c *chunkState) isDead(i int) bool { return c.dead != nil && c.dead[i/8]&(1<<(i%8)) != 0 }

// entryRef locates a live message: its chunk and its index there.
type entryRef struct {
	chunk int64
	idx   int
}

// outboxIndex is the in-memory map of the stored outbox. Guarded by
// Store.mu; nil until loaded (see Store.outboxIndex).
type outboxIndex struct {
	nextID int64
	chunks map[int64]*chunkState
	keys   map[outKey]entryRef
}

// loadOutbox reads the whole outbox: the live messages, ordered by
// destination then seq, and the index of the chunks.
func loadOutbox(ctx context.Context, db bun.IDB) ([]mq.OutboxEntry, *outboxIndex, error) {
	var chunks []outboxChunkRow
	if err := db.NewSelect().Model(&chunks).Order("id").Scan(ctx); err != nil {
		return nil, nil, fmt.Errorf("outbox chunks: %w", err)
	}
	var deads []outboxDeadRow
	if err := db.NewSelect().Model(&deads).Scan(ctx); err != nil {
		return nil, nil, fmt.Errorf("outbox dead marks: %w", err)
	}
	deadOf := make(map[int64][]byte, len(deads))
	for _, d := range deads {
		deadOf[d.ChunkID] = d.Dead
	}
	ix := &outboxIndex{nextID: 1, chunks: make(map[int64]*chunkState, len(chunks)), keys: map[outKey]entryRef{}}
	var out []mq.OutboxEntry
	for _, c := range chunks {
		es, err := decodeChunk(c.Frames)
		if err != nil {
			return nil, nil, fmt.Errorf("outbox chunk %d: %w", c.ID, err)
		}
		if int64(len(es)) != c.N {
			return nil, nil, fmt.Errorf("outbox chunk %d: %w: %d messages, row says %d", c.ID, errBadChunk, len(es), c.N)
		}
		st := &chunkState{n: len(es)}
		if d, ok := deadOf[c.ID]; ok {
			st.deadStored = true
			st.dead = make([]byte, (len(es)+7)/8)
			copy(st.dead, d)
		}
		for i, e := range es {
			if st.isDead(i) {
				continue
			}
			k := outKey{e.To, e.Frame.Seq}
			if prev, ok := ix.keys[k]; ok {
				// Stored twice (cannot happen through Apply): the newer
				// chunk's copy wins.
				ps := ix.chunks[prev.chunk]
				ps.markDead(prev.idx)
				out = slices.DeleteFunc(out, func(o mq.OutboxEntry) bool { return o.To == e.To && o.Frame.Seq == e.Frame.Seq })
			}
			st.live++
			ix.keys[k] = entryRef{c.ID, i}
			out = append(out, e)
		}
		ix.chunks[c.ID] = st
		ix.nextID = max(ix.nextID, c.ID+1)
	}
	slices.SortFunc(out, func(a, b mq.OutboxEntry) int {
		return cmp.Or(cmp.Compare(a.To, b.To), cmp.Compare(a.Frame.Seq, b.Frame.Seq))
	})
	return out, ix, nil
}

// markDead marks message i dead (it must be live).
func (c *chunkState) markDead(i int) {
	if c.dead == nil {
		c.dead = make([]byte, (c.n+7)/8)
	}
	c.dead[i/8] |= 1 << (i % 8)
	c.live--
}

// outboxStage is the outbox part of one Apply: the statements to run and
// the index changes to install once they are committed.
type outboxStage struct {
	ix      *outboxIndex
	nextID  int64
	touched map[int64]*chunkState // copies of the chunks this Apply changes
	gone    []outKey              // keys of messages that died

	newChunks []newChunk
	delChunks []int64 // chunks whose messages are all dead
	delDead   []int64 // their dead rows
	putDead   []int64 // chunks whose dead row is written (state in touched)
}

type newChunk struct {
	id     int64
	n      int
	frames []byte
	keys   []outKey
}

// stageOutbox plans the outbox changes of a batch: dels die, puts (in the
// batch's order; f nil: deleted later in the batch) replace any live message
// of the same key and go to new chunks. The chunks are cut from the puts in
// the batch's order, which keeps the copies of a fan-out (one payload to
// many peers, put one after the other) in the same chunk, where the payload
// is stored once; cut from the puts sorted by peer, a batch of thousands of
// relays spread each payload over chunks and stored it once per peer.
func stageOutbox(ix *outboxIndex, puts []chunkEntry, dels map[outKey]struct{}) *outboxStage {
	s := &outboxStage{ix: ix, nextID: ix.nextID}
	for k := range dels {
		s.kill(k)
	}
	es := make([]chunkEntry, 0, len(puts))
	for _, e := range puts {
		if e.f != nil {
			s.kill(e.key())
			es = append(es, e)
		}
	}
	for start := 0; start < len(es); {
		end := chunkEnd(es, start)
		// Within the chunk, by peer then seq: a peer's id is then written
		// once (the payloads are shared whatever the order).
		part := es[start:end]
		slices.SortFunc(part, func(a, b chunkEntry) int { return compareKeys(a.key(), b.key()) })
		keys := make([]outKey, len(part))
		for i, e := range part {
			keys[i] = e.key()
		}
		s.newChunks = append(s.newChunks, newChunk{id: s.nextID, n: len(part), frames: appendChunk(make([]byte, 0, chunkSizeHint(part)), part), keys: keys})
		s.nextID++
		start = end
	}
	for _, id := range slices.Sorted(maps.Keys(s.touched)) {
		c := s.touched[id]
		switch {
		case c.live == 0:
			s.delChunks = append(s.delChunks, id)
			if c.deadStored {
				s.delDead = append(s.delDead, id)
			}
		default:
			s.putDead = append(s.putDead, id)
			c.deadStored = true
		}
	}
	return s
}

// kill marks the live message k (if any) dead in a copy of its chunk.
func (s *outboxStage) kill(k outKey) {
	ref, ok := s.ix.keys[k]
	if !ok {
		return
	}
	c := s.touched[ref.chunk]
	if c == nil {
		orig := s.ix.chunks[ref.chunk]
		c = &chunkState{n: orig.n, live: orig.live, dead: slices.Clone(orig.dead), deadStored: orig.deadStored}
		if s.touched == nil {
			s.touched = map[int64]*chunkState{}
		}
		s.touched[ref.chunk] = c
	}
	if c.isDead(ref.idx) {
		return
	}
	c.markDead(ref.idx)
	s.gone = append(s.gone, k)
}

// statements is how many statements s runs (on SQLite, where each row is
// one).
func (s *outboxStage) statements() int {
	return len(s.newChunks) + len(s.delChunks) + len(s.delDead) + len(s.putDead)
}

// hotKinds is the set (1<<kind) of hot statement families s needs.
func (s *outboxStage) hotKinds() uint {
	var k uint
	if len(s.newChunks) > 0 {
		k |= 1 << hotPutChunk
	}
	if len(s.delChunks) > 0 {
		k |= 1 << hotDelChunk
	}
	if len(s.delDead) > 0 {
		k |= 1 << hotDelDead
	}
	if len(s.putDead) > 0 {
		k |= 1 << hotPutDead
	}
	return k
}

// exec runs s's statements.
func (s *outboxStage) exec(ctx context.Context, st *stepper, now int64) error {
	if err := execIDs(ctx, st, hotDelChunk, s.delChunks); err != nil {
		return fmt.Errorf("delete outbox chunks: %w", err)
	}
	if err := execIDs(ctx, st, hotDelDead, s.delDead); err != nil {
		return fmt.Errorf("delete outbox dead marks: %w", err)
	}
	if len(s.putDead) > 0 {
		args := st.argsBuf(2 * len(s.putDead))
		for _, id := range s.putDead {
			args = append(args, id, s.touched[id].dead)
		}
		if err := st.execHot(ctx, hotPutDead, args, len(s.putDead), nil); err != nil {
			return fmt.Errorf("mark outbox messages dead: %w", err)
		}
	}
	if len(s.newChunks) > 0 {
		args := st.argsBuf(4 * len(s.newChunks))
		for _, c := range s.newChunks {
			args = append(args, c.id, int64(c.n), c.frames, now)
		}
		size := func(i int) int { return 2*len(s.newChunks[i].frames) + 64 }
		if err := st.execHot(ctx, hotPutChunk, args, len(s.newChunks), size); err != nil {
			return fmt.Errorf("put outbox: %w", err)
		}
	}
	return nil
}

// execIDs runs kind's statements over ids.
func execIDs(ctx context.Context, st *stepper, kind hotKind, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	args := st.argsBuf(len(ids))
	for _, id := range ids {
		args = append(args, id)
	}
	return st.execHot(ctx, kind, args, len(ids), nil)
}

// install applies the committed stage to the index.
func (s *outboxStage) install() {
	ix := s.ix
	for id, c := range s.touched {
		if c.live == 0 {
			delete(ix.chunks, id)
		} else {
			ix.chunks[id] = c
		}
	}
	for _, k := range s.gone {
		delete(ix.keys, k)
	}
	for _, c := range s.newChunks {
		ix.chunks[c.id] = &chunkState{n: c.n, live: c.n}
		for i, k := range c.keys {
			ix.keys[k] = entryRef{c.id, i}
		}
	}
	ix.nextID = s.nextID
}

// outboxIndex returns the index of the stored outbox, loading it if needed.
// Called with s.mu held.
func (s *Store) outboxIndex(ctx context.Context) (*outboxIndex, error) {
	if s.outbox == nil {
		_, ix, err := loadOutbox(ctx, s.db)
		if err != nil {
			return nil, err
		}
		s.outbox = ix
	}
	return s.outbox, nil
}
