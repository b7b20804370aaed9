// Command goop is the Goop peer: one binary that creates peer folders
// (init), runs a peer (peer) and measures the bus (bench).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/goop-p2p/goop/simnet/simcli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first signal, a second one kills the process at once.
	go func() { <-ctx.Done(); stop() }()
	code := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// run executes the command line args and returns the process exit code.
// Errors are printed to stderr as one "goop: ..." line.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	a := newApp(stdout, stderr)
	if err := a.RunContext(ctx, args); err != nil {
		fmt.Fprintf(stderr, "goop: %v\n", err)
		var ec cli.ExitCoder
		if errors.As(err, &ec) && ec.ExitCode() != 0 {
			return ec.ExitCode()
		}
		return exitError
	}
	return exitOK
}

// globals are the settings of the global flags, shared by every command.
type globals struct {
	log *slog.Logger
}

// newApp builds the command line. Further commands (e.g. sim) are appended
// to its Commands by their owners.
func newApp(stdout, stderr io.Writer) *cli.App {
	g := &globals{log: slog.New(slog.DiscardHandler)}
	a := &cli.App{
		Name:  "goop",
		Usage: "a peer-to-peer node: message bus, groups, sites",
		Description: "A peer lives in a folder holding goop.json (its config), data/ (identity key and\n" +
			"database) and site/ (its website). Create one with 'goop init DIR', run it with\n" +
			"'goop peer DIR' and open the viewer URL it prints.",
		Writer:               stdout,
		ErrWriter:            stderr,
		EnableBashCompletion: false,
		HideHelpCommand:      true,
		Flags: []cli.Flag{
			&cli.StringFlag{
				Name:    "log-level",
				Usage:   "log `LEVEL` on stderr: debug, info, warn or error",
				Value:   "warn",
				EnvVars: []string{"GOOP_LOG_LEVEL"},
			},
		},
		Before: func(c *cli.Context) error {
			lvl, err := parseLevel(c.String("log-level"))
			if err != nil {
				return cli.Exit(err.Error(), exitUsage)
			}
			g.log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))
			return nil
		},
		// Errors are printed once by run; never os.Exit from inside the library.
		ExitErrHandler: func(*cli.Context, error) {},
		Commands: []*cli.Command{
			initCommand(g, stdout),
			peerCommand(g, stdout),
			rendezvousCommand(g, stdout),
			benchCommand(g, stdout),
			groupsCommand(stdout),
			peersCommand(stdout),
			simcli.Command(),
		},
	}
	a.OnUsageError = usageError
	var setUsage func(cs []*cli.Command)
	setUsage = func(cs []*cli.Command) {
		for _, c := range cs {
			if c.OnUsageError == nil {
				c.OnUsageError = usageError
			}
			setUsage(c.Subcommands)
		}
	}
	setUsage(a.Commands)
	return a
}

// usageError turns a flag the command line got wrong (unknown, or a value
// of the wrong kind) into the usage exit code, naming where help is.
func usageError(c *cli.Context, err error, _ bool) error {
	var path []string // nearest command first
	for _, l := range c.Lineage() {
		if l.Command != nil && l.Command.Name != "" && l.Command.Name != c.App.Name {
			path = append(path, l.Command.Name)
		}
	}
	slices.Reverse(path)
	name := strings.Join(append([]string{c.App.Name}, path...), " ")
	return cli.Exit(fmt.Sprintf("%v (see %s --help)", err, name), exitUsage)
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.ToUpper(s))); err != nil {
		return 0, fmt.Errorf("--log-level: %q is not debug, info, warn or error", s)
	}
	return l, nil
}

// dirArg returns the single DIR argument of a command.
func dirArg(c *cli.Context) (string, error) {
	if c.NArg() != 1 || c.Args().First() == "" {
		return "", cli.Exit(fmt.Sprintf("usage: goop %s DIR (see goop %s --help)", c.Command.Name, c.Command.Name), exitUsage)
	}
	return c.Args().First(), nil
}
