package rendezvous

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// The signed-peer state file (ServerConfig.StatePath) keeps, across
// restarts, which peer ids publish signed presence and their last signed
// ts, so that a restart opens no window for unsigned impersonation or for
// replaying an old signed publish. It is JSON:
//
//	{"version":1,"saved":<unix ms>,"signed":[
//	{"id":"12D3KooW…","seen":<unix ms of the last signed publish>,"last_ts":<its ts>},
//	…]}
//
// Loading (NewServer) skips records older than SignedMemory and invalid
// ones (not a libp2p peer id with an embedded key, longer than
// MaxPeerIDBytes, non-positive times), keeps at most MaxSignedIDs (the most
// recently seen) and tolerates a missing file. A file that cannot be parsed
// (bad JSON, unknown version, larger than any valid file) is logged at error
// level and moved aside to <path>.corrupt, and the server starts without
// records (as it would without the option): a damaged file must not keep a
// rendezvous server down, and the damaged copy is kept for inspection.
//
// Saving writes a temporary file in the same folder (mode 0600), syncs it
// and renames it over the file, so a crash or a failed write leaves the
// previous file intact.

// StateFileName is the file name of a peer-hosted rendezvous server's
// signed-peer state, kept in the peer folder's data/ (StatePathIn).
const StateFileName = "rendezvous-signed.json"

// StatePathIn returns where the rendezvous server of the peer folder dir
// keeps its signed-peer state: dir/data/rendezvous-signed.json.
func StatePathIn(dir string) string { return filepath.Join(dir, "data", StateFileName) }

// stateVersion is the version of the state file format written and read.
const stateVersion = 1

// maxStateRecordBytes bounds one record's encoding, for the file size limit.
const maxStateRecordBytes = MaxPeerIDBytes + 96

type stateFile struct {
	Version int           `json:"version"`
	Saved   int64         `json:"saved"`
	Signed  []stateRecord `json:"signed"`
}

type stateRecord struct {
	ID     string `json:"id"`
	Seen   int64  `json:"seen"`
	LastTS int64  `json:"last_ts"`
}

// errCorruptState marks a state file that cannot be used at all.
var errCorruptState = errors.New("corrupt signed-peer state file")

// maxStateBytes bounds the size of a state file worth reading.
func (s *Server) maxStateBytes() int64 {
	return int64(max(s.cfg.MaxSignedIDs, DefaultMaxSignedIDs))*maxStateRecordBytes + 4096
}

// readStateFile reads and parses path (not the records' validity).
func readStateFile(path string, limit int64) (stateFile, error) {
	var sf stateFile
	f, err := os.Open(path)
	if err != nil {
		return sf, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return sf, err
	}
	if int64(len(data)) > limit {
		return sf, fmt.Errorf("%w: larger than %d bytes", errCorruptState, limit)
	}
	if err := json.Unmarshal(data, &sf); err != nil {
		return sf, fmt.Errorf("%w: %v", errCorruptState, err)
	}
	if sf.Version != stateVersion {
		return sf, fmt.Errorf("%w: version %d, want %d", errCorruptState, sf.Version, stateVersion)
	}
	return sf, nil
}

// validStateID reports whether id can be a signed publisher's peer id.
func validStateID(id string) bool {
	if id == "" || len(id) > MaxPeerIDBytes {
		return false
	}
	pid, err := peer.Decode(id)
	if err != nil {
		return false
	}
	pub, err := pid.ExtractPublicKey()
	return err == nil && pub != nil
}

// loadState fills s.signed from cfg.StatePath (see the file comment above).
// Called by NewServer before anything else runs.
func (s *Server) loadState() {
	path := s.cfg.StatePath
	sf, err := readStateFile(path, s.maxStateBytes())
	switch {
	case errors.Is(err, fs.ErrNotExist):
		s.log.Info("rendezvous: no signed-peer state yet", "path", path)
		return
	case errors.Is(err, errCorruptState):
		aside := path + ".corrupt"
		if rerr := os.Rename(path, aside); rerr != nil {
			s.log.Error("rendezvous: signed-peer state file is corrupt and could not be moved aside; starting without signed-peer records",
				"path", path, "err", err, "rename_err", rerr)
		} else {
			s.log.Error("rendezvous: signed-peer state file is corrupt; moved aside, starting without signed-peer records",
				"path", path, "moved_to", aside, "err", err)
		}
		s.signedGen++ // write a good file at the next sweep
		return
	case err != nil:
		s.log.Error("rendezvous: cannot read the signed-peer state; starting without signed-peer records",
			"path", path, "err", err)
		return
	}
	now := s.cfg.Now()
	var expired, invalid int
	kept := make(map[string]*signedInfo, min(len(sf.Signed), s.cfg.MaxSignedIDs))
	for _, r := range sf.Signed {
		if r.Seen <= 0 || r.LastTS <= 0 || !validStateID(r.ID) {
			invalid++
			continue
		}
		seen := time.UnixMilli(r.Seen)
		if seen.After(now) {
			seen = now // the clock went back: do not let the record outlive SignedMemory
		}
		if now.Sub(seen) > s.cfg.SignedMemory {
			expired++
			continue
		}
		if old, ok := kept[r.ID]; ok {
			old.lastTS = max(old.lastTS, r.LastTS)
			if seen.After(old.seen) {
				old.seen = seen
			}
			invalid++
			continue
		}
		kept[r.ID] = &signedInfo{lastTS: r.LastTS, seen: seen}
	}
	dropped := 0
	if len(kept) > s.cfg.MaxSignedIDs {
		ids := make([]string, 0, len(kept))
		for id := range kept {
			ids = append(ids, id)
		}
		slices.SortFunc(ids, func(a, b string) int { return kept[b].seen.Compare(kept[a].seen) })
		for _, id := range ids[s.cfg.MaxSignedIDs:] {
			delete(kept, id)
			dropped++
		}
	}
	s.signed = kept
	if expired+invalid+dropped > 0 {
		s.signedGen++ // rewrite the file without them at the next sweep
	}
	s.log.Info("rendezvous: loaded signed-peer state", "path", path, "records", len(kept),
		"expired", expired, "invalid", invalid, "over_limit", dropped)
}

