package e2e

import (
	"bufio"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// goopProcess is `goop peer DIR` running as a child process.
type goopProcess struct {
	cmd *exec.Cmd
	// ready holds the key=value fields of its ready line (peer_id, viewer,
	// rendezvous, ...).
	ready   map[string]string
	stderr  *rvBuffer
	done    chan error // the exit, once
	stopped bool
}

// startGoopProcess runs `goop peer dir` and waits (up to wait) for its ready
// line. At cleanup it is stopped with SIGTERM and must exit cleanly, unless
// the test stopped or killed it.
func startGoopProcess(t *testing.T, bin, dir string, wait time.Duration) *goopProcess {
	t.Helper()
	p := &goopProcess{cmd: exec.Command(bin, "peer", dir), stderr: &rvBuffer{}, done: make(chan error, 1)}
	p.cmd.Stderr = p.stderr
	out, err := p.cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, p.cmd.Start())
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if line := sc.Text(); strings.HasPrefix(line, "ready ") {
				select {
				case ready <- line:
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, out)
		p.done <- p.cmd.Wait()
	}()
	t.Cleanup(func() { p.stop(t, wait) })
	select {
	case line := <-ready:
		p.ready = map[string]string{}
		for _, f := range strings.Fields(line) {
			if k, v, ok := strings.Cut(f, "="); ok {
				p.ready[k] = v
			}
		}
	case err := <-p.done:
		p.done <- err
		t.Fatalf("goop peer %s exited: %v; stderr: %s", dir, err, p.stderr)
	case <-time.After(wait):
		t.Fatalf("no ready line from goop peer %s; stderr: %s", dir, p.stderr)
	}
	return p
}

// stop sends SIGTERM and waits (up to wait) for a clean exit. Safe to call
// twice.
func (p *goopProcess) stop(t *testing.T, wait time.Duration) {
	t.Helper()
	if p.stopped {
		return
	}
	p.stopped = true
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		assert.NoError(t, err, "goop peer exit; stderr: %s", p.stderr)
	case <-time.After(wait):
		_ = p.cmd.Process.Kill()
		t.Errorf("goop peer did not stop on SIGTERM")
	}
}

// kill ends the process with SIGKILL: nothing of it runs after this, no
// shutdown code, no flush.
func (p *goopProcess) kill(t *testing.T) {
	t.Helper()
	p.stopped = true
	require.NoError(t, p.cmd.Process.Kill())
	<-p.done
}
