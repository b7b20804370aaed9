package simnet

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/presence"
)

// Discovery script commands. A script turns discovery on with the world
// command's discovery flag (or rdv, which adds the rendezvous), which also
// adds a PresenceChecker; the world command then takes heartbeat=, ttl=,
// grace=, mdns=, rdv-stale=, rdv-sweep=, wan-latency=, wan-jitter= and
// return= (the checker's ReturnWithin). add-peers takes tag= and lan-only.
// While "run" and "converge" run, table changes are printed ("p0 sees p3
// online via lan").
func init() {
	for _, c := range []ScriptCommand{
		{"tag", "tag peers=P,.. name=TAG", cmdTag},
		{"wan", "wan peers=P,.. [off]", cmdWAN},
		{"tables", "tables [peers=P,..]", cmdTables},
		{"rdv", "rdv", cmdRdv},
		{"rdv-crash", "rdv-crash", cmdRdvCrash},
		{"rdv-restart", "rdv-restart", cmdRdvRestart},
		{"shutdown", "shutdown p=P", cmdShutdown},
		{"presence-stats", "presence-stats", cmdPresenceStats},
	} {
		RegisterScriptCommand(c)
	}
}

// discoveryArgs reads the world command's discovery arguments: nil
// options when neither discovery nor rdv is given.
func discoveryArgs(e *ScriptEnv, a Args, opts *Options) error {
	if !a.Has("discovery") && !a.Has("rdv") {
		for _, k := range []string{"heartbeat", "ttl", "grace", "mdns", "rdv-stale", "rdv-sweep", "wan-latency", "wan-jitter", "return"} {
			if a.Has(k) {
				return fmt.Errorf("%s= needs the discovery or rdv flag", k)
			}
		}
		return nil
	}
	d := &DiscoveryOptions{Rendezvous: a.Has("rdv"), WANLink: DefaultWANLink(),
		Layout: func(int) PeerPlace { return e.place }}
	pc := &opts.Node.Presence
	var err error
	get := func(k string, v *time.Duration) {
		if err == nil {
			*v, err = a.Duration(k, *v)
		}
	}
	get("heartbeat", &pc.Heartbeat)
	get("ttl", &pc.TTL)
	get("grace", &pc.Grace)
	get("mdns", &d.MDNSInterval)
	get("rdv-stale", &d.RendezvousStale)
	get("rdv-sweep", &d.RendezvousSweep)
	get("wan-latency", &d.WANLink.Latency)
	get("wan-jitter", &d.WANLink.Jitter)
	checker := NewPresenceChecker()
	get("return", &checker.ReturnWithin)
	if err != nil {
		return err
	}
	opts.Discovery = d
	opts.Checkers = append(opts.Checkers, checker)
	return nil
}

// presenceLine renders a table change of peer p.
func presenceLine(w *World, p int, ev *presence.Event) string {
	other := string(ev.Peer.ID)
	if j, ok := w.Index(ev.Peer.ID); ok {
		other = w.Name(j)
	}
	name := w.Name(p)
	switch ev.Type {
	case presence.EvOnline:
		return fmt.Sprintf("%s sees %s online via %s", name, other, ev.Peer.Source)
	case presence.EvUpdated:
		return fmt.Sprintf("%s sees %s via %s", name, other, ev.Peer.Source)
	case presence.EvOffline:
		return fmt.Sprintf("%s sees %s offline", name, other)
	case presence.EvRemoved:
		return fmt.Sprintf("%s forgot %s", name, other)
	}
	return ""
}

func (e *ScriptEnv) needDiscovery() error {
	if e.W.disc == nil {
		return errors.New("the world has no discovery (world ... discovery)")
	}
	return nil
}

func cmdTag(e *ScriptEnv, a Args) (string, error) {
	if err := e.needDiscovery(); err != nil {
		return "", err
	}
	ps, err := e.Peers(a, "peers")
	if err != nil {
		return "", err
	}
	name, ok := a.Get("name")
	if !ok {
		return "", errors.New("missing name=")
	}
	for _, p := range ps {
		e.W.SetTag(p, name)
	}
	return fmt.Sprintf("tag %s: %s", e.W.Tag(ps[0]), e.names(ps)), nil
}

func cmdWAN(e *ScriptEnv, a Args) (string, error) {
	if err := e.needDiscovery(); err != nil {
		return "", err
	}
	ps, err := e.Peers(a, "peers")
	if err != nil {
		return "", err
	}
	on := !a.Has("off")
	for _, p := range ps {
		e.W.SetWAN(p, on)
	}
	state := "on"
	if !on {
		state = "off"
	}
	return fmt.Sprintf("rendezvous %s for %s", state, e.names(ps)), nil
}

