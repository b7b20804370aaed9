// Package presence is the sans-I/O core of peer discovery (SPEC §6): the
// PresenceMsg wire format with its validation, and the peer table that
// presence messages feed (online, offline after a TTL without a heartbeat,
// removed after a grace period), together with this node's own presence
// (online at start, an update on each heartbeat and when its addresses
// change, offline at shutdown).
//
// The core reads no clock and does no I/O: inputs arrive as data with the
// current time (Core.Handle, Core.Tick) and outputs are collected as data
// (Core.Drain): presence messages to publish, peer rows to persist, events
// for the viewer and hints to connect to peers. The app layer carries them
// out through ports.Discovery and ports.Store; simnet plays the same ports.
package presence

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/goop-p2p/goop/domain/mq"
)

// PeerID is a libp2p peer id (its string form).
type PeerID = mq.PeerID

// Topic is the GossipSub topic presence messages travel on (SPEC §6).
const Topic = "goop.presence.v1"

// Message types (PresenceMsg.type).
const (
	TypeOnline  = "online"
	TypeUpdate  = "update"
	TypeOffline = "offline"
)

// Limits of a valid presence message, the same on the LAN (GossipSub) and
// through a rendezvous server (adapters/rendezvous uses these). PeerID,
// Content and the count of addresses are the compat rendezvous server's
// (SPEC §6); the others bound what a peer may make us store. MaxAddrBytes
// leaves room for long multiaddrs (a WebTransport address with two certhashes
// and a /p2p suffix is about 250 bytes).
const (
	MaxPeerIDBytes     = 256
	MaxContentBytes    = 4096
	MaxAddrs           = 20
	MaxAddrBytes       = 512
	MaxEmailBytes      = 256
	MaxAvatarHashBytes = 256
	MaxTemplateBytes   = 256
	MaxPublicKeyBytes  = 1024
	MaxVersionBytes    = 64
	// MaxSigBytes bounds Sig (base64 text; an Ed25519 signature takes 88).
	MaxSigBytes = 256
	// MaxMsgBytes bounds an encoded message: a maximal valid message, with
	// room for JSON escaping of its text and for compat fields we ignore.
	MaxMsgBytes = 64 << 10
)

// ErrInvalid is wrapped by the errors of Validate and Decode: the message is
// malformed or oversize and changes nothing.
var ErrInvalid = errors.New("presence: invalid message")

// Msg is a PresenceMsg (SPEC §6) as it travels on GossipSub and through a
// rendezvous server. Field names and omitempty follow Goop2, whose extra
// fields (videoDisabled, target, verificationToken) are ignored on decode.
type Msg struct {
	Type                string   `json:"type"`
	PeerID              PeerID   `json:"peerId"`
	Content             string   `json:"content,omitempty"` // the peer's label
	Email               string   `json:"email,omitempty"`
	AvatarHash          string   `json:"avatarHash,omitempty"`
	ActiveTemplate      string   `json:"activeTemplate,omitempty"`
	Addrs               []string `json:"addrs,omitempty"` // multiaddrs, with or without /p2p/<peerId>
	PublicKey           string   `json:"publicKey,omitempty"`
	EncryptionSupported bool     `json:"encryptionSupported,omitempty"`
	GoopClientVersion   string   `json:"goopClientVersion,omitempty"`
	TS                  int64    `json:"ts"` // sender's clock, Unix milliseconds
	// Verified is a claim set by whoever checked Sig: a rendezvous server on
	// what it broadcasts, our rendezvous client on what it reports. A
	// sender's value means nothing; the peer table decides for itself (see
	// Received.Verified) and ignores it.
	Verified bool `json:"verified,omitempty"`
	// Sig is ours (compat peers leave it out and ignore it): the Ed25519
	// signature, base64 (standard, padded), by the key embedded in PeerID
	// over the canonical bytes defined by SignedBytes in adapters/rendezvous
	// (every field but Verified and Sig). The domain cannot check it (that
	// needs libp2p's crypto): Validate checks only its shape, and the
	// adapters verify it (the rendezvous server and client) before they
	// report a message as verified.
	Sig string `json:"sig,omitempty"`
}

