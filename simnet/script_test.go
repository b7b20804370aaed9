package simnet

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite the expected outputs in testdata/*.txt")

// scriptSeed is the seed every script runs with in the golden tests.
const scriptSeed = 1

// TestScripts runs every scenario script and compares each command's output
// with the expected output in the file (-update rewrites them).
func TestScripts(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, path := range files {
		name := strings.TrimSuffix(filepath.Base(path), ".txt")
		t.Run(name, func(t *testing.T) {
			src, err := os.ReadFile(path)
			require.NoError(t, err)
			s, err := ParseScript(path, string(src))
			require.NoError(t, err)
			outs, _, err := s.Execute(scriptSeed, Params{})
			require.NoError(t, err)
			if *update {
				require.NoError(t, os.WriteFile(path, []byte(s.Format(outs)), 0o644))
				return
			}
			cmds := s.Commands()
			for i, want := range s.Expected() {
				assert.Equal(t, strings.Join(want, "\n"), strings.Join(outs[i], "\n"), "%s", cmds[i])
			}
			// A second run gives the same transcript: scripts are deterministic.
			again, _, err := s.Execute(scriptSeed, Params{})
			require.NoError(t, err)
			assert.Equal(t, outs, again)
		})
	}
}

func TestScriptFormatRoundTrips(t *testing.T) {
	src := "# comment\n\nworld peers=1\n----\np0 x\n\n\nstats\n----\nok\n"
	s, err := ParseScript("x", src)
	require.NoError(t, err)
	assert.Equal(t, src, s.Format(nil))
	assert.Equal(t, [][]string{{"p0 x"}, {"ok"}}, s.Expected())
}

func TestScriptErrors(t *testing.T) {
	cases := []struct {
		name, src, want string
	}{
		{"missing separator", "world peers=1\nstats\n", "must be followed by a line ----"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseScript("x", tc.src)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	t.Run("unknown command", func(t *testing.T) {
		s, err := ParseScript("x", "world peers=1\n----\n\nfly to=moon\n----\n")
		require.NoError(t, err)
		outs, _, err := s.Execute(1, Params{})
		require.Error(t, err)
		assert.Contains(t, err.Error(), `x:4: unknown command "fly"`)
		assert.Equal(t, []string{`error: unknown command "fly"`}, outs[1])
	})
	t.Run("command before world", func(t *testing.T) {
		s, err := ParseScript("x", "stats\n----\n")
		require.NoError(t, err)
		outs, _, err := s.Execute(1, Params{})
		require.NoError(t, err)
		assert.Contains(t, outs[0][0], "must start with the world command")
	})
}
