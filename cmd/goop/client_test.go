package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/app"
)

// fakeViewer is a viewer API that answers the group list with one hosted
// group named after the server, and records the requests it got.
func fakeViewer(t *testing.T, name string) (url string, hits func() int) {
	t.Helper()
	var mu sync.Mutex
	n := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n++
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/api/groups":
			_ = json.NewEncoder(w).Encode([]map[string]any{{"id": "0123456789abcdef", "name": name, "group_type": "chat"}})
		case "/api/groups/subscriptions":
			_, _ = w.Write([]byte("[]"))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL, func() int { mu.Lock(); defer mu.Unlock(); return n }
}

// The node a groups subcommand talks to may be named before or after the
// subcommand; the nearest wins, and a flag given on the command line beats
// GOOP_API.
func TestGroupsAPIFlagsBeforeOrAfterTheSubcommand(t *testing.T) {
	one, hitsOne := fakeViewer(t, "server-one")
	two, hitsTwo := fakeViewer(t, "server-two")
	dir := t.TempDir()
	cfg := app.DefaultConfig()
	cfg.Viewer.HTTPAddr = strings.TrimPrefix(two, "http://")
	b, err := json.Marshal(cfg)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "goop.json"), b, 0o600))

	cases := []struct {
		name string
		env  string
		args []string
		want string
	}{
		{"api before", "", []string{"groups", "--api", one, "list"}, "server-one"},
		{"api after", "", []string{"groups", "list", "--api", one}, "server-one"},
		{"dir before", "", []string{"groups", "--dir", dir, "list"}, "server-two"},
		{"dir after", "", []string{"groups", "list", "--dir", dir}, "server-two"},
		{"nearest wins", "", []string{"groups", "--api", one, "list", "--api", two}, "server-two"},
		{"api beats a dir further out", "", []string{"groups", "--dir", dir, "list", "--api", one}, "server-one"},
		{"env", one, []string{"groups", "list"}, "server-one"},
		{"flag before beats env", one, []string{"groups", "--api", two, "list"}, "server-two"},
		{"flag after beats env", one, []string{"groups", "list", "--api", two}, "server-two"},
		{"json before", "", []string{"groups", "--json", "list", "--api", one}, `"name":"server-one"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("GOOP_API", tc.env)
			if tc.env == "" {
				require.NoError(t, os.Unsetenv("GOOP_API"))
			}
			before1, before2 := hitsOne(), hitsTwo()
			code, out, errOut := runGoop(t, tc.args...)
			require.Equal(t, 0, code, errOut)
			assert.Contains(t, out, tc.want)
			if strings.Contains(tc.want, "one") {
				assert.Equal(t, before2, hitsTwo(), "server two was not asked")
			} else {
				assert.Equal(t, before1, hitsOne(), "server one was not asked")
			}
		})
	}

}

// A flag the command line gets wrong, at any depth, exits with the usage
// code and says where help is.
func TestBadFlagsExitTwo(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--nope"}, "see goop --help"},
		{[]string{"init", "--nope", "x"}, "see goop init --help"},
		{[]string{"groups", "--nope", "list"}, "see goop groups --help"},
		{[]string{"groups", "list", "--nope"}, "see goop groups list --help"},
		{[]string{"groups", "list", "--api"}, "flag needs an argument: -api"},
		{[]string{"bench", "mq", "--count", "abc"}, "see goop bench mq --help"},
		{[]string{"sim", "--nope"}, "see goop sim --help"},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, out, errOut := runGoop(t, tc.args...)
			assert.Equal(t, exitUsage, code)
			assert.Contains(t, errOut, tc.want)
			assert.Empty(t, out, "no help dump on stdout")
		})
	}
}
