//go:build !unix

package sqlstore

import (
	"testing"
	"time"
)

// cpuTime is not measured here: the cpu-ns/op metric reads 0.
func cpuTime(*testing.B) time.Duration { return 0 }
