package simnet

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/goop-p2p/goop/domain/group"
)

// Group script commands. A script that uses them makes its world with the
// groups flag (which adds a GroupChecker); group timers default to
// SimGroupConfig and the world command takes ping=, evict=, rejoin=,
// join-timeout= and idle= (the default idle timeout of ephemeral groups).
// Groups are named by the id given to group-create; the other commands find
// the host from it. Peers may be given as ranges: p=p1..p50.
func init() {
	for _, c := range []ScriptCommand{
		{"group-create", "group-create host=P id=ID [name=TEXT] [type=T] [ephemeral] [invite-only] [max=N] [idle=D] [host-join]", cmdGroupCreate},
		{"group-join", "group-join p=P,.. id=ID [host=P]", cmdGroupJoin},
		{"group-leave", "group-leave p=P,.. id=ID", cmdGroupLeave},
		{"group-send", "group-send p=P,.. id=ID [n=N] [kind=msg|state] [payload=JSON]", cmdGroupSend},
		{"group-invite", "group-invite id=ID p=P,..", cmdGroupInvite},
		{"group-kick", "group-kick id=ID p=P", cmdGroupKick},
		{"group-close", "group-close id=ID", cmdGroupClose},
		{"group-view", "group-view id=ID", cmdGroupView},
		{"group-delays", "group-delays id=ID [max=D] [except=P,..] [reset]", cmdGroupDelays},
		{"group-stats", "group-stats", cmdGroupStats},
	} {
		RegisterScriptCommand(c)
	}
}

// groupTopic reports whether a bus topic belongs to the group protocol.
func groupTopic(topic string) bool {
	return strings.HasPrefix(topic, "group:") || topic == group.TopicInvite
}

func groupArgs(a Args, c group.Config) (group.Config, error) {
	var err error
	get := func(k string, d *time.Duration) {
		if err == nil {
			*d, err = a.Duration(k, *d)
		}
	}
	get("ping", &c.PingInterval)
	get("evict", &c.EvictAfter)
	get("rejoin", &c.RejoinInterval)
	get("join-timeout", &c.JoinTimeout)
	get("idle", &c.DefaultIdleTimeout)
	return c, err
}

// humanize replaces peer ids in text with peer names.
func (e *ScriptEnv) humanize(text string) string {
	if !strings.Contains(text, "sim") {
		return text
	}
	for i := e.W.NumPeers() - 1; i >= 0; i-- {
		text = strings.ReplaceAll(text, string(e.W.PeerID(i)), e.W.Name(i))
	}
	return text
}

func (e *ScriptEnv) memberNames(ms []group.Member) string {
	ps := make([]int32, 0, len(ms))
	for _, m := range ms {
		p, ok := e.W.Index(group.PeerID(m.PeerID))
		if !ok {
			p = -1
		}
		ps = append(ps, int32(p))
	}
	slices.Sort(ps)
	return compactPeers(e.W, ps)
}

// groupLine renders a group event published by peer p, or "" to skip it.
func (e *ScriptEnv) groupLine(w *World, p int, ge *group.Event) string {
	if ge == nil {
		return ""
	}
	host := e.nameOf(ge.Host)
	where := ge.Group + "@" + host
	from := e.nameOf(ge.From)
	isHost := ge.Host == w.PeerID(p)
	if isHost {
		where = ge.Group
	}
	errText := func() string {
		if ge.Err == nil {
			return ""
		}
		return ": " + ge.Err.Code + ": " + e.humanize(ge.Err.Message)
	}
	switch ge.Type {
	case group.EvJoined:
		return fmt.Sprintf("joined %s: members %s", where, e.memberNames(ge.Members))
	case group.EvJoinFailed:
		return fmt.Sprintf("failed to join %s%s", where, errText())
	case group.EvMembers:
		return fmt.Sprintf("members of %s: %s", where, e.memberNames(ge.Members))
	case group.EvMsg, group.EvState:
		if isHost {
			return fmt.Sprintf("relayed %s %s from %s in %s", ge.Type, ge.Payload, from, where)
		}
		return fmt.Sprintf("got %s %s from %s in %s", ge.Type, ge.Payload, from, where)
	case group.EvLeft:
		return fmt.Sprintf("left %s", where)
	case group.EvClosed:
		if isHost {
			return fmt.Sprintf("closed %s", ge.Group)
		}
		return fmt.Sprintf("lost %s: closed%s", where, errText())
	case group.EvMemberJoined:
		return fmt.Sprintf("member %s joined %s", from, ge.Group)
	case group.EvMemberLeft:
		return fmt.Sprintf("member %s left %s (%s)", from, ge.Group, ge.Reason)
	case group.EvDissolved:
		return fmt.Sprintf("dissolved %s (%s)", ge.Group, ge.Reason)
	case group.EvInvite:
		return fmt.Sprintf("invited to %s", where)
	case group.EvCreated:
		return fmt.Sprintf("created %s", ge.Group)
	case group.EvMeta:
		return fmt.Sprintf("meta of %s: %s", where, ge.Payload)
	}
	return fmt.Sprintf("group event %s in %s", ge.Type, where)
}

