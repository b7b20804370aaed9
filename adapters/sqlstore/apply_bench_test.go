package sqlstore

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/goop-p2p/goop/domain/group"
	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/ports"
)

// benchPayload is a typical small application message.
var benchPayload = []byte(`{"action":"doc-added","file":{"name":"report.pdf","size":123456}}`)

const benchPeer = mq.PeerID("12D3KooWBenchPeerB7Qz9yWuRkXoE4xJv1T1mBhV2kCq8sQdNnYp")

func benchFrame(seq int64) *mq.Frame {
	return &mq.Frame{Type: mq.TypeMsg, ID: fmt.Sprintf("msg-%016x", seq), Seq: seq, Topic: "chat",
		Payload: benchPayload, Origin: "12D3KooWBenchOriginA"}
}

// BenchmarkApplySmall measures Apply on the small batches of the node's hot
// path, one batch per op:
//
//   - cursor: a receiver persists its cursor (1 SetCursor);
//   - put: a sender stores one outgoing message (1 PutOutbox);
//   - delete: a sender drops one acknowledged message (1 DeleteOutbox of a
//     stored row);
//   - put256+del256: a loaded sender's batch, 256 new messages, the 256
//     of the previous batch acknowledged, and the next seq;
//   - history64+put64: a group host relaying 64 messages, each kept in the
//     history and queued for one of 64 members;
//   - history+put50: a group host sending its own 1 KiB message to 50
//     members: the history row and the 50 copies queued (one payload);
//   - cursor+history: a group host relaying one member's message: the
//     member's cursor and the history row, in one transaction;
//   - cursor,cursor+history: the same, every other op a cursor alone from
//     another peer (to the cursor log), which the next op's transaction
//     folds into the table.
func BenchmarkApplySmall(b *testing.B) {
	cases := []struct {
		name string
		// setup prepares the store for n ops; batch returns op i's batch.
		setup func(b *testing.B, s *Store, n int)
		batch func(i int) ports.Batch
	}{
		{"cursor", nil, func(i int) ports.Batch {
			return ports.Batch{Bus: []mq.Change{{Kind: mq.SetCursor, Peer: benchPeer, Epoch: "0123456789abcdef", Seq: int64(i + 1)}}}
		}},
		{"put", nil, func(i int) ports.Batch {
			seq := int64(i + 1)
			return ports.Batch{Bus: []mq.Change{{Kind: mq.PutOutbox, Peer: benchPeer, Seq: seq, Frame: benchFrame(seq)}}}
		}},
		{"delete", func(b *testing.B, s *Store, n int) {
			ctx := context.Background()
			for start := 0; start < n; start += 1000 {
				var cs []mq.Change
				for seq := int64(start + 1); seq <= int64(min(start+1000, n)); seq++ {
					cs = append(cs, mq.Change{Kind: mq.PutOutbox, Peer: benchPeer, Seq: seq, Frame: benchFrame(seq)})
				}
				if err := s.Apply(ctx, ports.Batch{Bus: cs}); err != nil {
					b.Fatal(err)
				}
			}
		}, func(i int) ports.Batch {
			return ports.Batch{Bus: []mq.Change{{Kind: mq.DeleteOutbox, Peer: benchPeer, Seq: int64(i + 1)}}}
		}},
		{"put256+del256", nil, func(i int) ports.Batch {
			const n = 256
			cs := make([]mq.Change, 0, 2*n+1)
			for j := 0; j < n; j++ {
				seq := int64(i*n + j + 1)
				cs = append(cs, mq.Change{Kind: mq.PutOutbox, Peer: benchPeer, Seq: seq, Frame: benchFrame(seq)})
				if i > 0 {
					cs = append(cs, mq.Change{Kind: mq.DeleteOutbox, Peer: benchPeer, Seq: seq - n})
				}
			}
			cs = append(cs, mq.Change{Kind: mq.SetNextSeq, Peer: benchPeer, Seq: int64((i+1)*n + 1)})
			return ports.Batch{Bus: cs}
		}},
		{"history64+put64", nil, func(i int) ports.Batch {
			const n = 64
			at := time.UnixMilli(1_700_000_000_000 + int64(i))
			b := ports.Batch{Bus: make([]mq.Change, 0, n), Groups: make([]group.Change, 0, n)}
			for j := 0; j < n; j++ {
				b.Groups = append(b.Groups, group.Change{Kind: group.AppendHistory, GroupID: "g-bench",
					History: &group.HistoryEntry{GroupID: "g-bench", From: group.PeerID(benchPeer), Type: group.TypeMsg, Payload: benchPayload, At: at}})
				seq := int64(i + 1)
				b.Bus = append(b.Bus, mq.Change{Kind: mq.PutOutbox, Peer: mq.PeerID(fmt.Sprintf("%s-%02d", benchPeer, j)), Seq: seq, Frame: benchFrame(seq)})
			}
			return b
		}},
		{"history+put50", nil, func(i int) ports.Batch {
			return fanoutBatch(i)
		}},
		{"cursor+history", nil, func(i int) ports.Batch {
			return relayBatch(i)
		}},
		{"cursor,cursor+history", nil, func(i int) ports.Batch {
			if i%2 == 1 {
				return ports.Batch{Bus: []mq.Change{{Kind: mq.SetCursor, Peer: benchPeer + "-other", Epoch: "0123456789abcdef", Seq: int64(i + 1)}}}
			}
			return relayBatch(i)
		}},
	}
	for _, be := range backends {
		for _, c := range cases {
			b.Run(be.name+"/"+c.name, func(b *testing.B) {
				if be.name == "Postgres" {
					requirePostgres(b)
				}
				s := mustOpen(b, be.newDB(b))
				defer s.Close()
				if c.setup != nil {
					c.setup(b, s, b.N)
				}
				// Build the batches first: only Apply is measured.
				batches := make([]ports.Batch, b.N)
				for i := range batches {
					batches[i] = c.batch(i)
				}
				ctx := context.Background()
				b.ReportAllocs()
				b.ResetTimer()
				cpu0 := cpuTime(b)
				for i := 0; i < b.N; i++ {
					if err := s.Apply(ctx, batches[i]); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64((cpuTime(b)-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
			})
		}
	}
}

// relayBatch is a group host's batch for relaying one member's message.
func relayBatch(i int) ports.Batch {
	at := time.UnixMilli(1_700_000_000_000 + int64(i))
	return ports.Batch{
		Bus: []mq.Change{{Kind: mq.SetCursor, Peer: benchPeer, Epoch: "0123456789abcdef", Seq: int64(i + 1)}},
		Groups: []group.Change{{Kind: group.AppendHistory, GroupID: "g-bench",
			History: &group.HistoryEntry{GroupID: "g-bench", From: group.PeerID(benchPeer), Type: group.TypeMsg, Payload: benchPayload, At: at}}},
	}
}

// fanoutMembers are the 50 members of fanoutBatch's group.
var fanoutMembers = func() []mq.PeerID {
	ps := make([]mq.PeerID, 50)
	for j := range ps {
		ps[j] = mq.PeerID(fmt.Sprintf("12D3KooWFanoutMember%02dXoE4xJv1T1mBhV2kCq8sQdNnYp", j))
	}
	return ps
}()

// fanoutBatch is a group host's batch for its own 1 KiB message to 50
// members.
func fanoutBatch(i int) ports.Batch {
	payload := []byte(fmt.Sprintf(`{"n":%d,"p":"%0990d"}`, i, 0))
	at := time.UnixMilli(1_700_000_000_000 + int64(i))
	b := ports.Batch{Groups: []group.Change{{Kind: group.AppendHistory, GroupID: "g-bench",
		History: &group.HistoryEntry{GroupID: "g-bench", From: "12D3KooWBenchHost", Type: group.TypeMsg, Payload: payload, At: at}}}}
	seq := int64(i + 1)
	for _, m := range fanoutMembers {
		f := &mq.Frame{Type: mq.TypeMsg, ID: fmt.Sprintf("0b5c9d2e-8f4a-4e1b-9c3d-%012x", seq), Seq: seq, Topic: "group:g-bench:msg",
			Payload: payload, Origin: "12D3KooWBenchHost"}
		b.Bus = append(b.Bus, mq.Change{Kind: mq.PutOutbox, Peer: m, Seq: seq, Frame: f})
	}
	return b
}
