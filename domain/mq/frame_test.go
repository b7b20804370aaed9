package mq

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestAppendFrameMatchesCompatWireFormat(t *testing.T) {
	cases := []struct {
		name string
		f    Frame
		want string
	}{
		{"compat msg", Frame{Type: TypeMsg, ID: "6f1c", Seq: 7, Topic: "chat", Payload: json.RawMessage(`{"text":"hi"}`)},
			`{"type":"msg","id":"6f1c","seq":7,"topic":"chat","payload":{"text":"hi"}}` + "\n"},
		{"ack is exactly type id seq", Frame{Type: TypeAck, ID: "6f1c", Seq: 7, Topic: "ignored", Epoch: "e"},
			`{"type":"ack","id":"6f1c","seq":7}` + "\n"},
		{"ours adds origin epoch floor", Frame{Type: TypeMsg, ID: "x", Seq: 2, Topic: "group:ab:msg", Payload: json.RawMessage(`[1]`), Origin: "12D3K", Epoch: "ep", Floor: 2},
			`{"type":"msg","id":"x","seq":2,"topic":"group:ab:msg","payload":[1],"origin":"12D3K","epoch":"ep","floor":2}` + "\n"},
		{"nil payload is null", Frame{Type: TypeMsg, ID: "x", Seq: 1, Topic: "t"},
			`{"type":"msg","id":"x","seq":1,"topic":"t","payload":null}` + "\n"},
		{"multi-line payload compacted", Frame{Type: TypeMsg, ID: "x", Seq: 1, Topic: "t", Payload: json.RawMessage("{\n \"a\": 1\n}")},
			`{"type":"msg","id":"x","seq":1,"topic":"t","payload":{"a":1}}` + "\n"},
		{"topic escaped", Frame{Type: TypeMsg, ID: "x", Seq: 1, Topic: `a"b<`, Payload: json.RawMessage(`1`)},
			`{"type":"msg","id":"x","seq":1,"topic":"a\"b\u003c","payload":1}` + "\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := string(AppendFrame(nil, &tc.f))
			assert.Equal(t, tc.want, got)
			back, err := DecodeFrame([]byte(strings.TrimSuffix(got, "\n")))
			require.NoError(t, err)
			assert.Equal(t, tc.f.Type, back.Type)
			assert.Equal(t, tc.f.ID, back.ID)
		})
	}
}

func TestDecodeFrameAcceptsGoop2Lines(t *testing.T) {
	// Unknown fields from other implementations are ignored; field order is free.
	f, err := DecodeFrame([]byte(`{"payload":{"x":1},"topic":"group:0123456789abcdef:join","seq":1,"id":"a-b","type":"msg","extra":true}`))
	require.NoError(t, err)
	assert.Equal(t, "group:0123456789abcdef:join", f.Topic)
	assert.JSONEq(t, `{"x":1}`, string(f.Payload))
	f, err = DecodeFrame([]byte(`{"type":"msg","id":"a","seq":1,"topic":"t"}`))
	require.NoError(t, err)
	assert.Equal(t, "null", string(f.Payload), "a missing payload decodes as null")
}

func TestDecodeFrameRejectsBadInput(t *testing.T) {
	cases := []struct {
		name string
		line string
		want error
	}{
		{"garbage", "\x00\x01garbage", ErrBadFrame},
		{"truncated", `{"type":"msg","id":"a","seq":1,"topic":"t","payl`, ErrBadFrame},
		{"not an object", `[1,2,3]`, ErrBadFrame},
		{"unknown type", `{"type":"nope","id":"a","seq":1}`, ErrBadFrame},
		{"missing id", `{"type":"msg","seq":1,"topic":"t","payload":1}`, ErrBadFrame},
		{"missing topic", `{"type":"msg","id":"a","seq":1,"payload":1}`, ErrBadFrame},
		{"two objects", `{"type":"ack","id":"a","seq":1}{"type":"ack","id":"b","seq":2}`, ErrBadFrame},
		{"negative seq", `{"type":"msg","id":"a","seq":-1,"topic":"t","payload":1}`, ErrBadFrame},
		{"id too long", `{"type":"ack","id":"` + strings.Repeat("i", MaxIDBytes+1) + `","seq":1}`, ErrBadFrame},
		{"topic too long", `{"type":"msg","id":"a","seq":1,"topic":"` + strings.Repeat("t", MaxTopicBytes+1) + `","payload":1}`, ErrBadFrame},
		{"payload too large", `{"type":"msg","id":"a","seq":1,"topic":"t","payload":"` + strings.Repeat("p", MaxPayloadBytes) + `"}`, ErrPayloadTooLarge},
		{"line too long", strings.Repeat(" ", MaxLineBytes+1), ErrBadFrame},
		{"NUL in epoch", `{"type":"msg","id":"a","seq":1,"topic":"t","payload":1,"epoch":"\u0000"}`, ErrBadFrame},
		{"control char in id", `{"type":"ack","id":"a\nb","seq":1}`, ErrBadFrame},
		{"control char in origin", `{"type":"msg","id":"a","seq":1,"topic":"t","payload":1,"origin":"\u0007"}`, ErrBadFrame},
		{"seq not a number", `{"type":"msg","id":"a","seq":"1","topic":"t","payload":1}`, ErrBadFrame},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeFrame([]byte(tc.line))
			assert.ErrorIs(t, err, tc.want)
		})
	}
}

