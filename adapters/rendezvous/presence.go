// Package rendezvous is the WAN discovery adapter of the Goop node (SPEC §6):
// an HTTP rendezvous server (POST /publish, GET /events as Server-Sent
// Events, a public page, an admin page, /healthz), the client a peer uses to
// publish its presence to a server and follow everyone else's, Discovery,
// the node's WAN ports.Discovery built on clients (combined with LAN
// discovery by the node), which also dials the peers it learns of.
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
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/goop-p2p/goop/domain/presence"
)

// Presence message types (SPEC §6).
const (
	TypeOnline  = presence.TypeOnline
	TypeUpdate  = presence.TypeUpdate
	TypeOffline = presence.TypeOffline
)

// Size limits of a PresenceMsg: domain/presence's, the same on the LAN and
// through a rendezvous. The first three are compat's (SPEC §6).
const (
	MaxPeerIDBytes         = presence.MaxPeerIDBytes
	MaxContentBytes        = presence.MaxContentBytes
	MaxAddrs               = presence.MaxAddrs
	MaxAddrBytes           = presence.MaxAddrBytes
	MaxEmailBytes          = presence.MaxEmailBytes
	MaxAvatarHashBytes     = presence.MaxAvatarHashBytes
	MaxActiveTemplateBytes = presence.MaxTemplateBytes
	MaxPublicKeyBytes      = presence.MaxPublicKeyBytes
	MaxClientVersionBytes  = presence.MaxVersionBytes
	// MaxBodyBytes bounds a POST /publish body and an SSE event: a maximal
	// message with every character of its text JSON-escaped, plus the other
	// fields (presence.MaxMsgBytes).
	MaxBodyBytes = presence.MaxMsgBytes
)

// sigContext separates presence signatures from any other use of a peer's key.
const sigContext = "goop-rendezvous-presence-v1\n"

// PresenceMsg is a peer's presence as it travels to and from a rendezvous
// server and on the LAN presence topic (SPEC §6, camelCase JSON): the
// domain's presence.Msg, whose Sig field this package defines (SignedBytes,
// Sign) and checks (VerifySignature).
type PresenceMsg = presence.Msg

// Validate checks m's shape and sizes (not its signature): presence.Msg's
// rules (Validate; errors wrap presence.ErrInvalid), plus what needs
// libp2p: PeerID must decode as a libp2p peer id and every address must
// parse as a multiaddr.
func Validate(m *PresenceMsg) error {
	if err := m.Validate(); err != nil {
		return err
	}
	if _, err := peer.Decode(string(m.PeerID)); err != nil {
		return fmt.Errorf("%w: peerId %q is not a libp2p peer id", presence.ErrInvalid, trunc(string(m.PeerID)))
	}
	for i, a := range m.Addrs {
		if _, err := ma.NewMultiaddr(a); err != nil {
			return fmt.Errorf("%w: addrs[%d] %q is not a multiaddr", presence.ErrInvalid, i, trunc(a))
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
	str(string(m.PeerID))
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
	m.PeerID = presence.PeerID(id.String())
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
	id, err := peer.Decode(string(m.PeerID))
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

// AddrInfo returns m's peer and its addresses, for dialing. An address that
// does not parse, or ends in /p2p/<id> of another peer, is left out.
func AddrInfo(m *PresenceMsg) (peer.AddrInfo, error) {
	return addrInfo(string(m.PeerID), m.Addrs)
}

func addrInfo(peerID string, addrs []string) (peer.AddrInfo, error) {
	id, err := peer.Decode(peerID)
	if err != nil {
		return peer.AddrInfo{}, fmt.Errorf("rendezvous: peer id %q: %w", trunc(peerID), err)
	}
	ai := peer.AddrInfo{ID: id}
	for _, s := range addrs {
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

// trunc shortens untrusted text quoted in an error message.
func trunc(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// unixMilli is t in unix milliseconds.
func unixMilli(t time.Time) int64 { return t.UnixMilli() }