// cmdTables prints each peer's table: who it sees online via lan, via wan,
// and offline.
func cmdTables(e *ScriptEnv, a Args) (string, error) {
	if err := e.needDiscovery(); err != nil {
		return "", err
	}
	ps := make([]int, e.W.NumPeers())
	for i := range ps {
		ps[i] = i
	}
	if a.Has("peers") {
		var err error
		if ps, err = e.Peers(a, "peers"); err != nil {
			return "", err
		}
	}
	var b strings.Builder
	for _, p := range ps {
		fmt.Fprintf(&b, "%s [%s]", e.W.Name(p), e.placeOf(p))
		n := e.W.Node(p)
		if n == nil {
			b.WriteString(" down\n")
			continue
		}
		var lan, wan, off []int32
		for _, row := range n.Peers() {
			j, ok := e.W.Index(row.ID)
			if !ok {
				continue
			}
			switch {
			case !row.Online:
				off = append(off, int32(j))
			case row.Source == presence.SourceWAN:
				wan = append(wan, int32(j))
			default:
				lan = append(lan, int32(j))
			}
		}
		slices.Sort(lan)
		slices.Sort(wan)
		slices.Sort(off)
		fmt.Fprintf(&b, " lan %s; wan %s", compactPeers(e.W, lan), compactPeers(e.W, wan))
		if len(off) > 0 {
			fmt.Fprintf(&b, "; offline %s", compactPeers(e.W, off))
		}
		b.WriteString("\n")
	}
	return b.String(), nil
}

// placeOf describes where peer p sits: segment, tag, rendezvous use.
func (e *ScriptEnv) placeOf(p int) string {
	seg := e.W.Segment(p)
	if seg == "" {
		seg = "-"
	}
	s := seg + " " + e.W.Tag(p)
	if e.W.WAN(p) {
		s += " wan"
	}
	return s
}

func cmdRdv(e *ScriptEnv, _ Args) (string, error) {
	if !e.W.HasRendezvous() {
		return "", ErrNoRendezvous
	}
	if !e.W.RendezvousUp() {
		return "rendezvous down", nil
	}
	known, subs := e.W.RendezvousPeers()
	ks := make([]int32, len(known))
	for i, k := range known {
		ks[i] = int32(k)
	}
	return fmt.Sprintf("rendezvous up: knows %s (%d); %d streams open", compactPeers(e.W, ks), len(known), subs), nil
}

func cmdRdvCrash(e *ScriptEnv, _ Args) (string, error) {
	if err := e.W.CrashRendezvous(); err != nil {
		return "", err
	}
	return "rendezvous crashed", nil
}

func cmdRdvRestart(e *ScriptEnv, _ Args) (string, error) {
	if err := e.W.RestartRendezvous(); err != nil {
		return "", err
	}
	return "rendezvous restarted", nil
}

func cmdShutdown(e *ScriptEnv, a Args) (string, error) {
	p, err := e.Peer(a, "p")
	if err != nil {
		return "", err
	}
	if err := e.W.Shutdown(p); err != nil {
		return "", err
	}
	return fmt.Sprintf("%s shut down (offline announced)", e.W.Name(p)), nil
}

func cmdPresenceStats(e *ScriptEnv, _ Args) (string, error) {
	s := e.W.Stats().Presence
	return fmt.Sprintf("published %d gossiped %d delivered %d refused %d dropped %d\n"+
		"mdns sent %d lost %d found %d; dials %d connects %d joins %d\n"+
		"rendezvous publishes %d refused %d events %d streams %d swept %d crashes %d",
		s.Published, s.Gossiped, s.Delivered, s.Refused, s.Dropped,
		s.MDNSSent, s.MDNSLost, s.Found, s.Dials, s.Connects, s.Joins,
		s.RdvPublishes, s.RdvRefused, s.RdvEvents, s.RdvSubscribes, s.RdvSwept, s.RdvCrashes), nil
}

// presenceEvents adds the table changes of a step to the printed events.
func (e *ScriptEnv) presenceEvents(w *World, s *Step, at string, ev *app.Event) {
	if ev.Presence == nil {
		return
	}
	if l := presenceLine(w, s.Peer, ev.Presence); l != "" {
		e.events = append(e.events, at+" "+l)
	}
}