// Validate checks m against the limits: a known type, a peer id of 1 to
// MaxPeerIDBytes letters and digits, text fields within their limits and
// printable (valid UTF-8 without control characters), at most MaxAddrs
// addresses each a printable "/..." string of at most MaxAddrBytes without
// spaces, a positive ts, and a sig (if any) of at most MaxSigBytes of
// base64 (its shape only: see Msg.Sig). Errors wrap ErrInvalid.
func (m *Msg) Validate() error {
	switch m.Type {
	case TypeOnline, TypeUpdate, TypeOffline:
	default:
		return invalid("type %q is not online, update or offline", clip(m.Type))
	}
	if err := ValidatePeerID(m.PeerID); err != nil {
		return err
	}
	for _, f := range []struct {
		name, v string
		max     int
	}{
		{"content", m.Content, MaxContentBytes},
		{"email", m.Email, MaxEmailBytes},
		{"avatarHash", m.AvatarHash, MaxAvatarHashBytes},
		{"activeTemplate", m.ActiveTemplate, MaxTemplateBytes},
		{"publicKey", m.PublicKey, MaxPublicKeyBytes},
		{"goopClientVersion", m.GoopClientVersion, MaxVersionBytes},
	} {
		if len(f.v) > f.max {
			return invalid("%s is %d bytes (max %d)", f.name, len(f.v), f.max)
		}
		if !Printable(f.v) {
			return invalid("%s is not printable UTF-8", f.name)
		}
	}
	if err := ValidateAddrs(m.Addrs); err != nil {
		return err
	}
	if m.TS <= 0 {
		return invalid("ts %d is not a positive Unix millisecond time", m.TS)
	}
	if len(m.Sig) > MaxSigBytes {
		return invalid("sig is %d bytes (max %d)", len(m.Sig), MaxSigBytes)
	}
	if !isBase64(m.Sig) {
		return invalid("sig is not base64")
	}
	return nil
}

// isBase64 reports whether s is standard, padded base64 text (or empty).
func isBase64(s string) bool {
	if len(s)%4 != 0 {
		return false
	}
	body := strings.TrimRight(s, "=")
	if len(s)-len(body) > 2 {
		return false
	}
	for i := 0; i < len(body); i++ {
		c := body[i]
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '+' || c == '/') {
			return false
		}
	}
	return true
}

// ValidatePeerID checks a peer id's form: 1 to MaxPeerIDBytes ASCII letters
// and digits (base58 and base32 peer ids). Errors wrap ErrInvalid.
func ValidatePeerID(id PeerID) error {
	if id == "" {
		return invalid("missing peerId")
	}
	if len(id) > MaxPeerIDBytes {
		return invalid("peerId is %d bytes (max %d)", len(id), MaxPeerIDBytes)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return invalid("peerId %q holds a character that is not a letter or digit", clip(string(id)))
		}
	}
	return nil
}

// ValidateAddrs checks a list of multiaddr strings: at most MaxAddrs, each 2
// to MaxAddrBytes visible ASCII characters starting with '/'. Errors wrap
// ErrInvalid.
func ValidateAddrs(addrs []string) error {
	if len(addrs) > MaxAddrs {
		return invalid("%d addrs (max %d)", len(addrs), MaxAddrs)
	}
	for i, a := range addrs {
		if len(a) < 2 || len(a) > MaxAddrBytes || a[0] != '/' {
			return invalid("addrs[%d] is not a multiaddr of at most %d bytes", i, MaxAddrBytes)
		}
		for j := 0; j < len(a); j++ {
			if a[j] <= ' ' || a[j] >= 0x7f {
				return invalid("addrs[%d] holds a character that is not visible ASCII", i)
			}
		}
	}
	return nil
}

// Printable reports whether s is valid UTF-8 without control characters
// (C0, DEL, C1): what a label may hold.
func Printable(s string) bool {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c < 0x20 || c == 0x7f {
				return false
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 || unicode.IsControl(r) {
			return false
		}
		i += n
	}
	return true
}

// Decode parses and validates one encoded message of at most MaxMsgBytes.
// Unknown fields are ignored. Errors wrap ErrInvalid.
func Decode(b []byte) (Msg, error) {
	var m Msg
	if len(b) > MaxMsgBytes {
		return m, invalid("%d bytes (max %d)", len(b), MaxMsgBytes)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return Msg{}, invalid("bad JSON: %v", err)
	}
	if err := m.Validate(); err != nil {
		return Msg{}, err
	}
	return m, nil
}

// Encode returns m as JSON (one line).
func (m *Msg) Encode() []byte {
	b, err := json.Marshal(m)
	if err != nil {
		panic(fmt.Sprintf("presence: encode: %v", err)) // plain strings and numbers always encode
	}
	return b
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// clip shortens an untrusted value quoted in an error.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
