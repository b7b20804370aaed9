package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/group"
	"github.com/goop-p2p/goop/domain/mq"
)

// joinWait bounds how long POST /api/groups/join waits for the host's answer.
const joinWait = 8 * time.Second

func (s *server) registerGroups(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/groups", s.groupsList)
	mux.HandleFunc("POST /api/groups", s.groupsCreate)
	mux.HandleFunc("GET /api/groups/subscriptions", s.groupsSubscriptions)
	mux.HandleFunc("GET /api/groups/invitations", s.groupsInvitations)
	mux.HandleFunc("POST /api/groups/invitations/decline", s.groupsDecline)
	mux.HandleFunc("POST /api/groups/join", s.groupsJoin)
	mux.HandleFunc("POST /api/groups/leave", s.groupsLeave)
	mux.HandleFunc("POST /api/groups/send", s.groupsSend)
	mux.HandleFunc("POST /api/groups/invite", s.groupsInvite)
	mux.HandleFunc("POST /api/groups/kick", s.groupsKick)
	mux.HandleFunc("POST /api/groups/close", s.groupsClose)
	mux.HandleFunc("POST /api/groups/set-role", s.groupsSetRole)
	mux.HandleFunc("POST /api/groups/set-default-role", s.groupsSetDefaultRole)
	mux.HandleFunc("POST /api/groups/set-roles", s.groupsSetRoles)
	mux.HandleFunc("POST /api/groups/meta", s.groupsMeta)
	mux.HandleFunc("POST /api/groups/max-members", s.groupsMaxMembers)
	mux.HandleFunc("GET /api/groups/events", s.groupsEvents)
	mux.HandleFunc("GET /api/groups/history", s.groupsHistory)
}

// HistoryJSON is one relayed message kept by the host.
type HistoryJSON struct {
	From    string          `json:"from"`
	Type    string          `json:"type"`
	Payload json.RawMessage `json:"payload"`
	At      int64           `json:"at"` // unix ms
}

// errNodeStopped ends a wait for a group event when the node stops.
var errNodeStopped = errors.New("node is stopped")

// errFellBehind: the node closed a wait's event subscription because the
// wait did not keep up with the node's group events (a very busy node).
var errFellBehind = errors.New("node is too busy: the wait for its answer fell behind its events")

