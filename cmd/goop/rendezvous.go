package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/goop-p2p/goop/adapters/rendezvous"
	"github.com/goop-p2p/goop/app"
)

func rendezvousCommand(g *globals, stdout io.Writer) *cli.Command {
	return &cli.Command{
		Name:      "rendezvous",
		Usage:     "run only a rendezvous server for a folder (no libp2p node)",
		ArgsUsage: "DIR",
		Description: "Rendezvous-only mode (SPEC §6): serves POST /publish, GET /events, the public page\n" +
			"/ (endpoint and connect URLs), /admin (presence.admin_password) and /healthz on\n" +
			"presence.rendezvous_bind:presence.rendezvous_port. If DIR has no goop.json, one is\n" +
			"created with the defaults plus presence.rendezvous_only and rendezvous_host set to\n" +
			"true. Which peer ids publish signed presence (and their last ts) is kept across\n" +
			"restarts in DIR/data/rendezvous-signed.json. When ready it prints one line:\n" +
			"  ready rendezvous=<endpoint> connect=<url>,...\n" +
			"SIGINT or SIGTERM stops it cleanly (exit status 0).",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "port", Usage: "listen on `PORT` instead of presence.rendezvous_port (0: any free port)"},
			&cli.StringFlag{Name: "bind", Usage: "listen on `IP` instead of presence.rendezvous_bind"},
		},
		Action: func(c *cli.Context) error {
			dir, err := dirArg(c)
			if err != nil {
				return err
			}
			o := rendezvousOptions{Log: g.log}
			if c.IsSet("port") {
				p := c.Int("port")
				o.Port = &p
			}
			if c.IsSet("bind") {
				b := c.String("bind")
				o.Bind = &b
			}
			return runRendezvous(c.Context, dir, o, stdout)
		},
	}
}

// rendezvousOptions override the folder's config for one run (and are
// written to a goop.json the command creates).
type rendezvousOptions struct {
	Port *int
	Bind *string
	Log  *slog.Logger
}

// runRendezvous runs the rendezvous server of the folder dir until ctx ends.
func runRendezvous(ctx context.Context, dir string, o rendezvousOptions, stdout io.Writer) error {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg, created, err := loadOrCreateRendezvousConfig(dir, o)
	if err != nil {
		return err
	}
	if created {
		fmt.Fprintf(stdout, "created %s (presence.rendezvous_only = true)\n", filepath.Join(dir, app.ConfigFileName))
	}
	if o.Port != nil {
		cfg.Presence.RendezvousPort = *o.Port
	}
	if o.Bind != nil {
		cfg.Presence.RendezvousBind = *o.Bind
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	ln, err := rendezvous.Listen(cfg.Presence.RendezvousBind, cfg.Presence.RendezvousPort)
	if err != nil {
		return err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		_ = ln.Close()
		return fmt.Errorf("rendezvous folder %s: %w", dir, err)
	}
	sc := rendezvousServerConfig(cfg, log)
	sc.StatePath = rendezvous.StatePathIn(abs)
	sc.Addr = ln.Addr().String()
	srv := rendezvous.NewServer(sc)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Fprintf(stdout, "ready rendezvous=%s connect=%s\n", srv.Endpoint(), strings.Join(srv.ConnectURLs(), ","))
	log.Info("rendezvous server started", "endpoint", srv.Endpoint(), "connect", srv.ConnectURLs())
	select {
	case <-ctx.Done():
		err := srv.Close()
		<-served
		return err
	case err := <-served:
		_ = srv.Close()
		if err == nil {
			err = errors.New("stopped")
		}
		return fmt.Errorf("rendezvous server: %w", err)
	}
}

// loadOrCreateRendezvousConfig loads dir/goop.json, or creates it (and dir)
// with the defaults, rendezvous-only mode and the overrides of o.
func loadOrCreateRendezvousConfig(dir string, o rendezvousOptions) (app.Config, bool, error) {
	path := filepath.Join(dir, app.ConfigFileName)
	cfg, err := app.LoadConfig(path)
	if err == nil {
		return cfg, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return app.Config{}, false, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return app.Config{}, false, fmt.Errorf("create %s: %w", dir, err)
	}
	cfg = app.DefaultConfig()
	cfg.Presence.RendezvousOnly = true
	cfg.Presence.RendezvousHost = true
	if abs, err := filepath.Abs(dir); err == nil {
		cfg.Profile.Label = filepath.Base(abs)
		if cfg.Validate() != nil {
			cfg.Profile.Label = ""
		}
	}
	if o.Port != nil {
		cfg.Presence.RendezvousPort = *o.Port
	}
	if o.Bind != nil {
		cfg.Presence.RendezvousBind = *o.Bind
	}
	if err := app.SaveConfig(path, cfg); err != nil {
		return app.Config{}, false, err
	}
	return cfg, true, nil
}

// rendezvousServerConfig maps goop.json onto the rendezvous server's settings.
func rendezvousServerConfig(cfg app.Config, log *slog.Logger) rendezvous.ServerConfig {
	return rendezvous.ServerConfig{
		ExternalURL:   cfg.Presence.ExternalURL,
		AdminPassword: cfg.Presence.AdminPassword,
		Log:           log,
	}
}
