// Package rendezvous is the WAN discovery adapter of the Goop node (SPEC §6):
// an HTTP rendezvous server (POST /publish, GET /events as Server-Sent
// Events, a public page, an admin page, /healthz), the client a peer uses to
// publish its presence to a server and follow everyone else's, and
// StartForNode, which runs both for a libp2p node and dials the peers it
// learns of.
//
// The wire is Goop2's (compat): a PresenceMsg JSON object per publish and
// per SSE `data:` frame. Ours adds one optional field, `sig`, that proves a
// publish comes from the owner of its peerId (see SignedBytes); compat peers
// ignore it.
package rendezvous

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// Presence message types (SPEC §6).
const (
	TypeOnline  = "online"
	TypeUpdate  = "update"
	TypeOffline = "offline"
)

// Size limits of a PresenceMsg. The first three are compat's (SPEC §6); the
// others bound the fields compat leaves open.
const (
	MaxPeerIDBytes         = 256
	MaxContentBytes        = 4096
	MaxAddrs               = 20
	MaxAddrBytes           = 512
	MaxEmailBytes          = 254
	MaxAvatarHashBytes     = 128
	MaxActiveTemplateBytes = 256
	MaxPublicKeyBytes      = 1024
	MaxClientVersionBytes  = 64
	// MaxBodyBytes bounds a POST /publish body: a maximal message with every
	// character of content JSON-escaped as \u00XX, plus the other fields.
	MaxBodyBytes = 64 << 10
)

// sigContext separates presence signatures from any other use of a peer's key.
const sigContext = "goop-rendezvous-presence-v1\n"

// PresenceMsg is a peer's presence as it travels to and from a rendezvous
// server and on the LAN presence topic (SPEC §6, camelCase JSON).
//
// The rendezvous server treats it as data. TODO(presence): when
// domain/presence defines the node's PresenceMsg, make this type an alias of
// it (the JSON must stay identical, Sig included).
type PresenceMsg struct {
	// Type is online, update or offline.
	Type string `json:"type"`
	// PeerID is the libp2p peer id of the peer the presence is about.
	PeerID string `json:"peerId"`
	// Content is the peer's label.
	Content        string `json:"content,omitempty"`
	Email          string `json:"email,omitempty"`
	AvatarHash     string `json:"avatarHash,omitempty"`
	ActiveTemplate string `json:"activeTemplate,omitempty"`
	// Addrs are the peer's multiaddrs (with or without a /p2p/<peerId> suffix).
	Addrs []string `json:"addrs,omitempty"`
	// PublicKey is compat's key for peer-to-peer encryption (not the libp2p key).
	PublicKey           string `json:"publicKey,omitempty"`
	EncryptionSupported bool   `json:"encryptionSupported,omitempty"`
	GoopClientVersion   string `json:"goopClientVersion,omitempty"`
	// TS is the sender's time in unix milliseconds.
	TS int64 `json:"ts"`
	// Verified is set by whoever checked Sig: the rendezvous server on what it
	// broadcasts, our client on what it reports. A sender's value is ignored.
	Verified bool `json:"verified,omitempty"`
	// Sig is ours: base64 (standard, padded) of the signature by PeerID's
	// key over SignedBytes. Empty for compat peers.
	Sig string `json:"sig,omitempty"`
}

// Validate checks the message's shape and sizes (not its signature). Errors
// name the offending field.
func (m *PresenceMsg) Validate() error {
	switch m.Type {
	case TypeOnline, TypeUpdate, TypeOffline:
	default:
		return fmt.Errorf("type: %q is not online, update or offline", trunc(m.Type))
	}
	if m.PeerID == "" {
		return errors.New("peerId: missing")
	}
	if len(m.PeerID) > MaxPeerIDBytes {
		return fmt.Errorf("peerId: longer than %d bytes", MaxPeerIDBytes)
	}
	if _, err := peer.Decode(m.PeerID); err != nil {
		return fmt.Errorf("peerId: %q is not a libp2p peer id", trunc(m.PeerID))
	}
	if len(m.Content) > MaxContentBytes {
		return fmt.Errorf("content: longer than %d bytes", MaxContentBytes)
	}
	if !utf8.ValidString(m.Content) {
		return errors.New("content: not UTF-8")
	}
	for _, f := range []struct {
		name, v string
		max     int
	}{
		{"email", m.Email, MaxEmailBytes},
		{"avatarHash", m.AvatarHash, MaxAvatarHashBytes},
		{"activeTemplate", m.ActiveTemplate, MaxActiveTemplateBytes},
		{"publicKey", m.PublicKey, MaxPublicKeyBytes},
		{"goopClientVersion", m.GoopClientVersion, MaxClientVersionBytes},
	} {
		if len(f.v) > f.max {
			return fmt.Errorf("%s: longer than %d bytes", f.name, f.max)
		}
		if !printable(f.v) {
			return fmt.Errorf("%s: must be printable UTF-8 text", f.name)
		}
	}
	if len(m.Addrs) > MaxAddrs {
		return fmt.Errorf("addrs: more than %d", MaxAddrs)
	}
	for i, a := range m.Addrs {
		if len(a) > MaxAddrBytes {
			return fmt.Errorf("addrs[%d]: longer than %d bytes", i, MaxAddrBytes)
		}
		if _, err := ma.NewMultiaddr(a); err != nil {
			return fmt.Errorf("addrs[%d]: %q is not a multiaddr", i, trunc(a))
		}
	}
	if m.TS < 0 {
		return errors.New("ts: negative")
	}
	if m.Sig != "" {
		if len(m.Sig) > 256 {
			return errors.New("sig: too long")
		}
		if _, err := base64.StdEncoding.DecodeString(m.Sig); err != nil {
			return errors.New("sig: not base64")
		}
	}
	return nil
}