// isDone reports whether done is closed.
func isDone(done <-chan struct{}) bool {
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// awaitGroupEvent returns the first event of group id at host on sub that
// match accepts, or ctx's error, or errNodeStopped (done: the node's Done),
// or errFellBehind.
func awaitGroupEvent(ctx context.Context, sub *app.Subscription, done <-chan struct{}, host mq.PeerID, id string, match func(*group.Event) bool) (*group.Event, error) {
	for {
		select {
		case ev, ok := <-sub.C:
			if !ok {
				if isDone(done) {
					return nil, errNodeStopped
				}
				return nil, errFellBehind
			}
			if ev.Kind == app.EventGroup && ev.Group.Group == id && ev.Group.Host == host && match(ev.Group) {
				return ev.Group, nil
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// codeUnsupported is the error code of a request the peer it needs cannot
// serve: a Goop2 host asked for its group's history.
const codeUnsupported = "unsupported"

// historyWait bounds how long GET /api/groups/history waits for a remote
// host's answer.
const historyWait = 5 * time.Second

func (s *server) groupsHistory(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	id := q.Get("group_id")
	if !requireGroupID(w, id) {
		return
	}
	limit := 0
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("limit %q must be a positive integer", truncate(v, 20)), "code": group.CodeInvalid})
			return
		}
		limit = n
	}
	host, ok := s.hostOf(w, q.Get("host_peer_id"))
	if !ok {
		return
	}
	if host != s.d.Runtime.Self() {
		s.remoteHistory(w, r, host, id, min(limit, group.MaxHistoryItems))
		return
	}
	if s.d.GroupHistory == nil {
		writeError(w, http.StatusNotImplemented, "this node keeps no group history")
		return
	}
	hist, err := s.d.GroupHistory(r.Context(), id, limit)
	if err != nil {
		s.d.Log.Warn("group history", "group", id, "err", err)
		writeError(w, http.StatusInternalServerError, "reading history: "+err.Error())
		return
	}
	out := make([]HistoryJSON, 0, len(hist))
	for _, h := range hist {
		out = append(out, HistoryJSON{From: string(h.From), Type: h.Type, Payload: h.Payload, At: h.At.UnixMilli()})
	}
	writeJSON(w, http.StatusOK, out)
}

// remoteHistory asks the host of a group this node joined for its newest
// messages (at most limit; 0: group.MaxHistoryItems) and waits for the
// answer.
func (s *server) remoteHistory(w http.ResponseWriter, r *http.Request, host mq.PeerID, id string, limit int) {
	if limit <= 0 {
		limit = group.MaxHistoryItems
	}
	if s.d.SpeaksOurBus != nil {
		if ours, known := s.d.SpeaksOurBus(host); known && !ours {
			// Its answer would never come: say so now, not after historyWait.
			writeJSON(w, http.StatusNotImplemented, map[string]string{"code": codeUnsupported,
				"error": fmt.Sprintf("host %s speaks only /goop/mq/1.0.0 (Goop2), which keeps no history for members", host)})
			return
		}
	}
	req := uuid.NewString()
	sub := s.d.Runtime.SubscribeKinds(s.d.EventBuffer, app.EventGroup) // before asking: the answer cannot slip past
	defer sub.Close()
	if !s.do(w, r, func(now time.Time, n *app.Node) error {
		return n.Group(now).RequestHistory(now, host, id, req, limit)
	}) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), historyWait)
	defer cancel()
	var a group.HistoryAnswer
	_, err := awaitGroupEvent(ctx, sub, s.d.Runtime.Done(), host, id, func(ev *group.Event) bool {
		var got group.HistoryAnswer
		if ev.Type != group.EvHistory || json.Unmarshal(ev.Payload, &got) != nil || got.Req != req {
			return false
		}
		a = got
		return true
	})
	switch {
	case errors.Is(err, errNodeStopped), errors.Is(err, errFellBehind):
		writeError(w, http.StatusServiceUnavailable, err.Error())
	case err != nil:
		groupError(w, group.Errorf(group.CodeTimeout, "host %s did not answer with the history in time", host))
	case a.Error != nil:
		groupError(w, a.Error)
	default:
		out := make([]HistoryJSON, 0, len(a.Items))
		for _, it := range a.Items {
			out = append(out, HistoryJSON(it))
		}
		writeJSON(w, http.StatusOK, out)
	}
}

// GroupJSON is a hosted group row: Goop2's _groups columns plus ours.
type GroupJSON struct {
	ID           string         `json:"id"`
	Name         string         `json:"name"`
	Owner        string         `json:"owner"`
	GroupType    string         `json:"group_type"`
	GroupContext string         `json:"group_context"`
	MaxMembers   int            `json:"max_members"`
	CreatedAt    int64          `json:"created_at"` // unix ms
	HostJoined   bool           `json:"host_joined"`
	Volatile     bool           `json:"volatile"`
	DefaultRole  string         `json:"default_role"`
	Roles        []string       `json:"roles"`
	Lifecycle    string         `json:"lifecycle"`
	Access       string         `json:"access"`
	IdleTimeoutS int64          `json:"idle_timeout_s,omitempty"`
	Members      []group.Member `json:"members"`
	Invited      []string       `json:"invited,omitempty"`
}

func groupJSON(v group.HostedView) GroupJSON {
	g := v.Group
	out := GroupJSON{ID: g.ID, Name: g.Name, Owner: string(g.Owner), GroupType: g.Type, GroupContext: g.Context,
		MaxMembers: g.MaxMembers, CreatedAt: g.CreatedAt.UnixMilli(), HostJoined: g.HostJoined, Volatile: g.Volatile,
		DefaultRole: g.DefaultRole, Roles: g.Roles, Lifecycle: g.Lifecycle, Access: g.Access,
		IdleTimeoutS: int64(g.IdleTimeout / time.Second), Members: v.Members}
	if out.Roles == nil {
		out.Roles = []string{}
	}
	if out.Members == nil {
		out.Members = []group.Member{}
	}
	for _, p := range v.Invited {
		out.Invited = append(out.Invited, string(p))
	}
	return out
}

