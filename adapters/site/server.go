package site

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"

	"github.com/goop-p2p/goop/adapters/internal/lines"
	"github.com/goop-p2p/goop/adapters/p2p"
)

// Defaults of ServerOptions.
const (
	DefaultRequestTimeout = 10 * time.Second
	DefaultWriteTimeout   = 30 * time.Second
	DefaultMaxConcurrent  = 64
)

// Wire reasons of ERR replies.
const (
	ReasonNotFound  = "not found"
	ReasonForbidden = "forbidden"
	ReasonTooLarge  = "too large"
	ReasonBusy      = "busy"
)

// ServerOptions tune a Server. Zero fields take the defaults above.
type ServerOptions struct {
	// Log receives the server's logs; peers' protocol errors go to Debug
	// (nil: discard).
	Log *slog.Logger
	// RequestTimeout bounds reading the request line.
	RequestTimeout time.Duration
	// WriteTimeout bounds each write of the reply: a peer that stops reading
	// is cut off.
	WriteTimeout time.Duration
	// MaxConcurrent bounds the transfers served at once; beyond it requests
	// are answered `ERR busy`.
	MaxConcurrent int
}

// Server serves a site folder over Protocol. It holds no goroutine of its
// own: each stream is served on the goroutine libp2p gives its handler.
type Server struct {
	h    host.Host
	root string
	opts ServerOptions
	sem  chan struct{}
}

// Register installs the Protocol handler on h, serving the files under root
// (see Open for the rules). root need not exist yet. Close removes the
// handler; the host stays open.
func Register(h host.Host, root string, opts ServerOptions) *Server {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = DefaultRequestTimeout
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = DefaultWriteTimeout
	}
	if opts.MaxConcurrent <= 0 {
		opts.MaxConcurrent = DefaultMaxConcurrent
	}
	s := &Server{h: h, root: root, opts: opts, sem: make(chan struct{}, opts.MaxConcurrent)}
	h.SetStreamHandler(Protocol, s.handle)
	return s
}

// Close removes the protocol handler. Transfers under way finish.
func (s *Server) Close() { s.h.RemoveStreamHandler(Protocol) }

func (s *Server) handle(st network.Stream) {
	from := st.Conn().RemotePeer()
	_ = st.SetReadDeadline(time.Now().Add(s.opts.RequestTimeout))
	line, err := lines.Read(bufio.NewReaderSize(st, 512), MaxRequestLine, false)
	if err != nil {
		s.opts.Log.Debug("site: bad request; stream reset", "peer", from, "err", err)
		_ = st.Reset()
		return
	}
	p, ok := parseRequest(line)
	if !ok {
		s.opts.Log.Debug("site: request is not `GET <path>`; stream reset", "peer", from, "line", truncate(string(line), 80))
		_ = st.Reset()
		return
	}
	w := &deadlineWriter{st: st, timeout: s.opts.WriteTimeout}
	select {
	case s.sem <- struct{}{}:
		defer func() { <-s.sem }()
	default:
		s.reply(st, w, "ERR "+ReasonBusy+"\n")
		return
	}
	f, err := Open(s.root, p)
	if err != nil {
		reason := ReasonNotFound
		switch {
		case errors.Is(err, ErrForbidden):
			reason = ReasonForbidden
		case errors.Is(err, ErrTooLarge):
			reason = ReasonTooLarge
		case !errors.Is(err, ErrNotFound):
			s.opts.Log.Warn("site: cannot serve", "path", truncate(p, 200), "err", err)
		}
		s.opts.Log.Debug("site: refused", "peer", from, "path", truncate(p, 200), "err", err)
		s.reply(st, w, "ERR "+reason+"\n")
		return
	}
	defer f.Close()
	// The transfer's connection is kept when the connection manager trims;
	// released before the stream ends, so that a visitor that saw it end
	// sees the protection gone.
	release := p2p.Protect(s.h, from, "goop-site/")
	hdr := "OK " + f.MIME + " " + strconv.FormatInt(f.Size, 10) + "\n"
	if _, err := io.WriteString(w, hdr); err != nil {
		release()
		_ = st.Reset()
		return
	}
	n, err := io.Copy(w, io.LimitReader(f, f.Size))
	if err == nil && n != f.Size {
		err = fmt.Errorf("file shrank to %d of %d bytes while sent", n, f.Size)
	}
	release()
	if err != nil {
		s.opts.Log.Debug("site: transfer failed; stream reset", "peer", from, "path", f.Name, "err", err)
		_ = st.Reset()
		return
	}
	_ = st.Close()
}

func (s *Server) reply(st network.Stream, w io.Writer, line string) {
	if _, err := io.WriteString(w, line); err != nil {
		_ = st.Reset()
		return
	}
	_ = st.Close()
}

// parseRequest splits `GET <path>` (a trailing '\r' is tolerated).
func parseRequest(line []byte) (string, bool) {
	line = bytes.TrimSuffix(line, []byte{'\r'})
	p, ok := bytes.CutPrefix(line, []byte("GET "))
	if !ok {
		return "", false
	}
	return string(p), true
}

// deadlineWriter bounds each write to a stream.
type deadlineWriter struct {
	st      network.Stream
	timeout time.Duration
}

func (w *deadlineWriter) Write(p []byte) (int, error) {
	if err := w.st.SetWriteDeadline(time.Now().Add(w.timeout)); err != nil {
		return 0, err
	}
	return w.st.Write(p)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// sanitizeReason makes a reason from the network printable and bounded.
func sanitizeReason(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
	return truncate(strings.TrimSpace(s), 200)
}
