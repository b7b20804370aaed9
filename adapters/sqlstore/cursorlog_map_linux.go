package sqlstore

import (
	"fmt"
	"os"
	"syscall"
)

// mapCursorLog reserves size bytes of disk for the log file f (which grows
// to size, its tail zero) and maps them for writing. The reservation is what
// makes a write to the mapping safe: a page of a sparse file would be
// allocated only when first written, and a full disk then kills the process
// (SIGBUS) instead of failing a call.
func mapCursorLog(f *os.File, size int64) ([]byte, error) {
	if err := syscall.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		return nil, fmt.Errorf("reserve %d bytes: %w", size, err)
	}
	m, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map %d bytes: %w", size, err)
	}
	return m, nil
}

func unmapCursorLog(m []byte) error { return syscall.Munmap(m) }
