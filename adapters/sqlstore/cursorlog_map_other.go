//go:build !linux

package sqlstore

import (
	"errors"
	"os"
)

// mapCursorLog is Linux's only: elsewhere the log is written with pwrite(2).
func mapCursorLog(*os.File, int64) ([]byte, error) {
	return nil, errors.New("not mapped on this system")
}

func unmapCursorLog([]byte) error { return nil }
