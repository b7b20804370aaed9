// Package dataproto is the data protocol of SPEC §1 and §3
// (/goop/data/1.0.0): a visitor's page queries the tables and views its host
// peer exposes, e.g. `_groups` to discover the host's groups.
//
// Wire: the client writes one JSON request line
// `{"op":"query","table":"<name>","params":{...}}` (at most MaxRequestBytes)
// and half-closes; the server answers one JSON line `{"ok":true,"data":[rows]}`
// or `{"ok":false,"error":"…","code":"…"}` and closes. Goop2 peers may also
// send `columns`, `limit` and `offset`, which are honoured, and reply without
// `ok` on errors, which the client accepts.
//
// Surface policy: nothing from the network is ever SQL. The table name is
// looked up in a Registry of Views (a Go map); an unknown name — internal
// tables such as _mq_*, _migrations, _group_invites, _group_history or
// _peers included — is refused with "table X is not exposed by this peer".
// A request carrying SQL text (`sql`, `query`, `where`, …) is refused with
// "SQL text is not accepted". Only `op:"query"` exists: remote peers cannot
// write. Parameters are scalar values handed to the view's Go code, and only
// the parameters the view declares are accepted. Rows are cut down to the
// view's declared columns.
//
// A node keeps two registries: the public one (what remote peers may query;
// by default only `_groups` of PublicGroupsView: open groups, safe columns)
// and the local one (what the user's own pages may query through
// /api/data/query; by default `_groups` of LocalGroupsView, invite-only groups
// included). Applications expose their own tables by registering a View with
// a Query function in either or both.
package dataproto

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/goop-p2p/goop/domain/group"
)

// Protocol is the data protocol id (SPEC §1).
const Protocol = "/goop/data/1.0.0"

// Limits of the protocol.
const (
	// MaxRequestBytes bounds a request line.
	MaxRequestBytes = 64 << 10
	// MaxReplyBytes bounds a reply line (both ways).
	MaxReplyBytes = 8 << 20
	// MaxRows bounds the rows of one reply; limit may ask for fewer.
	MaxRows = 1000
	// MaxParams bounds the parameters of a request.
	MaxParams = 32
	// MaxParamBytes bounds one string parameter.
	MaxParamBytes = 4 << 10
)

// Error codes of refused queries; they travel in the reply's `code`.
const (
	CodeNotExposed  = "not_exposed" // the table is not a view of this surface
	CodeSQLText     = "sql_text"    // the request carried SQL text
	CodeUnsupported = "unsupported" // an op other than query
	CodeBadRequest  = "bad_request" // malformed request or parameters
	CodeTooLarge    = "too_large"   // the result does not fit a reply
	CodeInternal    = "internal"    // the view failed
	CodeUnreachable = "unreachable" // (client side) the peer could not be reached
	CodeProtocol    = "protocol"    // (client side) the peer's reply broke the protocol
	CodeRefused     = "refused"     // (client side) a compat peer refused without a code
	CodeTimeout     = "timeout"     // (client side) the peer did not answer in time
	CodeUnavailable = "unavailable" // the node is stopping
)

// Error is a refused or failed query. Msg is safe to show to the user and
// to send to the peer that asked.
type Error struct {
	Code string
	Msg  string
	// Err is the cause, kept for logs; it is never sent on the wire.
	Err error
}

func (e *Error) Error() string { return e.Msg }

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Is makes errors.Is(err, &Error{Code: c}) match any *Error with code c.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Msg == "" && t.Code == e.Code
}

// Sentinels for errors.Is: errors.Is(err, ErrNotExposed).
var (
	ErrNotExposed  = &Error{Code: CodeNotExposed}
	ErrSQLText     = &Error{Code: CodeSQLText}
	ErrUnsupported = &Error{Code: CodeUnsupported}
	ErrBadRequest  = &Error{Code: CodeBadRequest}
	ErrUnreachable = &Error{Code: CodeUnreachable}
	ErrProtocol    = &Error{Code: CodeProtocol}
	ErrTimeout     = &Error{Code: CodeTimeout}
)

func errorf(code, format string, a ...any) *Error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, a...)}
}