func (e *ScriptEnv) groupChecker() *GroupChecker {
	for _, c := range e.W.Checkers() {
		if gc, ok := c.(*GroupChecker); ok {
			return gc
		}
	}
	return nil
}

// groupHost returns the host of group id: host= if given, else the peer that
// created it in this script.
func (e *ScriptEnv) groupHost(a Args) (string, int, error) {
	id, ok := a.Get("id")
	if !ok {
		return "", 0, errors.New("missing id=")
	}
	if a.Has("host") {
		h, err := e.Peer(a, "host")
		return id, h, err
	}
	h, ok := e.groupHosts[id]
	if !ok {
		return "", 0, fmt.Errorf("no group %q created in this script (give host=)", id)
	}
	return id, h, nil
}

func cmdGroupCreate(e *ScriptEnv, a Args) (string, error) {
	host, err := e.Peer(a, "host")
	if err != nil {
		return "", err
	}
	spec := group.CreateSpec{HostJoin: a.Has("host-join")}
	spec.ID, _ = a.Get("id")
	spec.Name, _ = a.Get("name")
	if spec.Name == "" {
		spec.Name = spec.ID
	}
	spec.Type, _ = a.Get("type")
	if a.Has("ephemeral") {
		spec.Lifecycle = group.Ephemeral
	}
	if a.Has("invite-only") {
		spec.Access = group.InviteOnly
	}
	if spec.MaxMembers, err = a.Int("max", 0); err != nil {
		return "", err
	}
	if spec.IdleTimeout, err = a.Duration("idle", 0); err != nil {
		return "", err
	}
	g, err := e.W.CreateGroup(host, spec)
	if err != nil {
		return "", err
	}
	if e.groupHosts == nil {
		e.groupHosts = map[string]int{}
	}
	e.groupHosts[g.ID] = host
	out := fmt.Sprintf("%s created %s: %s %s %s max=%d", e.W.Name(host), g.ID, g.Type, g.Lifecycle, g.Access, g.MaxMembers)
	if g.Lifecycle == group.Ephemeral {
		out += " idle=" + g.IdleTimeout.String()
	}
	if g.HostJoined {
		out += " host-joined"
	}
	return out, nil
}

// forPeers runs fn for each peer of p= and reports the ones it worked for in
// one line (the peers, then verb()), then one line per failure.
func (e *ScriptEnv) forPeers(a Args, verb func() string, fn func(p int) error) (string, error) {
	ps, err := e.Peers(a, "p")
	if err != nil {
		return "", err
	}
	var ok []int32
	var fails []string
	for _, p := range ps {
		if err := fn(p); err != nil {
			fails = append(fails, fmt.Sprintf("%s: error: %s", e.W.Name(p), e.humanize(err.Error())))
			continue
		}
		ok = append(ok, int32(p))
	}
	var b strings.Builder
	if len(ok) > 0 {
		fmt.Fprintf(&b, "%s %s\n", compactPeers(e.W, ok), verb())
	}
	for _, f := range fails {
		b.WriteString(f + "\n")
	}
	return b.String(), nil
}

func cmdGroupJoin(e *ScriptEnv, a Args) (string, error) {
	id, host, err := e.groupHost(a)
	if err != nil {
		return "", err
	}
	return e.forPeers(a, func() string { return fmt.Sprintf("asked %s to join %s", e.W.Name(host), id) }, func(p int) error {
		return e.W.JoinGroup(p, host, id)
	})
}

func cmdGroupLeave(e *ScriptEnv, a Args) (string, error) {
	id, host, err := e.groupHost(a)
	if err != nil {
		return "", err
	}
	return e.forPeers(a, func() string { return fmt.Sprintf("left %s@%s", id, e.W.Name(host)) }, func(p int) error {
		return e.W.LeaveGroup(p, host, id)
	})
}

func cmdGroupSend(e *ScriptEnv, a Args) (string, error) {
	id, host, err := e.groupHost(a)
	if err != nil {
		return "", err
	}
	n, err := a.Int("n", 1)
	if err != nil {
		return "", err
	}
	kind, ok := a.Get("kind")
	if !ok {
		kind = group.TypeMsg
	}
	fixed, hasPayload := a.Get("payload")
	var first, last string
	verb := func() string {
		what := first
		if last != first {
			what = first + ".." + last
		}
		return fmt.Sprintf("sent %s %s to %s@%s", kind, what, id, e.W.Name(host))
	}
	return e.forPeers(a, verb, func(p int) error {
		for k := 0; k < n; k++ {
			payload := fixed
			if !hasPayload {
				e.payloadN++
				payload = fmt.Sprintf(`{"n":%d}`, e.payloadN)
			}
			if err := e.W.SendToGroup(p, host, id, kind, []byte(payload)); err != nil {
				return err
			}
			if first == "" {
				first = payload
			}
			last = payload
		}
		return nil
	})
}

func cmdGroupInvite(e *ScriptEnv, a Args) (string, error) {
	id, host, err := e.groupHost(a)
	if err != nil {
		return "", err
	}
	return e.forPeers(a, func() string { return fmt.Sprintf("invited by %s to %s", e.W.Name(host), id) }, func(p int) error {
		return e.W.InviteToGroup(host, id, p)
	})
}

