// Package site is the site protocol of SPEC §1 and §7 (/goop/site/1.0.0):
// a peer serves the files of its site folder to other peers, and fetches
// theirs for the viewer's /p/<peer-id>/ pages.
//
// Wire: the client writes one request line `GET <path>\n`; the server
// answers `OK <mime> <size>\n` followed by exactly size bytes, or
// `ERR <reason>\n`, and closes the stream. The size is the last
// space-separated field (a mime type may hold spaces). Bodies are at most
// MaxFileBytes.
//
// Confinement (Open, shared by the protocol server and the viewer's own
// pages): a path is cleaned and confined to the site root. `..` segments,
// backslashes, NUL and other control characters, invalid UTF-8, and paths
// whose percent-decoded form breaks one of these rules are refused; the
// top-level lua/ folder and every dot-file or dot-folder are never served,
// not even through a symlink; symlinks may not lead outside the root (the
// file is opened through os.Root, so a symlink swapped in after the checks
// cannot escape either); only regular files are served, a folder serves its
// index.html.
package site

import (
	"errors"
	"fmt"
	"io/fs"
	"mime"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"
	"unicode/utf8"
)

// Protocol is the site protocol id (SPEC §1).
const Protocol = "/goop/site/1.0.0"

// Limits of the protocol.
const (
	// MaxFileBytes is the largest file served or accepted (SPEC §1: 50 MB).
	MaxFileBytes = 50 << 20
	// MaxRequestLine bounds the request line, `GET ` and '\n' included.
	MaxRequestLine = 4 << 10
	// MaxHeaderLine bounds the reply's header line.
	MaxHeaderLine = 1 << 10
	// maxMIME bounds a mime type taken from the network.
	maxMIME = 200
)

// Typed errors of Open and Fetch; callers branch on them with errors.Is.
var (
	// ErrNotFound: no such file (or not a regular file).
	ErrNotFound = errors.New("not found")
	// ErrForbidden: the path is invalid or names something never served
	// (outside the root, lua/, a dot-file).
	ErrForbidden = errors.New("forbidden")
	// ErrTooLarge: the file is larger than MaxFileBytes.
	ErrTooLarge = errors.New("too large")
	// ErrUnreachable: the peer could not be reached, or the stream failed
	// or timed out.
	ErrUnreachable = errors.New("peer unreachable")
	// ErrProtocol: the peer's answer does not follow the protocol.
	ErrProtocol = errors.New("protocol error")
	// ErrRefused: the peer answered ERR with a reason other than the above
	// (e.g. `busy`); the error's text carries the reason.
	ErrRefused = errors.New("refused")
)

// CleanPath validates a requested path and returns it cleaned, relative to
// the site root, with '/' separators and without a leading '/': "" means the
// root, and a trailing '/' is kept (both name a folder). Empty and "."
// segments collapse. It returns an error wrapping ErrForbidden when the path
// breaks a rule of the package doc.
func CleanPath(p string) (string, error) {
	if len(p) > MaxRequestLine {
		return "", fmt.Errorf("%w: path longer than %d bytes", ErrForbidden, MaxRequestLine)
	}
	rel, err := cleanPath(p)
	if err != nil {
		return "", err
	}
	// A path that means traversal once percent-decoded is refused too: some
	// server along the way (a compat peer) may decode it.
	if strings.IndexByte(p, '%') >= 0 {
		if dec, derr := url.PathUnescape(p); derr == nil && dec != p {
			if _, err := cleanPath(dec); err != nil {
				return "", fmt.Errorf("%w (percent-decoded)", err)
			}
		}
	}
	return rel, nil
}

