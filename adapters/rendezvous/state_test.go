package rendezvous

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/domain/presence"
)

// stateServer is a Server on a StatePath driven without a listener: publishes
// go straight to its handler, sweeps are called by the test.
func stateServer(t *testing.T, path string, clock *fakeClock, h *hooks) *Server {
	t.Helper()
	s := NewServer(ServerConfig{StatePath: path, Now: clock.Now, SweepInterval: time.Hour, hooks: h})
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// publishTo posts m to s's /publish handler and returns the status and body.
func publishTo(t *testing.T, s *Server, m PresenceMsg) (int, string) {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/publish", bytes.NewReader(mustJSON(t, m)))
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

func readState(t *testing.T, path string) stateFile {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	var sf stateFile
	require.NoError(t, json.Unmarshal(b, &sf))
	return sf
}

func stateIDs(sf stateFile) []string {
	var ids []string
	for _, r := range sf.Signed {
		ids = append(ids, r.ID)
	}
	return ids
}

// dirEntries lists the names in dir.
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// TestSignedMemorySurvivesRestart: after a restart on the same StatePath,
// unsigned presence for a peer id that published signed is still refused,
// and its earlier signed publish cannot be replayed; unknown peers still
// publish unsigned, and the signed peer goes on with newer publishes.
func TestSignedMemorySurvivesRestart(t *testing.T) {
	clock := newFakeClock()
	path := filepath.Join(t.TempDir(), "data", StateFileName) // data/ does not exist yet
	key := newKey(t)
	m := signed(t, key, TypeOnline, "alice", clock.Now())

	s1 := stateServer(t, path, clock, nil)
	code, _ := publishTo(t, s1, m)
	require.Equal(t, http.StatusNoContent, code)
	require.NoError(t, s1.Close())

	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	sf := readState(t, path)
	assert.Equal(t, stateVersion, sf.Version)
	require.Len(t, sf.Signed, 1)
	assert.Equal(t, stateRecord{ID: string(m.PeerID), Seen: clock.Now().UnixMilli(), LastTS: m.TS}, sf.Signed[0])

	clock.Advance(10 * time.Second)
	s2 := stateServer(t, path, clock, nil)
	assert.Equal(t, 1, s2.Stats().SignedIDs)
	for _, typ := range []string{TypeOnline, TypeUpdate, TypeOffline} {
		imp := PresenceMsg{Type: typ, PeerID: m.PeerID, Content: "mallory"}
		code, body := publishTo(t, s2, imp)
		assert.Equal(t, http.StatusForbidden, code, typ)
		assert.Contains(t, body, "publishes signed presence")
	}
	code, body := publishTo(t, s2, m)
	assert.Equal(t, http.StatusForbidden, code, "a replay of the publish made before the restart")
	assert.Contains(t, body, "replay")

	compat := PresenceMsg{Type: TypeOnline, PeerID: idOf(t, newKey(t)), Content: "goop2"}
	code, _ = publishTo(t, s2, compat)
	assert.Equal(t, http.StatusNoContent, code, "an unknown peer still publishes unsigned")
	code, _ = publishTo(t, s2, signed(t, key, TypeUpdate, "alice", clock.Now()))
	assert.Equal(t, http.StatusNoContent, code, "the peer's newer signed publish")
	require.NoError(t, s2.Close())
	assert.Equal(t, []string{string(m.PeerID)}, stateIDs(readState(t, path)), "unsigned peers are not recorded")
}

// TestStateSavedBySweepOnlyWhenChanged: a sweep writes the records when they
// changed and not otherwise; expired records leave the file.
func TestStateSavedBySweepOnlyWhenChanged(t *testing.T) {
	clock := newFakeClock()
	path := filepath.Join(t.TempDir(), StateFileName)
	var writes atomic.Int32
	s := stateServer(t, path, clock, &hooks{stateWriter: func(w io.Writer) io.Writer { writes.Add(1); return w }})

	s.Sweep()
	assert.Zero(t, writes.Load(), "nothing to save")
	_, err := os.Stat(path)
	assert.ErrorIs(t, err, os.ErrNotExist)

	a := signed(t, newKey(t), TypeOnline, "a", clock.Now())
	code, _ := publishTo(t, s, a)
	require.Equal(t, http.StatusNoContent, code)
	s.Sweep()
	assert.EqualValues(t, 1, writes.Load())
	assert.Equal(t, []string{string(a.PeerID)}, stateIDs(readState(t, path)))
	s.Sweep()
	assert.EqualValues(t, 1, writes.Load(), "unchanged: not written again")

	clock.Advance(DefaultSignedMemory - time.Hour)
	b := signed(t, newKey(t), TypeOnline, "b", clock.Now())
	code, _ = publishTo(t, s, b)
	require.Equal(t, http.StatusNoContent, code)
	clock.Advance(2 * time.Hour) // a expires, b does not
	s.Sweep()
	assert.EqualValues(t, 2, writes.Load())
	assert.Equal(t, []string{string(b.PeerID)}, stateIDs(readState(t, path)))
	require.NoError(t, s.Close())
	assert.EqualValues(t, 2, writes.Load(), "Close has nothing new to save")
}

// TestStateTSOnlyChangesAreSavedLess: a known peer id's newer signed
// publish (a heartbeat) moves only its last ts: the file is not rewritten at
// every sweep for it, but once stateTSSaveEvery has passed, and at Close.
func TestStateTSOnlyChangesAreSavedLess(t *testing.T) {
	clock := newFakeClock()
	path := filepath.Join(t.TempDir(), StateFileName)
	var writes atomic.Int32
	s := stateServer(t, path, clock, &hooks{stateWriter: func(w io.Writer) io.Writer { writes.Add(1); return w }})
	key := newKey(t)
	heartbeat := func() int64 {
		m := signed(t, key, TypeOnline, "a", clock.Now())
		code, _ := publishTo(t, s, m)
		require.Equal(t, http.StatusNoContent, code)
		return m.TS
	}
	heartbeat()
	s.Sweep()
	require.EqualValues(t, 1, writes.Load(), "a new peer id is saved at the next sweep")

	clock.Advance(5 * time.Second)
	ts := heartbeat()
	s.Sweep()
	assert.EqualValues(t, 1, writes.Load(), "a heartbeat alone does not rewrite the file at once")
	clock.Advance(stateTSSaveEvery)
	s.Sweep()
	assert.EqualValues(t, 2, writes.Load(), "it does once stateTSSaveEvery has passed")
	assert.Equal(t, ts, readState(t, path).Signed[0].LastTS)

	clock.Advance(5 * time.Second)
	ts = heartbeat()
	s.Sweep()
	assert.EqualValues(t, 2, writes.Load())
	require.NoError(t, s.Close())
	assert.EqualValues(t, 3, writes.Load(), "Close saves what the sweeps held back")
	assert.Equal(t, ts, readState(t, path).Signed[0].LastTS)
}

// TestStateLoadSkipsExpiredAndInvalid: records older than SignedMemory,
// invalid ones and those over MaxSignedIDs (the least recently seen) are not
// loaded: their peer ids may publish unsigned again.
func TestStateLoadSkipsExpiredAndInvalid(t *testing.T) {
	clock := newFakeClock()
	now := clock.Now()
	path := filepath.Join(t.TempDir(), StateFileName)
	fresh, older, oldest, expired := idOf(t, newKey(t)), idOf(t, newKey(t)), idOf(t, newKey(t)), idOf(t, newKey(t))
	ms := func(d time.Duration) int64 { return now.Add(-d).UnixMilli() }
	sf := stateFile{Version: stateVersion, Signed: []stateRecord{
		{ID: string(fresh), Seen: ms(time.Minute), LastTS: ms(time.Minute)},
		{ID: string(older), Seen: ms(time.Hour), LastTS: ms(time.Hour)},
		{ID: string(oldest), Seen: ms(2 * time.Hour), LastTS: ms(2 * time.Hour)},
		{ID: string(expired), Seen: ms(DefaultSignedMemory + time.Minute), LastTS: ms(DefaultSignedMemory + time.Minute)},
		{ID: "not-a-peer-id", Seen: ms(time.Minute), LastTS: 1},
		{ID: string(fresh) + "x", Seen: ms(time.Minute), LastTS: 1},
		{ID: string(older), Seen: 0, LastTS: 1},
	}}
	require.NoError(t, os.WriteFile(path, mustJSON(t, sf), 0o600))

	s := NewServer(ServerConfig{StatePath: path, Now: clock.Now, SweepInterval: time.Hour, MaxSignedIDs: 2})
	t.Cleanup(func() { _ = s.Close() })
	assert.Equal(t, 2, s.Stats().SignedIDs)
	for id, want := range map[presence.PeerID]int{
		fresh: http.StatusForbidden, older: http.StatusForbidden,
		oldest: http.StatusNoContent, expired: http.StatusNoContent,
	} {
		code, _ := publishTo(t, s, PresenceMsg{Type: TypeOnline, PeerID: id, Content: "x"})
		assert.Equal(t, want, code, id)
	}
	s.Sweep() // the skipped records leave the file
	assert.ElementsMatch(t, []string{string(fresh), string(older)}, stateIDs(readState(t, path)))
}

// TestCorruptStateFile: a state file that cannot be parsed is moved aside to
// <path>.corrupt (kept for inspection) and the server starts without
// records; the next save writes a good file.
func TestCorruptStateFile(t *testing.T) {
	for name, content := range map[string]string{
		"bad JSON":        `{"version":1,"signed":[{"id":`,
		"unknown version": `{"version":99,"signed":[]}`,
		"not an object":   `[1,2,3]`,
	} {
		t.Run(name, func(t *testing.T) {
			clock := newFakeClock()
			path := filepath.Join(t.TempDir(), StateFileName)
			require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
			s := stateServer(t, path, clock, nil)
			assert.Zero(t, s.Stats().SignedIDs)
			kept, err := os.ReadFile(path + ".corrupt")
			require.NoError(t, err)
			assert.Equal(t, content, string(kept))
			_, err = os.Stat(path)
			assert.ErrorIs(t, err, os.ErrNotExist)

			code, _ := publishTo(t, s, PresenceMsg{Type: TypeOnline, PeerID: idOf(t, newKey(t)), Content: "goop2"})
			assert.Equal(t, http.StatusNoContent, code)
			m := signed(t, newKey(t), TypeOnline, "alice", clock.Now())
			code, _ = publishTo(t, s, m)
			require.Equal(t, http.StatusNoContent, code)
			require.NoError(t, s.Close())
			assert.Equal(t, []string{string(m.PeerID)}, stateIDs(readState(t, path)))
		})
	}
}

// failingWriter writes up to n bytes, then fails.
type failingWriter struct {
	w io.Writer
	n int
}

func (f *failingWriter) Write(p []byte) (int, error) {
	if len(p) > f.n {
		k, _ := f.w.Write(p[:f.n])
		f.n = 0
		return k, errors.New("disk full (injected)")
	}
	f.n -= len(p)
	return f.w.Write(p)
}

// TestStateSaveIsAtomic: a save whose write fails midway leaves the
// previous file intact and no temporary file behind; it is retried, and a
// Close that cannot save says so.
func TestStateSaveIsAtomic(t *testing.T) {
	clock := newFakeClock()
	dir := t.TempDir()
	path := filepath.Join(dir, StateFileName)
	var fail atomic.Bool
	h := &hooks{stateWriter: func(w io.Writer) io.Writer {
		if fail.Load() {
			return &failingWriter{w: w, n: 40}
		}
		return w
	}}
	s := stateServer(t, path, clock, h)
	a := signed(t, newKey(t), TypeOnline, "a", clock.Now())
	code, _ := publishTo(t, s, a)
	require.Equal(t, http.StatusNoContent, code)
	s.Sweep()
	before, err := os.ReadFile(path)
	require.NoError(t, err)

	fail.Store(true)
	b := signed(t, newKey(t), TypeOnline, "b", clock.Now())
	code, _ = publishTo(t, s, b)
	require.Equal(t, http.StatusNoContent, code)
	s.Sweep()
	after, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, string(before), string(after), "the failed save left the previous file")
	assert.Equal(t, []string{StateFileName}, dirEntries(t, dir), "no temporary file left")

	err = s.Close()
	require.Error(t, err, "Close could not save")
	assert.Contains(t, err.Error(), path)
	after, err = os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, string(before), string(after))
	assert.Equal(t, []string{StateFileName}, dirEntries(t, dir))

	// The next server has what the last good save had.
	s2 := stateServer(t, path, clock, nil)
	code, _ = publishTo(t, s2, PresenceMsg{Type: TypeOnline, PeerID: a.PeerID})
	assert.Equal(t, http.StatusForbidden, code)
	code, _ = publishTo(t, s2, b)
	assert.Equal(t, http.StatusNoContent, code, "b's publish was never saved")
	require.NoError(t, s2.Close())
	assert.ElementsMatch(t, []string{string(a.PeerID), string(b.PeerID)}, stateIDs(readState(t, path)))
}

// TestStateUnwritable: a StatePath whose folder cannot be created
// makes saves fail (logged, and reported by Close) but the server serves.
func TestStateUnwritable(t *testing.T) {
	clock := newFakeClock()
	file := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(file, nil, 0o600))
	path := filepath.Join(file, StateFileName) // its folder is a file
	s := stateServer(t, path, clock, nil)
	code, _ := publishTo(t, s, signed(t, newKey(t), TypeOnline, "a", clock.Now()))
	require.Equal(t, http.StatusNoContent, code)
	s.Sweep()
	err := s.Close()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "save signed-peer state to "+path)
}
