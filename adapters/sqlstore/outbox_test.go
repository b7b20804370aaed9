package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/ports"
	"github.com/goop-p2p/goop/ports/storetest"
)

// outboxRows counts the rows of the chunk and dead-mark tables.
func outboxRows(t *testing.T, s *Store) (chunks, dead int) {
	t.Helper()
	ctx := context.Background()
	c, err := s.DB().NewSelect().Model((*outboxChunkRow)(nil)).Count(ctx)
	require.NoError(t, err)
	d, err := s.DB().NewSelect().Model((*outboxDeadRow)(nil)).Count(ctx)
	require.NoError(t, err)
	return int(c), int(d)
}

// fanOut is a host's batch of relays: each payload, in turn, put for every
// one of peers peers (peer-00, peer-01, ...; message i has seq i+1), all
// copies sharing the payload's memory as the group core's do.
func fanOut(payloads [][]byte, peers int) []mq.Change {
	var batch []mq.Change
	for i, pl := range payloads {
		for p := 0; p < peers; p++ {
			batch = append(batch, storetest.Put(mq.PeerID(fmt.Sprintf("peer-%02d", p)), &mq.Frame{Type: mq.TypeMsg,
				ID: fmt.Sprintf("m%d-%d", p, i), Seq: int64(i + 1), Topic: "group:g:msg", Payload: pl, Origin: "origin-peer"}))
		}
	}
	return batch
}

// TestOutboxLargeFanOutStoresPayloadsOnce: a host's batch of relays larger
// than a chunk (each message to every member, one after the other, as the
// group core puts them) stores each payload about once, not once per chunk
// that holds some of its copies.
func TestOutboxLargeFanOutStoresPayloadsOnce(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newDB func(testing.TB) Config) {
		ctx := context.Background()
		s := mustOpen(t, newDB(t))
		m := storetest.NewModel()
		const msgs, peers, size = 1000, 9, 1024
		payloads := make([][]byte, msgs)
		for i := range payloads {
			payloads[i] = []byte(fmt.Sprintf(`"%0*d"`, size-2, i))
		}
		batch := fanOut(payloads, peers)
		require.NoError(t, s.Apply(ctx, ports.Batch{Bus: batch}))
		m.Apply(batch)
		chunks, _ := outboxRows(t, s)
		require.Greater(t, chunks, 1, "the batch spans chunks")
		var total int64
		require.NoError(t, s.DB().NewSelect().Model((*outboxChunkRow)(nil)).
			ColumnExpr("COALESCE(SUM(LENGTH(frames)), 0)").Scan(ctx, &total))
		// Each payload once (chunks are cut between two messages' copies at
		// most chunks-1 times) plus ~40 bytes of id, seq and flags per entry.
		assert.Less(t, total, int64((msgs+chunks)*size+msgs*peers*40),
			"%d bytes in %d chunks for %d messages of %d bytes to %d peers", total, chunks, msgs, size, peers)
		storetest.RequireState(t, m, s)
	})
}

