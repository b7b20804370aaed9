// Package nettest has network fixtures for the adapters' tests: addresses
// that behave as a crashed peer's do.
package nettest

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"

	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// listener is a TCP listener on 127.0.0.1 that hands each accepted
// connection to handle (with itself) and closes them all at the test's end.
type listener struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func listen(tb testing.TB, handle func(*listener, net.Conn)) *listener {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("nettest: listen: %v", err)
	}
	l := &listener{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			l.keep(c)
			handle(l, c)
		}
	}()
	tb.Cleanup(l.close)
	return l
}

// keep has c closed with the listener.
func (l *listener) keep(c net.Conn) {
	l.mu.Lock()
	l.conns = append(l.conns, c)
	l.mu.Unlock()
}

func (l *listener) close() {
	_ = l.ln.Close()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		_ = c.Close()
	}
}

// Addr is the listener's multiaddr.
func (l *listener) Addr(tb testing.TB) ma.Multiaddr {
	tb.Helper()
	m, err := manet.FromNetAddr(l.ln.Addr())
	if err != nil {
		tb.Fatalf("nettest: %v", err)
	}
	return m
}

// Silent accepts connections and never answers on them, as a crashed
// peer's address that still takes the dial (or a QUIC port nobody serves,
// which never refuses) does: a libp2p dial to it waits for its handshake
// until a timeout.
type Silent struct {
	*listener
	accepted chan struct{}
}

// NewSilent starts a Silent listener, closed at the test's end.
func NewSilent(tb testing.TB) *Silent {
	tb.Helper()
	s := &Silent{accepted: make(chan struct{}, 1)}
	s.listener = listen(tb, func(*listener, net.Conn) {
		select {
		case s.accepted <- struct{}{}:
		default:
		}
	})
	return s
}

// WaitDialed waits (up to d) until a connection was accepted since the
// last call, and fails the test otherwise.
func (s *Silent) WaitDialed(tb testing.TB, d time.Duration) {
	tb.Helper()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-s.accepted:
	case <-t.C:
		tb.Fatal("nettest: the silent address was never dialed")
	}
}

// Freezer is a TCP proxy to one address that can be frozen: it then stops
// forwarding in both directions but keeps every connection open, as a
// crashed machine or a pulled cable leaves its peer's connections (no FIN,
// no RST).
type Freezer struct {
	*listener
	frozen chan struct{}
}

// NewFreezer starts a Freezer to address to (host:port), closed at the
// test's end.
func NewFreezer(tb testing.TB, to string) *Freezer {
	tb.Helper()
	f := &Freezer{frozen: make(chan struct{})}
	f.listener = listen(tb, func(l *listener, c net.Conn) {
		d, err := net.Dial("tcp", to)
		if err != nil {
			_ = c.Close()
			return
		}
		l.keep(d)
		go f.pipe(c, d)
		go f.pipe(d, c)
	})
	return f
}

// Freeze stops the forwarding for good.
func (f *Freezer) Freeze() { close(f.frozen) }

// pipe copies chunk by chunk until frozen, then swallows the rest.
func (f *Freezer) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		select {
		case <-f.frozen:
			_, _ = io.Copy(io.Discard, src)
			return
		default:
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