func cleanPath(p string) (string, error) {
	if !utf8.ValidString(p) {
		return "", fmt.Errorf("%w: path is not valid UTF-8", ErrForbidden)
	}
	for _, c := range p {
		switch {
		case c == 0:
			return "", fmt.Errorf("%w: path holds a NUL byte", ErrForbidden)
		case c < 0x20 || c == 0x7f || (c >= 0x80 && c < 0xa0):
			return "", fmt.Errorf("%w: path holds a control character", ErrForbidden)
		case c == '\\':
			return "", fmt.Errorf("%w: path holds a backslash", ErrForbidden)
		}
	}
	var segs []string
	for s := range strings.SplitSeq(p, "/") {
		switch {
		case s == "" || s == ".":
			continue
		case s == "..":
			return "", fmt.Errorf("%w: path leaves the site folder", ErrForbidden)
		case strings.HasPrefix(s, "."):
			return "", fmt.Errorf("%w: dot-files are not served", ErrForbidden)
		}
		segs = append(segs, s)
	}
	if err := checkPrivate(segs); err != nil {
		return "", err
	}
	rel := strings.Join(segs, "/")
	if rel != "" && strings.HasSuffix(p, "/") {
		rel += "/"
	}
	return rel, nil
}

// checkPrivate refuses the lua/ folder and dot-names in a cleaned path.
func checkPrivate(segs []string) error {
	if len(segs) > 0 && strings.EqualFold(segs[0], "lua") {
		return fmt.Errorf("%w: lua/ is never served", ErrForbidden)
	}
	for _, s := range segs {
		if strings.HasPrefix(s, ".") {
			return fmt.Errorf("%w: dot-files are not served", ErrForbidden)
		}
	}
	return nil
}

// File is an open site file. The caller owns it and must Close it.
type File struct {
	*os.File
	// Name is the served path relative to the root (an index.html for a folder).
	Name string
	// Size is the file's size in bytes (at most MaxFileBytes).
	Size int64
	// MIME is its content type, from its extension.
	MIME string
	// ModTime is its modification time.
	ModTime time.Time
	// Dir reports that the request named a folder and its index.html is served.
	Dir bool
}

// Open opens the site file that p names under the folder root, following
// the confinement rules of the package doc. Errors wrap ErrForbidden,
// ErrNotFound or ErrTooLarge, or say why the root cannot be read. It is safe
// for concurrent use; it never blocks on a FIFO or device (only regular files
// are opened).
func Open(root, p string) (*File, error) {
	rel, err := CleanPath(p)
	if err != nil {
		return nil, err
	}
	realRoot, err := filepath.EvalSymlinks(root)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: the site folder does not exist", ErrNotFound)
		}
		return nil, fmt.Errorf("site folder: %w", err)
	}
	r, err := os.OpenRoot(realRoot)
	if err != nil {
		return nil, fmt.Errorf("site folder: %w", err)
	}
	defer r.Close()

	dir := rel == "" || strings.HasSuffix(rel, "/")
	name := strings.TrimSuffix(rel, "/")
	if dir {
		name = path.Join(name, "index.html")
	}
	fi, err := resolve(realRoot, name)
	if err != nil {
		return nil, err
	}
	if fi.IsDir() && !dir {
		dir = true
		name = path.Join(name, "index.html")
		if fi, err = resolve(realRoot, name); err != nil {
			return nil, err
		}
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrNotFound, name)
	}
	if fi.Size() > MaxFileBytes {
		return nil, fmt.Errorf("%w: %s is %d bytes; the limit is %d", ErrTooLarge, name, fi.Size(), MaxFileBytes)
	}
	f, err := r.Open(filepath.FromSlash(name))
	if err != nil {
		return nil, classify(name, err)
	}
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() || !os.SameFile(st, fi) {
		_ = f.Close()
		return nil, fmt.Errorf("%w: %s changed while it was opened", ErrNotFound, name)
	}
	if st.Size() > MaxFileBytes {
		_ = f.Close()
		return nil, fmt.Errorf("%w: %s is %d bytes; the limit is %d", ErrTooLarge, name, st.Size(), MaxFileBytes)
	}
	return &File{File: f, Name: name, Size: st.Size(), MIME: TypeByName(name), ModTime: st.ModTime(), Dir: dir}, nil
}

