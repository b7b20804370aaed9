package simnet

// pool is a slice whose released entries are reused, so that a long run
// keeps as many entries as were ever in use at once. Entries are addressed
// by index; all (for iteration) includes released, zeroed ones.
type pool[T any] struct {
	all  []T
	free []uint32
}

// put stores v and returns its index.
func (p *pool[T]) put(v T) uint32 {
	if n := len(p.free); n > 0 {
		i := p.free[n-1]
		p.free = p.free[:n-1]
		p.all[i] = v
		return i
	}
	p.all = append(p.all, v)
	return uint32(len(p.all) - 1)
}

// at returns the entry at i.
func (p *pool[T]) at(i uint32) *T { return &p.all[i] }

// release zeroes the entry at i and makes its place reusable.
func (p *pool[T]) release(i uint32) {
	var zero T
	p.all[i] = zero
	p.free = append(p.free, i)
}