// CodeOf returns err's code, CodeInternal when it has none.
func CodeOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// Request is one query.
type Request struct {
	// Op is "query" (the only op).
	Op string `json:"op"`
	// Table names a view of the surface.
	Table string `json:"table"`
	// Params are the view's parameters: scalar values only.
	Params map[string]any `json:"params,omitempty"`
	// Columns, if set, keeps only these of the view's columns.
	Columns []string `json:"columns,omitempty"`
	// Limit, if > 0, keeps at most this many rows (capped at MaxRows).
	Limit int `json:"limit,omitempty"`
	// Offset skips this many rows first.
	Offset int `json:"offset,omitempty"`
}

// sqlFields are request fields that would carry SQL text.
var sqlFields = []string{"sql", "query", "where", "statement", "stmt", "raw", "order_by"}

var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)

// DecodeRequest parses and validates a JSON request object. With
// extraAsParams (the viewer's HTTP API, whose SDK spreads parameters at the
// top level) unknown top-level fields become parameters; without it (the
// wire) they are refused. Errors are *Error with a clear message.
func DecodeRequest(b []byte, extraAsParams bool) (Request, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil || raw == nil {
		return Request{}, errorf(CodeBadRequest, "bad request: not a JSON object")
	}
	for k := range raw {
		if slices.Contains(sqlFields, strings.ToLower(k)) {
			return Request{}, errorf(CodeSQLText, "SQL text is not accepted (field %q): name a table this peer exposes and pass params", truncate(k, 40))
		}
	}
	var req Request
	take := func(key string, v any) error {
		r, ok := raw[key]
		delete(raw, key)
		if !ok || string(r) == "null" {
			return nil
		}
		if err := json.Unmarshal(r, v); err != nil {
			return errorf(CodeBadRequest, "bad request: %s has the wrong type", key)
		}
		return nil
	}
	var params map[string]json.RawMessage
	for _, f := range []struct {
		k string
		v any
	}{{"op", &req.Op}, {"table", &req.Table}, {"params", &params}, {"columns", &req.Columns}, {"limit", &req.Limit}, {"offset", &req.Offset}} {
		if err := take(f.k, f.v); err != nil {
			return Request{}, err
		}
	}
	if req.Op != "" && req.Op != "query" {
		return Request{}, errorf(CodeUnsupported, "op %q is not supported: peers answer read-only queries only", truncate(req.Op, 40))
	}
	if len(raw) > 0 {
		if !extraAsParams {
			keys := make([]string, 0, len(raw))
			for k := range raw {
				keys = append(keys, truncate(k, 40))
			}
			sort.Strings(keys)
			return Request{}, errorf(CodeBadRequest, "bad request: field %q is not accepted", keys[0])
		}
		if params == nil {
			params = map[string]json.RawMessage{}
		}
		for k, v := range raw {
			params[k] = v
		}
	}
	if len(params) > 0 {
		req.Params = make(map[string]any, len(params))
		for k, v := range params {
			var x any
			if err := json.Unmarshal(v, &x); err != nil {
				return Request{}, errorf(CodeBadRequest, "bad request: parameter %q is not JSON", truncate(k, 40))
			}
			req.Params[k] = x
		}
	}
	if err := req.Validate(); err != nil {
		return Request{}, err
	}
	return req, nil
}

// Validate checks the request's shape (not the surface): op, table name,
// parameters (at most MaxParams, identifier names, scalar values, strings of
// at most MaxParamBytes), columns, limit and offset. An empty op means query.
func (r *Request) Validate() error {
	if r.Op == "" {
		r.Op = "query"
	}
	if r.Op != "query" {
		return errorf(CodeUnsupported, "op %q is not supported: peers answer read-only queries only", truncate(r.Op, 40))
	}
	if r.Table == "" {
		return errorf(CodeBadRequest, "bad request: missing table")
	}
	if !identRE.MatchString(r.Table) {
		return errorf(CodeNotExposed, "table %q is not exposed by this peer", truncate(r.Table, 64))
	}
	if len(r.Params) > MaxParams {
		return errorf(CodeBadRequest, "bad request: more than %d params", MaxParams)
	}
	for k, v := range r.Params {
		if !identRE.MatchString(k) {
			return errorf(CodeBadRequest, "bad request: parameter name %q is not an identifier", truncate(k, 40))
		}
		switch x := v.(type) {
		case nil, bool, float64, json.Number, int, int64:
		case string:
			if len(x) > MaxParamBytes {
				return errorf(CodeBadRequest, "bad request: parameter %q is longer than %d bytes", k, MaxParamBytes)
			}
		default:
			return errorf(CodeBadRequest, "bad request: parameter %q must be a string, number, boolean or null", k)
		}
	}
	if len(r.Columns) > 64 {
		return errorf(CodeBadRequest, "bad request: more than 64 columns")
	}
	for _, c := range r.Columns {
		if !identRE.MatchString(c) {
			return errorf(CodeBadRequest, "bad request: column %q is not an identifier", truncate(c, 40))
		}
	}
	if r.Limit < 0 || r.Offset < 0 {
		return errorf(CodeBadRequest, "bad request: limit and offset must not be negative")
	}
	return nil
}

