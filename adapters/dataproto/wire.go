package dataproto

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/host"

	"github.com/goop-p2p/goop/adapters/internal/lines"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Defaults of ServerOptions and QueryOptions.
const (
	DefaultRequestTimeout = 10 * time.Second
	DefaultQueryTimeout   = 5 * time.Second
	DefaultWriteTimeout   = 10 * time.Second
	DefaultMaxConcurrent  = 32
	// DefaultTimeout bounds a whole remote query on the client side.
	DefaultTimeout = 10 * time.Second
)

// Reply is the wire reply. Goop2 peers leave ok out when it is false.
type Reply struct {
	OK    bool            `json:"ok"`
	Data  json.RawMessage `json:"data,omitempty"`
	Error string          `json:"error,omitempty"`
	Code  string          `json:"code,omitempty"`
}

// ServerOptions tune a Server. Zero fields take the defaults above.
type ServerOptions struct {
	// Log receives the server's logs; peers' protocol errors go to Debug
	// (nil: discard).
	Log *slog.Logger
	// RequestTimeout bounds reading the request line.
	RequestTimeout time.Duration
	// QueryTimeout bounds running the view.
	QueryTimeout time.Duration
	// WriteTimeout bounds writing the reply.
	WriteTimeout time.Duration
	// MaxConcurrent bounds the queries run at once; beyond it requests are
	// refused with CodeUnavailable.
	MaxConcurrent int
}

// Server answers Protocol requests from a Registry (the public surface).
// It holds no goroutine of its own.
type Server struct {
	h    host.Host
	reg  *Registry
	opts ServerOptions
	sem  chan struct{}
}

// Register installs the Protocol handler on h, answering from reg. Close
// removes it; the host stays open.
func Register(h host.Host, reg *Registry, opts ServerOptions) *Server {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = DefaultRequestTimeout
	}
	if opts.QueryTimeout <= 0 {
		opts.QueryTimeout = DefaultQueryTimeout
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = DefaultWriteTimeout
	}
	if opts.MaxConcurrent <= 0 {
		opts.MaxConcurrent = DefaultMaxConcurrent
	}
	s := &Server{h: h, reg: reg, opts: opts, sem: make(chan struct{}, opts.MaxConcurrent)}
	h.SetStreamHandler(Protocol, s.handle)
	return s
}

// Close removes the protocol handler. Queries under way finish.
func (s *Server) Close() { s.h.RemoveStreamHandler(Protocol) }

func (s *Server) handle(st network.Stream) {
	from := st.Conn().RemotePeer()
	_ = st.SetReadDeadline(time.Now().Add(s.opts.RequestTimeout))
	line, err := lines.Read(bufio.NewReaderSize(st, 4096), MaxRequestBytes, true)
	if err != nil {
		s.opts.Log.Debug("data: bad request; stream reset", "peer", from, "err", err)
		_ = st.Reset()
		return
	}
	line = bytes.TrimSpace(line)
	if !json.Valid(line) {
		s.opts.Log.Debug("data: request is not JSON; stream reset", "peer", from)
		_ = st.Reset()
		return
	}
	rep := s.answer(line, from)
	out, err := json.Marshal(rep)
	if err == nil && len(out) > MaxReplyBytes {
		out, err = json.Marshal(Reply{Error: fmt.Sprintf("the result is larger than %d bytes: ask for fewer rows (limit)", MaxReplyBytes), Code: CodeTooLarge})
	}
	if err != nil {
		_ = st.Reset()
		return
	}
	_ = st.SetWriteDeadline(time.Now().Add(s.opts.WriteTimeout))
	if _, err := st.Write(append(out, '\n')); err != nil {
		_ = st.Reset()
		return
	}
	_ = st.Close()
}

func (s *Server) answer(line []byte, from peer.ID) Reply {
	req, err := DecodeRequest(line, false)
	if err == nil {
		select {
		case s.sem <- struct{}{}:
			ctx, cancel := context.WithTimeout(context.Background(), s.opts.QueryTimeout)
			var rows []map[string]any
			rows, err = s.reg.Query(ctx, req)
			cancel()
			<-s.sem
			if err == nil {
				data, merr := json.Marshal(rows)
				if merr != nil {
					err = &Error{Code: CodeInternal, Msg: fmt.Sprintf("table %q could not be encoded", req.Table), Err: merr}
				} else {
					return Reply{OK: true, Data: data}
				}
			}
		default:
			err = errorf(CodeUnavailable, "the peer is busy; try again")
		}
	}
	var e *Error
	if !errors.As(err, &e) {
		e = &Error{Code: CodeInternal, Msg: "the query failed", Err: err}
	}
	if e.Code == CodeInternal {
		s.opts.Log.Warn("data: query failed", "peer", from, "table", req.Table, "err", e.Err)
	} else {
		s.opts.Log.Debug("data: query refused", "peer", from, "table", truncate(req.Table, 64), "err", e.Msg)
	}
	return Reply{Error: e.Msg, Code: e.Code}
}

