package site

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCleanPath(t *testing.T) {
	ok := []struct{ name, in, want string }{
		{"empty is the root", "", ""},
		{"slash is the root", "/", ""},
		{"file", "/index.html", "index.html"},
		{"no leading slash", "a/b.css", "a/b.css"},
		{"double slashes collapse", "//a//b.css", "a/b.css"},
		{"dot segments collapse", "./a/./b.css", "a/b.css"},
		{"folder keeps its slash", "/sub/", "sub/"},
		{"spaces and unicode", "/my file é.html", "my file é.html"},
		{"nested lua is user content", "/games/lua/x.txt", "games/lua/x.txt"},
		{"literal percent that decodes harmlessly", "/100%25.html", "100%25.html"},
		{"bad escape stays literal", "/a%zz.html", "a%zz.html"},
	}
	for _, c := range ok {
		t.Run(c.name, func(t *testing.T) {
			got, err := CleanPath(c.in)
			require.NoError(t, err)
			assert.Equal(t, c.want, got)
		})
	}
	bad := []struct{ name, in, why string }{
		{"parent", "../secret", "leaves the site folder"},
		{"parent deep", "/a/../../etc/passwd", "leaves the site folder"},
		{"trailing parent", "/a/..", "leaves the site folder"},
		{"encoded parent", "/%2e%2e/secret", "leaves the site folder"},
		{"encoded parent upper case", "/%2E%2E%2Fsecret", "leaves the site folder"},
		{"encoded slash and parent", "/a%2f..%2f..%2fsecret", "leaves the site folder"},
		{"backslash", `/a\..\secret`, "backslash"},
		{"encoded backslash", "/a%5c..%5csecret", "backslash"},
		{"NUL", "/a\x00.html", "NUL"},
		{"encoded NUL", "/a%00.html", "NUL"},
		{"newline", "/a\n.html", "control character"},
		{"DEL", "/a\x7f.html", "control character"},
		{"invalid UTF-8", "/a\xff.html", "UTF-8"},
		{"dot-file", "/.env", "dot-files"},
		{"dot-dir", "/a/.git/config", "dot-files"},
		{"encoded dot-file", "/%2eenv", "dot-files"},
		{"lua folder", "/lua/main.lua", "lua/"},
		{"lua folder itself", "/lua", "lua/"},
		{"lua any case", "/LuA/main.lua", "lua/"},
		{"encoded lua", "/%6cua/main.lua", "lua/"},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			_, err := CleanPath(c.in)
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrForbidden)
			assert.Contains(t, err.Error(), c.why)
		})
	}
}

// siteTree makes a site folder and a secret file next to it.
func siteTree(t *testing.T) (root, outside string) {
	t.Helper()
	base := t.TempDir()
	root = filepath.Join(base, "site")
	outside = filepath.Join(base, "secret.txt")
	files := map[string]string{
		"index.html":          "<h1>home</h1>",
		"style.css":           "body{}",
		"app.js":              "1",
		"sub/index.html":      "<p>sub</p>",
		"nested/lua/ok.txt":   "user content",
		"lua/main.lua":        "print('secret')",
		".env":                "TOKEN=1",
		".git/config":         "[core]",
		"data.unknownext1234": "x",
		"noext":               "x",
	}
	for name, body := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(body), 0o644))
	}
	require.NoError(t, os.WriteFile(outside, []byte("outside"), 0o644))
	require.NoError(t, os.MkdirAll(filepath.Join(base, "outdir"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(base, "outdir", "x.html"), []byte("outside"), 0o644))
	return root, outside
}

func readAll(t *testing.T, f *File) string {
	t.Helper()
	defer f.Close()
	b, err := io.ReadAll(f)
	require.NoError(t, err)
	return string(b)
}

