//go:build unix

package sqlstore

import (
	"syscall"
	"testing"
	"time"
)

// cpuTime is the CPU time (user and system) the process used so far. On a
// machine shared with other work it varies less than the elapsed time.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
