package presence

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	alice PeerID = "12D3KooWAlice"
	bob   PeerID = "12D3KooWBob"
	carol PeerID = "12D3KooWCarol"
	me    PeerID = "12D3KooWSelf"
)

func validMsg() Msg {
	return Msg{Type: TypeOnline, PeerID: alice, Content: "Alice ☕", Email: "a@example.com", AvatarHash: "abc",
		ActiveTemplate: "blog", Addrs: []string{"/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.1/udp/4001/quic-v1/p2p/12D3KooWAlice"},
		PublicKey: "pk", EncryptionSupported: true, GoopClientVersion: "0.1.0", TS: 1_700_000_000_000}
}

func TestValidate(t *testing.T) {
	manyAddrs := make([]string, MaxAddrs+1)
	for i := range manyAddrs {
		manyAddrs[i] = "/ip4/10.0.0.1/tcp/1"
	}
	tests := []struct {
		name   string
		mutate func(m *Msg)
		errHas string // "" = valid
	}{
		{"valid online", func(*Msg) {}, ""},
		{"valid update", func(m *Msg) { m.Type = TypeUpdate }, ""},
		{"valid offline with nothing else", func(m *Msg) { *m = Msg{Type: TypeOffline, PeerID: alice, TS: 1} }, ""},
		{"content at the limit", func(m *Msg) { m.Content = strings.Repeat("x", MaxContentBytes) }, ""},
		{"twenty addrs", func(m *Msg) { m.Addrs = manyAddrs[:MaxAddrs] }, ""},
		{"addr at the limit", func(m *Msg) { m.Addrs = []string{"/" + strings.Repeat("a", MaxAddrBytes-1)} }, ""},
		{"peer id at the limit", func(m *Msg) { m.PeerID = PeerID(strings.Repeat("Q", MaxPeerIDBytes)) }, ""},
		{"unknown type", func(m *Msg) { m.Type = "punch" }, "type"},
		{"empty type", func(m *Msg) { m.Type = "" }, "type"},
		{"missing peer id", func(m *Msg) { m.PeerID = "" }, "missing peerId"},
		{"peer id too long", func(m *Msg) { m.PeerID = PeerID(strings.Repeat("Q", MaxPeerIDBytes+1)) }, "peerId is 257 bytes"},
		{"peer id with a slash", func(m *Msg) { m.PeerID = "12D3/x" }, "letter or digit"},
		{"peer id with a NUL", func(m *Msg) { m.PeerID = "12D3\x00" }, "letter or digit"},
		{"content too long", func(m *Msg) { m.Content = strings.Repeat("x", MaxContentBytes+1) }, "content is 4097 bytes"},
		{"content with a newline", func(m *Msg) { m.Content = "a\nb" }, "content is not printable"},
		{"content with a C1 control", func(m *Msg) { m.Content = "a\u0085b" }, "content is not printable"},
		{"content with DEL", func(m *Msg) { m.Content = "a\x7f" }, "content is not printable"},
		{"content not UTF-8", func(m *Msg) { m.Content = "a\xffb" }, "content is not printable"},
		{"email too long", func(m *Msg) { m.Email = strings.Repeat("e", MaxEmailBytes+1) }, "email"},
		{"avatar hash with a tab", func(m *Msg) { m.AvatarHash = "a\tb" }, "avatarHash"},
		{"template too long", func(m *Msg) { m.ActiveTemplate = strings.Repeat("t", MaxTemplateBytes+1) }, "activeTemplate"},
		{"public key too long", func(m *Msg) { m.PublicKey = strings.Repeat("k", MaxPublicKeyBytes+1) }, "publicKey"},
		{"version too long", func(m *Msg) { m.GoopClientVersion = strings.Repeat("v", MaxVersionBytes+1) }, "goopClientVersion"},
		{"21 addrs", func(m *Msg) { m.Addrs = manyAddrs }, "21 addrs"},
		{"addr too long", func(m *Msg) { m.Addrs = []string{"/" + strings.Repeat("a", MaxAddrBytes)} }, "addrs[0]"},
		{"addr without a slash", func(m *Msg) { m.Addrs = []string{"ip4/1.2.3.4"} }, "addrs[0]"},
		{"addr with a space", func(m *Msg) { m.Addrs = []string{"/ip4/1.2.3.4 /tcp/1"} }, "addrs[0]"},
		{"addr not ASCII", func(m *Msg) { m.Addrs = []string{"/dns/é.local"} }, "addrs[0]"},
		{"a signature", func(m *Msg) { m.Sig = strings.Repeat("A", 86) + "==" }, ""},
		{"sig too long", func(m *Msg) { m.Sig = strings.Repeat("A", MaxSigBytes+4) }, "sig is 260 bytes"},
		{"sig not base64", func(m *Msg) { m.Sig = "not base64!" }, "sig is not base64"},
		{"sig with bad padding", func(m *Msg) { m.Sig = "A===" }, "sig is not base64"},
		{"sig unpadded", func(m *Msg) { m.Sig = "AAA" }, "sig is not base64"},
		{"zero ts", func(m *Msg) { m.TS = 0 }, "ts 0"},
		{"negative ts", func(m *Msg) { m.TS = -5 }, "ts -5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := validMsg()
			tt.mutate(&m)
			err := m.Validate()
			if tt.errHas == "" {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrInvalid)
			assert.Contains(t, err.Error(), tt.errHas)
		})
	}
}

