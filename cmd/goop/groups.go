package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
)

type groupRow struct {
	ID         string `json:"id"`
	Name       string `json:"name"`
	GroupType  string `json:"group_type"`
	Lifecycle  string `json:"lifecycle"`
	Access     string `json:"access"`
	MaxMembers int    `json:"max_members"`
	Members    []struct {
		PeerID string `json:"peer_id"`
		Name   string `json:"name"`
		Role   string `json:"role"`
	} `json:"members"`
}

type subRow struct {
	ID         string `json:"id"`
	HostPeerID string `json:"host_peer_id"`
	GroupName  string `json:"group_name"`
	GroupType  string `json:"group_type"`
	Role       string `json:"role"`
	Joined     bool   `json:"joined"`
	Members    []struct {
		PeerID string `json:"peer_id"`
	} `json:"members"`
}

type invitationRow struct {
	GroupID    string `json:"group_id"`
	GroupName  string `json:"group_name"`
	HostPeerID string `json:"host_peer_id"`
	GroupType  string `json:"group_type"`
	Access     string `json:"access"`
	ReceivedAt int64  `json:"received_at"`
}

func groupsCommand(stdout io.Writer) *cli.Command {
	return &cli.Command{
		Name:  "groups",
		Usage: "manage the groups of a running node (hosted and joined)",
		Description: "Talks to the viewer API of a running 'goop peer' (--api URL, or --dir DIR to read\n" +
			"its goop.json; default http://127.0.0.1:8080). These flags go before or after the\n" +
			"subcommand: 'goop groups --dir D list' and 'goop groups list --dir D' are the same.",
		Flags: apiFlags(true),
		Subcommands: []*cli.Command{
			{
				Name: "list", Usage: "list hosted and joined groups", Flags: apiFlags(false),
				Action: func(c *cli.Context) error {
					cl, err := newClient(c, stdout)
					if err != nil {
						return err
					}
					var hosted []groupRow
					var joined []subRow
					if err := cl.call(c.Context, "GET", "/api/groups", nil, &hosted); err != nil || cl.raw {
						return err
					}
					if err := cl.call(c.Context, "GET", "/api/groups/subscriptions", nil, &joined); err != nil {
						return err
					}
					tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "HOSTED\tID\tNAME\tTYPE\tLIFECYCLE\tACCESS\tMEMBERS")
					for _, g := range hosted {
						var ms []string
						for _, m := range g.Members {
							ms = append(ms, shortID(m.PeerID)+"("+m.Role+")")
						}
						fmt.Fprintf(tw, "\t%s\t%s\t%s\t%s\t%s\t%s\n", g.ID, g.Name, g.GroupType, g.Lifecycle, g.Access, strings.Join(ms, " "))
					}
					fmt.Fprintln(tw, "JOINED\tID\tNAME\tTYPE\tHOST\tROLE\tMEMBERS")
					for _, s := range joined {
						state := fmt.Sprint(len(s.Members))
						if !s.Joined {
							state = "joining"
						}
						fmt.Fprintf(tw, "\t%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, s.GroupName, s.GroupType, shortID(s.HostPeerID), s.Role, state)
					}
					return tw.Flush()
				},
			},
			{
				Name: "invitations", Usage: "list the invitations received and neither joined nor declined (newest first)",
				Flags: apiFlags(false),
				Action: func(c *cli.Context) error {
					cl, err := newClient(c, stdout)
					if err != nil {
						return err
					}
					var invs []invitationRow
					if err := cl.call(c.Context, "GET", "/api/groups/invitations", nil, &invs); err != nil || cl.raw {
						return err
					}
					tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "HOST_PEER_ID\tGROUP_ID\tNAME\tTYPE\tACCESS\tRECEIVED")
					for _, inv := range invs {
						at := time.UnixMilli(inv.ReceivedAt).Local().Format(time.DateTime)
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", inv.HostPeerID, inv.GroupID, inv.GroupName, inv.GroupType, inv.Access, at)
					}
					return tw.Flush()
				},
			},
			{
				Name: "create", Usage: "create a hosted group", ArgsUsage: "NAME",
				Flags: append(apiFlags(false),
					&cli.StringFlag{Name: "type", Value: "general", Usage: "group `TYPE`: general, chat, files, cluster, listen, template, realtime"},
					&cli.StringFlag{Name: "lifecycle", Value: "persistent", Usage: "persistent or ephemeral"},
					&cli.StringFlag{Name: "access", Value: "open", Usage: "open or invite-only"},
					&cli.IntFlag{Name: "max-members", Usage: "0 = unlimited"},
					&cli.IntFlag{Name: "idle-timeout", Usage: "`SECONDS` of inactivity before an ephemeral group dissolves"},
					&cli.StringFlag{Name: "context", Usage: "free-form group context"},
					&cli.BoolFlag{Name: "join", Usage: "the host joins its own group"},
				),
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "NAME"); err != nil {
						return err
					}
					cl, err := newClient(c, stdout)
					if err != nil {
						return err
					}
					var res struct {
						ID string `json:"id"`
					}
					err = cl.call(c.Context, "POST", "/api/groups", map[string]any{"name": c.Args().First(),
						"group_type": c.String("type"), "lifecycle": c.String("lifecycle"), "access": c.String("access"),
						"max_members": c.Int("max-members"), "idle_timeout_s": c.Int("idle-timeout"),
						"group_context": c.String("context"), "host_join": c.Bool("join")}, &res)
					if err != nil || cl.raw {
						return err
					}
					fmt.Fprintln(stdout, res.ID)
					return nil
				},
			},
			groupAction(stdout, "join", "join a group hosted by a peer", "HOST_PEER_ID GROUP_ID", "/api/groups/join",
				func(a []string) map[string]any { return map[string]any{"host_peer_id": a[0], "group_id": a[1]} }, "joined"),
			groupAction(stdout, "decline", "decline (forget) an invitation; the host is not told", "HOST_PEER_ID GROUP_ID", "/api/groups/invitations/decline",
				func(a []string) map[string]any { return map[string]any{"host_peer_id": a[0], "group_id": a[1]} }, "declined"),
			groupAction(stdout, "leave", "leave a group", "HOST_PEER_ID GROUP_ID", "/api/groups/leave",
				func(a []string) map[string]any { return map[string]any{"host_peer_id": a[0], "group_id": a[1]} }, "left"),
			groupAction(stdout, "send", "send a message to a group (JSON, or text sent as {\"text\":...})", "HOST_PEER_ID GROUP_ID MESSAGE", "/api/groups/send",
				func(a []string) map[string]any {
					return map[string]any{"host_peer_id": a[0], "group_id": a[1], "payload": parsePayload(a[2])}
				}, "sent"),
			groupAction(stdout, "invite", "invite a peer to a hosted group", "GROUP_ID PEER_ID", "/api/groups/invite",
				func(a []string) map[string]any { return map[string]any{"group_id": a[0], "peer_id": a[1]} }, "invited"),
			groupAction(stdout, "kick", "remove a member from a hosted group", "GROUP_ID PEER_ID", "/api/groups/kick",
				func(a []string) map[string]any { return map[string]any{"group_id": a[0], "peer_id": a[1]} }, "kicked"),
			groupAction(stdout, "close", "close a hosted group for everyone", "GROUP_ID", "/api/groups/close",
				func(a []string) map[string]any { return map[string]any{"group_id": a[0]} }, "closed"),
			groupAction(stdout, "set-role", "give a member of a hosted group a role (one of the group's roles, or the default role)", "GROUP_ID PEER_ID ROLE", "/api/groups/set-role",
				func(a []string) map[string]any {
					return map[string]any{"group_id": a[0], "peer_id": a[1], "role": a[2]}
				}, "ok"),
			groupAction(stdout, "set-default-role", "set the role a hosted group gives those who join", "GROUP_ID ROLE", "/api/groups/set-default-role",
				func(a []string) map[string]any { return map[string]any{"group_id": a[0], "role": a[1]} }, "ok"),
			{
				Name: "set-roles", Usage: "set the custom roles of a hosted group (none: no custom roles)", ArgsUsage: "GROUP_ID [ROLE...]",
				Flags: apiFlags(false),
				Action: func(c *cli.Context) error {
					if c.NArg() < 1 {
						return usageExit(c, "GROUP_ID [ROLE...]")
					}
					cl, err := newClient(c, stdout)
					if err != nil {
						return err
					}
					roles := append([]string{}, c.Args().Slice()[1:]...)
					if err := cl.call(c.Context, "POST", "/api/groups/set-roles", map[string]any{"group_id": c.Args().First(), "roles": roles}, nil); err != nil || cl.raw {
						return err
					}
					fmt.Fprintln(stdout, "ok")
					return nil
				},
			},
			{
				Name: "meta", Usage: "rename a hosted group or change its member limit (members are told)", ArgsUsage: "GROUP_ID",
				Flags: append(apiFlags(false),
					&cli.StringFlag{Name: "name", Usage: "the group's new `NAME`"},
					&cli.IntFlag{Name: "max-members", Usage: "the new member limit `N` (0 = unlimited)"}),
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "GROUP_ID"); err != nil {
						return err
					}
					body := map[string]any{"group_id": c.Args().First()}
					if c.IsSet("name") {
						body["name"] = c.String("name")
					}
					if c.IsSet("max-members") {
						body["max_members"] = c.Int("max-members")
					}
					if len(body) == 1 {
						return cli.Exit("goop "+cmdPath(c)+": nothing to change: give --name or --max-members", exitUsage)
					}
					cl, err := newClient(c, stdout)
					if err != nil {
						return err
					}
					if err := cl.call(c.Context, "POST", "/api/groups/meta", body, nil); err != nil || cl.raw {
						return err
					}
					fmt.Fprintln(stdout, "ok")
					return nil
				},
			},
			{
				Name:      "history",
				Usage:     "print a group's newest messages, oldest first: of a group hosted here, or asked of the host of a group joined",
				ArgsUsage: "[HOST_PEER_ID] GROUP_ID",
				Flags:     append(apiFlags(false), &cli.IntFlag{Name: "limit", Value: 20, Usage: "at most `N` messages (a remote host answers up to 200)"}),
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 && c.NArg() != 2 {
						return usageExit(c, "[HOST_PEER_ID] GROUP_ID")
					}
					if c.Int("limit") < 1 {
						return cli.Exit("--limit must be at least 1", exitUsage)
					}
					cl, err := newClient(c, stdout)
					if err != nil {
						return err
					}
					q := url.Values{"group_id": {c.Args().Get(c.NArg() - 1)}, "limit": {fmt.Sprint(c.Int("limit"))}}
					if c.NArg() == 2 {
						q.Set("host_peer_id", c.Args().First())
					}
					var items []struct {
						From    string          `json:"from"`
						Type    string          `json:"type"`
						Payload json.RawMessage `json:"payload"`
						At      int64           `json:"at"`
					}
					if err := cl.call(c.Context, "GET", "/api/groups/history?"+q.Encode(), nil, &items); err != nil || cl.raw {
						return err
					}
					for _, it := range items {
						kind := ""
						if it.Type != "msg" {
							kind = "[" + it.Type + "] "
						}
						fmt.Fprintf(stdout, "%s  %s  %s%s\n", time.UnixMilli(it.At).Local().Format(time.DateTime), shortID(it.From), kind, it.Payload)
					}
					return nil
				},
			},
		},
	}
}

// groupAction is a subcommand that posts its positional arguments.
func groupAction(stdout io.Writer, name, usage, args, path string, body func([]string) map[string]any, done string) *cli.Command {
	n := len(strings.Fields(args))
	return &cli.Command{
		Name: name, Usage: usage, ArgsUsage: args, Flags: apiFlags(false),
		Action: func(c *cli.Context) error {
			if err := needArgs(c, n, args); err != nil {
				return err
			}
			cl, err := newClient(c, stdout)
			if err != nil {
				return err
			}
			if err := cl.call(c.Context, "POST", path, body(c.Args().Slice()), nil); err != nil || cl.raw {
				return err
			}
			fmt.Fprintln(stdout, done)
			return nil
		},
	}
}

func shortID(id string) string {
	if len(id) > 16 {
		return id[:8] + "…" + id[len(id)-6:]
	}
	return id
}