// SubscriptionJSON is a group this node joined (Goop2's _group_subscriptions
// columns plus ours).
type SubscriptionJSON struct {
	ID           string         `json:"id"`
	HostPeerID   string         `json:"host_peer_id"`
	GroupName    string         `json:"group_name"`
	GroupType    string         `json:"group_type"`
	Role         string         `json:"role"`
	SubscribedAt int64          `json:"subscribed_at"`
	MaxMembers   int            `json:"max_members"`
	Volatile     bool           `json:"volatile"`
	HostName     string         `json:"host_name"`
	Lifecycle    string         `json:"lifecycle,omitempty"`
	Access       string         `json:"access,omitempty"`
	Joined       bool           `json:"joined"`
	Members      []group.Member `json:"members"`
}

func subscriptionJSON(v group.SubView) SubscriptionJSON {
	s := v.Sub
	out := SubscriptionJSON{ID: s.GroupID, HostPeerID: string(s.Host), GroupName: s.GroupName, GroupType: s.GroupType,
		Role: s.Role, MaxMembers: s.MaxMembers, Volatile: s.Volatile, HostName: s.HostName,
		Lifecycle: s.Lifecycle, Access: s.Access, Joined: v.Joined, Members: v.Members}
	if !s.SubscribedAt.IsZero() {
		out.SubscribedAt = s.SubscribedAt.UnixMilli()
	}
	if out.Members == nil {
		out.Members = []group.Member{}
	}
	return out
}

// InvitationJSON is an invitation this node received and has neither
// accepted (joined) nor declined.
// Its fields are the group.invite payload's, plus when it came.
type InvitationJSON struct {
	group.Invite
	ReceivedAt int64 `json:"received_at"` // unix ms
}

func (s *server) groupsInvitations(w http.ResponseWriter, r *http.Request) {
	out := []InvitationJSON{}
	if !s.do(w, r, func(now time.Time, n *app.Node) error {
		for _, inv := range n.Groups().Invitations() {
			out = append(out, InvitationJSON{Invite: group.Invite{GroupID: inv.GroupID, GroupName: inv.GroupName,
				HostPeerID: string(inv.Host), GroupType: inv.GroupType, GroupContext: inv.GroupContext, Volatile: inv.Volatile,
				Lifecycle: inv.Lifecycle, Access: inv.Access}, ReceivedAt: inv.ReceivedAt.UnixMilli()})
		}
		return nil
	}) {
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) groupsDecline(w http.ResponseWriter, r *http.Request) {
	req, ok := decodeHostedRef(w, r)
	if !ok {
		return
	}
	host, ok := s.checkPeer(w, "host_peer_id", req.HostPeerID)
	if !ok {
		return
	}
	if s.do(w, r, func(now time.Time, n *app.Node) error { return n.Group(now).DeclineInvitation(now, host, req.GroupID) }) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "declined"})
	}
}

// groupError writes a group error with an HTTP status that fits its code;
// the code travels in the body so callers can branch on it.
func groupError(w http.ResponseWriter, err error) {
	var ge *group.Error
	if !errors.As(err, &ge) {
		switch {
		case errors.Is(err, app.ErrStopped):
			writeError(w, http.StatusServiceUnavailable, "node is stopped")
		case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
			writeError(w, http.StatusGatewayTimeout, err.Error())
		default:
			writeError(w, http.StatusInternalServerError, err.Error())
		}
		return
	}
	status := http.StatusBadRequest
	switch ge.Code {
	case group.CodeNotFound:
		status = http.StatusNotFound
	case group.CodeNotInvited, group.CodeForbidden, group.CodeHostCantJoin:
		status = http.StatusForbidden
	case group.CodeFull, group.CodeLimit, group.CodeNotMember:
		status = http.StatusConflict
	case group.CodeTimeout:
		status = http.StatusGatewayTimeout
	case group.CodeKicked, group.CodeClosed:
		status = http.StatusGone
	}
	writeJSON(w, status, map[string]string{"error": ge.Message, "code": ge.Code})
}

// do runs fn on the node and writes a group error if it fails.
func (s *server) do(w http.ResponseWriter, r *http.Request, fn func(now time.Time, n *app.Node) error) bool {
	var ferr error
	err := s.d.Runtime.Do(r.Context(), func(now time.Time, n *app.Node) { ferr = fn(now, n) })
	if err == nil {
		err = ferr
	}
	if err != nil {
		groupError(w, err)
		return false
	}
	return true
}

func requireGroupID(w http.ResponseWriter, id string) bool {
	if id == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "missing group_id", "code": group.CodeInvalid})
		return false
	}
	if !group.ValidID(id) {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("invalid group_id %q", truncate(id, 80)), "code": group.CodeInvalid})
		return false
	}
	return true
}

