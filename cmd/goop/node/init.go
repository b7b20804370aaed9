package node

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/goop-p2p/goop/adapters/p2p"
	"github.com/goop-p2p/goop/app"
)

// InitOptions tune Init.
type InitOptions struct {
	// Label is profile.label of a new goop.json (default: the folder's base name).
	Label string
	// Configure, if set, edits the config of a new goop.json before it is
	// written. It is not applied to an existing goop.json.
	Configure func(*app.Config)
}

// InitResult says what Init found and made.
type InitResult struct {
	// Config is the peer folder's config (new or loaded).
	Config app.Config
	// Created lists the files and folders Init created, relative to the peer folder.
	Created []string
}

// Init creates the peer folder dir if missing, with goop.json (defaults),
// the identity key (mode 0600), the database (created and migrated) and
// site/index.html. It is idempotent: it never overwrites an existing file,
// and an existing goop.json is loaded and validated (errors name the key).
func Init(ctx context.Context, dir string, opts InitOptions) (InitResult, error) {
	var res InitResult
	abs, err := filepath.Abs(dir)
	if err != nil {
		return res, fmt.Errorf("init %s: %w", dir, err)
	}
	created := func(p string) {
		if rel, err := filepath.Rel(abs, p); err == nil && !strings.HasPrefix(rel, "..") {
			p = rel
		}
		res.Created = append(res.Created, filepath.ToSlash(p))
	}
	if _, err := os.Stat(abs); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(abs, 0o755); err != nil {
			return res, fmt.Errorf("init %s: %w", dir, err)
		}
		created(".")
	}

	cfgPath := filepath.Join(abs, app.ConfigFileName)
	cfg, made, err := initConfig(cfgPath, filepath.Base(abs), opts)
	if err != nil {
		return res, err
	}
	if made {
		created(cfgPath)
	}
	res.Config = cfg

	keyPath := app.Resolve(abs, cfg.Identity.KeyFile)
	if _, err := os.Stat(keyPath); errors.Is(err, fs.ErrNotExist) {
		if err := mkdirFor(keyPath, 0o700); err != nil {
			return res, fmt.Errorf("identity.key_file: %w", err)
		}
		if _, err := p2p.LoadOrCreateIdentity(keyPath); err != nil {
			return res, fmt.Errorf("identity.key_file: %w", err)
		}
		created(keyPath)
	} else if err != nil {
		return res, fmt.Errorf("identity.key_file: %w", err)
	}

	dbMissing := false
	if cfg.Storage.Driver == app.StorageSQLite {
		dbPath := cfg.SQLitePath(abs)
		if _, err := os.Stat(dbPath); errors.Is(err, fs.ErrNotExist) {
			dbMissing = true
			if err := mkdirFor(dbPath, 0o700); err != nil {
				return res, fmt.Errorf("storage.dsn: %w", err)
			}
		}
	}
	st, err := openStore(ctx, abs, cfg, nil) // creates and migrates
	if err != nil {
		return res, err
	}
	if err := st.Close(); err != nil {
		return res, fmt.Errorf("close store: %w", err)
	}
	if dbMissing {
		created(cfg.SQLitePath(abs))
	}

	site := app.Resolve(abs, cfg.Paths.SiteRoot)
	if _, err := os.Stat(site); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(site, 0o755); err != nil {
			return res, fmt.Errorf("paths.site_root: %w", err)
		}
		created(site)
	}
	for _, name := range []string{"index.html", "game.js", "style.css"} {
		body, err := starterSite.ReadFile("starter/" + name)
		if err != nil {
			return res, fmt.Errorf("init: starter site: %w", err)
		}
		if name == "index.html" {
			body = []byte(strings.ReplaceAll(string(body), "{{LABEL}}", html.EscapeString(cfg.Profile.Label)))
		}
		path := filepath.Join(site, name)
		ok, err := writeNewFile(path, body, 0o644)
		if err != nil {
			return res, fmt.Errorf("paths.site_root: %w", err)
		}
		if ok {
			created(path)
		}
	}
	return res, nil
}

// starterSite is the site a new peer starts with: a welcome page with a
// two-player tic-tac-toe game played over a Goop group (SDK: Goop.data.query
// and Goop.group).
//
//go:embed starter
var starterSite embed.FS

// initConfig loads goop.json or creates it with defaults; made reports creation.
func initConfig(path, base string, opts InitOptions) (cfg app.Config, made bool, err error) {
	if _, err := os.Stat(path); err == nil {
		cfg, err := app.LoadConfig(path)
		return cfg, false, err
	} else if !errors.Is(err, fs.ErrNotExist) {
		return cfg, false, fmt.Errorf("init: %w", err)
	}
	cfg = app.DefaultConfig()
	cfg.Profile.Label = opts.Label
	if cfg.Profile.Label == "" {
		cfg.Profile.Label = base
	}
	if len(cfg.Profile.Label) > app.MaxLabelBytes {
		cfg.Profile.Label = cfg.Profile.Label[:app.MaxLabelBytes]
	}
	if opts.Configure != nil {
		opts.Configure(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		var ce *app.ConfigError
		if errors.As(err, &ce) {
			ce.File = path
		}
		return cfg, false, err
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return cfg, false, fmt.Errorf("init: %w", err)
	}
	// 0600: goop.json may hold presence.admin_password.
	ok, err := writeNewFile(path, append(data, '\n'), 0o600)
	if err != nil {
		return cfg, false, fmt.Errorf("init: %w", err)
	}
	if !ok { // created concurrently by someone else: use theirs
		cfg, err := app.LoadConfig(path)
		return cfg, false, err
	}
	return cfg, true, nil
}

func mkdirFor(path string, mode fs.FileMode) error {
	return os.MkdirAll(filepath.Dir(path), mode)
}

// writeNewFile creates path with data unless it exists (then it reports
// false and changes nothing).
func writeNewFile(path string, data []byte, mode fs.FileMode) (bool, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if errors.Is(err, fs.ErrExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		_ = os.Remove(path)
		return false, err
	}
	if err := f.Close(); err != nil {
		_ = os.Remove(path)
		return false, err
	}
	return true, nil
}