func cmdGroupKick(e *ScriptEnv, a Args) (string, error) {
	id, host, err := e.groupHost(a)
	if err != nil {
		return "", err
	}
	return e.forPeers(a, func() string { return fmt.Sprintf("kicked by %s from %s", e.W.Name(host), id) }, func(p int) error {
		return e.W.KickFromGroup(host, id, p)
	})
}

func cmdGroupClose(e *ScriptEnv, a Args) (string, error) {
	id, host, err := e.groupHost(a)
	if err != nil {
		return "", err
	}
	if err := e.W.CloseGroup(host, id); err != nil {
		return "", errors.New(e.humanize(err.Error()))
	}
	return fmt.Sprintf("%s closed %s", e.W.Name(host), id), nil
}

// cmdGroupView shows the host's member list and how each member's view
// compares with it.
func cmdGroupView(e *ScriptEnv, a Args) (string, error) {
	id, host, err := e.groupHost(a)
	if err != nil {
		return "", err
	}
	w := e.W
	var b strings.Builder
	hid := w.PeerID(host)
	var listed []group.Member
	switch n := w.Node(host); {
	case n == nil:
		fmt.Fprintf(&b, "%s@%s: host down\n", id, w.Name(host))
	default:
		hv, ok := n.Groups().HostedGroup(id)
		if !ok {
			fmt.Fprintf(&b, "%s@%s: not hosted\n", id, w.Name(host))
			break
		}
		listed = hv.Members
		fmt.Fprintf(&b, "%s@%s %s %s: %d members %s\n", id, w.Name(host), hv.Group.Lifecycle, hv.Group.Access, len(listed), e.memberNames(listed))
	}
	want := e.memberNames(listed)
	isListed := map[string]bool{}
	for _, m := range listed {
		isListed[m.PeerID] = true
	}
	var agree []int32
	for i := 0; i < w.NumPeers(); i++ {
		if i == host {
			continue
		}
		n := w.Node(i)
		if n == nil {
			if isListed[string(w.PeerID(i))] {
				fmt.Fprintf(&b, "%s: down\n", w.Name(i))
			}
			continue
		}
		sv, ok := n.Groups().Subscription(hid, id)
		switch {
		case !ok && isListed[string(w.PeerID(i))]:
			fmt.Fprintf(&b, "%s: listed, not subscribed\n", w.Name(i))
		case !ok:
		case !sv.Joined:
			fmt.Fprintf(&b, "%s: joining\n", w.Name(i))
		case !isListed[string(w.PeerID(i))]:
			fmt.Fprintf(&b, "%s: subscribed, not listed; sees %s\n", w.Name(i), e.memberNames(sv.Members))
		case e.memberNames(sv.Members) != want:
			fmt.Fprintf(&b, "%s: sees %s\n", w.Name(i), e.memberNames(sv.Members))
		default:
			agree = append(agree, int32(i))
		}
	}
	if len(agree) > 0 {
		fmt.Fprintf(&b, "agree: %s\n", compactPeers(w, agree))
	}
	return b.String(), nil
}

// cmdGroupDelays prints, per member, how long relayed messages took from the
// host's acceptance to the member. max= makes it fail when a member not in
// except= took longer.
func cmdGroupDelays(e *ScriptEnv, a Args) (string, error) {
	id, host, err := e.groupHost(a)
	if err != nil {
		return "", err
	}
	gc := e.groupChecker()
	if gc == nil {
		return "", errors.New("the world has no group checker (give the world command the groups flag)")
	}
	limit, err := a.Duration("max", 0)
	if err != nil {
		return "", err
	}
	var except []int
	if a.Has("except") {
		if except, err = e.Peers(a, "except"); err != nil {
			return "", err
		}
	}
	var b strings.Builder
	var over []string
	for _, d := range gc.Delays(host, id, a.Has("reset")) {
		fmt.Fprintf(&b, "%s received %d, delay max %s mean %s\n", e.W.Name(d.Peer), d.Received, fmtTime(d.Max), fmtTime(d.Mean))
		if limit > 0 && d.Max > limit && !slices.Contains(except, d.Peer) {
			over = append(over, fmt.Sprintf("%s %s", e.W.Name(d.Peer), fmtTime(d.Max)))
		}
	}
	if limit > 0 {
		if len(over) > 0 {
			return b.String(), fmt.Errorf("delays over %s: %s", limit, strings.Join(over, ", "))
		}
		but := ""
		if len(except) > 0 {
			but = " but " + e.names(except)
		}
		fmt.Fprintf(&b, "every member%s within %s\n", but, limit)
	}
	return b.String(), nil
}

func cmdGroupStats(e *ScriptEnv, _ Args) (string, error) {
	gc := e.groupChecker()
	if gc == nil {
		return "", errors.New("the world has no group checker (give the world command the groups flag)")
	}
	t := gc.Totals()
	return fmt.Sprintf("groups %d: accepted %d, received %d, outstanding %d, sends in flight %d",
		t.Groups, t.Accepted, t.Receipts, t.Outstanding, t.InFlight), nil
}
