//go:build !(linux || darwin)

package main

// raiseOpenFiles is not supported here; 0 means the limit is unknown.
func raiseOpenFiles() uint64 { return 0 }