// hostOf resolves an optional host_peer_id: empty means this node.
func (s *server) hostOf(w http.ResponseWriter, v string) (mq.PeerID, bool) {
	if v == "" || mq.PeerID(v) == s.d.Runtime.Self() {
		return s.d.Runtime.Self(), true
	}
	return s.checkPeer(w, "host_peer_id", v)
}

func (s *server) groupsList(w http.ResponseWriter, r *http.Request) {
	var out []GroupJSON
	if !s.do(w, r, func(now time.Time, n *app.Node) error {
		for _, v := range n.Groups().Hosted() {
			out = append(out, groupJSON(v))
		}
		return nil
	}) {
		return
	}
	if out == nil {
		out = []GroupJSON{}
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) groupsSubscriptions(w http.ResponseWriter, r *http.Request) {
	var out []SubscriptionJSON
	if !s.do(w, r, func(now time.Time, n *app.Node) error {
		for _, v := range n.Groups().Subscriptions() {
			out = append(out, subscriptionJSON(v))
		}
		return nil
	}) {
		return
	}
	if out == nil {
		out = []SubscriptionJSON{}
	}
	writeJSON(w, http.StatusOK, out)
}

type createRequest struct {
	ID           string   `json:"id"`
	Name         string   `json:"name"`
	GroupType    string   `json:"group_type"`
	GroupContext string   `json:"group_context"`
	MaxMembers   int      `json:"max_members"`
	Lifecycle    string   `json:"lifecycle"`
	Access       string   `json:"access"`
	IdleTimeoutS int64    `json:"idle_timeout_s"`
	DefaultRole  string   `json:"default_role"`
	Roles        []string `json:"roles"`
	HostJoin     bool     `json:"host_join"`
}

func (s *server) groupsCreate(w http.ResponseWriter, r *http.Request) {
	var req createRequest
	if !decodeBody(w, r, &req) {
		return
	}
	if req.IdleTimeoutS < 0 || req.IdleTimeoutS > 365*24*3600 {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "idle_timeout_s must be 0..31536000", "code": group.CodeInvalid})
		return
	}
	var v group.HostedView
	if !s.do(w, r, func(now time.Time, n *app.Node) error {
		id := req.ID
		if id == "" {
			id = n.NewGroupID()
		}
		g, err := n.Group(now).Create(now, group.CreateSpec{ID: id, Name: req.Name, Type: req.GroupType,
			Context: req.GroupContext, MaxMembers: req.MaxMembers, Lifecycle: req.Lifecycle, Access: req.Access,
			IdleTimeout: time.Duration(req.IdleTimeoutS) * time.Second, DefaultRole: req.DefaultRole,
			Roles: req.Roles, HostJoin: req.HostJoin})
		if err != nil {
			return err
		}
		v, _ = n.Groups().HostedGroup(g.ID)
		return nil
	}) {
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Status string `json:"status"`
		ID     string `json:"id"`
		GroupJSON
	}{"created", v.Group.ID, groupJSON(v)})
}

type groupRef struct {
	HostPeerID string `json:"host_peer_id"`
	GroupID    string `json:"group_id"`
}

// decodeHostedRef decodes a groupRef whose host_peer_id and group_id are
// both required.
func decodeHostedRef(w http.ResponseWriter, r *http.Request) (groupRef, bool) {
	var req groupRef
	if !decodeBody(w, r, &req) || !requireGroupID(w, req.GroupID) {
		return req, false
	}
	if req.HostPeerID == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "missing host_peer_id", "code": group.CodeInvalid})
		return req, false
	}
	return req, true
}

