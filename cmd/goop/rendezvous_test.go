package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/app"
)

// startRendezvous runs `goop rendezvous args...` in-process and returns its
// output lines up to and including the ready line, the server URL, and a
// stop function that cancels it (as SIGINT does) and returns its exit code.
func startRendezvous(t *testing.T, args ...string) (lines []string, url string, stop func() int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	outR, outW := io.Pipe()
	var errb syncBuffer
	codeC := make(chan int, 1)
	go func() {
		code := run(ctx, append([]string{"goop", "rendezvous"}, args...), outW, &errb)
		outW.Close()
		codeC <- code
	}()
	lineC := make(chan string, 16)
	go func() {
		defer close(lineC)
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			lineC <- sc.Text()
		}
	}()
	stopped := false
	stop = func() int {
		if stopped {
			return -1
		}
		stopped = true
		cancel()
		select {
		case code := <-codeC:
			return code
		case <-time.After(waitFor):
			t.Fatal("rendezvous did not stop")
			return -1
		}
	}
	t.Cleanup(func() { stop() })
	for {
		select {
		case line, ok := <-lineC:
			require.True(t, ok, "no ready line; stderr: %s", errb.String())
			lines = append(lines, line)
			if rest, ok := strings.CutPrefix(line, "ready "); ok {
				for _, f := range strings.Fields(rest) {
					if v, ok := strings.CutPrefix(f, "rendezvous="); ok {
						url = v
					}
				}
				require.NotEmpty(t, url, line)
				return lines, url, stop
			}
		case <-time.After(waitFor):
			t.Fatalf("no ready line; stderr: %s", errb.String())
		}
	}
}

// TestRendezvousCommand: `goop rendezvous DIR` creates a rendezvous-only
// config, serves /healthz, /publish and the public page, stops cleanly on
// cancellation, and runs again from the config it wrote.
func TestRendezvousCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "peers", "server")
	lines, url, stop := startRendezvous(t, "--port", "0", dir)
	assert.Contains(t, lines[0], "created "+filepath.Join(dir, "goop.json"))
	assert.Contains(t, lines[len(lines)-1], "connect=")

	cfg, err := app.LoadConfig(filepath.Join(dir, "goop.json"))
	require.NoError(t, err)
	assert.True(t, cfg.Presence.RendezvousOnly)
	assert.True(t, cfg.Presence.RendezvousHost)
	assert.Equal(t, "server", cfg.Profile.Label)

	for _, path := range []string{"/healthz", "/"} {
		resp, err := http.Get(url + path)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusOK, resp.StatusCode, path)
	}
	resp, err := http.Post(url+"/publish", "application/json", strings.NewReader(`{"type":"online"}`))
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
	assert.Equal(t, 0, stop())

	lines, url, stop = startRendezvous(t, "--port", "0", dir)
	assert.Len(t, lines, 1, "an existing folder is used as it is")
	resp, err = http.Get(url + "/healthz")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, 0, stop())
	http.DefaultClient.CloseIdleConnections()
}

func TestRendezvousCommandErrors(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	_, port, _ := net.SplitHostPort(busy.Addr().String())

	code, _, errOut := runGoop(t, "rendezvous", "--port", port, t.TempDir())
	assert.Equal(t, exitError, code)
	assert.Contains(t, errOut, "goop: presence.rendezvous_port: 127.0.0.1:"+port+" is in use")

	code, _, errOut = runGoop(t, "rendezvous")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, "usage: goop rendezvous DIR")

	code, _, errOut = runGoop(t, "rendezvous", "--bind", "not-an-ip", t.TempDir())
	assert.Equal(t, exitError, code)
	assert.Contains(t, errOut, "presence.rendezvous_bind")

	code, out, _ := runGoop(t, "rendezvous", "--help")
	assert.Equal(t, 0, code)
	assert.Contains(t, out, "goop rendezvous [command options] DIR")
}
