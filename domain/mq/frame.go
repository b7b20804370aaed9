// Package mq is the sans-I/O core of the Goop message bus (SPEC §2).
//
// It holds the wire envelope (Frame) and its codec, and the Bus state machine:
// durable outbox with per-destination sequence numbers, bounded retry with
// backoff, receiver-side ordering and de-duplication. It performs no I/O: the
// caller feeds inputs with the current time and carries out the outputs.
package mq

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// PeerID is a libp2p peer id in its string form.
type PeerID string

// Frame types on the wire.
const (
	TypeMsg = "msg"
	TypeAck = "ack"
)

// Limits for what the network may send us. A line longer than MaxLineBytes is a
// protocol error and the stream carrying it is reset.
const (
	MaxPayloadBytes = 1 << 20 // 1 MiB of JSON payload per message
	MaxTopicBytes   = 512
	MaxIDBytes      = 128
	MaxPeerIDBytes  = 256
	MaxLineBytes    = MaxPayloadBytes + 4096
)

// Sentinel errors callers branch on.
var (
	ErrBadFrame        = errors.New("mq: malformed frame")
	ErrPayloadTooLarge = errors.New("mq: payload too large")
)

// Frame is one JSON line on a bus stream: either a msg or an ack.
//
// Compat fields: type, id, seq, topic, payload. Ours (ignored by Goop2 peers):
// origin (original sender of a relayed message), epoch (the sender's outbox
// incarnation; its presence selects ordered, exactly-once delivery) and floor
// (every seq below it is acknowledged or abandoned by the sender).
type Frame struct {
	Type    string          `json:"type"`
	ID      string          `json:"id"`
	Seq     int64           `json:"seq"`
	Topic   string          `json:"topic,omitempty"`
	Payload json.RawMessage `json:"payload,omitempty"`
	Origin  PeerID          `json:"origin,omitempty"`
	Epoch   string          `json:"epoch,omitempty"`
	Floor   int64           `json:"floor,omitempty"`
	// Stage, on an ack (ours): StageReceived marks the early transport ack a
	// Goop 1.1.0 stream writes as soon as it decodes one of our msgs; the
	// ack without a stage (Goop2's only kind) is the final one, written once
	// the message is durably delivered.
	Stage string `json:"stage,omitempty"`
	// Want, on a msg (ours): StageReceived asks the receiving Goop 1.1.0
	// transport for the early received ack — sent only when the sender
	// waits for it (a round trip), so that pipelined and group traffic costs
	// one ack per message, not two.
	Want string `json:"want,omitempty"`
	// AckMode, on a msg (ours): AckBatch tells a Goop receiver that the
	// sender takes cumulative final acks — an ack whose Floor acknowledges
	// every message of the sender's epoch below it — so that the messages
	// delivered in one step are acknowledged by one ack. Without it (Goop2,
	// or a Goop peer that predates it, or a 1.0.0 stream, which waits for
	// its msg's own ack) each message gets its own ack.
	AckMode string `json:"ack_mode,omitempty"`
}

// AckBatch is the AckMode of a msg whose sender takes cumulative acks.
const AckBatch = "batch"

// StageReceived is the Stage of an early transport ack.
const StageReceived = "received"

// knownStage reports whether s may be an ack's Stage or a msg's Want: none,
// or StageReceived.
func knownStage(s string) bool { return s == "" || s == StageReceived }

// IsMsg reports whether f is a msg frame.
func (f *Frame) IsMsg() bool { return f.Type == TypeMsg }

// AckFor returns the ack frame that answers msg m.
func AckFor(m *Frame) Frame { return Frame{Type: TypeAck, ID: m.ID, Seq: m.Seq} }

// AsksReceived reports whether f is a msg from a Goop sender (it has an
// epoch) that asks the receiving transport for the early received ack.
func (f *Frame) AsksReceived() bool {
	return f.Type == TypeMsg && f.Want == StageReceived && f.Epoch != ""
}