// TestOutboxIsChunked checks the storage of the outbox: a batch's messages
// are one row, a payload shared by many messages is stored once, messages
// that died are remembered across a reopen, and a chunk whose messages all
// died leaves no row behind.
func TestOutboxIsChunked(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newDB func(testing.TB) Config) {
		ctx := context.Background()
		cfg := newDB(t)
		s := mustOpen(t, cfg)
		m := storetest.NewModel()
		apply := func(cs ...mq.Change) {
			t.Helper()
			require.NoError(t, s.Apply(ctx, ports.Batch{Bus: cs}))
			m.Apply(cs)
		}

		// A fan-out: 3 messages to each of 50 peers, every message to a
		// peer sharing one 1 KB payload.
		payloads := make([][]byte, 3)
		for i := range payloads {
			payloads[i] = []byte(`"` + strings.Repeat(string(rune('a'+i)), 1022) + `"`)
		}
		apply(fanOut(payloads, 50)...)
		chunks, dead := outboxRows(t, s)
		assert.Equal(t, 1, chunks, "one batch, one row")
		assert.Zero(t, dead)
		var frames []byte
		require.NoError(t, s.DB().NewSelect().Model((*outboxChunkRow)(nil)).Column("frames").Scan(ctx, &frames))
		assert.Less(t, len(frames), 3*1024+150*40, "each payload stored once (%d bytes for 150 messages)", len(frames))

		// Acks of some members: their messages die, the rest stay.
		var dels []mq.Change
		for p := 0; p < 20; p++ {
			for i := range payloads {
				dels = append(dels, storetest.Del(mq.PeerID(fmt.Sprintf("peer-%02d", p)), int64(i+1)))
			}
		}
		apply(dels...)
		chunks, dead = outboxRows(t, s)
		assert.Equal(t, 1, chunks)
		assert.Equal(t, 1, dead, "the chunk's dead messages are recorded")
		storetest.RequireState(t, m, s)

		// A reopened store loads only the live messages, and goes on
		// deleting from the chunk it did not write.
		require.NoError(t, s.Close())
		s = mustOpen(t, cfg)
		defer func() { _ = s.Close() }()
		storetest.RequireState(t, m, s)
		apply(storetest.Del("peer-30", 2))
		storetest.RequireState(t, m, s)
		dels = nil
		for p := 20; p < 50; p++ {
			for i := range payloads {
				dels = append(dels, storetest.Del(mq.PeerID(fmt.Sprintf("peer-%02d", p)), int64(i+1)))
			}
		}
		apply(dels...)
		chunks, dead = outboxRows(t, s)
		assert.Zero(t, chunks, "every message died: no row left")
		assert.Zero(t, dead)
		storetest.RequireState(t, m, s)

		// One message at a time: a row each, gone with its message.
		for seq := int64(10); seq < 13; seq++ {
			apply(storetest.Put("A", storetest.Frame(seq, "t", `1`)))
		}
		chunks, _ = outboxRows(t, s)
		assert.Equal(t, 3, chunks)
		apply(storetest.Del("A", 11))
		chunks, dead = outboxRows(t, s)
		assert.Equal(t, 2, chunks)
		assert.Zero(t, dead)
		storetest.RequireState(t, m, s)

		// A put of a live message's key replaces it.
		apply(storetest.Put("A", storetest.Frame(10, "t2", `"new"`)))
		chunks, _ = outboxRows(t, s)
		assert.Equal(t, 2, chunks, "the old chunk of seq 10 held only it")
		storetest.RequireState(t, m, s)
		require.NoError(t, s.Close())
		s = mustOpen(t, cfg)
		storetest.RequireState(t, m, s)
	})
}

// TestOutboxRandomAgainstModel applies random batches of puts and deletes,
// with failed batches and reopens between them, and checks the store
// against the reference model.
func TestOutboxRandomAgainstModel(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newDB func(testing.TB) Config) {
		ctx := context.Background()
		cfg := newDB(t)
		s := mustOpen(t, cfg)
		defer func() { _ = s.Close() }()
		m := storetest.NewModel()
		rng := rand.New(rand.NewPCG(1, 2))
		peers := []mq.PeerID{"A", "B", "C"}
		next := map[mq.PeerID]int64{}
		for round := 0; round < 120; round++ {
			var cs []mq.Change
			for i := rng.IntN(40); i >= 0; i-- {
				p := peers[rng.IntN(len(peers))]
				if rng.IntN(2) == 0 {
					next[p]++
					cs = append(cs, storetest.Put(p, storetest.Frame(next[p], "t", fmt.Sprint(round))))
				} else if next[p] > 0 {
					cs = append(cs, storetest.Del(p, 1+rng.Int64N(next[p])))
				}
			}
			if len(cs) == 0 {
				continue
			}
			if rng.IntN(8) == 0 {
				s.afterStep = func(int) error { return errors.New("injected") }
				err := s.Apply(ctx, ports.Batch{Bus: cs})
				s.afterStep = nil
				if err != nil {
					require.ErrorContains(t, err, "injected")
					storetest.RequireState(t, m, s)
					continue
				}
			} else {
				require.NoError(t, s.Apply(ctx, ports.Batch{Bus: cs}))
			}
			m.Apply(cs)
			if rng.IntN(10) == 0 {
				require.NoError(t, s.Close())
				s = mustOpen(t, cfg)
			}
			storetest.RequireState(t, m, s)
		}
	})
}

