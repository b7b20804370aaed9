package site

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/goop-p2p/goop/adapters/internal/lines"
	"github.com/goop-p2p/goop/adapters/p2p"
)

// Defaults of FetchOptions.
const (
	// DefaultHeaderTimeout bounds a fetch up to the reply's header line,
	// dialing included.
	DefaultHeaderTimeout = 10 * time.Second
	// DefaultReadTimeout bounds each read of the body.
	DefaultReadTimeout = 30 * time.Second
)

// FetchOptions tune FetchWith. Zero fields take the defaults above.
type FetchOptions struct {
	// HeaderTimeout bounds opening the stream, sending the request and
	// reading the header line.
	HeaderTimeout time.Duration
	// ReadTimeout bounds each read of the body: a peer that stalls longer
	// ends the transfer with ErrUnreachable.
	ReadTimeout time.Duration
}

// Fetch asks peer p for the file at path of its site, with the default
// timeouts (see FetchWith).
func Fetch(ctx context.Context, h host.Host, p peer.ID, path string) (mime string, size int64, body io.ReadCloser, err error) {
	return FetchWith(ctx, h, p, path, FetchOptions{})
}

// FetchWith asks peer p for the file at path of its site. It blocks until the
// reply's header arrived (at most opts.HeaderTimeout, or until ctx ends) and
// returns the file's content type (sanitized), its size (at most
// MaxFileBytes) and its body, which yields exactly size bytes. The caller
// must Close body; ctx keeps bounding the body's reads after FetchWith
// returns. Errors wrap ErrNotFound, ErrForbidden, ErrTooLarge, ErrRefused
// (the peer's answer), ErrUnreachable (dial, stream or timeout; the cause is
// wrapped too) or ErrProtocol.
//
// Until body is closed, h's connection manager does not close the
// connection to p when it trims connections (a node with hundreds of peers
// would otherwise cut a visit or a download short).
func FetchWith(ctx context.Context, h host.Host, p peer.ID, path string, opts FetchOptions) (mime string, size int64, body io.ReadCloser, err error) {
	if opts.HeaderTimeout <= 0 {
		opts.HeaderTimeout = DefaultHeaderTimeout
	}
	if opts.ReadTimeout <= 0 {
		opts.ReadTimeout = DefaultReadTimeout
	}
	if len(path) > MaxRequestLine-len("GET \n") || strings.ContainsAny(path, "\r\n\x00") {
		return "", 0, nil, fmt.Errorf("%w: invalid path", ErrForbidden)
	}
	deadline := time.Now().Add(opts.HeaderTimeout)
	octx, cancel := context.WithDeadline(ctx, deadline)
	st, err := h.NewStream(octx, p, Protocol)
	cancel()
	if err != nil {
		return "", 0, nil, fmt.Errorf("%w: open %s stream to %s: %w", ErrUnreachable, Protocol, p, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = st.Reset() })
	release := p2p.Protect(h, p, "goop-site/")
	fail := func(e error) (string, int64, io.ReadCloser, error) {
		stop()
		release()
		_ = st.Reset()
		if cerr := ctx.Err(); cerr != nil && errors.Is(e, ErrUnreachable) {
			e = fmt.Errorf("%w (%w)", e, cerr)
		}
		return "", 0, nil, e
	}
	_ = st.SetDeadline(deadline)
	if _, err := io.WriteString(st, "GET "+path+"\n"); err != nil {
		return fail(fmt.Errorf("%w: send request to %s: %w", ErrUnreachable, p, err))
	}
	_ = st.CloseWrite()
	br := bufio.NewReaderSize(st, 32<<10)
	line, err := lines.Read(br, MaxHeaderLine, false)
	if err != nil {
		if errors.Is(err, lines.ErrTooLong) {
			return fail(fmt.Errorf("%w: %s sent a header line over %d bytes", ErrProtocol, p, MaxHeaderLine))
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return fail(fmt.Errorf("%w: %s closed the stream without an answer", ErrUnreachable, p))
		}
		if isTimeout(err) {
			return fail(fmt.Errorf("%w: %s did not answer within %s: %w", ErrUnreachable, p, opts.HeaderTimeout, os.ErrDeadlineExceeded))
		}
		return fail(fmt.Errorf("%w: read answer of %s: %w", ErrUnreachable, p, err))
	}
	mime, size, err = parseHeader(string(line))
	if err != nil {
		return fail(fmt.Errorf("%s: %w", p, err))
	}
	_ = st.SetDeadline(time.Time{})
	return mime, size, &bodyReader{st: st, br: br, left: size, timeout: opts.ReadTimeout, stop: stop, release: release}, nil
}