// ReceivedAckFor returns the early received ack that answers msg m.
func ReceivedAckFor(m *Frame) Frame {
	return Frame{Type: TypeAck, ID: m.ID, Seq: m.Seq, Stage: StageReceived}
}

// Validate checks a frame against the spec and our limits.
func (f *Frame) Validate() error {
	switch f.Type {
	case TypeMsg, TypeAck:
	default:
		return fmt.Errorf("%w: unknown type %q", ErrBadFrame, truncate(f.Type, 32))
	}
	if f.ID == "" || len(f.ID) > MaxIDBytes {
		return fmt.Errorf("%w: id must be 1..%d bytes", ErrBadFrame, MaxIDBytes)
	}
	// Identifiers end up in the database and in logs: printable UTF-8 only (a
	// NUL byte is refused by PostgreSQL, and a refused write stops the node).
	if !printable(f.ID) {
		return fmt.Errorf("%w: id has control characters or is not UTF-8", ErrBadFrame)
	}
	if f.Type == TypeAck {
		if !knownStage(f.Stage) {
			return fmt.Errorf("%w: unknown ack stage %q", ErrBadFrame, truncate(f.Stage, 32))
		}
		return nil
	}
	if err := ValidateTopic(f.Topic); err != nil {
		return err
	}
	if len(f.Payload) > MaxPayloadBytes {
		return fmt.Errorf("%w: %d bytes (max %d)", ErrPayloadTooLarge, len(f.Payload), MaxPayloadBytes)
	}
	if len(f.Origin) > MaxPeerIDBytes || len(f.Epoch) > MaxIDBytes {
		return fmt.Errorf("%w: origin or epoch too long", ErrBadFrame)
	}
	if !printable(string(f.Origin)) || !printable(f.Epoch) {
		return fmt.Errorf("%w: origin or epoch has control characters or is not UTF-8", ErrBadFrame)
	}
	if f.Seq < 0 || f.Floor < 0 {
		return fmt.Errorf("%w: negative seq or floor", ErrBadFrame)
	}
	if !knownStage(f.Want) {
		return fmt.Errorf("%w: unknown want %q", ErrBadFrame, truncate(f.Want, 32))
	}
	return nil
}

// ValidateTopic checks that a topic is non-empty, printable UTF-8 and bounded.
func ValidateTopic(t string) error {
	if t == "" {
		return fmt.Errorf("%w: empty topic", ErrBadFrame)
	}
	if len(t) > MaxTopicBytes {
		return fmt.Errorf("%w: topic longer than %d bytes", ErrBadFrame, MaxTopicBytes)
	}
	if !printable(t) {
		return fmt.Errorf("%w: topic has control characters or is not UTF-8", ErrBadFrame)
	}
	return nil
}

// printable reports whether s is valid UTF-8 without control characters.
func printable(s string) bool {
	i := 0
	for ; i+8 <= len(s); i += 8 {
		// Eight bytes at a time: flag bytes < 0x20, == 0x7f or >= 0x80.
		x := word8(s, i)
		if (x|((x-0x20*lsbs)&^x))&msbs|hasByte(x, 0x7f) != 0 {
			break
		}
	}
	for ; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == 0x7f {
			return false
		}
		if c >= utf8.RuneSelf {
			return printableUTF8(s[i:]) // the ASCII prefix is fine
		}
	}
	return true
}