// View is a table or view a surface exposes. Its Query is the only code that
// reads data for it: it receives validated parameters (only those in Params)
// and returns rows; the registry keeps only Columns of each row and applies
// columns, limit and offset. Query must honour ctx and be safe for concurrent
// use; it must not return more than MaxRows rows' worth of useful data
// (extra rows are dropped).
type View struct {
	// Name is the table name clients ask for (an identifier).
	Name string
	// Columns are the columns a row may show, in order.
	Columns []string
	// Params are the parameters Query accepts; any other is refused.
	Params []string
	// Query returns the rows for params.
	Query func(ctx context.Context, params map[string]any) ([]map[string]any, error)
}

// internalTables may never be registered as views: they hold the node's
// private state.
var internalTables = []string{"_migrations", "_group_members", "_group_invites", "_group_history",
	"_group_subscriptions", "_peers", "_presence", "_outbox", "_inbox"}

var internalPrefixes = []string{"_mq_", "sqlite_", "bun_", "pg_"}

// IsInternal reports whether name is (or looks like) an internal table.
func IsInternal(name string) bool {
	low := strings.ToLower(name)
	if slices.Contains(internalTables, low) {
		return true
	}
	for _, p := range internalPrefixes {
		if strings.HasPrefix(low, p) {
			return true
		}
	}
	return false
}

// Registry is a surface: the views one kind of caller may query. It is safe
// for concurrent use; views may be added while queries run.
type Registry struct {
	mu    sync.RWMutex
	views map[string]View
}