// parseHeader parses `OK <mime> <size>` (size is the last field) or
// `ERR <reason>`.
func parseHeader(line string) (mime string, size int64, err error) {
	line = strings.TrimSuffix(line, "\r")
	if reason, ok := strings.CutPrefix(line, "ERR"); ok && (reason == "" || reason[0] == ' ') {
		return "", 0, reasonError(sanitizeReason(reason))
	}
	rest, ok := strings.CutPrefix(line, "OK ")
	if !ok {
		return "", 0, fmt.Errorf("%w: answer %q is neither OK nor ERR", ErrProtocol, truncate(sanitizeReason(line), 60))
	}
	i := strings.LastIndexByte(rest, ' ')
	if i < 0 {
		return "", 0, fmt.Errorf("%w: OK line without a size", ErrProtocol)
	}
	size, err = strconv.ParseInt(strings.TrimSpace(rest[i+1:]), 10, 64)
	if err != nil || size < 0 {
		return "", 0, fmt.Errorf("%w: bad size %q", ErrProtocol, truncate(sanitizeReason(rest[i+1:]), 30))
	}
	if size > MaxFileBytes {
		return "", 0, fmt.Errorf("%w: the file is %d bytes; the limit is %d", ErrTooLarge, size, MaxFileBytes)
	}
	return SanitizeMIME(rest[:i]), size, nil
}

// reasonError maps an ERR reason to a typed error. Goop2 peers answer `not
// found`, `forbidden`, `bad request`, `site disabled`; ours also `too large`
// and `busy`.
func reasonError(reason string) error {
	low := strings.ToLower(reason)
	switch {
	case strings.Contains(low, "not found"), strings.Contains(low, "no such"), strings.Contains(low, "site disabled"):
		return fmt.Errorf("%w (%s)", ErrNotFound, reason)
	case strings.Contains(low, "forbidden"), strings.Contains(low, "denied"):
		return fmt.Errorf("%w (%s)", ErrForbidden, reason)
	case strings.Contains(low, "too large"):
		return fmt.Errorf("%w (%s)", ErrTooLarge, reason)
	case reason == "":
		return fmt.Errorf("%w: no reason given", ErrRefused)
	default:
		return fmt.Errorf("%w: %s", ErrRefused, reason)
	}
}

// bodyReader yields exactly left bytes of a reply, each read bounded.
type bodyReader struct {
	st      network.Stream
	br      *bufio.Reader
	left    int64
	timeout time.Duration
	stop    func() bool
	release func() // ends the connection's protection (protect)
	once    sync.Once
}

func (b *bodyReader) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	if b.br.Buffered() == 0 {
		_ = b.st.SetReadDeadline(time.Now().Add(b.timeout))
	}
	n, err := b.br.Read(p)
	b.left -= int64(n)
	if b.left == 0 {
		return n, nil
	}
	switch {
	case err == nil:
		return n, nil
	case errors.Is(err, io.EOF):
		return n, fmt.Errorf("%w: the stream ended %d bytes early: %w", ErrUnreachable, b.left, io.ErrUnexpectedEOF)
	case isTimeout(err):
		return n, fmt.Errorf("%w: the peer sent nothing for %s: %w", ErrUnreachable, b.timeout, os.ErrDeadlineExceeded)
	default:
		return n, fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
}

// isTimeout reports a deadline error (yamux's is a net.Error, not
// os.ErrDeadlineExceeded).
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// Close ends the stream: closed when the body was read in full, reset
// otherwise. The connection is no longer protected for it.
func (b *bodyReader) Close() error {
	b.once.Do(func() {
		b.stop()
		b.release()
		if b.left == 0 {
			_ = b.st.Close()
		} else {
			_ = b.st.Reset()
		}
	})
	return nil
}