// SignedBytes is the exact byte string a presence signature covers:
//
//	"goop-rendezvous-presence-v1\n"
//	str(type) str(peerId) str(content) str(email) str(avatarHash)
//	str(activeTemplate) str(publicKey) str(goopClientVersion)
//	uvarint(len(addrs)) str(addrs[0]) ... str(addrs[n-1])
//	byte(encryptionSupported ? 1 : 0)
//	uvarint(ts)
//
// where str(s) is uvarint(len(s)) followed by the bytes of s, and uvarint is
// encoding/binary's unsigned varint. Verified and Sig are not covered.
func SignedBytes(m *PresenceMsg) []byte {
	n := len(sigContext) + len(m.Type) + len(m.PeerID) + len(m.Content) + len(m.Email) + len(m.AvatarHash) +
		len(m.ActiveTemplate) + len(m.PublicKey) + len(m.GoopClientVersion) + 10*(10+len(m.Addrs)) + 1
	for _, a := range m.Addrs {
		n += len(a)
	}
	b := make([]byte, 0, n)
	b = append(b, sigContext...)
	str := func(s string) {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	str(m.Type)
	str(m.PeerID)
	str(m.Content)
	str(m.Email)
	str(m.AvatarHash)
	str(m.ActiveTemplate)
	str(m.PublicKey)
	str(m.GoopClientVersion)
	b = binary.AppendUvarint(b, uint64(len(m.Addrs)))
	for _, a := range m.Addrs {
		str(a)
	}
	if m.EncryptionSupported {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	return binary.AppendUvarint(b, uint64(m.TS))
}

// Sign sets m.PeerID to key's peer id and m.Sig to key's signature over
// SignedBytes(m). Set every other field, TS included, before.
func Sign(m *PresenceMsg, key crypto.PrivKey) error {
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return fmt.Errorf("rendezvous: sign presence: %w", err)
	}
	m.PeerID = id.String()
	sig, err := key.Sign(SignedBytes(m))
	if err != nil {
		return fmt.Errorf("rendezvous: sign presence: %w", err)
	}
	m.Sig = base64.StdEncoding.EncodeToString(sig)
	return nil
}

// Signature errors, for callers that branch on them (the server answers 403).
var (
	// ErrNoSignature: the message has no sig.
	ErrNoSignature = errors.New("presence is not signed")
	// ErrBadSignature: sig is not PeerID's signature over SignedBytes.
	ErrBadSignature = errors.New("signature does not match peerId")
	// ErrNoEmbeddedKey: PeerID does not embed its public key (only
	// Ed25519-style identity peer ids can be verified).
	ErrNoEmbeddedKey = errors.New("peerId does not embed its public key")
)

// VerifySignature checks m.Sig against the public key embedded in m.PeerID.
// It does not look at the time.
func VerifySignature(m *PresenceMsg) error {
	if m.Sig == "" {
		return ErrNoSignature
	}
	sig, err := base64.StdEncoding.DecodeString(m.Sig)
	if err != nil {
		return ErrBadSignature
	}
	id, err := peer.Decode(m.PeerID)
	if err != nil {
		return ErrBadSignature
	}
	pub, err := id.ExtractPublicKey()
	if err != nil || pub == nil {
		return ErrNoEmbeddedKey
	}
	ok, err := pub.Verify(SignedBytes(m), sig)
	if err != nil || !ok {
		return ErrBadSignature
	}
	return nil
}

// AddrInfo returns the peer and its addresses, for dialing. An address that
// ends in /p2p/<id> of another peer is left out.
func (m *PresenceMsg) AddrInfo() (peer.AddrInfo, error) {
	id, err := peer.Decode(m.PeerID)
	if err != nil {
		return peer.AddrInfo{}, fmt.Errorf("rendezvous: peer id %q: %w", trunc(m.PeerID), err)
	}
	ai := peer.AddrInfo{ID: id}
	for _, s := range m.Addrs {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			continue
		}
		transport, last := ma.SplitLast(a)
		if last != nil && last.Protocol().Code == ma.P_P2P {
			if last.Value() != id.String() {
				continue
			}
			a = transport
		}
		if len(a) == 0 {
			continue
		}
		ai.Addrs = append(ai.Addrs, a)
	}
	return ai, nil
}

func printable(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

// trunc shortens untrusted text quoted in an error message.
func trunc(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// unixMilli is t in unix milliseconds.
func unixMilli(t time.Time) int64 { return t.UnixMilli() }
