package simnet

import (
	"fmt"
	"time"

	"github.com/goop-p2p/goop/domain/group"
)

// SimGroupConfig returns group timers sized for simulation, so that scenarios
// stay short in virtual time: the host pings every 5 s, evicts a member silent
// for 15 s, a member re-joins every 5 s, a join waits 5 s, and an ephemeral
// group without its own idle timeout dissolves after a minute of inactivity.
func SimGroupConfig() group.Config {
	return group.Config{
		PingInterval:       5 * time.Second,
		EvictAfter:         15 * time.Second,
		JoinTimeout:        5 * time.Second,
		RejoinInterval:     5 * time.Second,
		DefaultIdleTimeout: time.Minute,
	}
}

// withSimGroupTimers fills the zero timers of c from SimGroupConfig; the
// other fields (limits, types) keep the core's defaults.
func withSimGroupTimers(c group.Config) group.Config {
	d := SimGroupConfig()
	if c.PingInterval <= 0 {
		c.PingInterval = d.PingInterval
	}
	if c.EvictAfter <= 0 {
		c.EvictAfter = d.EvictAfter
	}
	if c.JoinTimeout <= 0 {
		c.JoinTimeout = d.JoinTimeout
	}
	if c.RejoinInterval <= 0 {
		c.RejoinInterval = d.RejoinInterval
	}
	if c.DefaultIdleTimeout <= 0 {
		c.DefaultIdleTimeout = d.DefaultIdleTimeout
	}
	return c
}

// GroupOp names a group command.
type GroupOp uint8

// Group commands a World runs on a peer's node.
const (
	GroupCreate GroupOp = iota + 1
	GroupJoin
	GroupLeave
	GroupSend
	GroupInvite
	GroupKick
	GroupClose
	GroupOther // any other command, through GroupDo
)

var groupOpNames = [...]string{"?", "create", "join", "leave", "send", "invite", "kick", "close", "other"}

func (o GroupOp) String() string {
	if int(o) < len(groupOpNames) {
		return groupOpNames[o]
	}
	return "?"
}

// GroupCommand describes a group command run on a peer's node; checkers see
// it on the StepCommand step that carries out its outputs.
type GroupCommand struct {
	Op    GroupOp
	Host  int    // the group's host
	Group string // the group id
	Peer  int    // invite, kick: the other peer; -1 otherwise
	// Kind and Payload of a send (group.TypeMsg or group.TypeState).
	Kind    string
	Payload []byte
	// Err is the command's result (a *group.Error for the core's refusals).
	Err error
}

// GroupDo runs fn on peer i's group core at the current virtual time and then
// carries out what the node produced (persist, send, publish) as one
// StepCommand step that carries cmd with fn's result in cmd.Err. Use the typed
// methods (CreateGroup, JoinGroup, ...) where one fits: the GroupChecker only
// understands the host's own sends when they come through SendToGroup. It
// returns fn's error, or ErrPeerDown / ErrNoPeer without running fn.
func (w *World) GroupDo(i int, cmd GroupCommand, fn func(now time.Time, g *group.Core) error) error {
	if i < 0 || i >= len(w.peers) {
		return ErrNoPeer
	}
	p := w.peers[i]
	if p.node == nil {
		return fmt.Errorf("group %s on %s: %w", cmd.Op, w.Name(i), ErrPeerDown)
	}
	now := w.vt()
	cmd.Err = fn(now, p.node.Group(now))
	w.stats.Events++
	w.cmd = &cmd
	w.flush(p, StepCommand, -1, -1, nil)
	w.cmd = nil
	return cmd.Err
}

func (w *World) checkPeer(i int) error {
	if i < 0 || i >= len(w.peers) {
		return ErrNoPeer
	}
	return nil
}

// CreateGroup makes peer host create a group. An empty spec.ID is replaced by
// a fresh id from the node's random stream (16 hex characters).
func (w *World) CreateGroup(host int, spec group.CreateSpec) (group.Group, error) {
	if err := w.checkPeer(host); err != nil {
		return group.Group{}, err
	}
	if spec.ID == "" && w.peers[host].node != nil {
		spec.ID = w.peers[host].node.NewGroupID()
	}
	var g group.Group
	err := w.GroupDo(host, GroupCommand{Op: GroupCreate, Host: host, Group: spec.ID, Peer: -1}, func(now time.Time, c *group.Core) error {
		var err error
		g, err = c.Create(now, spec)
		return err
	})
	return g, err
}

// JoinGroup makes peer join group id hosted by host; for a remote host the
// outcome arrives later as an EvJoined or EvJoinFailed event.
func (w *World) JoinGroup(peer, host int, id string) error {
	if err := w.checkPeer(host); err != nil {
		return err
	}
	hid := w.peers[host].id
	return w.GroupDo(peer, GroupCommand{Op: GroupJoin, Host: host, Group: id, Peer: -1}, func(now time.Time, c *group.Core) error {
		return c.Join(now, hid, id)
	})
}

// LeaveGroup makes peer leave group id hosted by host.
func (w *World) LeaveGroup(peer, host int, id string) error {
	if err := w.checkPeer(host); err != nil {
		return err
	}
	hid := w.peers[host].id
	return w.GroupDo(peer, GroupCommand{Op: GroupLeave, Host: host, Group: id, Peer: -1}, func(now time.Time, c *group.Core) error {
		return c.Leave(now, hid, id)
	})
}

// SendToGroup makes peer send an application message of kind (group.TypeMsg
// or group.TypeState) to group id hosted by host: through the host, or
// relayed at once when peer is the host.
func (w *World) SendToGroup(peer, host int, id, kind string, payload []byte) error {
	if err := w.checkPeer(host); err != nil {
		return err
	}
	hid := w.peers[host].id
	return w.GroupDo(peer, GroupCommand{Op: GroupSend, Host: host, Group: id, Peer: -1, Kind: kind, Payload: payload},
		func(now time.Time, c *group.Core) error {
			return c.SendToGroup(now, hid, id, kind, payload)
		})
}

// InviteToGroup makes host invite peer to its group id.
func (w *World) InviteToGroup(host int, id string, peer int) error {
	if err := w.checkPeer(peer); err != nil {
		return err
	}
	pid := w.peers[peer].id
	return w.GroupDo(host, GroupCommand{Op: GroupInvite, Host: host, Group: id, Peer: peer}, func(now time.Time, c *group.Core) error {
		return c.Invite(now, id, pid)
	})
}

// KickFromGroup makes host remove peer from its group id.
func (w *World) KickFromGroup(host int, id string, peer int) error {
	if err := w.checkPeer(peer); err != nil {
		return err
	}
	pid := w.peers[peer].id
	return w.GroupDo(host, GroupCommand{Op: GroupKick, Host: host, Group: id, Peer: peer}, func(now time.Time, c *group.Core) error {
		return c.Kick(now, id, pid)
	})
}

// CloseGroup makes host close its group id.
func (w *World) CloseGroup(host int, id string) error {
	return w.GroupDo(host, GroupCommand{Op: GroupClose, Host: host, Group: id, Peer: -1}, func(now time.Time, c *group.Core) error {
		return c.Close(now, id)
	})
}