func TestValidateRejectsInvalidUTF8Identifiers(t *testing.T) {
	for _, f := range []Frame{
		{Type: TypeAck, ID: "\xff", Seq: 1},
		{Type: TypeMsg, ID: "a", Topic: "t", Epoch: "\xfe"},
		{Type: TypeMsg, ID: "a", Topic: "t", Origin: "\xc3"},
		{Type: TypeMsg, ID: "a", Topic: "\xff"},
	} {
		assert.ErrorIs(t, f.Validate(), ErrBadFrame, "%+v", f)
	}
}

func FuzzDecodeFrame(f *testing.F) {
	f.Add([]byte(`{"type":"msg","id":"a","seq":1,"topic":"t","payload":{}}`))
	f.Add([]byte(`{"type":"ack","id":"a","seq":1}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		fr, err := DecodeFrame(line)
		if err != nil {
			return
		}
		// Whatever decodes must re-encode to a line that decodes the same.
		again, err := DecodeFrame([]byte(strings.TrimSuffix(string(AppendFrame(nil, &fr)), "\n")))
		require.NoError(t, err)
		assert.Equal(t, fr.ID, again.ID)
		assert.Equal(t, fr.Topic, again.Topic)
	})
}

func TestAsksReceived(t *testing.T) {
	m := Frame{Type: TypeMsg, ID: "m", Seq: 7, Epoch: "e", Want: StageReceived}
	assert.True(t, m.AsksReceived())
	assert.Equal(t, Frame{Type: TypeAck, ID: "m", Seq: 7, Stage: StageReceived}, ReceivedAckFor(&m))
	for name, f := range map[string]Frame{
		"no want":           {Type: TypeMsg, ID: "m", Seq: 7, Epoch: "e"},
		"no epoch (compat)": {Type: TypeMsg, ID: "m", Seq: 7, Want: StageReceived},
		"an ack":            {Type: TypeAck, ID: "m", Seq: 7, Epoch: "e", Want: StageReceived},
	} {
		assert.False(t, f.AsksReceived(), name)
	}
}

// Strings in frames are encoded as encoding/json encodes them, byte for
// byte: every single byte, and strings around them.
func TestAppendJSONStringMatchesEncodingJSON(t *testing.T) {
	for c := 0; c < 256; c++ {
		for _, s := range []string{string([]byte{byte(c)}), "id-" + string([]byte{byte(c)}) + "-x"} {
			want, err := json.Marshal(s)
			require.NoError(t, err)
			assert.Equal(t, string(want), string(appendJSONString(nil, s)), "byte %#x", c)
		}
	}
	// Longer strings, eight bytes at a time: each byte at each place.
	for c := 0; c < 256; c++ {
		for at := 0; at < 24; at += 5 {
			b := []byte("0123456789abcdef-ghijklmnopqrstuv")
			b[at] = byte(c)
			want, _ := json.Marshal(string(b))
			assert.Equal(t, string(want), string(appendJSONString(nil, string(b))), "byte %#x at %d", c, at)
		}
	}
	for _, s := range []string{"", "msg", "é", "a\u2028b", "<script>", `q"b\s`} {
		want, _ := json.Marshal(s)
		assert.Equal(t, string(want), string(appendJSONString([]byte("x"), s))[1:])
	}
}
