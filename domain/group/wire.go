// Package group is the sans-I/O core of host-relayed groups (SPEC §3).
//
// One Core per node holds both sides: the groups this node hosts (join
// validation, membership, roles, relaying, keep-alive, lifecycle) and the
// groups it has joined elsewhere (subscriptions, re-join, host liveness).
// Messages travel on the bus under topics group:{id}:{type} and group.invite.
package group

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Message types: the suffix of a group topic.
const (
	TypeJoin    = "join"
	TypeWelcome = "welcome"
	TypeMembers = "members"
	TypeMsg     = "msg"
	TypeState   = "state"
	TypeMeta    = "meta"
	TypePing    = "ping"
	TypePong    = "pong"
	TypeLeave   = "leave"
	TypeClose   = "close"
	TypeError   = "error"
	// TypeHistory is ours: a member asks the host for the group's recent
	// messages, and the host answers, on the same topic. A Goop2 host does
	// not answer (the asker's wait times out).
	TypeHistory = "history"
)

// TopicInvite carries invitations (host → peer).
const TopicInvite = "group.invite"

// Group app types in use by Goop2; any other string is treated as general.
const (
	AppGeneral  = "general"
	AppChat     = "chat"
	AppFiles    = "files"
	AppCluster  = "cluster"
	AppListen   = "listen"
	AppTemplate = "template"
	AppRealtime = "realtime"
)

// Lifecycle and access (ours; the seed's model).
const (
	Persistent = "persistent"
	Ephemeral  = "ephemeral"
	Open       = "open"
	InviteOnly = "invite-only"
)

// Roles.
const (
	RoleOwner       = "owner"
	DefaultRoleName = "viewer"
)

// Error codes that travel in an error message and reach the caller intact.
const (
	CodeFull         = "full"
	CodeNotFound     = "not_found"
	CodeNotInvited   = "not_invited"
	CodeNotMember    = "not_member"
	CodeKicked       = "kicked"
	CodeClosed       = "closed"
	CodeLimit        = "limit"
	CodeInvalid      = "invalid"
	CodeTimeout      = "timeout"
	CodeHostCantJoin = "host_cannot_join"
	CodeForbidden    = "forbidden"
)

// Error is a group error with a stable code (it crosses the wire and HTTP).
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf returns an *Error with code and a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// CodeOf returns the code of a group error, or "" for other errors.
func CodeOf(err error) string {
	var ge *Error
	if errors.As(err, &ge) {
		return ge.Code
	}
	return ""
}

// Member is one member of a group as the wire shows it.
type Member struct {
	PeerID   string `json:"peer_id"`
	Name     string `json:"name"`
	Role     string `json:"role"`
	JoinedAt int64  `json:"joined_at"` // unix ms
}

// Limits on what peers may send us.
const (
	MaxNameBytes    = 256
	MaxContextBytes = 4096
	MaxRoles        = 32
	MaxRoleBytes    = 64
	MaxStateBytes   = 256 << 10
)

// Topic returns the bus topic of a group message type.
func Topic(groupID, typ string) string { return TopicPrefix + groupID + ":" + typ }

// TopicPrefix starts every group protocol topic.
const TopicPrefix = "group:"

// ParseTopic splits group:{id}:{type}. ok is false for other topics.
func ParseTopic(topic string) (groupID, typ string, ok bool) {
	rest, found := strings.CutPrefix(topic, TopicPrefix)
	if !found {
		return "", "", false
	}
	id, typ, found := strings.Cut(rest, ":")
	if !found || !ValidID(id) || typ == "" {
		return "", "", false
	}
	return id, typ, true
}

// ValidID reports whether s is a group id: 16 lowercase hex characters
// (Goop2 ids), or more generally 1..64 chars of [0-9a-zA-Z_-].
func ValidID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// control is the payload shape of join, leave, ping, pong, close and error.
type control struct {
	Type  string `json:"type"`
	Group string `json:"group"`
	// Ours, ignored by Goop2: the joiner's display name.
	Name    string `json:"name,omitempty"`
	Payload *Error `json:"payload,omitempty"`
}

// Welcome is the host's answer to an accepted join.
type Welcome struct {
	GroupName    string          `json:"group_name"`
	GroupType    string          `json:"group_type"`
	GroupContext string          `json:"group_context"`
	MaxMembers   int             `json:"max_members"`
	Volatile     bool            `json:"volatile"`
	Members      []Member        `json:"members"`
	State        json.RawMessage `json:"state,omitempty"`
	// Ours.
	Lifecycle string `json:"lifecycle,omitempty"`
	Access    string `json:"access,omitempty"`
	Role      string `json:"role,omitempty"`
}

// Limits of a history answer: at most MaxHistoryItems messages, and the
// newest of them that fit in MaxHistoryBytes of payloads.
const (
	MaxHistoryItems = 200
	MaxHistoryBytes = 768 << 10
)

// HistoryItem is one relayed message in a history answer.
type HistoryItem struct {
	From    string          `json:"from"`
	Type    string          `json:"type"`
	Payload json.RawMessage `json:"payload"`
	At      int64           `json:"at"` // unix ms
}

// historyPayload is the payload of a history question (req, limit) and of
// its answer (req, items oldest first, or error).
type historyPayload struct {
	Type  string        `json:"type"`
	Group string        `json:"group"`
	Req   string        `json:"req"`
	Limit int           `json:"limit,omitempty"`
	Items []HistoryItem `json:"items,omitempty"`
	Error *Error        `json:"error,omitempty"`
}

// HistoryAnswer is the payload of an EvHistory event.
type HistoryAnswer struct {
	Req   string        `json:"req"`
	Items []HistoryItem `json:"items"`
	Error *Error        `json:"error,omitempty"`
}

// HistoryQuestion is what a member asks in a history request: the newest
// Limit messages, the answer to carry Req.
type HistoryQuestion struct {
	Req   string
	Limit int
}

type membersPayload struct {
	Members []Member `json:"members"`
}

// Meta is the group metadata update (host → all).
type Meta struct {
	GroupName  string `json:"group_name"`
	GroupType  string `json:"group_type"`
	MaxMembers int    `json:"max_members"`
}

// Invite is the payload of group.invite.
type Invite struct {
	GroupID      string `json:"group_id"`
	GroupName    string `json:"group_name"`
	HostPeerID   string `json:"host_peer_id"`
	GroupType    string `json:"group_type"`
	GroupContext string `json:"group_context"`
	Volatile     bool   `json:"volatile"`
	// Ours.
	Lifecycle string `json:"lifecycle,omitempty"`
	Access    string `json:"access,omitempty"`
}

// mustJSON encodes a group payload. HTML characters are not escaped: a
// payload or state full of '<' would otherwise grow sixfold on its way out
// (a welcome carrying the largest state past the bus's 1 MiB limit, which
// would keep everyone from joining).
func mustJSON(v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic(fmt.Sprintf("group: marshal %T: %v", v, err))
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}

func controlPayload(typ, groupID string) []byte {
	return mustJSON(control{Type: typ, Group: groupID})
}