// resolve follows name's symlinks under realRoot and checks that the target
// stays inside the root and is neither under lua/ nor a dot-name. It returns
// the target's info.
func resolve(realRoot, name string) (fs.FileInfo, error) {
	full := filepath.Join(realRoot, filepath.FromSlash(name))
	target, err := filepath.EvalSymlinks(full)
	if err != nil {
		return nil, classify(name, err)
	}
	relT, err := filepath.Rel(realRoot, target)
	if err != nil || relT == ".." || strings.HasPrefix(relT, ".."+string(filepath.Separator)) || filepath.IsAbs(relT) {
		return nil, fmt.Errorf("%w: %s leads outside the site folder", ErrForbidden, name)
	}
	if relT != "." {
		if err := checkPrivate(strings.Split(filepath.ToSlash(relT), "/")); err != nil {
			return nil, fmt.Errorf("%w (%s is a link to it)", err, name)
		}
	}
	fi, err := os.Stat(target)
	if err != nil {
		return nil, classify(name, err)
	}
	return fi, nil
}

func classify(name string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%w: %s", ErrNotFound, name)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("%w: %s is not readable", ErrForbidden, name)
	default:
		// ENOTDIR, ELOOP, an os.Root escape, ...: treat as absent.
		return fmt.Errorf("%w: %s", ErrNotFound, name)
	}
}

// webTypes are the content types of common web files, so that they do not
// depend on the machine's mime.types.
var webTypes = map[string]string{
	".html":  "text/html; charset=utf-8",
	".htm":   "text/html; charset=utf-8",
	".css":   "text/css; charset=utf-8",
	".js":    "text/javascript; charset=utf-8",
	".mjs":   "text/javascript; charset=utf-8",
	".json":  "application/json",
	".map":   "application/json",
	".txt":   "text/plain; charset=utf-8",
	".md":    "text/markdown; charset=utf-8",
	".svg":   "image/svg+xml",
	".png":   "image/png",
	".jpg":   "image/jpeg",
	".jpeg":  "image/jpeg",
	".gif":   "image/gif",
	".webp":  "image/webp",
	".avif":  "image/avif",
	".ico":   "image/x-icon",
	".wasm":  "application/wasm",
	".woff":  "font/woff",
	".woff2": "font/woff2",
	".ttf":   "font/ttf",
	".otf":   "font/otf",
	".mp3":   "audio/mpeg",
	".ogg":   "audio/ogg",
	".wav":   "audio/wav",
	".mp4":   "video/mp4",
	".webm":  "video/webm",
	".pdf":   "application/pdf",
	".xml":   "application/xml",
}

// DefaultMIME is the content type of files of unknown kind.
const DefaultMIME = "application/octet-stream"

// TypeByName returns the content type for a file name from its extension:
// common web types first, then the system's table, else DefaultMIME.
func TypeByName(name string) string {
	ext := strings.ToLower(path.Ext(name))
	if t, ok := webTypes[ext]; ok {
		return t
	}
	if ext != "" {
		if t := mime.TypeByExtension(ext); t != "" {
			return t
		}
	}
	return DefaultMIME
}

// SanitizeMIME returns t if it is a plausible content type (printable ASCII,
// a '/', at most 200 bytes), else DefaultMIME. Content types from the network
// go through it before they reach an HTTP header.
func SanitizeMIME(t string) string {
	t = strings.TrimSpace(t)
	if t == "" || len(t) > maxMIME || !strings.Contains(t, "/") {
		return DefaultMIME
	}
	for i := 0; i < len(t); i++ {
		if c := t[i]; c < 0x20 || c >= 0x7f {
			return DefaultMIME
		}
	}
	if _, _, err := mime.ParseMediaType(t); err != nil {
		return DefaultMIME
	}
	return t
}
