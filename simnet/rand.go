package simnet

import (
	"math/rand/v2"

	"github.com/goop-p2p/goop/ports"
)

// Stream purposes: every random choice in a world comes from a stream derived
// from (seed, purpose, peer index[, incarnation]), so that adding a peer or
// changing one peer's behaviour does not shift any other stream.
const (
	streamPeerID   = 1 // a peer's id
	streamNode     = 2 // a node incarnation's ports.Rand (message ids, epoch)
	streamNet      = 3 // network draws (loss, duplication, delay) for frames a peer sends
	streamApp      = 4 // a peer's workload (destinations, send times)
	streamScenario = 5 // a scenario's plan (fault mix, partitions, crashes)
	streamLink     = 6 // per-link base latency
)

// splitmix64 is the finaliser of SplitMix64: a bijective, well-mixing hash.
func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// derive hashes the seed and a path of tags into a sub-seed.
func derive(seed uint64, tags ...uint64) uint64 {
	h := splitmix64(seed)
	for _, t := range tags {
		h = splitmix64(h ^ splitmix64(t+0x632be59bd9b4e019))
	}
	return h
}

// newStream returns a deterministic generator for the sub-seed of tags.
func newStream(seed uint64, tags ...uint64) *rand.Rand {
	s := derive(seed, tags...)
	return rand.New(rand.NewPCG(s, splitmix64(s^0xd1b54a32d192ed03)))
}

// nodeRand is the ports.Rand a simulated node draws ids from. Not safe for
// concurrent use (a world runs on one goroutine).
type nodeRand struct{ r *rand.Rand }

var _ ports.Rand = (*nodeRand)(nil)

// Uint64 implements ports.Rand.
func (n *nodeRand) Uint64() uint64 { return n.r.Uint64() }

// Read implements ports.Rand; it never fails.
func (n *nodeRand) Read(p []byte) (int, error) {
	for i := 0; i < len(p); i += 8 {
		v := n.r.Uint64()
		for j := 0; j < 8 && i+j < len(p); j++ {
			p[i+j] = byte(v >> (8 * j))
		}
	}
	return len(p), nil
}
