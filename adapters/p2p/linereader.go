package p2p

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"time"
)

// errLineTooLong reports a line longer than the reader's limit.
var errLineTooLong = errors.New("line too long")

// deadliner is the part of a stream the line reader needs to bound reads.
type deadliner interface {
	SetReadDeadline(time.Time) error
}

// lineReader reads '\n'-terminated lines of at most max bytes from r. Its
// buffer starts small and grows up to max+1 bytes only while a long line is
// being read, and shrinks back once that line is consumed.
//
// When dl is set, every blocking Read is bounded. While data flows, or a line
// has started, the bound is partial: a peer that stops in the middle of a line
// is cut off after partial (up to 1.25·partial). A read that times out between
// lines only marks the stream quiet, and the bound becomes idle (0 = none):
// a stream that stays silent that long ends with a timeout error. Deadlines are
// re-armed lazily (armDeadline), not on every read. Not safe for concurrent use.
type lineReader struct {
	r       io.Reader
	dl      deadliner
	idle    time.Duration
	partial time.Duration
	dlCur   time.Time // read deadline currently set on dl
	quiet   bool      // the last blocking read between lines timed out
	max     int
	init    int

	buf        []byte
	start, end int // unread data is buf[start:end]
	scan       int // buf[start:scan] is known to hold no '\n'
	err        error
}

func newLineReader(r io.Reader, max, initial int) *lineReader {
	if initial > max+1 {
		initial = max + 1
	}
	return &lineReader{r: r, max: max, init: initial}
}

// withDeadlines makes every blocking read set a read deadline on dl.
func (lr *lineReader) withDeadlines(dl deadliner, idle, partial time.Duration) *lineReader {
	lr.dl, lr.idle, lr.partial = dl, idle, partial
	return lr
}

// buffered reports whether unread bytes are held (a complete or partial line).
func (lr *lineReader) buffered() bool { return lr.end > lr.start }

// next returns the next line without its '\n'. The slice is valid until the
// next call. At a clean end of stream it returns io.EOF; a stream that ends
// inside a line gives io.ErrUnexpectedEOF; a line over the limit gives
// errLineTooLong (the reader is then unusable).
func (lr *lineReader) next() ([]byte, error) {
	for {
		if lr.scan < lr.end {
			if i := bytes.IndexByte(lr.buf[lr.scan:lr.end], '\n'); i >= 0 {
				nl := lr.scan + i
				line := lr.buf[lr.start:nl]
				lr.start, lr.scan = nl+1, nl+1
				if len(line) > lr.max {
					lr.err = errLineTooLong
					return nil, fmt.Errorf("%w: more than %d bytes", errLineTooLong, lr.max)
				}
				return line, nil
			}
			lr.scan = lr.end
		}
		if lr.end-lr.start > lr.max {
			lr.err = errLineTooLong
			return nil, fmt.Errorf("%w: more than %d bytes", errLineTooLong, lr.max)
		}
		if lr.err != nil {
			if lr.err == io.EOF && lr.end > lr.start {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, lr.err
		}
		lr.makeRoom()
		partial := lr.end > lr.start
		if lr.dl != nil {
			d := lr.partial
			if !partial && lr.quiet {
				d = lr.idle
			}
			if err := armDeadline(lr.dl.SetReadDeadline, &lr.dlCur, d); err != nil {
				lr.err = err
				continue
			}
		}
		n, err := lr.r.Read(lr.buf[lr.end:])
		lr.end += n
		if n > 0 {
			lr.quiet = false
		}
		if err != nil {
			if lr.dl != nil && n == 0 && !partial && !lr.quiet && lr.idle != lr.partial && isTimeout(err) {
				lr.quiet = true // silence between lines: now wait up to idle
				continue
			}
			lr.err = err
		}
	}
}

// armDeadline sets a deadline d from now through set, unless the current one
// (*cur) already lies within [now+d, now+1.25·d]. An operation started now thus
// times out after d to 1.25·d, and a busy stream re-arms its timer (which
// costs about a microsecond in yamux) at most every d/4 instead of per call.
// d <= 0 clears the deadline.
func armDeadline(set func(time.Time) error, cur *time.Time, d time.Duration) error {
	if d <= 0 {
		if cur.IsZero() {
			return nil
		}
		*cur = time.Time{}
		return set(time.Time{})
	}
	lo := time.Now().Add(d)
	if !cur.IsZero() && !cur.Before(lo) && cur.Sub(lo) <= d/4 {
		return nil
	}
	*cur = lo.Add(d / 4)
	return set(*cur)
}

// makeRoom ensures buf has free space after end, compacting or growing it.
func (lr *lineReader) makeRoom() {
	if lr.start == lr.end {
		lr.start, lr.end, lr.scan = 0, 0, 0
		if len(lr.buf) == 0 || len(lr.buf) > 4*lr.init {
			lr.buf = make([]byte, lr.init) // first use, or drop a buffer grown for a long line
		}
		return
	}
	if lr.end < len(lr.buf) {
		return
	}
	if lr.start > 0 {
		n := copy(lr.buf, lr.buf[lr.start:lr.end])
		lr.scan -= lr.start
		lr.start, lr.end = 0, n
		if lr.end < len(lr.buf) {
			return
		}
	}
	size := 2 * len(lr.buf)
	if size > lr.max+1 {
		size = lr.max + 1
	}
	nb := make([]byte, size)
	copy(nb, lr.buf[lr.start:lr.end])
	lr.buf = nb
}
