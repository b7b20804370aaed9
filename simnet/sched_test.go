package simnet

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestSchedOrder: events pop in (time, scheduling order) whatever the
// order they were pushed in, across interleaved pushes and pops.
func TestSchedOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var q sched
	type key struct{ at, seq int64 }
	var pending []key
	var seq int64
	var last key
	for step := 0; step < 20000; step++ {
		if q.len() == 0 || r.IntN(3) > 0 {
			at := last.at + r.Int64N(50)
			seq++
			q.push(at, event{arg: seq})
			pending = append(pending, key{at, seq})
			continue
		}
		at, _, ev := q.pop()
		got := key{at, ev.arg}
		want := slices.MinFunc(pending, func(a, b key) int { return cmp.Or(cmp.Compare(a.at, b.at), cmp.Compare(a.seq, b.seq)) })
		require.Equal(t, want, got)
		pending = slices.DeleteFunc(pending, func(k key) bool { return k == got })
		last = got
	}
}
