package simcli

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
)

// StartCPUProfile starts a CPU profile into path ("" for none) and returns the
// function that stops it and closes the file.
func StartCPUProfile(path string) (stop func() error, err error) {
	return startToFile("cpu profile", path, pprof.StartCPUProfile, pprof.StopCPUProfile)
}

// StartTrace starts a Go execution trace into path ("" for none) and
// returns the function that stops it and closes the file.
func StartTrace(path string) (stop func() error, err error) {
	return startToFile("execution trace", path, trace.Start, trace.Stop)
}

// startToFile starts recording what (start writes into the file at path, ""
// for none) and returns the function that stops it (stop) and closes the
// file.
func startToFile(what, path string, start func(io.Writer) error, stop func()) (func() error, error) {
	if path == "" {
		return func() error { return nil }, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := start(f); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("%s %s: %w", what, path, err)
	}
	return func() error {
		stop()
		if err := f.Close(); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	}, nil
}

// WriteHeapProfile writes a heap profile to path ("" for none), after a GC: the
// in-use figures are those of now; allocations (alloc_space, alloc_objects)
// cover the whole run.
func WriteHeapProfile(path string) error {
	if path == "" {
		return nil
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("heap profile: %w", err)
	}
	runtime.GC()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		_ = f.Close()
		return fmt.Errorf("heap profile %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("heap profile: %w", err)
	}
	return nil
}
