package simnet

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/mq"
)

//go:embed testdata/*.txt
var scriptFS embed.FS

// EmbeddedScripts lists the scripts compiled into the binary (by name).
func EmbeddedScripts() []string {
	names, _ := fs.Glob(scriptFS, "testdata/*.txt")
	for i, n := range names {
		names[i] = strings.TrimSuffix(strings.TrimPrefix(n, "testdata/"), ".txt")
	}
	return names
}

// Script is a parsed scenario script. The format follows etcd-io/raft's
// interaction tests: a command line, a line "----", and the expected output
// up to a blank line. Lines starting with # and blank lines between commands
// are kept as they are. A command is a name and arguments key=value or flags;
// peers are named p0, p1, ... Commands (see ScriptCommands, `goop sim --list`):
// world, add-peers, segment, link, send, partition, heal, crash, restart,
// run, converge, broadcast, check, stats, state, hash, the group-* commands
// (scriptgroup.go) and the discovery commands (scriptdiscovery.go). "run"
// and "converge" print what the nodes published: deliveries, acks and
// failures, group events and peer table changes; bus traffic of the group
// protocol itself (joins, pings, relays) is not printed.
type Script struct {
	Name  string
	items []scriptItem
}

type scriptItem struct {
	text   string // a comment or blank line, when cmd is empty
	line   int
	cmd    string
	name   string
	args   Args
	output []string
}

// Args are a command's arguments in order.
type Args []Arg

// Arg is one argument: key=value, or a flag with an empty Val.
type Arg struct{ Key, Val string }

// ParseScript parses a script; name is used in error messages.
func ParseScript(name, src string) (*Script, error) {
	s := &Script{Name: name}
	lines := strings.Split(strings.ReplaceAll(src, "\r\n", "\n"), "\n")
	if n := len(lines); n > 0 && lines[n-1] == "" {
		lines = lines[:n-1]
	}
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "#") {
			s.items = append(s.items, scriptItem{text: l, line: i + 1})
			continue
		}
		it := scriptItem{cmd: t, line: i + 1}
		f := strings.Fields(t)
		it.name = f[0]
		for _, a := range f[1:] {
			k, v, _ := strings.Cut(a, "=")
			it.args = append(it.args, Arg{Key: k, Val: v})
		}
		if i+1 >= len(lines) || lines[i+1] != "----" {
			return nil, fmt.Errorf("%s:%d: command %q must be followed by a line ----", name, i+1, it.name)
		}
		i += 2
		for ; i < len(lines) && lines[i] != ""; i++ {
			it.output = append(it.output, lines[i])
		}
		s.items = append(s.items, it)
	}
	return s, nil
}

// Format renders the script with the given outputs (one per command, in
// order; nil keeps the expected output).
func (s *Script) Format(outputs [][]string) string {
	var b strings.Builder
	k := 0
	for idx, it := range s.items {
		if it.cmd == "" {
			b.WriteString(it.text + "\n")
			continue
		}
		out := it.output
		if outputs != nil && k < len(outputs) {
			out = outputs[k]
		}
		k++
		b.WriteString(it.cmd + "\n----\n")
		for _, l := range out {
			b.WriteString(l + "\n")
		}
		if idx < len(s.items)-1 {
			b.WriteString("\n")
		}
	}
	return b.String()
}

// Expected returns the expected output of each command, in order.
func (s *Script) Expected() [][]string {
	var out [][]string
	for _, it := range s.items {
		if it.cmd != "" {
			out = append(out, it.output)
		}
	}
	return out
}

// Commands returns the command lines with their script line numbers.
func (s *Script) Commands() []string {
	var out []string
	for _, it := range s.items {
		if it.cmd != "" {
			out = append(out, fmt.Sprintf("%s:%d: %s", s.Name, it.line, it.cmd))
		}
	}
	return out
}

// ScriptEnv is the state script commands act on.
type ScriptEnv struct {
	// W is the world, created by the "world" command.
	W *World
	// Seed and Params are what the script runs with.
	Seed   uint64
	Params Params
	// Options is the world command line, reported as the seed's options.
	Options string

	events     []string
	print      bool
	seqs       map[string]string // message id → "p0→p1 #3" for acks
	payloadN   int
	converges  int
	convergeOK int
	lastLive   error
	groupHosts map[string]int // group id → host, from group-create
	place      PeerPlace      // where add-peers puts the peers it adds (discovery)
}