func printableUTF8(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

// DecodeFrame parses and validates one line (without its trailing newline):
// exactly one JSON object, whitespace allowed around it. Keys and values are
// read as encoding/json reads them into a Frame (unknown keys ignored, keys
// matched case-insensitively, the last of a repeated key wins), except that
// arrays and objects may nest at most 512 deep; a missing msg payload
// decodes as null.
//
// Ownership: the returned Frame owns its memory and never aliases line, so
// the caller may reuse line's buffer at once. Decoding a valid ack allocates
// once (its id); a valid msg twice (one string holding id, topic, origin and
// epoch, and the copy of its payload). Errors wrap ErrBadFrame or
// ErrPayloadTooLarge. DecodeFrame is safe for concurrent use.
func DecodeFrame(line []byte) (Frame, error) {
	if len(line) > MaxLineBytes {
		return Frame{}, fmt.Errorf("%w: line of %d bytes exceeds %d", ErrBadFrame, len(line), MaxLineBytes)
	}
	f, err := parseFrame(line)
	if err != nil {
		return Frame{}, err
	}
	if f.Type == TypeMsg && len(f.Payload) == 0 {
		f.Payload = json.RawMessage("null")
	}
	if err := f.Validate(); err != nil {
		return Frame{}, err
	}
	return f, nil
}

// AppendFrame appends the JSON encoding of f and a newline to dst. The field
// order matches Goop2's encoder; an ack carries type, id and seq, and ours
// a stage (an early ack) or a floor (a batched one).
func AppendFrame(dst []byte, f *Frame) []byte {
	dst = append(dst, `{"type":`...)
	dst = appendJSONString(dst, f.Type)
	dst = append(dst, `,"id":`...)
	dst = appendJSONString(dst, f.ID)
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendInt(dst, f.Seq, 10)
	if f.Type == TypeAck && f.Stage != "" {
		dst = append(dst, `,"stage":`...)
		dst = appendJSONString(dst, f.Stage)
	}
	if f.Type == TypeAck && f.Floor != 0 {
		dst = append(dst, `,"floor":`...)
		dst = strconv.AppendInt(dst, f.Floor, 10)
	}
	if f.Type != TypeAck {
		dst = append(dst, `,"topic":`...)
		dst = appendJSONString(dst, f.Topic)
		dst = append(dst, `,"payload":`...)
		if len(f.Payload) == 0 {
			dst = append(dst, "null"...)
		} else {
			dst = appendCompact(dst, f.Payload)
		}
		if f.Origin != "" {
			dst = append(dst, `,"origin":`...)
			dst = appendJSONString(dst, string(f.Origin))
		}
		if f.Epoch != "" {
			dst = append(dst, `,"epoch":`...)
			dst = appendJSONString(dst, f.Epoch)
		}
		if f.Floor != 0 {
			dst = append(dst, `,"floor":`...)
			dst = strconv.AppendInt(dst, f.Floor, 10)
		}
		if f.Want != "" {
			dst = append(dst, `,"want":`...)
			dst = appendJSONString(dst, f.Want)
		}
		if f.AckMode != "" {
			dst = append(dst, `,"ack_mode":`...)
			dst = appendJSONString(dst, f.AckMode)
		}
	}
	return append(dst, '}', '\n')
}

// appendCompact appends raw JSON without newlines (a payload must fit one line).
func appendCompact(dst []byte, raw []byte) []byte {
	if bytes.IndexByte(raw, '\n') < 0 && bytes.IndexByte(raw, '\r') < 0 {
		return append(dst, raw...)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return append(dst, "null"...)
	}
	return append(dst, buf.Bytes()...)
}

// appendJSONString appends s as encoding/json encodes it.
func appendJSONString(dst []byte, s string) []byte {
	i := 0
	for ; i+8 <= len(s); i += 8 {
		// Eight bytes at a time while none needs escaping (a flag may be
		// false: the bytes are then checked one by one).
		x := word8(s, i)
		if stringSpecials(x)|hasByte(x, '<')|hasByte(x, '>')|hasByte(x, '&') != 0 {
			break
		}
	}
	for ; i < len(s); i++ {
		if !jsonPlain[s[i]] {
			b, _ := json.Marshal(s)
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

// jsonPlain marks the bytes encoding/json writes as they are in a string:
// printable ASCII but for the quote, the backslash and the HTML characters
// it escapes.
var jsonPlain = func() (t [256]bool) {
	for c := 0x20; c < 0x80; c++ {
		t[c] = true
	}
	for _, c := range `"\<>&` {
		t[c] = false
	}
	return t
}()

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
