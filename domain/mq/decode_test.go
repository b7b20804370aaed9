package mq

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// decodeFrameStd is the previous DecodeFrame, built on encoding/json: the
// reference the hand-written decoder is held to. One fix against the old
// code: it used dec.More() to refuse trailing data, and More reports false
// before a '}' or ']', so `{...}}` was accepted; this version refuses
// anything but whitespace after the object.
func decodeFrameStd(line []byte) (Frame, error) {
	var f Frame
	if len(line) > MaxLineBytes {
		return f, fmt.Errorf("%w: line of %d bytes exceeds %d", ErrBadFrame, len(line), MaxLineBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	if err := dec.Decode(&f); err != nil {
		return Frame{}, fmt.Errorf("%w: %v", ErrBadFrame, err)
	}
	if len(bytes.TrimLeft(line[dec.InputOffset():], " \t\r\n")) != 0 {
		return Frame{}, fmt.Errorf("%w: trailing data after JSON object", ErrBadFrame)
	}
	if f.Type == TypeMsg && len(f.Payload) == 0 {
		f.Payload = json.RawMessage("null")
	}
	if err := f.Validate(); err != nil {
		return Frame{}, err
	}
	return f, nil
}

// nested returns depth levels of alternating arrays and objects around 1.
func nested(depth int) string {
	var open, close strings.Builder
	for i := 0; i < depth; i++ {
		if i%2 == 0 {
			open.WriteString(`[`)
		} else {
			open.WriteString(`{"k":`)
		}
	}
	for i := depth - 1; i >= 0; i-- {
		if i%2 == 0 {
			close.WriteString(`]`)
		} else {
			close.WriteString(`}`)
		}
	}
	return open.String() + "1" + close.String()
}

const ackHead = `{"type":"ack","id":"a","seq":1,`

type decodeCase struct {
	name string
	line string
	ok   bool
}

// trickyLines are lines whose decoding must match encoding/json's; ok says
// whether they decode at all (so that both decoders being wrong the same way
// also shows). Acks carry odd topics, origins and epochs because Validate
// does not look at them there, so the decoded bytes themselves are compared.
var trickyLines = []decodeCase{
	{"ours msg", `{"type":"msg","id":"6f1c","seq":7,"topic":"group:ab:msg","payload":{"text":"hi"},"origin":"12D3K","epoch":"ep","floor":2}`, true},
	{"goop2 key order and extra key", `{"payload":{"x":1},"topic":"t","seq":1,"id":"a-b","type":"msg","extra":true}`, true},
	{"ack", `{"type":"ack","id":"6f1c","seq":7}`, true},
	{"missing payload is null", `{"type":"msg","id":"a","seq":1,"topic":"t"}`, true},
	{"whitespace everywhere", " \t\r\n{ \"type\" :\t\"ack\" ,\n\"id\"\r: \"a\" , \"seq\" : 1 \n} \t\r\n", true},
	{"empty object", `{}`, false},
	{"empty object with space", `{ }`, false},

	// Trailing data.
	{"trailing brace", `{"type":"ack","id":"a","seq":1}}`, false},
	{"trailing bracket", `{"type":"ack","id":"a","seq":1}]`, false},
	{"trailing garbage", `{"type":"ack","id":"a","seq":1} x`, false},
	{"second object", `{"type":"ack","id":"a","seq":1}{}`, false},
	{"trailing NUL", "{\"type\":\"ack\",\"id\":\"a\",\"seq\":1}\x00", false},

	// Not an object.
	{"empty line", ``, false},
	{"blank line", `   `, false},
	{"null line", `null`, false},
	{"array line", `[{"type":"ack","id":"a","seq":1}]`, false},
	{"string line", `"ack"`, false},
	{"number line", `1`, false},

	// Escapes and UTF-8 in strings.
	{"escaped quote in id", `{"type":"ack","id":"a\"b","seq":1}`, true},
	{"all simple escapes in topic", ackHead + `"topic":"\"\\\/\b\f\n\r\t"}`, true},
	{"unicode escapes", `{"type":"ack","id":"\u00e9\u4E2D\u0041","seq":1}`, true},
	{"surrogate pair", `{"type":"ack","id":"\ud83d\ude00","seq":1}`, true},
	{"lone high surrogate", `{"type":"ack","id":"\ud83dx","seq":1}`, true},
	{"lone low surrogate", `{"type":"ack","id":"\ude00","seq":1}`, true},
	{"high then high then low", `{"type":"ack","id":"\ud83d\ud83d\ude00","seq":1}`, true},
	{"high then simple escape", ackHead + `"topic":"\ud83d\n"}`, true},
	{"high at end", `{"type":"ack","id":"x\ud83d","seq":1}`, true},
	{"escaped NUL in ack topic", ackHead + `"topic":"\u0000"}`, true},
	{"escaped NUL in id", `{"type":"ack","id":"\u0000","seq":1}`, false},
	{"invalid UTF-8 byte in id", "{\"type\":\"ack\",\"id\":\"a\xffb\",\"seq\":1}", true},
	{"truncated UTF-8 in id", "{\"type\":\"ack\",\"id\":\"a\xe2\x82\",\"seq\":1}", true},
	{"UTF-8 encoded surrogate in id", "{\"type\":\"ack\",\"id\":\"\xed\xa0\x80\",\"seq\":1}", true},
	{"valid UTF-8 and U+FFFD in id", "{\"type\":\"ack\",\"id\":\"h\xc3\xa9\xef\xbf\xbd\xf0\x9f\x98\x80\",\"seq\":1}", true},
	{"invalid UTF-8 mixed with escapes", "{\"type\":\"ack\",\"id\":\"\\u00e9\xff\\n\xc3\",\"seq\":1}", false},
	{"invalid UTF-8 mixed with escapes in topic", ackHead + "\"topic\":\"\\u00e9\xff\\n\xc3\"}", true},
	{"invalid UTF-8 kept raw in payload", "{\"type\":\"msg\",\"id\":\"a\",\"seq\":1,\"topic\":\"t\",\"payload\":\"\xff\\ud800\"}", true},
	{"raw control character in string", "{\"type\":\"ack\",\"id\":\"a\tb\",\"seq\":1}", false},
	{"raw DEL in id", "{\"type\":\"ack\",\"id\":\"a\x7fb\",\"seq\":1}", false},
	{"invalid escape", `{"type":"ack","id":"a\x","seq":1}`, false},
	{"single-quote escape", `{"type":"ack","id":"a\'","seq":1}`, false},
	{"short unicode escape", `{"type":"ack","id":"\u12","seq":1}`, false},
	{"bad hex in unicode escape", `{"type":"ack","id":"\u12g4","seq":1}`, false},
	{"unterminated string", `{"type":"ack","id":"a`, false},
	{"backslash at end", `{"type":"ack","id":"a\`, false},
	{"escaped type", `{"type":"\u006dsg","id":"a","seq":1,"topic":"t","payload":1}`, true},
	{"type is case-sensitive", `{"type":"MSG","id":"a","seq":1,"topic":"t","payload":1}`, false},
	{"braces and quotes in strings", `{"type":"msg","id":"}{","seq":1,"topic":"a}b{\"c\":[","payload":"}\"{"}`, true},

	// Keys.
	{"case-variant keys", `{"Type":"msg","ID":"a","SEQ":3,"Topic":"t","PayLoad":[1],"ORIGIN":"o","Epoch":"e","fLoOr":2}`, true},
	{"escaped key", `{"\u0074ype":"ack","i\u0064":"a","seq":1}`, true},
	{"long s folds to s", "{\"type\":\"ack\",\"id\":\"a\",\"\xc5\xbfeq\":5}", true},
	{"escaped long s folds to s", `{"type":"ack","id":"a","\u017feq":5}`, true},
	{"kelvin sign key is unknown", "{\"type\":\"ack\",\"id\":\"a\",\"seq\":1,\"\xe2\x84\xaa\":5}", true},
	{"invalid UTF-8 key is unknown", "{\"type\":\"ack\",\"id\":\"a\",\"seq\":1,\"s\xffq\":5}", true},
	{"empty key", `{"type":"ack","id":"a","seq":1,"":{"":""}}`, true},
	{"key with escaped quote", `{"type":"ack","id":"a","seq":1,"s\"eq":5}`, true},
	{"near-miss keys", `{"type":"ack","id":"a","seq":1,"ids":"b","se":2,"typ":"x","topics":"y","payloads":1}`, true},
	{"unquoted key", `{type:"ack","id":"a","seq":1}`, false},
	{"missing colon", `{"type" "ack","id":"a","seq":1}`, false},
	{"missing comma", `{"type":"ack" "id":"a","seq":1}`, false},
	{"trailing comma", `{"type":"ack","id":"a","seq":1,}`, false},
	{"leading comma", `{,"type":"ack","id":"a","seq":1}`, false},
	{"missing value", `{"type":"ack","id":"a","seq":}`, false},

	// Duplicate keys and null.
	{"duplicate id last wins", `{"type":"ack","id":"a","seq":1,"id":"b"}`, true},
	{"duplicate seq last wins", `{"type":"ack","id":"a","seq":1,"seq":9}`, true},
	{"null seq keeps earlier", `{"type":"ack","id":"a","seq":4,"seq":null}`, true},
	{"null id keeps earlier", `{"type":"ack","id":"a","seq":1,"id":null}`, true},
	{"null type", `{"type":null,"id":"a","seq":1}`, false},
	{"null type keeps earlier", `{"type":"ack","id":"a","seq":1,"type":null}`, true},
	{"null payload", `{"type":"msg","id":"a","seq":1,"topic":"t","payload":null}`, true},
	{"payload then null payload", `{"type":"msg","id":"a","seq":1,"topic":"t","payload":{"a":1},"payload":null}`, true},
	{"null payload then payload", `{"type":"msg","id":"a","seq":1,"topic":"t","payload":null,"payload":[2]}`, true},
	{"null origin epoch floor", `{"type":"msg","id":"a","seq":1,"topic":"t","payload":1,"origin":null,"epoch":null,"floor":null}`, true},
	{"ack keeps its payload", `{"type":"ack","id":"a","seq":1,"payload":{"x":[]}}`, true},
	{"different key case duplicates", `{"type":"ack","id":"a","ID":"b","Id":"c","seq":1}`, true},

	// Numbers.
	{"max int64 seq", `{"type":"ack","id":"a","seq":9223372036854775807}`, true},
	{"seq overflows int64", `{"type":"ack","id":"a","seq":9223372036854775808}`, false},
	{"seq far beyond int64", `{"type":"ack","id":"a","seq":99999999999999999999999}`, false},
	{"min int64 seq", `{"type":"msg","id":"a","seq":-9223372036854775808,"topic":"t"}`, false},
	{"min int64 seq on ack", `{"type":"ack","id":"a","seq":-9223372036854775808}`, true},
	{"seq wraps uint64 when multiplied", `{"tYpe":"ack","id":"0","seq":20000000000000000000}`, false}, // found by FuzzDecodeEquivalence
	{"seq of 2^64", `{"type":"ack","id":"a","seq":18446744073709551616}`, false},
	{"seq of 2^64+1", `{"type":"ack","id":"a","seq":18446744073709551617}`, false},
	{"negative seq wraps uint64", `{"type":"ack","id":"a","seq":-20000000000000000001}`, false},
	{"below min int64 seq", `{"type":"ack","id":"a","seq":-9223372036854775809}`, false},
	{"negative seq on ack", `{"type":"ack","id":"a","seq":-5}`, true},
	{"negative floor", `{"type":"msg","id":"a","seq":1,"topic":"t","floor":-1}`, false},
	{"minus zero seq", `{"type":"ack","id":"a","seq":-0}`, true},
	{"zero seq", `{"type":"ack","id":"a","seq":0}`, true},
	{"fraction seq", `{"type":"ack","id":"a","seq":1.0}`, false},
	{"exponent seq", `{"type":"ack","id":"a","seq":1e2}`, false},
	{"exponent floor", `{"type":"msg","id":"a","seq":1,"topic":"t","floor":1E0}`, false},
	{"leading zero seq", `{"type":"ack","id":"a","seq":01}`, false},
	{"plus seq", `{"type":"ack","id":"a","seq":+1}`, false},
	{"bare minus seq", `{"type":"ack","id":"a","seq":-}`, false},
	{"string seq", `{"type":"ack","id":"a","seq":"1"}`, false},
	{"bool seq", `{"type":"ack","id":"a","seq":true}`, false},
	{"object seq", `{"type":"ack","id":"a","seq":{}}`, false},
	{"number id", `{"type":"ack","id":1,"seq":1}`, false},
	{"array topic", `{"type":"msg","id":"a","seq":1,"topic":["t"]}`, false},
	{"bool epoch", `{"type":"msg","id":"a","seq":1,"topic":"t","epoch":false}`, false},
	{"want received", `{"type":"msg","id":"a","seq":1,"topic":"t","epoch":"e","want":"received"}`, true},
	{"want in other case", `{"type":"msg","id":"a","seq":1,"topic":"t","WANT":"received"}`, true},
	{"unknown want", `{"type":"msg","id":"a","seq":1,"topic":"t","want":"everything"}`, false},
	{"bool want", `{"type":"msg","id":"a","seq":1,"topic":"t","want":true}`, false},
	{"null want", `{"type":"msg","id":"a","seq":1,"topic":"t","want":null}`, true},
	{"ack mode", `{"type":"msg","id":"a","seq":1,"topic":"t","epoch":"e","ack_mode":"batch"}`, true},
	{"ack mode in other case", `{"type":"msg","id":"a","seq":1,"topic":"t","ACK_Mode":"batch"}`, true},
	{"ack mode escaped", `{"type":"msg","id":"a","seq":1,"topic":"t","ack\u005fmode":"batch"}`, true},
	{"ack mode lookalike", `{"type":"msg","id":"a","seq":1,"topic":"t","ack-mode":"batch","ackXmode":"x"}`, true},
	{"unknown ack mode", `{"type":"msg","id":"a","seq":1,"topic":"t","ack_mode":"whenever"}`, true},
	{"bool ack mode", `{"type":"msg","id":"a","seq":1,"topic":"t","ack_mode":true}`, false},
	{"batched ack", `{"type":"ack","id":"a","seq":7,"floor":8}`, true},
	{"odd numbers in unknown keys", `{"type":"ack","id":"a","seq":1,"x":[1e999,-0.5E+10,0,-0,1.25e-3,123456789012345678901234567890]}`, true},
	{"bad number in unknown key", `{"type":"ack","id":"a","seq":1,"x":1.}`, false},
	{"bad exponent in unknown key", `{"type":"ack","id":"a","seq":1,"x":1e+}`, false},
	{"leading dot in unknown key", `{"type":"ack","id":"a","seq":1,"x":.5}`, false},
	{"NaN in unknown key", `{"type":"ack","id":"a","seq":1,"x":NaN}`, false},
	{"number glued to literal", `{"type":"ack","id":"a","seq":1,"x":1true}`, false},

	// Payloads and unknown values.
	{"empty object payload", `{"type":"msg","id":"a","seq":1,"topic":"t","payload":{}}`, true},
	{"empty array payload", `{"type":"msg","id":"a","seq":1,"topic":"t","payload":[]}`, true},
	{"empty containers with space", `{"type":"msg","id":"a","seq":1,"topic":"t","payload":[ { } , [ ] ]}`, true},
	{"empty string payload", `{"type":"msg","id":"a","seq":1,"topic":"t","payload":""}`, true},
	{"scalar payloads", `{"type":"msg","id":"a","seq":1,"topic":"t","payload":-1.5e-3}`, true},
	{"bool payload", `{"type":"msg","id":"a","seq":1,"topic":"t","payload":false}`, true},
	{"payload keeps inner whitespace", "{\"type\":\"msg\",\"id\":\"a\",\"seq\":1,\"topic\":\"t\",\"payload\": {\"a\" :\t[ 1 , 2 ] } }", true},
	{"payload with escapes kept raw", `{"type":"msg","id":"a","seq":1,"topic":"t","payload":{"k\u0041":"\ud800\"}"}}`, true},
	{"unknown nested value", `{"type":"ack","x":{"a":[1,{"b":null,"c":"}]"}],"d":{"e":{}}},"id":"a","seq":1}`, true},
	{"unknown key named like a field inside payload", `{"type":"msg","id":"a","seq":1,"topic":"t","payload":{"type":"ack","id":"zz"}}`, true},
	{"unclosed payload", `{"type":"msg","id":"a","seq":1,"topic":"t","payload":{"a":1}`, false},
	{"mismatched brackets", `{"type":"msg","id":"a","seq":1,"topic":"t","payload":{"a":[1}]}`, false},
	{"bad literal", `{"type":"msg","id":"a","seq":1,"topic":"t","payload":nul}`, false},
	{"capital literal", `{"type":"msg","id":"a","seq":1,"topic":"t","payload":True}`, false},
	{"object key not a string", `{"type":"msg","id":"a","seq":1,"topic":"t","payload":{1:2}}`, false},
	{"trailing comma in array", `{"type":"msg","id":"a","seq":1,"topic":"t","payload":[1,]}`, false},
	{"payload depth 100", `{"type":"msg","id":"a","seq":1,"topic":"t","payload":` + nested(100) + `}`, true},
	{"payload at the depth bound", `{"type":"msg","id":"a","seq":1,"topic":"t","payload":` + nested(maxNestingDepth-1) + `}`, true},
	{"deep unclosed payload", `{"type":"msg","id":"a","seq":1,"topic":"t","payload":` + strings.Repeat("[", 300), false},
	{"payload too large", `{"type":"msg","id":"a","seq":1,"topic":"t","payload":"` + strings.Repeat("p", MaxPayloadBytes) + `"}`, false},
}

func TestDecodeFrameMatchesEncodingJSON(t *testing.T) {
	for _, tc := range trickyLines {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeFrame([]byte(tc.line))
			want, wantErr := decodeFrameStd([]byte(tc.line))
			if tc.ok {
				require.NoError(t, wantErr, "encoding/json refuses the line")
				require.NoError(t, err)
			} else {
				require.Error(t, wantErr, "encoding/json accepts the line")
				require.Error(t, err)
			}
			assert.Equal(t, want, got)
			assert.Equal(t, errors.Is(wantErr, ErrPayloadTooLarge), errors.Is(err, ErrPayloadTooLarge))
			if err != nil {
				assert.True(t, errors.Is(err, ErrBadFrame) || errors.Is(err, ErrPayloadTooLarge), "%v", err)
			}
		})
	}
}

func TestDecodeFrameDecodesFieldsLikeEncodingJSON(t *testing.T) {
	// Spot checks that the shared reference itself decodes as documented.
	f, err := DecodeFrame([]byte(`{"type":"ack","id":"\ud83dx\ud83d\ude00","ſeq":5,"seq":null,"topic":"a` + "\xff" + `"}`))
	require.NoError(t, err)
	assert.Equal(t, "\uFFFDx\U0001F600", f.ID)
	assert.Equal(t, int64(5), f.Seq)
	assert.Equal(t, "a\uFFFD", f.Topic)

	f, err = DecodeFrame([]byte(`{"type":"msg","id":"a","seq":1,"topic":"t","payload": { "k" : "\u00e9" } }`))
	require.NoError(t, err)
	assert.Equal(t, `{ "k" : "\u00e9" }`, string(f.Payload), "the payload is the raw value")
}

func TestDecodeFrameBoundsNestingDepth(t *testing.T) {
	// encoding/json allows 10000 levels; we allow maxNestingDepth, counting
	// the frame object as the first.
	line := `{"type":"msg","id":"a","seq":1,"topic":"t","payload":` + nested(maxNestingDepth) + `}`
	_, err := DecodeFrame([]byte(line))
	require.ErrorIs(t, err, ErrBadFrame)
	assert.ErrorIs(t, err, errTooDeep)
	_, err = decodeFrameStd([]byte(line))
	assert.NoError(t, err, "the documented difference")

	// In an unknown key too.
	_, err = DecodeFrame([]byte(`{"type":"ack","id":"a","seq":1,"x":` + nested(maxNestingDepth) + `}`))
	assert.ErrorIs(t, err, errTooDeep)
}

func TestDecodeFrameOwnsItsMemory(t *testing.T) {
	f := Frame{Type: TypeMsg, ID: "id-1", Seq: 3, Topic: "topic", Payload: json.RawMessage(`{"a":"b"}`), Origin: "orig", Epoch: "ep", Floor: 1}
	buf := AppendFrame(nil, &f)
	got, err := DecodeFrame(buf[:len(buf)-1])
	require.NoError(t, err)
	for i := range buf {
		buf[i] = 'X' // the transport reuses its read buffer
	}
	assert.Equal(t, f, got)
}

func TestDecodeFrameAllocations(t *testing.T) {
	msg, ack := benchLines()
	msgAllocs := testing.AllocsPerRun(100, func() {
		if _, err := DecodeFrame(msg); err != nil {
			panic(err)
		}
	})
	ackAllocs := testing.AllocsPerRun(100, func() {
		if _, err := DecodeFrame(ack); err != nil {
			panic(err)
		}
	})
	assert.LessOrEqual(t, msgAllocs, 2.0, "msg: one string for id, topic, origin, epoch; one payload copy")
	assert.LessOrEqual(t, ackAllocs, 1.0, "ack: its id")
}

func FuzzDecodeEquivalence(f *testing.F) {
	for _, tc := range trickyLines {
		if len(tc.line) < 4096 {
			f.Add([]byte(tc.line))
		}
	}
	msg, ack := benchLines()
	f.Add(msg)
	f.Add(ack)
	f.Fuzz(func(t *testing.T, line []byte) {
		if printable(string(line)) != printableRef(string(line)) {
			t.Fatalf("printable(%q) disagrees with its definition", line)
		}
		got, err := DecodeFrame(line)
		want, wantErr := decodeFrameStd(line)
		if errors.Is(err, errTooDeep) && wantErr == nil {
			return // the documented difference
		}
		if (err == nil) != (wantErr == nil) {
			t.Fatalf("line %q: fast err %v, encoding/json err %v", line, err, wantErr)
		}
		if errors.Is(err, ErrPayloadTooLarge) != errors.Is(wantErr, ErrPayloadTooLarge) {
			t.Fatalf("line %q: fast err %v, encoding/json err %v", line, err, wantErr)
		}
		if err == nil && !frameEqual(got, want) {
			t.Fatalf("line %q:\nfast %#v\nstd  %#v", line, got, want)
		}
	})
}

func frameEqual(a, b Frame) bool {
	return a.Type == b.Type && a.ID == b.ID && a.Seq == b.Seq && a.Topic == b.Topic &&
		bytes.Equal(a.Payload, b.Payload) && (a.Payload == nil) == (b.Payload == nil) &&
		a.Origin == b.Origin && a.Epoch == b.Epoch && a.Floor == b.Floor
}

// benchLines returns a msg line as this node sends them (with origin, epoch
// and floor) and an ack line, both without their newline.
func benchLines() (msg, ack []byte) {
	m := Frame{
		Type: TypeMsg, ID: "5b0e8f4c-2a7d-4c1e-9f3b-6d2a1c0e7b94", Seq: 1234,
		Topic:   "group:0123456789abcdef:msg",
		Payload: json.RawMessage(`{"text":"hello, world","from":"alice","n":42,"tags":["a","b"]}`),
		Origin:  "12D3KooWGzG5sm7ZmqBfXqHkBQXjqDd7k3Q3yW1LJxYQ2VpH1dKz",
		Epoch:   "9d3c1b2a-0f4e-4a6b-8c7d-1e2f3a4b5c6d", Floor: 1200,
	}
	msg = AppendFrame(nil, &m)
	a := AckFor(&m)
	ack = AppendFrame(nil, &a)
	return msg[:len(msg)-1], ack[:len(ack)-1]
}

func benchmarkDecode(b *testing.B, line []byte) {
	for _, impl := range []struct {
		name   string
		decode func([]byte) (Frame, error)
	}{{"fast", DecodeFrame}, {"std", decodeFrameStd}} {
		b.Run(impl.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(line)))
			for b.Loop() {
				if _, err := impl.decode(line); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkDecodeMsg(b *testing.B) {
	msg, _ := benchLines()
	benchmarkDecode(b, msg)
}

func BenchmarkDecodeAck(b *testing.B) {
	_, ack := benchLines()
	benchmarkDecode(b, ack)
}

func BenchmarkDecodeLargePayload(b *testing.B) {
	m := Frame{Type: TypeMsg, ID: "x", Seq: 1, Topic: "t",
		Payload: json.RawMessage(`{"blob":"` + strings.Repeat("abcdefgh", 8192) + `","list":[` + strings.Repeat(`{"k":1,"v":"w"},`, 1000) + `0]}`)}
	line := AppendFrame(nil, &m)
	benchmarkDecode(b, line[:len(line)-1])
}

func TestStringSpecialsFindsTheFirstSpecialByte(t *testing.T) {
	// Every byte value at every position of an otherwise plain word, and a
	// second special byte above it: the lowest flagged byte is the first one.
	for pos := 0; pos < 8; pos++ {
		for b := 0; b < 256; b++ {
			for _, above := range []byte{'a', 0, '"', '\\', 0x80, 0xff} {
				w := []byte("abcdefgh")
				w[pos] = byte(b)
				if pos < 7 {
					w[7] = above
				}
				want := -1
				for i, c := range w {
					if strClass[c] != clsPlain {
						want = i
						break
					}
				}
				m := stringSpecials(binary.LittleEndian.Uint64(w))
				got := -1
				if m != 0 {
					got = bits.TrailingZeros64(m) >> 3
				}
				require.Equal(t, want, got, "word %q", w)
			}
		}
	}
}

// printableRef is the plain definition that printable's word-at-a-time loop
// must agree with.
func printableRef(s string) bool {
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

func TestPrintableMatchesDefinition(t *testing.T) {
	for n := 0; n <= 17; n++ {
		for pos := 0; pos < n; pos++ {
			for b := 0; b < 256; b++ {
				s := []byte(strings.Repeat("a", n))
				s[pos] = byte(b)
				require.Equal(t, printableRef(string(s)), printable(string(s)), "%q", s)
			}
		}
	}
	for _, s := range []string{"", "héllo wörld 12345", "abcdefgh\xc3", "abcdefghé\x7f", "abcdefgh\u2028", "\U0001F600abcdefgh\x01"} {
		assert.Equal(t, printableRef(s), printable(s), "%q", s)
	}
}

func TestParseInt64MatchesStrconv(t *testing.T) {
	var inputs []string
	for _, base := range []string{"9223372036854775807", "9223372036854775808", "18446744073709551615",
		"18446744073709551616", "20000000000000000000", "99999999999999999999", "922337203685477580", "0", "1"} {
		for _, s := range []string{base, base + "0", base + "9", base[:len(base)-1]} {
			if s != "" { // parseInt64 takes a scanned JSON integer
				inputs = append(inputs, s, "-"+s)
			}
		}
	}
	for _, s := range inputs {
		want, err := strconv.ParseInt(s, 10, 64)
		got, ok := parseInt64([]byte(s))
		require.Equal(t, err == nil, ok, s)
		if ok {
			assert.Equal(t, want, got, s)
		}
	}
}

// checkPayloadCases are payloads for CheckPayload: JSON values of every
// kind, with whitespace, and what json.Valid refuses.
var checkPayloadCases = []string{
	`1`, `-0.5e+3`, `"s"`, `"\u00e9\ud83d\ude00"`, "\"\xff\"", `true`, `false`, `null`, `[]`, `{}`,
	` {"a":[1,"x",{"b":null}]} `, "\t[ 1 , 2 ]\r\n", `{"k":"v","k":1}`,
	``, ` `, `1 2`, `[1,]`, `{"a":1,}`, `{"a"}`, `"\x"`, `nul`, `-`, `01`, `1.`, `1e`, `+1`, `.5`,
	`"unterminated`, "\"ctl\x01\"", `[`, `]`, `{"a":1}}`, `[1]x`, `'s'`, `NaN`,
	nested(100), nested(maxNestingDepth - 1),
}

func TestCheckPayloadMatchesJSONValid(t *testing.T) {
	for _, p := range checkPayloadCases {
		err := CheckPayload([]byte(p))
		if json.Valid([]byte(p)) {
			assert.NoError(t, err, "payload %q", p)
			continue
		}
		if assert.Error(t, err, "payload %q", p) {
			assert.ErrorIs(t, err, ErrBadFrame)
			assert.Contains(t, err.Error(), "payload is not valid JSON", "payload %q", p)
		}
	}
	err := CheckPayload([]byte(`{"a":[1,2}`))
	assert.EqualError(t, err, "mq: malformed frame: payload is not valid JSON: expected ',' or the end of an array or object at byte 9")
}

// A payload is refused when the frame carrying it would nest too deep for
// a receiver to decode it; one level less is accepted, and decodes.
func TestCheckPayloadBoundsNestingDepth(t *testing.T) {
	err := CheckPayload([]byte(nested(maxNestingDepth)))
	require.ErrorIs(t, err, ErrBadFrame)
	assert.Contains(t, err.Error(), fmt.Sprintf("payload nests deeper than %d levels", maxNestingDepth-1))

	p := nested(maxNestingDepth - 1)
	require.NoError(t, CheckPayload([]byte(p)))
	f := Frame{Type: TypeMsg, ID: "a", Seq: 1, Topic: "t", Payload: json.RawMessage(p)}
	line := AppendFrame(nil, &f)
	_, err = DecodeFrame(line[:len(line)-1])
	assert.NoError(t, err)
}

func FuzzCheckPayload(f *testing.F) {
	for _, p := range checkPayloadCases {
		f.Add([]byte(p))
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		err := CheckPayload(p)
		if errors.Is(err, ErrBadFrame) && strings.Contains(err.Error(), "nests deeper") {
			return // the documented difference
		}
		if (err == nil) != json.Valid(p) {
			t.Fatalf("payload %q: CheckPayload %v, json.Valid %v", p, err, json.Valid(p))
		}
	})
}
