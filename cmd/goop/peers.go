package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
)

// peerRow is a row of GET /api/peers.
type peerRow struct {
	PeerID   string   `json:"peer_id"`
	Label    string   `json:"label"`
	Addrs    []string `json:"addrs"`
	Online   bool     `json:"online"`
	Status   string   `json:"status"`
	LastSeen int64    `json:"last_seen"`
	Verified bool     `json:"verified"`
	Source   string   `json:"source"`
}

func peersCommand(stdout io.Writer) *cli.Command {
	return &cli.Command{
		Name:  "peers",
		Usage: "list the peers a running node knows (LAN, WAN and static), online first",
		Description: "Talks to the viewer API of a running 'goop peer' (--api URL, or --dir DIR to read\n" +
			"its goop.json; default http://127.0.0.1:8080). --json prints the node's answer as is.",
		Flags: apiFlags(true),
		Action: func(c *cli.Context) error {
			if err := needArgs(c, 0, "[--json] [--api URL | --dir DIR]"); err != nil {
				return err
			}
			cl, err := newClient(c, stdout)
			if err != nil {
				return err
			}
			var peers []peerRow
			if err := cl.call(c.Context, "GET", "/api/peers", nil, &peers); err != nil || cl.raw {
				return err
			}
			if len(peers) == 0 {
				_, err := fmt.Fprintln(stdout, "no peers yet")
				return err
			}
			now := time.Now()
			tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PEER ID\tLABEL\tSTATUS\tSOURCE\tVERIFIED\tLAST SEEN\tADDRS")
			for _, online := range []bool{true, false} {
				for _, p := range peers {
					if p.Online != online {
						continue
					}
					verified := "no"
					if p.Verified {
						verified = "yes"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.PeerID, oneLine(p.Label), p.Status, p.Source,
						verified, seenAgo(now, p.LastSeen), strings.Join(p.Addrs, " "))
				}
			}
			return tw.Flush()
		},
	}
}

// seenAgo renders a Unix millisecond time relative to now.
func seenAgo(now time.Time, ms int64) string {
	if ms == 0 {
		return "never"
	}
	d := now.Sub(time.UnixMilli(ms)).Round(time.Second)
	if d < 0 {
		d = 0
	}
	return d.String() + " ago"
}

// oneLine keeps a peer's label on one table line (labels are printable, but
// a tab would break the columns).
func oneLine(s string) string {
	if s == "" {
		return "-"
	}
	return strings.Map(func(r rune) rune {
		if r == '\t' || r == '\n' || r == '\r' {
			return ' '
		}
		return r
	}, s)
}