func TestEncodeUsesCompatFieldNames(t *testing.T) {
	m := validMsg()
	var got map[string]any
	require.NoError(t, json.Unmarshal(m.Encode(), &got))
	for _, k := range []string{"type", "peerId", "content", "email", "avatarHash", "activeTemplate", "addrs",
		"publicKey", "encryptionSupported", "goopClientVersion", "ts"} {
		assert.Contains(t, got, k)
	}
	m.Sig = "c2ln"
	require.NoError(t, json.Unmarshal(m.Encode(), &got))
	assert.Equal(t, "c2ln", got["sig"])
	// Empty optional fields are left out, as Goop2 does; type, peerId and ts never are.
	min := Msg{Type: TypeOffline, PeerID: alice, TS: 7}
	assert.JSONEq(t, `{"type":"offline","peerId":"12D3KooWAlice","ts":7}`, string(min.Encode()))
}

func TestDecode(t *testing.T) {
	m := validMsg()
	tests := []struct {
		name   string
		in     []byte
		errHas string
	}{
		{"round trip", m.Encode(), ""},
		{"compat fields are ignored", []byte(`{"type":"update","peerId":"12D3KooWAlice","videoDisabled":true,"target":"x","verificationToken":"t","ts":5}`), ""},
		{"not JSON", []byte(`{"type":`), "bad JSON"},
		{"wrong field type", []byte(`{"type":"online","peerId":"12D3KooWAlice","ts":"soon"}`), "bad JSON"},
		{"oversize", []byte(`{"content":"` + strings.Repeat("x", MaxMsgBytes) + `"}`), "bytes (max"},
		{"invalid after decoding", []byte(`{"type":"online","peerId":"","ts":5}`), "missing peerId"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode(tt.in)
			if tt.errHas == "" {
				require.NoError(t, err)
				if tt.name == "round trip" {
					assert.Equal(t, m, got)
				}
				return
			}
			assert.ErrorIs(t, err, ErrInvalid)
			assert.ErrorContains(t, err, tt.errHas)
			assert.Equal(t, Msg{}, got)
		})
	}
}

func TestPrintable(t *testing.T) {
	for s, want := range map[string]bool{
		"":                     true,
		"Alice":                true,
		"Zoë 🎉 日本":             true,
		"tab\there":            false,
		"nul\x00":              false,
		"bad \xc3":             false,
		"c1 \u009b":            false,
		"rune error \ufffd ok": true,
	} {
		assert.Equal(t, want, Printable(s), "%q", s)
	}
}