// stateTSSaveEvery bounds how often the state file is rewritten when only
// the last ts of known peer ids moved (every signed heartbeat moves one): a
// peer id that starts or stops being remembered is saved at the next sweep,
// what protects against replays after a restart is at most this old. A
// replayed publish must also be within MaxClockSkew of the server's clock.
const stateTSSaveEvery = time.Minute

// saveState writes the signed-peer records to cfg.StatePath if the set of
// peer ids changed since the last successful save, or if only their ts did
// and stateTSSaveEvery has passed (or force, at Close). A failed save is
// retried at the next sweep. Saves are serialized; publishes are blocked
// only while the records are copied.
func (s *Server) saveState(force bool) error {
	if s.cfg.StatePath == "" {
		return nil
	}
	s.saveMu.Lock()
	defer s.saveMu.Unlock()
	s.mu.Lock()
	now := s.cfg.Now()
	gen, tsGen := s.signedGen, s.tsGen
	tsDue := tsGen != s.savedTSGen && (force || now.Sub(s.savedAt) >= stateTSSaveEvery)
	if gen == s.savedGen && !tsDue {
		s.mu.Unlock()
		return nil
	}
	recs := make([]stateRecord, 0, len(s.signed))
	for id, si := range s.signed {
		if now.Sub(si.seen) <= s.cfg.SignedMemory {
			recs = append(recs, stateRecord{ID: id, Seen: si.seen.UnixMilli(), LastTS: si.lastTS})
		}
	}
	s.mu.Unlock()
	slices.SortFunc(recs, func(a, b stateRecord) int { return strings.Compare(a.ID, b.ID) })

	var wrap func(io.Writer) io.Writer
	if h := s.cfg.hooks; h != nil {
		wrap = h.stateWriter
	}
	err := writeFileAtomic(s.cfg.StatePath, wrap, func(w io.Writer) error {
		if _, err := fmt.Fprintf(w, `{"version":%d,"saved":%d,"signed":[`, stateVersion, now.UnixMilli()); err != nil {
			return err
		}
		for i, r := range recs {
			b, err := json.Marshal(r)
			if err != nil {
				return err
			}
			sep := ",\n"
			if i == 0 {
				sep = "\n"
			}
			if _, err := io.WriteString(w, sep); err != nil {
				return err
			}
			if _, err := w.Write(b); err != nil {
				return err
			}
		}
		_, err := io.WriteString(w, "\n]}\n")
		return err
	})
	if err != nil {
		return fmt.Errorf("rendezvous: save signed-peer state to %s: %w", s.cfg.StatePath, err)
	}
	s.savedGen, s.savedTSGen, s.savedAt = gen, tsGen, now
	return nil
}

// writeFileAtomic replaces path with what write produces: it writes a
// temporary file (mode 0600) in path's folder (created with mode 0700 if
// missing), syncs it and renames it over path, then syncs the folder. On any
// error the temporary file is removed and path is left as it was. wrap, if
// set, wraps the file's writer (tests inject failures with it).
func writeFileAtomic(path string, wrap func(io.Writer) io.Writer, write func(io.Writer) error) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create folder: %w", err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("create temporary file: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("chmod temporary file: %w", err)
	}
	var w io.Writer = f
	if wrap != nil {
		w = wrap(f)
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	if err := write(bw); err != nil {
		return fmt.Errorf("write temporary file: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write temporary file: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync temporary file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close temporary file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename temporary file: %w", err)
	}
	// Make the rename durable; not every platform can sync a folder.
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
