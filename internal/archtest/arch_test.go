// Package archtest enforces the layering of ARCHITECTURE.md and the purity of
// domain/: it parses every non-test Go file of the module and fails on an
// import against the dependency direction, or on I/O, goroutines, clock reads
// or global randomness inside domain/.
package archtest

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const module = "github.com/goop-p2p/goop"

// allowed lists, for each layer (top folder), the layers of ours it may import.
var allowed = map[string][]string{
	"domain":   {"domain"},
	"ports":    {"ports", "domain"},
	"app":      {"app", "ports", "domain"},
	"adapters": {"adapters", "ports", "domain"},
	"simnet":   {"simnet", "ports", "domain", "app"},
	"cmd":      {"cmd", "app", "adapters", "simnet", "ports", "domain"},
	"e2e":      {"e2e", "cmd", "app", "adapters", "simnet", "ports", "domain"},
	"internal": {"internal", "cmd", "app", "adapters", "simnet", "ports", "domain"},
}

// exceptions are single package-to-layer edges ARCHITECTURE.md permits on
// purpose: the viewer HTTP API is a driving adapter that calls the app's use
// cases (hexagonal "primary" side).
var exceptions = map[string][]string{
	"adapters/httpapi": {"app"},
}

// domainForbiddenImports are I/O packages domain/ must never import.
var domainForbiddenImports = []string{
	"net", "net/", "os", "os/", "database/sql", "syscall", "crypto/rand", "math/rand",
	"io/ioutil", "io/fs", "log", "unsafe", "runtime", "sync", "github.com/libp2p/",
	"github.com/uptrace/", "github.com/urfave/", "github.com/multiformats/",
}

// domainAllowedThirdParty are non-std imports domain/ may use.
var domainAllowedThirdParty = []string{}

// forbiddenCalls are package-level functions that read the clock or global randomness.
var forbiddenCalls = map[string][]string{
	"time": {"Now", "Sleep", "After", "AfterFunc", "NewTimer", "NewTicker", "Tick", "Since", "Until"},
	"rand": {"Int", "Intn", "IntN", "Int31", "Int31n", "Int32", "Int32N", "Int64", "Int64N", "Int63", "Int63n",
		"Uint32", "Uint64", "Uint", "UintN", "Uint64N", "Uint32N", "N", "Float32", "Float64", "Perm", "Shuffle",
		"Read", "NormFloat64", "ExpFloat64"},
}

type file struct {
	rel string // path relative to the module root
	pkg string // package folder relative to the root
	ast *ast.File
}

func moduleRoot(t *testing.T) string {
	dir, err := os.Getwd()
	require.NoError(t, err)
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		require.NotEqual(t, parent, dir, "go.mod not found")
		dir = parent
	}
}

func parseTree(t *testing.T, root string) []file {
	var files []file
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "vendor" || name == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return fmt.Errorf("parse %s: %w", path, err)
		}
		rel, _ := filepath.Rel(root, path)
		files = append(files, file{rel: filepath.ToSlash(rel), pkg: filepath.ToSlash(filepath.Dir(rel)), ast: f})
		return nil
	})
	require.NoError(t, err)
	return files
}

func layerOf(pkg string) string {
	return strings.SplitN(pkg, "/", 2)[0]
}

// checkLayering returns one line per import against the dependency direction.
func checkLayering(files []file) []string {
	var bad []string
	for _, f := range files {
		layer := layerOf(f.pkg)
		ok, known := allowed[layer]
		if !known {
			if f.pkg != "." {
				bad = append(bad, fmt.Sprintf("%s: folder %q is not a layer of ARCHITECTURE.md", f.rel, layer))
			}
			continue
		}
		for _, imp := range f.ast.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if !strings.HasPrefix(p, module+"/") {
				continue
			}
			target := strings.TrimPrefix(p, module+"/")
			tl := layerOf(target)
			if contains(ok, tl) || exceptionAllows(f.pkg, tl) {
				continue
			}
			bad = append(bad, fmt.Sprintf("%s: layer %s must not import %s", f.rel, layer, target))
		}
	}
	return bad
}

func exceptionAllows(pkg, targetLayer string) bool {
	for prefix, layers := range exceptions {
		if (pkg == prefix || strings.HasPrefix(pkg, prefix+"/")) && contains(layers, targetLayer) {
			return true
		}
	}
	return false
}