func (s *server) groupsJoin(w http.ResponseWriter, r *http.Request) {
	req, ok := decodeHostedRef(w, r)
	if !ok {
		return
	}
	host, ok := s.hostOf(w, req.HostPeerID)
	if !ok {
		return
	}
	// Listen before asking, so the answer cannot slip past.
	sub := s.d.Runtime.SubscribeKinds(s.d.EventBuffer, app.EventGroup)
	defer sub.Close()
	var already []group.Member // set when we host it and are already a member: no new welcome comes
	if !s.do(w, r, func(now time.Time, n *app.Node) error {
		if host == n.Self() {
			if v, ok := n.Groups().HostedGroup(req.GroupID); ok {
				for _, m := range v.Members {
					if mq.PeerID(m.PeerID) == host {
						already = v.Members
						return nil
					}
				}
			}
		}
		return n.Group(now).Join(now, host, req.GroupID)
	}) {
		return
	}
	if already != nil {
		writeJSON(w, http.StatusOK, map[string]any{"status": "joined", "group_id": req.GroupID,
			"host_peer_id": string(host), "members": already})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), joinWait)
	defer cancel()
	ev, err := awaitGroupEvent(ctx, sub, s.d.Runtime.Done(), host, req.GroupID, func(ev *group.Event) bool {
		return ev.Type == group.EvJoined || ev.Type == group.EvJoinFailed
	})
	switch {
	case errors.Is(err, errNodeStopped), errors.Is(err, errFellBehind):
		writeError(w, http.StatusServiceUnavailable, err.Error())
	case err == nil && ev.Type == group.EvJoined:
		writeJSON(w, http.StatusOK, map[string]any{"status": "joined", "group_id": req.GroupID,
			"host_peer_id": string(host), "members": ev.Members, "state": ev.Payload})
	case err == nil:
		groupError(w, ev.Err)
	default:
		// Already a member (no new welcome comes), or the host is slow.
		var view group.SubView
		var found bool
		_ = s.d.Runtime.Do(context.Background(), func(now time.Time, n *app.Node) {
			view, found = n.Groups().Subscription(host, req.GroupID)
		})
		if found && view.Joined {
			writeJSON(w, http.StatusOK, map[string]any{"status": "joined", "group_id": req.GroupID,
				"host_peer_id": string(host), "members": view.Members})
			return
		}
		groupError(w, group.Errorf(group.CodeTimeout, "host %s did not answer the join in time", host))
	}
}

func (s *server) groupsLeave(w http.ResponseWriter, r *http.Request) {
	var req groupRef
	if !decodeBody(w, r, &req) || !requireGroupID(w, req.GroupID) {
		return
	}
	host, ok := s.hostOf(w, req.HostPeerID)
	if !ok {
		return
	}
	if s.do(w, r, func(now time.Time, n *app.Node) error { return n.Group(now).Leave(now, host, req.GroupID) }) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "left"})
	}
}

type sendGroupRequest struct {
	HostPeerID string          `json:"host_peer_id"`
	GroupID    string          `json:"group_id"`
	Kind       string          `json:"kind"`
	Payload    json.RawMessage `json:"payload"`
}

func (s *server) groupsSend(w http.ResponseWriter, r *http.Request) {
	var req sendGroupRequest
	if !decodeBody(w, r, &req) || !requireGroupID(w, req.GroupID) {
		return
	}
	if len(req.Payload) == 0 {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "missing payload", "code": group.CodeInvalid})
		return
	}
	if len(req.Payload) > mq.MaxPayloadBytes {
		writeJSON(w, http.StatusRequestEntityTooLarge, map[string]string{"error": fmt.Sprintf("payload is larger than %d bytes", mq.MaxPayloadBytes), "code": group.CodeInvalid})
		return
	}
	kind := req.Kind
	if kind == "" {
		kind = group.TypeMsg
	}
	host, ok := s.hostOf(w, req.HostPeerID)
	if !ok {
		return
	}
	if s.do(w, r, func(now time.Time, n *app.Node) error {
		return n.Group(now).SendToGroup(now, host, req.GroupID, kind, req.Payload)
	}) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "sent"})
	}
}

type memberRequest struct {
	GroupID string `json:"group_id"`
	PeerID  string `json:"peer_id"`
	Role    string `json:"role"`
}

func (s *server) memberCommand(w http.ResponseWriter, r *http.Request, status string,
	fn func(now time.Time, c *group.Core, id string, p mq.PeerID, role string) error) {
	var req memberRequest
	if !decodeBody(w, r, &req) || !requireGroupID(w, req.GroupID) {
		return
	}
	p, ok := s.checkPeer(w, "peer_id", req.PeerID)
	if !ok {
		return
	}
	if s.do(w, r, func(now time.Time, n *app.Node) error { return fn(now, n.Group(now), req.GroupID, p, req.Role) }) {
		writeJSON(w, http.StatusOK, map[string]string{"status": status})
	}
}