// NewRegistry returns a registry holding views (see Register).
func NewRegistry(views ...View) (*Registry, error) {
	r := &Registry{views: map[string]View{}}
	for _, v := range views {
		if err := r.Register(v); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// Register adds or replaces a view. It refuses a bad name, an internal
// table's name, a view without columns or Query, and bad column or
// parameter names.
func (r *Registry) Register(v View) error {
	if !identRE.MatchString(v.Name) {
		return fmt.Errorf("dataproto: view name %q is not an identifier", v.Name)
	}
	if IsInternal(v.Name) {
		return fmt.Errorf("dataproto: %s is an internal table and cannot be exposed", v.Name)
	}
	if v.Query == nil || len(v.Columns) == 0 {
		return fmt.Errorf("dataproto: view %s needs columns and a Query", v.Name)
	}
	for _, c := range slices.Concat(v.Columns, v.Params) {
		if !identRE.MatchString(c) {
			return fmt.Errorf("dataproto: view %s: %q is not an identifier", v.Name, c)
		}
	}
	v.Columns = slices.Clone(v.Columns)
	v.Params = slices.Clone(v.Params)
	r.mu.Lock()
	r.views[v.Name] = v
	r.mu.Unlock()
	return nil
}

// Names lists the views, sorted.
func (r *Registry) Names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]string, 0, len(r.views))
	for n := range r.views {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Query validates req against the surface and runs the view. Rows hold only
// the view's (or the requested) columns; never nil. Errors are *Error:
// CodeNotExposed, CodeSQLText, CodeUnsupported, CodeBadRequest, or
// CodeInternal wrapping the view's failure (whose text stays local).
func (r *Registry) Query(ctx context.Context, req Request) ([]map[string]any, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	r.mu.RLock()
	v, ok := r.views[req.Table]
	r.mu.RUnlock()
	if !ok {
		return nil, errorf(CodeNotExposed, "table %q is not exposed by this peer", req.Table)
	}
	for k := range req.Params {
		if !slices.Contains(v.Params, k) {
			if len(v.Params) == 0 {
				return nil, errorf(CodeBadRequest, "table %q takes no parameters (got %q)", v.Name, k)
			}
			return nil, errorf(CodeBadRequest, "table %q does not accept parameter %q (it accepts %s)", v.Name, k, strings.Join(v.Params, ", "))
		}
	}
	cols := v.Columns
	if len(req.Columns) > 0 {
		for _, c := range req.Columns {
			if !slices.Contains(v.Columns, c) {
				return nil, errorf(CodeBadRequest, "table %q has no column %q", v.Name, c)
			}
		}
		cols = req.Columns
	}
	rows, err := v.Query(ctx, req.Params)
	if err != nil {
		if ctx.Err() != nil {
			return nil, &Error{Code: CodeTimeout, Msg: "the query did not finish in time", Err: err}
		}
		var e *Error
		if errors.As(err, &e) {
			return nil, e
		}
		return nil, &Error{Code: CodeInternal, Msg: fmt.Sprintf("table %q could not be read", v.Name), Err: err}
	}
	if req.Offset >= len(rows) {
		rows = nil
	} else {
		rows = rows[req.Offset:]
	}
	limit := MaxRows
	if req.Limit > 0 && req.Limit < limit {
		limit = req.Limit
	}
	if len(rows) > limit {
		rows = rows[:limit]
	}
	out := make([]map[string]any, 0, len(rows))
	for _, row := range rows {
		m := make(map[string]any, len(cols))
		for _, c := range cols {
			if x, ok := row[c]; ok {
				m[c] = x
			}
		}
		out = append(out, m)
	}
	return out, nil
}

// GroupsTable is the name of the groups view (SPEC §3).
const GroupsTable = "_groups"

// PublicGroupColumns are the `_groups` columns remote peers see: what a
// visitor needs to pick and join a group. Not shown: invites, members' ids,
// state, roles and default_role (the host's moderation setup), host_joined and
// idle_timeout_s.
var PublicGroupColumns = []string{"id", "name", "owner", "group_type", "group_context", "max_members",
	"created_at", "volatile", "lifecycle", "access", "member_count"}

// LocalGroupColumns are the `_groups` columns the node's own pages see.
var LocalGroupColumns = append(slices.Clone(PublicGroupColumns), "host_joined", "default_role", "roles", "idle_timeout_s")

// HostedFunc calls fn with the node's hosted groups, on the goroutine that
// owns them (e.g. through app.Runtime.Do); fn must not keep the slice.
type HostedFunc func(ctx context.Context, fn func([]group.HostedView)) error

// PublicGroupsView is `_groups` for remote peers: hosted groups that are not
// invite-only, oldest first, with PublicGroupColumns.
func PublicGroupsView(hosted HostedFunc) View {
	return groupsView(hosted, PublicGroupColumns, false)
}

// LocalGroupsView is `_groups` for the node's own pages: every hosted group,
// with LocalGroupColumns.
func LocalGroupsView(hosted HostedFunc) View {
	return groupsView(hosted, LocalGroupColumns, true)
}

func groupsView(hosted HostedFunc, cols []string, all bool) View {
	return View{Name: GroupsTable, Columns: cols, Query: func(ctx context.Context, _ map[string]any) ([]map[string]any, error) {
		var rows []map[string]any
		err := hosted(ctx, func(vs []group.HostedView) {
			for _, v := range vs {
				if !all && v.Group.Access == group.InviteOnly {
					continue
				}
				rows = append(rows, groupRow(v))
			}
		})
		return rows, err
	}}
}

func groupRow(v group.HostedView) map[string]any {
	g := v.Group
	roles := slices.Clone(g.Roles)
	if roles == nil {
		roles = []string{}
	}
	return map[string]any{
		"id": g.ID, "name": g.Name, "owner": string(g.Owner), "group_type": g.Type, "group_context": g.Context,
		"max_members": g.MaxMembers, "created_at": g.CreatedAt.UnixMilli(), "volatile": g.Volatile,
		"lifecycle": g.Lifecycle, "access": g.Access, "member_count": len(v.Members),
		"host_joined": g.HostJoined, "default_role": g.DefaultRole, "roles": roles,
		"idle_timeout_s": int64(g.IdleTimeout.Seconds()),
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
