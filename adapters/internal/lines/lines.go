// Package lines reads the bounded, newline-terminated request and reply lines
// of Goop's one-shot stream protocols (site, data).
package lines

import (
	"bufio"
	"errors"
	"fmt"
	"io"
)

// ErrTooLong reports a line over its limit.
var ErrTooLong = errors.New("line too long")

// Read reads one '\n'-terminated line of at most max bytes (without the
// '\n'). With eofOK a line ended by the end of the stream is accepted (a
// writer that half-closes instead of sending '\n'). It never buffers more
// than max+1 bytes of a line.
func Read(br *bufio.Reader, max int, eofOK bool) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if len(line)+len(chunk) > max+1 {
			return nil, fmt.Errorf("%w: more than %d bytes", ErrTooLong, max)
		}
		line = append(line, chunk...)
		switch {
		case err == nil:
			return line[:len(line)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && eofOK && len(line) > 0:
			if len(line) > max {
				return nil, fmt.Errorf("%w: more than %d bytes", ErrTooLong, max)
			}
			return line, nil
		case errors.Is(err, io.EOF):
			return nil, io.ErrUnexpectedEOF
		default:
			return nil, err
		}
	}
}