func TestChunkCodec(t *testing.T) {
	shared := []byte(`{"text":"` + strings.Repeat("x", 100) + `"}`)
	frames := []mq.Frame{
		{Type: mq.TypeMsg, ID: "1", Seq: 1, Topic: "t", Payload: []byte(`1`)},
		{Type: mq.TypeMsg, ID: "2", Seq: 2, Topic: "t", Payload: shared, Origin: "O"},
		{Type: mq.TypeMsg, ID: "3", Seq: -3, Topic: "u", Payload: shared, Origin: "O"},
		{Type: mq.TypeMsg, ID: "4", Seq: 1 << 60, Topic: "u", Payload: nil},
		{Type: mq.TypeMsg, ID: "5", Seq: 5, Topic: "u", Payload: []byte{}},
		{Type: mq.TypeMsg, ID: "6", Seq: 6, Topic: "ünï ✓", Payload: []byte(`"\u0000"`)},
	}
	peers := []mq.PeerID{"P", "P", "Q", "Q", "Q", "R"}
	es := make([]chunkEntry, len(frames))
	for i := range frames {
		es[i] = chunkEntry{peer: peers[i], f: &frames[i]}
	}
	b := appendChunk(nil, es)
	assert.GreaterOrEqual(t, chunkSizeHint(es), len(b), "the size hint covers the encoding")
	got, err := decodeChunk(b)
	require.NoError(t, err)
	require.Len(t, got, len(frames))
	for i, e := range got {
		assert.Equal(t, peers[i], e.To)
		assert.Equal(t, frames[i], e.Frame, "message %d", i)
	}
	assert.Less(t, len(b), 2*len(shared)+100, "the shared payload is stored once")

	// Every truncation and a few corruptions are errors, never a panic.
	for n := 0; n < len(b); n++ {
		_, err := decodeChunk(b[:n])
		require.ErrorIs(t, err, errBadChunk, "truncated to %d bytes", n)
	}
	for name, bad := range map[string][]byte{
		"version":        append([]byte{9}, b[1:]...),
		"trailing bytes": append(append([]byte{}, b...), 0),
		"huge count":     {chunkVersion, 0xff, 0xff, 0xff, 0xff, 0x0f},
		"unknown flag":   {chunkVersion, 1, 0x80},
		"first same":     {chunkVersion, 1, entSamePeer},
		"bad reference":  {chunkVersion, 1, entPayloadRef, 1, 'P', 2, 1, '1', 1, 't', 0, 0},
	} {
		_, err := decodeChunk(bad)
		assert.ErrorIs(t, err, errBadChunk, name)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 2000; i++ {
		c := append([]byte{}, b...)
		c[1+rng.IntN(len(c)-1)] ^= byte(1 + rng.IntN(255))
		_, _ = decodeChunk(c) // must not panic
	}
}

// The size hint of a group fan-out's chunk (one payload, 50 members, real
// ids) covers its encoding without counting the payload 50 times.
func TestChunkSizeHintOfAFanOut(t *testing.T) {
	b := fanoutBatch(7)
	es := make([]chunkEntry, len(b.Bus))
	for i, c := range b.Bus {
		es[i] = chunkEntry{peer: c.Peer, f: c.Frame}
	}
	enc := appendChunk(nil, es)
	hint := chunkSizeHint(es)
	assert.GreaterOrEqual(t, hint, len(enc))
	assert.Less(t, hint, 2*len(enc), "the payload is counted once")
}

// TestOutboxMigration opens a database written before the chunked outbox
// (a row per message) and finds its messages.
func TestOutboxMigration(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newDB func(testing.TB) Config) {
		ctx := context.Background()
		cfg := newDB(t)
		s := openBefore(t, cfg, 4)
		rows := []outboxRow{
			{PeerID: "A", Seq: 1, MsgID: "a1", Topic: "t", Payload: []byte(`1`), CreatedAt: 5},
			{PeerID: "A", Seq: 2, MsgID: "a2", Topic: "t", Payload: []byte(`"two"`), Origin: "O", CreatedAt: 6},
			{PeerID: "B", Seq: 7, MsgID: "b7", Topic: "u", Payload: []byte(`null`), CreatedAt: 7},
		}
		_, err := s.DB().NewInsert().Model(&rows).Exec(ctx)
		require.NoError(t, err)
		require.NoError(t, s.Close())

		s = mustOpen(t, cfg)
		defer func() { _ = s.Close() }()
		snap, err := s.LoadBus(ctx)
		require.NoError(t, err)
		require.Len(t, snap.Outbox, 3)
		for i, r := range rows {
			assert.Equal(t, mq.OutboxEntry{To: mq.PeerID(r.PeerID), Frame: mq.Frame{Type: mq.TypeMsg, ID: r.MsgID,
				Seq: r.Seq, Topic: r.Topic, Payload: r.Payload, Origin: mq.PeerID(r.Origin)}}, snap.Outbox[i])
		}
		var n int
		err = s.DB().NewSelect().TableExpr("_mq_outbox").ColumnExpr("count(*)").Scan(ctx, &n)
		assert.Error(t, err, "the old table is gone")
		require.NoError(t, s.Apply(ctx, ports.Batch{Bus: []mq.Change{storetest.Del("A", 1)}}))
		snap, err = s.LoadBus(ctx)
		require.NoError(t, err)
		assert.Len(t, snap.Outbox, 2)
	})
}