// QueryOptions tune QueryWith. Zero fields take the defaults.
type QueryOptions struct {
	// Timeout bounds the whole query, dialing included (default DefaultTimeout).
	Timeout time.Duration
}

// Query asks peer p for req with the default timeout (see QueryWith).
func Query(ctx context.Context, h host.Host, p peer.ID, req Request) (json.RawMessage, error) {
	return QueryWith(ctx, h, p, req, QueryOptions{})
}

// knownCodes are the codes a peer's refusal may carry; others become CodeRefused.
var knownCodes = []string{CodeNotExposed, CodeSQLText, CodeUnsupported, CodeBadRequest, CodeTooLarge,
	CodeInternal, CodeUnavailable, CodeTimeout}

// QueryWith asks peer p for req over Protocol and returns the rows as a
// JSON array (validated; "[]" when the peer sent none). It blocks at most
// opts.Timeout or until ctx ends. Errors are *Error: the peer's refusal
// (its code, or CodeRefused from a compat peer; the message sanitized),
// CodeUnreachable (dial or stream failure), CodeTimeout, CodeProtocol (a
// reply that breaks the protocol), or CodeBadRequest for a req that fails
// Validate (nothing is sent then).
func QueryWith(ctx context.Context, h host.Host, p peer.ID, req Request, opts QueryOptions) (json.RawMessage, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	body, err := json.Marshal(req)
	if err != nil || len(body) > MaxRequestBytes {
		return nil, errorf(CodeBadRequest, "bad request: larger than %d bytes", MaxRequestBytes)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	netErr := func(what string, err error) error {
		var ne net.Error
		if ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
			return &Error{Code: CodeTimeout, Msg: fmt.Sprintf("peer %s did not answer within %s", p, opts.Timeout), Err: err}
		}
		return &Error{Code: CodeUnreachable, Msg: fmt.Sprintf("peer %s is unreachable: %s: %v", p, what, err), Err: err}
	}
	st, err := h.NewStream(ctx, p, Protocol)
	if err != nil {
		return nil, netErr("open stream", err)
	}
	stop := context.AfterFunc(ctx, func() { _ = st.Reset() })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		_ = st.SetDeadline(dl)
	}
	if _, err := st.Write(append(body, '\n')); err != nil {
		_ = st.Reset()
		return nil, netErr("send request", err)
	}
	_ = st.CloseWrite()
	line, err := lines.Read(bufio.NewReaderSize(st, 16<<10), MaxReplyBytes, true)
	if err != nil {
		_ = st.Reset()
		if errors.Is(err, lines.ErrTooLong) {
			return nil, errorf(CodeProtocol, "peer %s sent a reply over %d bytes", p, MaxReplyBytes)
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, errorf(CodeUnreachable, "peer %s closed the stream without a reply", p)
		}
		return nil, netErr("read reply", err)
	}
	_ = st.Close()
	return parseReply(p, line)
}

func parseReply(p peer.ID, line []byte) (json.RawMessage, error) {
	var rep Reply
	if err := json.Unmarshal(bytes.TrimSpace(line), &rep); err != nil {
		return nil, errorf(CodeProtocol, "peer %s sent a reply that is not a JSON object", p)
	}
	if !rep.OK {
		code := rep.Code
		if !slices.Contains(knownCodes, code) {
			code = CodeRefused
		}
		msg := sanitize(rep.Error)
		if msg == "" {
			msg = "no reason given"
		}
		return nil, &Error{Code: code, Msg: fmt.Sprintf("peer %s refused the query: %s", p, msg)}
	}
	data := bytes.TrimSpace(rep.Data)
	if len(data) == 0 || string(data) == "null" {
		return json.RawMessage("[]"), nil
	}
	if data[0] != '[' {
		return nil, errorf(CodeProtocol, "peer %s sent data that is not a list of rows", p)
	}
	return json.RawMessage(data), nil
}

// sanitize makes a message from the network printable and bounded.
func sanitize(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == '\u2028' || r == '\u2029' {
			return ' '
		}
		return r
	}, s)
	return truncate(strings.TrimSpace(s), 300)
}