func TestOpenServesFilesAndIndexes(t *testing.T) {
	root, _ := siteTree(t)
	cases := []struct {
		name, path, body, mime, served string
		dir                            bool
	}{
		{"root", "/", "<h1>home</h1>", "text/html; charset=utf-8", "index.html", true},
		{"empty", "", "<h1>home</h1>", "text/html; charset=utf-8", "index.html", true},
		{"file", "/style.css", "body{}", "text/css; charset=utf-8", "style.css", false},
		{"js", "app.js", "1", "text/javascript; charset=utf-8", "app.js", false},
		{"folder with slash", "/sub/", "<p>sub</p>", "text/html; charset=utf-8", "sub/index.html", true},
		{"folder without slash", "/sub", "<p>sub</p>", "text/html; charset=utf-8", "sub/index.html", true},
		{"nested lua folder", "/nested/lua/ok.txt", "user content", "text/plain; charset=utf-8", "nested/lua/ok.txt", false},
		{"unknown extension", "/data.unknownext1234", "x", DefaultMIME, "data.unknownext1234", false},
		{"no extension", "/noext", "x", DefaultMIME, "noext", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, err := Open(root, c.path)
			require.NoError(t, err)
			assert.Equal(t, c.mime, f.MIME)
			assert.Equal(t, c.served, f.Name)
			assert.Equal(t, c.dir, f.Dir)
			assert.Equal(t, int64(len(c.body)), f.Size)
			assert.Equal(t, c.body, readAll(t, f))
		})
	}
}

func TestOpenRefusesWhatIsNeverServed(t *testing.T) {
	root, outside := siteTree(t)
	base := filepath.Dir(root)
	links := map[string]string{
		"to-outside-file.txt": outside,
		"to-outside-dir":      filepath.Join(base, "outdir"),
		"to-outside-rel.txt":  "../secret.txt",
		"to-lua":              filepath.Join(root, "lua"),
		"to-lua-file.txt":     "lua/main.lua",
		"to-env.txt":          ".env",
		"to-git":              ".git",
		"inside.css":          "style.css",
		"to-sub":              "sub",
		"dangling.html":       "nothing-here.html",
	}
	for name, target := range links {
		require.NoError(t, os.Symlink(target, filepath.Join(root, name)))
	}
	// A link to the root's parent from inside a folder.
	require.NoError(t, os.Symlink("../..", filepath.Join(root, "sub", "up")))

	cases := []struct {
		name, path string
		want       error
	}{
		{"parent", "/../secret.txt", ErrForbidden},
		{"encoded parent", "/%2e%2e/secret.txt", ErrForbidden},
		{"lua", "/lua/main.lua", ErrForbidden},
		{"dot-file", "/.env", ErrForbidden},
		{"dot-dir", "/.git/config", ErrForbidden},
		{"symlink to a file outside", "/to-outside-file.txt", ErrForbidden},
		{"symlink to a folder outside", "/to-outside-dir/x.html", ErrForbidden},
		{"relative symlink outside", "/to-outside-rel.txt", ErrForbidden},
		{"symlink up from a folder", "/sub/up/secret.txt", ErrForbidden},
		{"symlink to lua/", "/to-lua/main.lua", ErrForbidden},
		{"symlink to a lua file", "/to-lua-file.txt", ErrForbidden},
		{"symlink to a dot-file", "/to-env.txt", ErrForbidden},
		{"symlink to a dot-dir", "/to-git/config", ErrForbidden},
		{"missing", "/nope.html", ErrNotFound},
		{"dangling symlink", "/dangling.html", ErrNotFound},
		{"file as folder", "/style.css/", ErrNotFound},
		{"folder without index", "/nested/", ErrNotFound},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, err := Open(root, c.path)
			if f != nil {
				_ = f.Close()
			}
			require.Error(t, err)
			assert.ErrorIs(t, err, c.want, "%v", err)
		})
	}

	// Symlinks that stay inside the root are followed.
	f, err := Open(root, "/inside.css")
	require.NoError(t, err)
	assert.Equal(t, "body{}", readAll(t, f))
	f, err = Open(root, "/to-sub/")
	require.NoError(t, err)
	assert.Equal(t, "<p>sub</p>", readAll(t, f))
}

