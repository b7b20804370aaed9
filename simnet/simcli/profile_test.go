package simcli

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestProfileFilesAreWritten(t *testing.T) {
	dir := t.TempDir()
	cpu, heap := filepath.Join(dir, "cpu.pprof"), filepath.Join(dir, "heap.pprof")
	stop, err := StartCPUProfile(cpu)
	require.NoError(t, err)
	require.NoError(t, stop())
	require.NoError(t, WriteHeapProfile(heap))
	for _, f := range []string{cpu, heap} {
		st, err := os.Stat(f)
		require.NoError(t, err)
		assert.NotZero(t, st.Size(), f)
	}
}

func TestNoPathNoProfile(t *testing.T) {
	stop, err := StartCPUProfile("")
	require.NoError(t, err)
	require.NoError(t, stop())
	require.NoError(t, WriteHeapProfile(""))
}

func TestBadProfilePathIsAnError(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "no", "such", "dir", "p")
	_, err := StartCPUProfile(bad)
	assert.ErrorContains(t, err, bad)
	assert.ErrorContains(t, WriteHeapProfile(bad), bad)
}
