// Package system adapts the operating system's clock and randomness to ports.
package system

import (
	"crypto/rand"
	"encoding/binary"
	"time"

	"github.com/goop-p2p/goop/ports"
)

var (
	_ ports.Clock = Clock{}
	_ ports.Rand  = Rand{}
)

// Clock is the wall clock.
type Clock struct{}

// Now implements ports.Clock.
func (Clock) Now() time.Time { return time.Now() }

// NewTimer implements ports.Clock.
func (Clock) NewTimer(d time.Duration) ports.Timer { return &timer{t: time.NewTimer(d)} }

type timer struct{ t *time.Timer }

func (w *timer) C() <-chan time.Time   { return w.t.C }
func (w *timer) Stop() bool            { return w.t.Stop() }
func (w *timer) Reset(d time.Duration) { w.t.Reset(d) }

// Rand reads the operating system's cryptographic random source. Safe for
// concurrent use.
type Rand struct{}

// Uint64 implements ports.Rand.
func (Rand) Uint64() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return binary.LittleEndian.Uint64(b[:])
}

// Read implements ports.Rand; crypto/rand.Read never fails on supported systems.
func (Rand) Read(p []byte) (int, error) { return rand.Read(p) }