func TestOpenRefusesOversizeAndSpecialFiles(t *testing.T) {
	root, _ := siteTree(t)
	// A sparse file one byte over the limit takes no disk space.
	big := filepath.Join(root, "big.bin")
	require.NoError(t, os.WriteFile(big, nil, 0o644))
	require.NoError(t, os.Truncate(big, MaxFileBytes+1))
	_, err := Open(root, "/big.bin")
	assert.ErrorIs(t, err, ErrTooLarge)

	// Exactly at the limit is served.
	require.NoError(t, os.Truncate(big, MaxFileBytes))
	f, err := Open(root, "/big.bin")
	require.NoError(t, err)
	assert.Equal(t, int64(MaxFileBytes), f.Size)
	_ = f.Close()

	if runtime.GOOS != "windows" {
		// A FIFO must be refused without blocking on open.
		require.NoError(t, syscall.Mkfifo(filepath.Join(root, "pipe.html"), 0o644))
		_, err = Open(root, "/pipe.html")
		assert.ErrorIs(t, err, ErrNotFound)
	}

	_, err = Open(filepath.Join(root, "missing-root"), "/")
	assert.ErrorIs(t, err, ErrNotFound)
}

func TestTypeByNameAndSanitizeMIME(t *testing.T) {
	assert.Equal(t, "text/html; charset=utf-8", TypeByName("a/B.HTML"))
	assert.Equal(t, "image/svg+xml", TypeByName("x.svg"))
	assert.Equal(t, "application/wasm", TypeByName("x.wasm"))
	assert.Equal(t, DefaultMIME, TypeByName("x"))

	for in, want := range map[string]string{
		"text/html; charset=utf-8": "text/html; charset=utf-8",
		" image/png ":              "image/png",
		"":                         DefaultMIME,
		"html":                     DefaultMIME,
		"text/html\r\nX-Evil: 1":   DefaultMIME,
		"text/\x00html":            DefaultMIME,
		"text/html; charset=é":     DefaultMIME,
		"text/html;;;":             DefaultMIME,
	} {
		assert.Equal(t, want, SanitizeMIME(in), "%q", in)
	}
}

func TestParseHeader(t *testing.T) {
	ok := []struct {
		name, line, mime string
		size             int64
	}{
		{"plain", "OK image/png 42", "image/png", 42},
		{"mime with spaces: size is the last field", "OK text/html; charset=utf-8 1234", "text/html; charset=utf-8", 1234},
		{"CR tolerated", "OK text/css 0\r", "text/css", 0},
		{"bad mime sanitized", "OK nonsense 5", DefaultMIME, 5},
		{"at the limit", "OK a/b 52428800", "a/b", MaxFileBytes},
	}
	for _, c := range ok {
		t.Run(c.name, func(t *testing.T) {
			mime, size, err := parseHeader(c.line)
			require.NoError(t, err)
			assert.Equal(t, c.mime, mime)
			assert.Equal(t, c.size, size)
		})
	}
	bad := []struct {
		name, line string
		want       error
	}{
		{"over the limit", "OK a/b 52428801", ErrTooLarge},
		{"negative size", "OK a/b -1", ErrProtocol},
		{"no size", "OK", ErrProtocol},
		{"size not a number", "OK a/b x", ErrProtocol},
		{"garbage", "HTTP/1.1 200 OK", ErrProtocol},
		{"not found", "ERR not found", ErrNotFound},
		{"compat forbidden", "ERR forbidden", ErrForbidden},
		{"too large", "ERR too large", ErrTooLarge},
		{"compat site disabled", "ERR site disabled", ErrNotFound},
		{"busy", "ERR busy", ErrRefused},
		{"bare ERR", "ERR", ErrRefused},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := parseHeader(c.line)
			require.Error(t, err)
			assert.True(t, errors.Is(err, c.want), "%v", err)
		})
	}
}