func (s *server) groupsInvite(w http.ResponseWriter, r *http.Request) {
	s.memberCommand(w, r, "invited", func(now time.Time, c *group.Core, id string, p mq.PeerID, _ string) error {
		return c.Invite(now, id, p)
	})
}

func (s *server) groupsKick(w http.ResponseWriter, r *http.Request) {
	s.memberCommand(w, r, "kicked", func(now time.Time, c *group.Core, id string, p mq.PeerID, _ string) error {
		return c.Kick(now, id, p)
	})
}

func (s *server) groupsSetRole(w http.ResponseWriter, r *http.Request) {
	s.memberCommand(w, r, "ok", func(now time.Time, c *group.Core, id string, p mq.PeerID, role string) error {
		return c.SetRole(now, id, p, role)
	})
}

type groupSettings struct {
	GroupID    string   `json:"group_id"`
	Role       string   `json:"role"`
	Roles      []string `json:"roles"`
	Name       *string  `json:"name"`
	GroupName  *string  `json:"group_name"`
	MaxMembers *int     `json:"max_members"`
}

func (s *server) groupCommand(w http.ResponseWriter, r *http.Request, status string,
	fn func(now time.Time, c *group.Core, req groupSettings) error) {
	var req groupSettings
	if !decodeBody(w, r, &req) || !requireGroupID(w, req.GroupID) {
		return
	}
	if s.do(w, r, func(now time.Time, n *app.Node) error { return fn(now, n.Group(now), req) }) {
		writeJSON(w, http.StatusOK, map[string]string{"status": status})
	}
}

func (s *server) groupsClose(w http.ResponseWriter, r *http.Request) {
	s.groupCommand(w, r, "closed", func(now time.Time, c *group.Core, req groupSettings) error {
		return c.Close(now, req.GroupID)
	})
}

func (s *server) groupsSetDefaultRole(w http.ResponseWriter, r *http.Request) {
	s.groupCommand(w, r, "ok", func(now time.Time, c *group.Core, req groupSettings) error {
		return c.SetDefaultRole(now, req.GroupID, req.Role)
	})
}

func (s *server) groupsSetRoles(w http.ResponseWriter, r *http.Request) {
	s.groupCommand(w, r, "ok", func(now time.Time, c *group.Core, req groupSettings) error {
		return c.SetRoles(now, req.GroupID, req.Roles)
	})
}

func (s *server) groupsMeta(w http.ResponseWriter, r *http.Request) {
	s.groupCommand(w, r, "ok", func(now time.Time, c *group.Core, req groupSettings) error {
		name := req.Name
		if name == nil {
			name = req.GroupName
		}
		return c.SetMeta(now, req.GroupID, name, req.MaxMembers)
	})
}

func (s *server) groupsMaxMembers(w http.ResponseWriter, r *http.Request) {
	s.groupCommand(w, r, "ok", func(now time.Time, c *group.Core, req groupSettings) error {
		if req.MaxMembers == nil {
			return group.Errorf(group.CodeInvalid, "missing max_members")
		}
		return c.SetMeta(now, req.GroupID, nil, req.MaxMembers)
	})
}

// GroupEventJSON is the data of a /api/groups/events SSE event (SPEC §7):
// {type, group, from, payload} plus host, members, error and reason.
type GroupEventJSON struct {
	Type    string          `json:"type"`
	Group   string          `json:"group"`
	Host    string          `json:"host,omitempty"`
	From    string          `json:"from,omitempty"`
	Payload json.RawMessage `json:"payload,omitempty"`
	Members []group.Member  `json:"members,omitempty"`
	Error   *group.Error    `json:"error,omitempty"`
	Reason  string          `json:"reason,omitempty"`
}

func encodeGroupEvent(ev app.Event) (string, []byte) {
	if ev.Kind != app.EventGroup || ev.Group == nil {
		return "", nil
	}
	g := ev.Group
	b, err := json.Marshal(GroupEventJSON{Type: g.Type, Group: g.Group, Host: string(g.Host), From: string(g.From),
		Payload: g.Payload, Members: g.Members, Error: g.Err, Reason: g.Reason})
	if err != nil {
		return "", nil
	}
	return g.Type, b
}

func (s *server) groupsEvents(w http.ResponseWriter, r *http.Request) {
	s.stream(w, r, []app.EventKind{app.EventGroup}, encodeGroupEvent)
}