// ScriptCommand is one script command. Run returns the command's output
// (lines without blank lines); an error is printed as "error: ..." and the
// script goes on.
type ScriptCommand struct {
	Name  string
	Usage string
	Run   func(e *ScriptEnv, args Args) (string, error)
}

var scriptCommands = map[string]ScriptCommand{}

// RegisterScriptCommand adds a command to the script language; call it from
// an init function. Later cores add their commands this way.
func RegisterScriptCommand(c ScriptCommand) {
	if _, dup := scriptCommands[c.Name]; dup {
		panic("simnet: script command registered twice: " + c.Name)
	}
	scriptCommands[c.Name] = c
}

// ScriptCommands lists the registered commands, sorted by name.
func ScriptCommands() []ScriptCommand {
	var out []ScriptCommand
	for _, c := range scriptCommands {
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b ScriptCommand) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Get returns the value of key and whether it was given.
func (a Args) Get(key string) (string, bool) {
	for _, x := range a {
		if x.Key == key {
			return x.Val, true
		}
	}
	return "", false
}

// Has reports whether flag or key was given.
func (a Args) Has(key string) bool { _, ok := a.Get(key); return ok }

// Duration returns key as a duration, or def.
func (a Args) Duration(key string, def time.Duration) (time.Duration, error) {
	v, ok := a.Get(key)
	if !ok {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", key, err)
	}
	return d, nil
}

// Int returns key as an int, or def.
func (a Args) Int(key string, def int) (int, error) {
	v, ok := a.Get(key)
	if !ok {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", key, err)
	}
	return n, nil
}

// Float returns key as a float, or def.
func (a Args) Float(key string, def float64) (float64, error) {
	v, ok := a.Get(key)
	if !ok {
		return def, nil
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", key, err)
	}
	return f, nil
}

// Peer parses a peer name ("p3") given as key.
func (e *ScriptEnv) Peer(a Args, key string) (int, error) {
	v, ok := a.Get(key)
	if !ok {
		return 0, fmt.Errorf("missing %s=", key)
	}
	return e.parsePeer(v)
}

func (e *ScriptEnv) parsePeer(v string) (int, error) {
	n, err := strconv.Atoi(strings.TrimPrefix(v, "p"))
	if err != nil || !strings.HasPrefix(v, "p") || n < 0 || n >= e.W.NumPeers() {
		return 0, fmt.Errorf("no peer %q", v)
	}
	return n, nil
}

// Peers parses a list of peers ("p0,p2", ranges "p1..p5", or "*" for all)
// given as key; "rdv" names the rendezvous node (Rendezvous).
func (e *ScriptEnv) Peers(a Args, key string) ([]int, error) {
	v, ok := a.Get(key)
	if !ok {
		return nil, fmt.Errorf("missing %s=", key)
	}
	if v == "*" {
		out := make([]int, e.W.NumPeers())
		for i := range out {
			out[i] = i
		}
		return out, nil
	}
	var out []int
	for _, s := range strings.Split(v, ",") {
		if s == "rdv" && e.W.HasRendezvous() {
			out = append(out, Rendezvous)
			continue
		}
		if lo, hi, ok := strings.Cut(s, ".."); ok {
			i, err := e.parsePeer(lo)
			if err != nil {
				return nil, err
			}
			j, err := e.parsePeer(hi)
			if err != nil {
				return nil, err
			}
			if j < i {
				return nil, fmt.Errorf("empty peer range %q", s)
			}
			for k := i; k <= j; k++ {
				out = append(out, k)
			}
			continue
		}
		i, err := e.parsePeer(s)
		if err != nil {
			return nil, err
		}
		out = append(out, i)
	}
	return out, nil
}

func (e *ScriptEnv) names(ps []int) string {
	var s []string
	for _, p := range ps {
		s = append(s, e.W.Name(p))
	}
	return strings.Join(s, ",")
}

func fmtTime(d time.Duration) string { return fmt.Sprintf("%.3fs", d.Seconds()) }

// onStep prints what nodes publish while a "run" or "converge" command runs.
func (e *ScriptEnv) onStep(w *World, s *Step) {
	if s.Kind == StepSend && s.Frame != nil {
		e.seqs[s.Frame.ID] = fmt.Sprintf("%s→%s #%d", w.Name(s.Peer), w.Name(s.To), s.Frame.Seq)
	}
	if !e.print {
		return
	}
	at := fmtTime(s.Time)
	name := w.Name(s.Peer)
	if s.Kind == StepBroadcast {
		e.events = append(e.events, fmt.Sprintf("%s %s heard a broadcast from %s", at, name, w.Name(s.From)))
	}
	for i := range s.Events {
		ev := &s.Events[i]
		other := string(ev.Peer)
		if j, ok := w.Index(ev.Peer); ok {
			other = w.Name(j)
		}
		switch ev.Kind {
		case app.EventMessage:
			if groupTopic(ev.Topic) {
				continue
			}
			e.events = append(e.events, fmt.Sprintf("%s %s delivered %s→%s #%d %s", at, name, other, name, ev.Msg.Seq, ev.Msg.Payload))
		case app.EventDelivered:
			if groupTopic(ev.Topic) {
				continue
			}
			e.events = append(e.events, fmt.Sprintf("%s %s got ack %s", at, name, e.seqs[ev.MsgID]))
		case app.EventFailed:
			what := e.seqs[ev.MsgID]
			if what == "" {
				what = fmt.Sprintf("%s→%s %s", name, other, ev.Topic)
			}
			e.events = append(e.events, fmt.Sprintf("%s %s gave up %s: %s", at, name, what, ev.Reason))
		case app.EventGroup:
			if l := e.groupLine(w, s.Peer, ev.Group); l != "" {
				e.events = append(e.events, fmt.Sprintf("%s %s %s", at, name, l))
			}
		case app.EventReceipt:
			e.events = append(e.events, fmt.Sprintf("%s %s got a receipt from %s", at, name, other))
		case app.EventPeer:
			e.presenceEvents(w, s, at, ev)
		}
	}
}

func (e *ScriptEnv) needWorld() error {
	if e.W == nil {
		return errors.New("no world yet: the script must start with the world command")
	}
	return nil
}

// RunScript runs a script for seed and returns its report, with the
// transcript (the script with actual outputs) in Report.Transcript.
func RunScript(s *Script, seed uint64, p Params) *Report {
	start := time.Now()
	outs, env, err := s.Execute(seed, p)
	var rep *Report
	if env.W == nil {
		rep = &Report{Scenario: s.Name, Seed: seed, Params: p.withDefaults(), Replay: ReplayCommand(s.Name, seed, p)}
		if err == nil {
			err = errors.New("the script creates no world")
		}
	} else {
		var lerr error
		if env.converges > env.convergeOK {
			lerr = env.lastLive
		}
		rep = newReport(s.Name, seed, p, env.W, lerr, time.Since(start))
		rep.Liveness.Ran = rep.Violation == nil && env.converges > 0
	}
	rep.Options = env.Options
	if err != nil {
		rep.Error = err.Error()
	}
	rep.Transcript = s.Format(outs)
	return rep
}

// Execute runs every command and returns their outputs. The error is for
// a malformed script (unknown command); command failures are outputs.
func (s *Script) Execute(seed uint64, p Params) ([][]string, *ScriptEnv, error) {
	e := &ScriptEnv{Seed: seed, Params: p.withDefaults(), seqs: map[string]string{}}
	var outs [][]string
	var ferr error
	for _, it := range s.items {
		if it.cmd == "" {
			continue
		}
		c, ok := scriptCommands[it.name]
		var out string
		var err error
		switch {
		case !ok:
			err = fmt.Errorf("unknown command %q", it.name)
			if ferr == nil {
				ferr = fmt.Errorf("%s:%d: %w", s.Name, it.line, err)
			}
		case it.name != "world" && e.W == nil:
			err = e.needWorld()
		default:
			out, err = c.Run(e, it.args)
		}
		if err != nil {
			out = strings.TrimSpace(out + "\nerror: " + err.Error())
		}
		var lines []string
		for _, l := range strings.Split(out, "\n") {
			if strings.TrimSpace(l) != "" {
				lines = append(lines, strings.TrimRight(l, " "))
			}
		}
		if len(lines) == 0 {
			lines = []string{"ok"}
		}
		outs = append(outs, lines)
	}
	return outs, e, ferr
}

func init() {
	for _, c := range []ScriptCommand{
		{"world", "world [peers=N] [latency=D] [jitter=D] [spread=D] [loss=F] [dup=F] [reorder=F] [reorder-delay=D] [bandwidth=B/s] [rto=D] [max-rto=D] [attempts=N] [window=N] [codec=N] [allow-failures] [fault=skip-dedupe] [groups] [ping=D] [evict=D] [rejoin=D] [join-timeout=D] [idle=D] [discovery] [rdv] [heartbeat=D] [ttl=D] [grace=D] [mdns=D] [rdv-stale=D] [rdv-sweep=D] [wan-latency=D] [wan-jitter=D] [return=D]", cmdWorld},
		{"add-peers", "add-peers n=N [segment=NAME] [tag=TAG] [lan-only]", cmdAddPeers},
		{"segment", "segment name=NAME peers=p0,p1", cmdSegment},
		{"link", "link from=P to=P [both] [latency=D] [jitter=D] [loss=F] [dup=F] [reorder=F] [reorder-delay=D] [bandwidth=B/s]", cmdLink},
		{"send", "send from=P to=P [n=N] [topic=T] [payload=JSON]", cmdSend},
		{"partition", "partition a=P,P [b=P,P] [oneway]", cmdPartition},
		{"heal", "heal [id=N]", cmdHeal},
		{"crash", "crash p=P", cmdCrash},
		{"restart", "restart p=P", cmdRestart},
		{"run", "run for=D [quiet]", cmdRun},
		{"converge", "converge [within=D] [quiet]", cmdConverge},
		{"broadcast", "broadcast from=P [payload=TEXT]", cmdBroadcast},
		{"check", "check", cmdCheck},
		{"stats", "stats", cmdStats},
		{"state", "state p=P", cmdState},
		{"hash", "hash", cmdHash},
	} {
		RegisterScriptCommand(c)
	}
}

func linkArgs(a Args, lp LinkParams) (LinkParams, error) {
	var err error
	get := func(k string, d *time.Duration) {
		if err == nil {
			*d, err = a.Duration(k, *d)
		}
	}
	getf := func(k string, f *float64) {
		if err == nil {
			*f, err = a.Float(k, *f)
		}
	}
	get("latency", &lp.Latency)
	get("jitter", &lp.Jitter)
	get("reorder-delay", &lp.ReorderDelay)
	getf("loss", &lp.Loss)
	getf("dup", &lp.Dup)
	getf("reorder", &lp.Reorder)
	if err == nil {
		var bw int
		bw, err = a.Int("bandwidth", int(lp.Bandwidth))
		lp.Bandwidth = int64(bw)
	}
	return lp, err
}

func cmdWorld(e *ScriptEnv, a Args) (string, error) {
	if e.W != nil {
		return "", errors.New("the world exists already")
	}
	lp, err := linkArgs(a, DefaultLink())
	if err != nil {
		return "", err
	}
	opts := Options{Link: lp, Node: app.NodeOptions{Bus: SimBusOptions()}}
	if opts.Peers, err = a.Int("peers", 0); err != nil {
		return "", err
	}
	if opts.LatencySpread, err = a.Duration("spread", 0); err != nil {
		return "", err
	}
	if opts.Node.Bus.InitialRTO, err = a.Duration("rto", opts.Node.Bus.InitialRTO); err != nil {
		return "", err
	}
	if opts.Node.Bus.MaxRTO, err = a.Duration("max-rto", opts.Node.Bus.MaxRTO); err != nil {
		return "", err
	}
	if opts.Node.Bus.MaxAttempts, err = a.Int("attempts", opts.Node.Bus.MaxAttempts); err != nil {
		return "", err
	}
	if opts.Node.Bus.Window, err = a.Int("window", opts.Node.Bus.Window); err != nil {
		return "", err
	}
	if opts.CodecEvery, err = a.Int("codec", 1); err != nil {
		return "", err
	}
	fault, _ := a.Get("fault")
	if e.Params.Fault != "" {
		fault = e.Params.Fault
	}
	switch fault {
	case "":
	case FaultSkipDedupe:
		opts.Node.Bus.UnsafeSkipDedupe = true
	default:
		return "", fmt.Errorf("unknown fault %q", fault)
	}
	if opts.Node.Groups, err = groupArgs(a, opts.Node.Groups); err != nil {
		return "", err
	}
	mq := NewMQChecker()
	mq.AllowFailures = a.Has("allow-failures")
	opts.Checkers = []Checker{mq}
	if a.Has("groups") {
		opts.Checkers = append(opts.Checkers, NewGroupChecker())
	}
	if err := discoveryArgs(e, a, &opts); err != nil {
		return "", err
	}
	opts.OnStep = e.onStep
	opts.OnBroadcast = func(*World, int, int, []byte) {}
	e.W = New(e.Seed, opts)
	var parts []string
	for _, x := range a {
		parts = append(parts, strings.TrimSuffix(x.Key+"="+x.Val, "="))
	}
	e.Options = strings.Join(parts, " ")
	return e.listPeers(0), nil
}

func (e *ScriptEnv) listPeers(from int) string {
	var b strings.Builder
	for i := from; i < e.W.NumPeers(); i++ {
		fmt.Fprintf(&b, "%s %s", e.W.Name(i), e.W.PeerID(i))
		if s := e.W.Segment(i); s != "" {
			fmt.Fprintf(&b, " segment=%s", s)
		}
		if t := e.W.Tag(i); t != "" && t != DefaultMDNSTag {
			fmt.Fprintf(&b, " tag=%s", t)
		}
		if e.W.HasRendezvous() && !e.W.WAN(i) {
			b.WriteString(" lan-only")
		}
		b.WriteString("\n")
	}
	return b.String()
}

func cmdAddPeers(e *ScriptEnv, a Args) (string, error) {
	n, err := a.Int("n", 1)
	if err != nil {
		return "", err
	}
	seg, _ := a.Get("segment")
	tag, _ := a.Get("tag")
	if (tag != "" || a.Has("lan-only")) && e.W.disc == nil {
		return "", errors.New("tag= and lan-only need a world with discovery")
	}
	e.place = PeerPlace{Segment: seg, Tag: tag, NoWAN: a.Has("lan-only")}
	defer func() { e.place = PeerPlace{} }()
	first := e.W.NumPeers()
	for i := 0; i < n; i++ {
		e.W.SetSegment(e.W.AddPeer(), seg)
	}
	return e.listPeers(first), nil
}

func cmdSegment(e *ScriptEnv, a Args) (string, error) {
	name, ok := a.Get("name")
	if !ok {
		return "", errors.New("missing name=")
	}
	ps, err := e.Peers(a, "peers")
	if err != nil {
		return "", err
	}
	for _, p := range ps {
		e.W.SetSegment(p, name)
	}
	return fmt.Sprintf("segment %s: %s", name, e.names(e.W.SegmentPeers(name))), nil
}

func cmdLink(e *ScriptEnv, a Args) (string, error) {
	from, err := e.Peer(a, "from")
	if err != nil {
		return "", err
	}
	to, err := e.Peer(a, "to")
	if err != nil {
		return "", err
	}
	lp, err := linkArgs(a, e.W.Link(from, to))
	if err != nil {
		return "", err
	}
	e.W.SetLink(from, to, lp)
	dir := "→"
	if a.Has("both") {
		e.W.SetLink(to, from, lp)
		dir = "↔"
	}
	return fmt.Sprintf("link %s%s%s latency=%s jitter=%s loss=%g dup=%g reorder=%g bandwidth=%d",
		e.W.Name(from), dir, e.W.Name(to), lp.Latency, lp.Jitter, lp.Loss, lp.Dup, lp.Reorder, lp.Bandwidth), nil
}

func cmdSend(e *ScriptEnv, a Args) (string, error) {
	from, err := e.Peer(a, "from")
	if err != nil {
		return "", err
	}
	to, err := e.Peer(a, "to")
	if err != nil {
		return "", err
	}
	n, err := a.Int("n", 1)
	if err != nil {
		return "", err
	}
	topic, ok := a.Get("topic")
	if !ok {
		topic = "chat"
	}
	fixed, hasPayload := a.Get("payload")
	var seqs []int64
	for i := 0; i < n; i++ {
		e.payloadN++
		payload := fixed
		if !hasPayload {
			payload = fmt.Sprintf(`{"n":%d}`, e.payloadN)
		}
		f, err := e.W.Send(from, to, topic, []byte(payload))
		if err != nil {
			return sendSummary(e, from, to, seqs), err
		}
		seqs = append(seqs, f.Seq)
	}
	return sendSummary(e, from, to, seqs), nil
}

func sendSummary(e *ScriptEnv, from, to int, seqs []int64) string {
	switch len(seqs) {
	case 0:
		return ""
	case 1:
		return fmt.Sprintf("%s queued #%d for %s", e.W.Name(from), seqs[0], e.W.Name(to))
	}
	return fmt.Sprintf("%s queued #%d..#%d for %s", e.W.Name(from), seqs[0], seqs[len(seqs)-1], e.W.Name(to))
}

func cmdPartition(e *ScriptEnv, a Args) (string, error) {
	pa, err := e.Peers(a, "a")
	if err != nil {
		return "", err
	}
	var pb []int
	if a.Has("b") {
		if pb, err = e.Peers(a, "b"); err != nil {
			return "", err
		}
	}
	oneWay := a.Has("oneway")
	id, err := e.W.Partition(pa, pb, oneWay)
	if err != nil {
		return "", err
	}
	bs := "rest"
	if pb != nil {
		bs = e.names(pb)
	}
	if oneWay {
		return fmt.Sprintf("partition %d: %s → %s cut (one-way)", id, e.names(pa), bs), nil
	}
	return fmt.Sprintf("partition %d: %s ↔ %s cut", id, e.names(pa), bs), nil
}

func cmdHeal(e *ScriptEnv, a Args) (string, error) {
	if !a.Has("id") {
		ids := e.W.Partitions()
		e.W.HealAll()
		return fmt.Sprintf("healed %v", ids), nil
	}
	id, err := a.Int("id", 0)
	if err != nil {
		return "", err
	}
	if err := e.W.Heal(id); err != nil {
		return "", err
	}
	return fmt.Sprintf("healed [%d]", id), nil
}

func cmdCrash(e *ScriptEnv, a Args) (string, error) {
	p, err := e.Peer(a, "p")
	if err != nil {
		return "", err
	}
	if err := e.W.Crash(p); err != nil {
		return "", err
	}
	return fmt.Sprintf("%s crashed; durable: %s", e.W.Name(p), e.durable(p)), nil
}

func cmdRestart(e *ScriptEnv, a Args) (string, error) {
	p, err := e.Peer(a, "p")
	if err != nil {
		return "", err
	}
	if err := e.W.Restart(p); err != nil {
		return "", err
	}
	return fmt.Sprintf("%s restarted (incarnation %d) from: %s", e.W.Name(p), e.W.Incarnation(p), e.durable(p)), nil
}

// durable summarises what peer p stored.
func (e *ScriptEnv) durable(p int) string {
	snap := e.W.Durable(p)
	var seqs []string
	slices.SortFunc(snap.Outbox, func(x, y mq.OutboxEntry) int {
		if c := strings.Compare(string(x.To), string(y.To)); c != 0 {
			return c
		}
		return int(x.Frame.Seq - y.Frame.Seq)
	})
	for _, o := range snap.Outbox {
		seqs = append(seqs, fmt.Sprintf("%s#%d", e.nameOf(o.To), o.Frame.Seq))
	}
	var cur []string
	for id, c := range snap.Cursors {
		cur = append(cur, fmt.Sprintf("%s@%d", e.nameOf(id), c.Next))
	}
	slices.Sort(cur)
	return fmt.Sprintf("outbox [%s] cursors [%s]", strings.Join(seqs, " "), strings.Join(cur, " "))
}

func (e *ScriptEnv) nameOf(id mq.PeerID) string {
	if i, ok := e.W.Index(id); ok {
		return e.W.Name(i)
	}
	return string(id)
}

func (e *ScriptEnv) flushEvents(quiet bool) string {
	var b strings.Builder
	if !quiet {
		for _, l := range e.events {
			b.WriteString(l + "\n")
		}
	}
	e.events = e.events[:0]
	return b.String()
}

func cmdRun(e *ScriptEnv, a Args) (string, error) {
	d, err := a.Duration("for", time.Second)
	if err != nil {
		return "", err
	}
	e.print = true
	err = e.W.RunFor(d)
	e.print = false
	out := e.flushEvents(a.Has("quiet"))
	if err != nil {
		return out, err
	}
	return out + "time " + fmtTime(e.W.Elapsed()), nil
}

func cmdConverge(e *ScriptEnv, a Args) (string, error) {
	within, err := a.Duration("within", 60*time.Second)
	if err != nil {
		return "", err
	}
	e.converges++
	e.print = true
	err = e.W.Converge(within)
	e.print = false
	out := e.flushEvents(a.Has("quiet"))
	e.lastLive = err
	if err != nil {
		return out, err
	}
	e.convergeOK++
	return out + "converged at " + fmtTime(e.W.Elapsed()), nil
}

func cmdBroadcast(e *ScriptEnv, a Args) (string, error) {
	from, err := e.Peer(a, "from")
	if err != nil {
		return "", err
	}
	payload, _ := a.Get("payload")
	n, err := e.W.Broadcast(from, []byte(payload))
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s broadcast on segment %s toward %d peers", e.W.Name(from), e.W.Segment(from), n), nil
}

func cmdCheck(e *ScriptEnv, _ Args) (string, error) {
	var b strings.Builder
	v := e.W.Violation()
	for _, ir := range invariantResults(e.W) {
		if ir.OK {
			fmt.Fprintf(&b, "%s ok (%d checks)\n", ir.Name, ir.Checked)
		} else {
			fmt.Fprintf(&b, "%s BROKEN at %s: %s\n", ir.Name, fmtTime(v.Time), ir.Detail)
		}
	}
	for _, c := range e.W.Checkers() {
		if c.Converged() {
			fmt.Fprintf(&b, "%s: nothing outstanding\n", c.Name())
		} else {
			fmt.Fprintf(&b, "%s\n", c.Waiting(e.W))
		}
	}
	return b.String(), nil
}

func cmdStats(e *ScriptEnv, _ Args) (string, error) {
	s := e.W.Stats()
	return fmt.Sprintf("time %s events %d\nmessages sent %d delivered %d acked %d failed %d rejected %d\n"+
		"frames sent %d delivered %d duplicated %d dropped %d (loss %d, partition %d, down %d)\n"+
		"crashes %d restarts %d partitions %d heals %d broadcasts %d heard %d",
		fmtTime(e.W.Elapsed()), s.Events, s.MsgsSent, s.MsgsDelivered, s.MsgsAcked, s.MsgsFailed, s.MsgsRejected,
		s.FramesSent, s.FramesDelivered, s.FramesDuplicated, s.FramesDropped(), s.DroppedLoss, s.DroppedPartition, s.DroppedDown,
		s.Crashes, s.Restarts, s.Partitions, s.Heals, s.Broadcasts, s.BroadcastsRecv), nil
}

func cmdState(e *ScriptEnv, a Args) (string, error) {
	p, err := e.Peer(a, "p")
	if err != nil {
		return "", err
	}
	up := "up"
	if !e.W.Up(p) {
		up = "down"
	}
	return fmt.Sprintf("%s %s incarnation %d durable: %s", e.W.Name(p), up, e.W.Incarnation(p), e.durable(p)), nil
}

func cmdHash(e *ScriptEnv, _ Args) (string, error) {
	return fmt.Sprintf("trace hash %016x after %d events", e.W.TraceHash(), e.W.Stats().Events), nil
}
