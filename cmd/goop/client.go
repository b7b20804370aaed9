package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/urfave/cli/v2"

	"github.com/goop-p2p/goop/app"
)

// apiFlags select the running node a client command talks to. Only the
// outermost command that has them reads GOOP_API (withEnv): a subcommand's
// flag set from the environment would otherwise shadow the --api given to
// its parent on the command line (see setIn).
func apiFlags(withEnv bool) []cli.Flag {
	var env []string
	if withEnv {
		env = []string{"GOOP_API"}
	}
	return []cli.Flag{
		&cli.StringFlag{Name: "api", Usage: "viewer `URL` of the running node (default: from --dir, else http://127.0.0.1:8080)", EnvVars: env},
		&cli.StringFlag{Name: "dir", Usage: "peer `DIR` whose goop.json names the viewer address"},
		&cli.BoolFlag{Name: "json", Usage: "print the node's JSON answer as is"},
	}
}

// client talks to a running node's viewer API.
type client struct {
	base string
	http *http.Client
	raw  bool
	out  io.Writer
}

// setIn returns the context of c's lineage, nearest first, where the flag
// name was given (on the command line, or through GOOP_API for --api), or c
// when none has it. The api flags are both a command's (`goop groups
// --dir D create`) and each subcommand's (`goop groups create --dir D`), and
// urfave/cli reads a flag from the nearest command that defines it, set or
// not.
func setIn(c *cli.Context, name string) *cli.Context {
	for _, l := range c.Lineage() {
		if l.Command != nil && slices.Contains(l.LocalFlagNames(), name) {
			return l
		}
	}
	return c
}

func newClient(c *cli.Context, out io.Writer) (*client, error) {
	base := setIn(c, "api").String("api")
	if dir := setIn(c, "dir").String("dir"); base == "" && dir != "" {
		cfg, err := app.LoadConfig(filepath.Join(dir, "goop.json"))
		if err != nil {
			return nil, err
		}
		base = "http://" + cfg.Viewer.HTTPAddr
	}
	if base == "" {
		base = "http://127.0.0.1:8080"
	}
	raw := setIn(c, "json").Bool("json")
	return &client{base: strings.TrimRight(base, "/"), http: &http.Client{Timeout: 30 * time.Second}, raw: raw, out: out}, nil
}

// call sends a request and decodes the JSON answer into v (if not nil). A
// non-2xx answer becomes an error carrying the node's message and code.
func (cl *client) call(ctx context.Context, method, path string, body, v any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, cl.base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := cl.http.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the node at %s (is 'goop peer' running?): %w", cl.base, err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, 64<<20))
	if err != nil {
		return err
	}
	if res.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
			Code  string `json:"code"`
		}
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			if e.Code != "" {
				return fmt.Errorf("%s %s: %s (%s)", method, path, e.Error, e.Code)
			}
			return fmt.Errorf("%s %s: %s", method, path, e.Error)
		}
		return fmt.Errorf("%s %s: HTTP %d", method, path, res.StatusCode)
	}
	if cl.raw {
		_, err = cl.out.Write(append(bytes.TrimSpace(data), '\n'))
		return err
	}
	if v != nil {
		return json.Unmarshal(data, v)
	}
	return nil
}

// parsePayload accepts JSON, or wraps plain text as {"text": ...}.
func parsePayload(s string) json.RawMessage {
	if json.Valid([]byte(s)) {
		return json.RawMessage(s)
	}
	b, _ := json.Marshal(map[string]string{"text": s})
	return b
}

func needArgs(c *cli.Context, n int, usage string) error {
	if c.NArg() != n {
		return usageExit(c, usage)
	}
	return nil
}

// usageExit is the usage error of c's command, named with its parents
// ("goop groups join ..."): urfave/cli's FullName gives only "join" here.
func usageExit(c *cli.Context, usage string) error {
	msg := "usage: goop " + cmdPath(c) + " " + usage
	// Flags after the first argument are taken as arguments (urfave/cli):
	// the likely mistake behind a wrong count.
	for _, a := range c.Args().Slice() {
		if len(a) > 1 && a[0] == '-' && (a[1] == '-' || unicode.IsLetter(rune(a[1]))) {
			msg += fmt.Sprintf("\n(flags go before the arguments: %q came after them)", a)
			break
		}
	}
	return cli.Exit(msg, exitUsage)
}

// cmdPath is the path of c's command below the app: "groups join".
func cmdPath(c *cli.Context) string {
	var names []string
	for _, x := range c.Lineage() {
		if x.Command != nil && x.Command.Name != "" && x.Command.Name != c.App.Name {
			names = append([]string{x.Command.Name}, names...)
		}
	}
	return strings.Join(names, " ")
}
