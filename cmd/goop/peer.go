package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/cmd/goop/node"
)

func initCommand(g *globals, stdout io.Writer) *cli.Command {
	return &cli.Command{
		Name:      "init",
		Usage:     "create a peer folder (goop.json, identity key, database, site)",
		ArgsUsage: "DIR",
		Description: "Creates DIR if missing with goop.json (defaults; profile.label = the folder name),\n" +
			"data/identity.key (Ed25519, mode 0600), data/data.db and site/index.html.\n" +
			"Existing files are never overwritten: running it again is harmless.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "label", Usage: "profile.label of a new goop.json (default: the folder name)"},
		},
		Action: func(c *cli.Context) error {
			dir, err := dirArg(c)
			if err != nil {
				return err
			}
			res, err := node.Init(c.Context, dir, node.InitOptions{Label: c.String("label")})
			if err != nil {
				return err
			}
			if len(res.Created) == 0 {
				fmt.Fprintf(stdout, "%s is already a peer folder; nothing changed\n", dir)
				return nil
			}
			names := make([]string, len(res.Created))
			for i, n := range res.Created {
				names[i] = n
				if n == "." {
					names[i] = "the folder"
				}
			}
			fmt.Fprintf(stdout, "initialized %s: created %s\n", dir, strings.Join(names, ", "))
			return nil
		},
	}
}

func peerCommand(g *globals, stdout io.Writer) *cli.Command {
	return &cli.Command{
		Name:      "peer",
		Usage:     "run the peer of a folder (initializing it if needed)",
		ArgsUsage: "DIR",
		Description: "Starts the libp2p node (TCP and QUIC on p2p.listen_port), the message bus, the\n" +
			"static peers of p2p.peers and the viewer on viewer.http_addr. When ready it prints\n" +
			"one line: ready peer_id=<id> viewer=<url> addrs=<multiaddr>,...\n" +
			"With presence.rendezvous_only in DIR/goop.json it runs only the rendezvous server, as\n" +
			"`goop rendezvous DIR` does (no libp2p node).\n" +
			"SIGINT or SIGTERM stops it cleanly (exit status 0).",
		Action: func(c *cli.Context) error {
			dir, err := dirArg(c)
			if err != nil {
				return err
			}
			return runPeer(c.Context, dir, node.Options{Log: g.log}, stdout)
		},
	}
}

// runPeer runs a peer until ctx ends (a signal), then stops it cleanly. It
// returns an error if start-up fails or the node stops by itself. A folder
// in rendezvous-only mode (presence.rendezvous_only) runs only its
// rendezvous server (runRendezvous).
func runPeer(ctx context.Context, dir string, opts node.Options, stdout io.Writer) error {
	if cfg, err := app.LoadConfig(filepath.Join(dir, app.ConfigFileName)); err == nil && cfg.Presence.RendezvousOnly {
		return runRendezvous(ctx, dir, rendezvousOptions{Log: opts.Log}, stdout)
	}
	r, err := node.Start(ctx, dir, opts)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, ReadyLine(r))
	select {
	case <-ctx.Done():
		return r.Close()
	case <-r.Done():
		cerr := r.Close()
		if err := r.Err(); err != nil {
			return fmt.Errorf("peer stopped: %w", err)
		}
		return cerr
	}
}

// ReadyLine is the line `goop peer` prints once it serves:
// "ready peer_id=<id> viewer=<url> addrs=<a>,<b>".
func ReadyLine(r *node.Running) string {
	return fmt.Sprintf("ready peer_id=%s viewer=%s addrs=%s", r.PeerID, r.ViewerURL, strings.Join(r.Addrs(), ","))
}

// parseReadyLine extracts the fields of a ReadyLine.
func parseReadyLine(line string) (map[string]string, bool) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(line), "ready ")
	if !ok {
		return nil, false
	}
	out := map[string]string{}
	for _, f := range strings.Fields(rest) {
		k, v, ok := strings.Cut(f, "=")
		if ok {
			out[k] = v
		}
	}
	return out, out["peer_id"] != "" && out["viewer"] != ""
}