// checkDomainPurity returns one line per impurity found in domain/ files.
func checkDomainPurity(files []file) []string {
	var bad []string
	for _, f := range files {
		if layerOf(f.pkg) != "domain" {
			continue
		}
		names := map[string]string{} // local name -> import path
		for _, imp := range f.ast.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			local := p[strings.LastIndex(p, "/")+1:]
			if strings.HasPrefix(local, "v") && strings.Contains(p, "/") && strings.Count(p, "/") >= 1 {
				if _, err := strconv.Atoi(local[1:]); err == nil { // math/rand/v2 → rand
					parts := strings.Split(p, "/")
					local = parts[len(parts)-2]
				}
			}
			if imp.Name != nil {
				local = imp.Name.Name
			}
			names[local] = p
			for _, forb := range domainForbiddenImports {
				if p == strings.TrimSuffix(forb, "/") || (strings.HasSuffix(forb, "/") && strings.HasPrefix(p, forb)) {
					bad = append(bad, fmt.Sprintf("%s: domain imports I/O package %q", f.rel, p))
				}
			}
			if !strings.HasPrefix(p, module+"/") && strings.Contains(strings.SplitN(p, "/", 2)[0], ".") &&
				!contains(domainAllowedThirdParty, p) {
				bad = append(bad, fmt.Sprintf("%s: domain imports third-party package %q", f.rel, p))
			}
		}
		ast.Inspect(f.ast, func(n ast.Node) bool {
			switch x := n.(type) {
			case *ast.GoStmt:
				bad = append(bad, fmt.Sprintf("%s: domain starts a goroutine (go statement)", f.rel))
			case *ast.SelectorExpr:
				id, ok := x.X.(*ast.Ident)
				if !ok {
					return true
				}
				path := names[id.Name]
				key := path[strings.LastIndex(path, "/")+1:]
				if path == "math/rand/v2" {
					key = "rand"
				}
				if path != "time" && path != "math/rand" && path != "math/rand/v2" {
					return true
				}
				if contains(forbiddenCalls[key], x.Sel.Name) {
					bad = append(bad, fmt.Sprintf("%s: domain calls %s.%s (clock or global randomness)", f.rel, path, x.Sel.Name))
				}
			}
			return true
		})
	}
	return bad
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestLayering(t *testing.T) {
	files := parseTree(t, moduleRoot(t))
	require.NotEmpty(t, files)
	assert.Empty(t, checkLayering(files), "imports against ARCHITECTURE.md's dependency direction")
}

func TestDomainIsPure(t *testing.T) {
	files := parseTree(t, moduleRoot(t))
	assert.Empty(t, checkDomainPurity(files), "domain/ must stay sans-I/O")
}

// TestCheckersCatchViolations proves the checks can fail, on planted sources.
func TestCheckersCatchViolations(t *testing.T) {
	cases := []struct {
		name, pkg, src, want string
	}{
		{"net import", "domain/x", `package x; import _ "net"`, `domain imports I/O package "net"`},
		{"os subpackage", "domain/x", `package x; import _ "os/exec"`, `I/O package "os/exec"`},
		{"database", "domain/x", `package x; import _ "database/sql"`, `"database/sql"`},
		{"http", "domain/x", `package x; import _ "net/http"`, `"net/http"`},
		{"libp2p", "domain/x", `package x; import _ "github.com/libp2p/go-libp2p"`, `github.com/libp2p/go-libp2p`},
		{"bun", "domain/x", `package x; import _ "github.com/uptrace/bun"`, `github.com/uptrace/bun`},
		{"goroutine", "domain/x", `package x; func f() { go f() }`, "goroutine"},
		{"clock", "domain/x", `package x; import "time"; var _ = time.Now()`, "time.Now"},
		{"sleep", "domain/x", `package x; import "time"; func f() { time.Sleep(1) }`, "time.Sleep"},
		{"timer", "domain/x", `package x; import "time"; var _ = time.NewTimer(1)`, "time.NewTimer"},
		{"global rand v2", "domain/x", `package x; import "math/rand/v2"; var _ = rand.IntN(3)`, "rand/v2.IntN"},
		{"renamed time", "domain/x", `package x; import tm "time"; var _ = tm.Since(tm.Time{})`, "time.Since"},
		{"domain imports app", "domain/x", `package x; import _ "github.com/goop-p2p/goop/app"`, "layer domain must not import app"},
		{"app imports adapters", "app", `package app; import _ "github.com/goop-p2p/goop/adapters/p2p"`, "layer app must not import adapters/p2p"},
		{"ports imports app", "ports", `package ports; import _ "github.com/goop-p2p/goop/app"`, "layer ports must not import app"},
		{"adapters import simnet", "adapters/p2p", `package p2p; import _ "github.com/goop-p2p/goop/simnet"`, "layer adapters must not import simnet"},
		{"simnet imports cmd", "simnet", `package simnet; import _ "github.com/goop-p2p/goop/cmd/goop"`, "layer simnet must not import cmd/goop"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, err := parser.ParseFile(token.NewFileSet(), "planted.go", tc.src, 0)
			require.NoError(t, err)
			files := []file{{rel: tc.pkg + "/planted.go", pkg: tc.pkg, ast: f}}
			got := strings.Join(append(checkLayering(files), checkDomainPurity(files)...), "\n")
			assert.Contains(t, got, tc.want)
		})
	}
	t.Run("pure domain passes", func(t *testing.T) {
		src := `package x; import ("time"; "math/rand/v2"); func f(now time.Time, r *rand.Rand) time.Time { _ = r.IntN(3); return now.Add(time.Second) }`
		f, err := parser.ParseFile(token.NewFileSet(), "ok.go", src, 0)
		require.NoError(t, err)
		files := []file{{rel: "domain/x/ok.go", pkg: "domain/x", ast: f}}
		assert.Empty(t, append(checkLayering(files), checkDomainPurity(files)...))
	})
}
