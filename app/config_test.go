package app

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const testPeerAddr = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWGzxzKZYveHXtpG6AsrUJBcWxHBFS2HsEoGTxrMLvKXtf"

func TestDefaultConfigIsValidAndMatchesSpec(t *testing.T) {
	c := DefaultConfig()
	require.NoError(t, c.Validate())
	assert.Equal(t, filepath.Join("data", "identity.key"), c.Identity.KeyFile)
	assert.Equal(t, "site", c.Paths.SiteRoot)
	assert.Equal(t, 0, c.P2P.ListenPort)
	assert.Equal(t, "goop-mdns", c.P2P.MDNSTag)
	assert.Equal(t, 800, c.P2P.MaxConnections)
	assert.Equal(t, 20, c.Presence.TTLSeconds)
	assert.Equal(t, 5, c.Presence.HeartbeatSeconds)
	assert.Equal(t, 8787, c.Presence.RendezvousPort)
	assert.Equal(t, "127.0.0.1", c.Presence.RendezvousBind)
	assert.Equal(t, "127.0.0.1:8080", c.Viewer.HTTPAddr)
	assert.Equal(t, "oneshot", c.Viewer.ClusterBinaryMode)
	assert.Equal(t, "sqlite", c.Storage.Driver)
}

func TestParseConfigKeepsDefaultsForMissingKeys(t *testing.T) {
	c, err := ParseConfig([]byte(`{"profile":{"label":"alice"},"p2p":{"listen_port":4001,"peers":["` + testPeerAddr + `"]}}`))
	require.NoError(t, err)
	assert.Equal(t, "alice", c.Profile.Label)
	assert.Equal(t, 4001, c.P2P.ListenPort)
	assert.Equal(t, []string{testPeerAddr}, c.P2P.Peers)
	assert.Equal(t, "goop-mdns", c.P2P.MDNSTag, "missing key keeps its default")
	assert.Equal(t, "127.0.0.1:8080", c.Viewer.HTTPAddr)
	assert.Equal(t, 20, c.Presence.TTLSeconds)
}

func TestParseConfigAcceptsEveryKey(t *testing.T) {
	full := `{
  "profile": {"label": "bob"},
  "identity": {"key_file": "keys/id.key"},
  "paths": {"site_root": "www"},
  "p2p": {"listen_port": 4001, "mdns_tag": "my-lan", "peers": [], "max_connections": 2000},
  "presence": {"ttl_seconds": 30, "heartbeat_seconds": 10, "rendezvous_host": true,
    "rendezvous_port": 9000, "rendezvous_bind": "0.0.0.0", "rendezvous_wan": "https://rv.example.org",
    "rendezvous_only": true, "admin_password": "s3cret", "external_url": "http://203.0.113.5:9000"},
  "viewer": {"http_addr": "localhost:8081", "cluster_binary_path": "/bin/exec", "cluster_binary_mode": "daemon"},
  "storage": {"driver": "postgres", "dsn": "postgres://u@127.0.0.1:5432/goop?sslmode=disable"}
}`
	c, err := ParseConfig([]byte(full))
	require.NoError(t, err)
	assert.Equal(t, "bob", c.Profile.Label)
	assert.Equal(t, "keys/id.key", c.Identity.KeyFile)
	assert.Equal(t, "www", c.Paths.SiteRoot)
	assert.Equal(t, "my-lan", c.P2P.MDNSTag)
	assert.Equal(t, 2000, c.P2P.MaxConnections)
	assert.True(t, c.Presence.RendezvousHost)
	assert.True(t, c.Presence.RendezvousOnly)
	assert.Equal(t, 9000, c.Presence.RendezvousPort)
	assert.Equal(t, "s3cret", c.Presence.AdminPassword)
	assert.Equal(t, "daemon", c.Viewer.ClusterBinaryMode)
	assert.Equal(t, "postgres", c.Storage.Driver)

	// Every key of the struct appears in the full document: a new field
	// without a test here fails.
	var doc map[string]map[string]any
	require.NoError(t, json.Unmarshal([]byte(full), &doc))
	enc, err := json.Marshal(DefaultConfig())
	require.NoError(t, err)
	var def map[string]map[string]any
	require.NoError(t, json.Unmarshal(enc, &def))
	for sec, keys := range def {
		for k := range keys {
			assert.Contains(t, doc[sec], k, "test document lacks %s.%s", sec, k)
		}
	}
}

func TestParseConfigErrorsNameTheKey(t *testing.T) {
	cases := []struct {
		name string
		doc  string
		want string
	}{
		{"unknown top-level key", `{"prfile":{}}`, `goop.json: unknown key "prfile" (did you mean "profile"?)`},
		{"unknown nested key", `{"p2p":{"listen_prot":1}}`, `goop.json: unknown key "p2p.listen_prot" (did you mean "p2p.listen_port"?)`},
		{"unknown key without suggestion", `{"viewer":{"zzzzzzzzzz":1}}`, `goop.json: unknown key "viewer.zzzzzzzzzz"`},
		{"unknown key after known ones", `{"profile":{"label":"a"},"presence":{"ttl_seconds":20,"bogus":true}}`, `unknown key "presence.bogus"`},
		{"port too large", `{"p2p":{"listen_port":70000}}`, `goop.json: p2p.listen_port: 70000 is not a port (0-65535)`},
		{"negative port", `{"p2p":{"listen_port":-1}}`, `p2p.listen_port: -1 is not a port (0-65535)`},
		{"port of wrong type", `{"p2p":{"listen_port":"4001"}}`, `goop.json: p2p.listen_port: must be an integer, not string`},
		{"fractional port", `{"p2p":{"listen_port":1.5}}`, `p2p.listen_port: must be an integer`},
		{"bool of wrong type", `{"presence":{"rendezvous_host":"yes"}}`, `presence.rendezvous_host: must be true or false, not string`},
		{"peers not an array", `{"p2p":{"peers":"x"}}`, `p2p.peers: must be an array`},
		{"section not an object", `{"viewer":3}`, `viewer: must be an object, not number`},
		{"not an object", `[1]`, `goop.json: must be a JSON object, not array`},
		{"syntax error", "{\n  \"p2p\": {,}\n}", `goop.json: line 2, column 11: invalid character ','`},
		{"truncated", `{"p2p":{`, `goop.json: unexpected end of JSON`},
		{"trailing data", `{} {}`, `goop.json: trailing data after the JSON object`},
		{"empty file", ``, `goop.json: unexpected end of JSON`},
		{"label too long", `{"profile":{"label":"` + strings.Repeat("x", MaxLabelBytes+1) + `"}}`, `profile.label: longer than 256 bytes`},
		{"label with control char", `{"profile":{"label":"a\u0007b"}}`, `profile.label: must be printable`},
		{"empty key file", `{"identity":{"key_file":""}}`, `identity.key_file: must not be empty`},
		{"empty site root", `{"paths":{"site_root":""}}`, `paths.site_root: must not be empty`},
		{"empty mdns tag", `{"p2p":{"mdns_tag":""}}`, `p2p.mdns_tag: "" must be 1-63`},
		{"mdns tag with space", `{"p2p":{"mdns_tag":"a b"}}`, `p2p.mdns_tag: "a b" must be`},
		{"peer not a multiaddr", `{"p2p":{"peers":["` + testPeerAddr + `","tcp://1.2.3.4"]}}`, `p2p.peers[1]: "tcp://1.2.3.4" is not a multiaddr`},
		{"peer without p2p", `{"p2p":{"peers":["/ip4/1.2.3.4/tcp/1"]}}`, `p2p.peers[0]: "/ip4/1.2.3.4/tcp/1" does not end in /p2p/<peer id>`},
		{"too few connections", `{"p2p":{"max_connections":8}}`, `p2p.max_connections: 8 is not between 16 and 65536`},
		{"too many connections", `{"p2p":{"max_connections":100000}}`, `p2p.max_connections: 100000 is not between 16 and 65536`},
		{"zero ttl", `{"presence":{"ttl_seconds":0}}`, `presence.ttl_seconds: 0 is not between 1 and 86400`},
		{"zero heartbeat", `{"presence":{"heartbeat_seconds":0}}`, `presence.heartbeat_seconds: 0 is not between 1 and 86400`},
		{"heartbeat not below ttl", `{"presence":{"ttl_seconds":5,"heartbeat_seconds":5}}`, `presence.heartbeat_seconds: 5 must be less than presence.ttl_seconds (5)`},
		{"rendezvous port", `{"presence":{"rendezvous_port":65536}}`, `presence.rendezvous_port: 65536 is not a port (0-65535)`},
		{"rendezvous bind hostname", `{"presence":{"rendezvous_bind":"example.org"}}`, `presence.rendezvous_bind: "example.org" is not an IP address`},
		{"rendezvous wan not a url", `{"presence":{"rendezvous_wan":"192.168.1.50:8787"}}`, `presence.rendezvous_wan: "192.168.1.50:8787" is not an http:// or https:// URL`},
		{"rendezvous wan ftp", `{"presence":{"rendezvous_wan":"ftp://x"}}`, `presence.rendezvous_wan:`},
		{"rendezvous only without host", `{"presence":{"rendezvous_only":true}}`, `presence.rendezvous_only: requires presence.rendezvous_host to be true`},
		{"external url", `{"presence":{"external_url":"nope"}}`, `presence.external_url: "nope" is not an http`},
		{"viewer on all interfaces", `{"viewer":{"http_addr":"0.0.0.0:8080"}}`, `viewer.http_addr: "0.0.0.0:8080" is not a loopback address`},
		{"viewer on empty host", `{"viewer":{"http_addr":":8080"}}`, `viewer.http_addr: ":8080" is not a loopback address`},
		{"viewer on lan ip", `{"viewer":{"http_addr":"192.168.1.2:8080"}}`, `viewer.http_addr: "192.168.1.2:8080" is not a loopback`},
		{"viewer on public name", `{"viewer":{"http_addr":"example.org:8080"}}`, `viewer.http_addr: "example.org:8080" is not a loopback`},
		{"viewer on localhost look-alike", `{"viewer":{"http_addr":"localhost.example.org:8080"}}`, `viewer.http_addr:`},
		{"viewer without port", `{"viewer":{"http_addr":"127.0.0.1"}}`, `viewer.http_addr: "127.0.0.1" is not host:port`},
		{"viewer bad port", `{"viewer":{"http_addr":"127.0.0.1:99999"}}`, `viewer.http_addr: 99999 is not a port`},
		{"viewer port not a number", `{"viewer":{"http_addr":"127.0.0.1:http"}}`, `viewer.http_addr: "127.0.0.1:http": port "http" is not a number`},
		{"binary mode", `{"viewer":{"cluster_binary_mode":"forever"}}`, `viewer.cluster_binary_mode: "forever" is not "oneshot" or "daemon"`},
		{"storage driver", `{"storage":{"driver":"mysql"}}`, `storage.driver: "mysql" is not "sqlite" or "postgres"`},
		{"postgres without dsn", `{"storage":{"driver":"postgres"}}`, `storage.dsn: required when storage.driver is "postgres"`},
		{"postgres with file dsn", `{"storage":{"driver":"postgres","dsn":"data/x.db"}}`, `storage.dsn: must be a postgres:// URL`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.doc))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestParseConfigAcceptsLoopbackViewerAddrs(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:8080", "127.0.0.2:1", "[::1]:8080", "localhost:0", "LOCALHOST:80", "goop.localhost:8080"} {
		t.Run(addr, func(t *testing.T) {
			_, err := ParseConfig([]byte(`{"viewer":{"http_addr":"` + addr + `"}}`))
			assert.NoError(t, err)
		})
	}
}

func TestIsLoopbackHost(t *testing.T) {
	cases := map[string]bool{
		"localhost": true, "localhost.": true, "a.localhost": true, "127.0.0.1": true, "127.9.9.9": true, "::1": true,
		"": false, "0.0.0.0": false, "::": false, "10.0.0.1": false, "evil.com": false, "localhost.evil.com": false,
		"127.0.0.1.nip.io": false, "::ffff:10.0.0.1": false,
	}
	for host, want := range cases {
		assert.Equal(t, want, IsLoopbackHost(host), host)
	}
}

func TestLoadConfigNamesTheFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, ConfigFileName)
	require.NoError(t, os.WriteFile(path, []byte(`{"p2p":{"listen_prot":1}}`), 0o600))
	_, err := LoadConfig(path)
	require.Error(t, err)
	assert.Contains(t, err.Error(), path+`: unknown key "p2p.listen_prot"`)
	var ce *ConfigError
	require.True(t, errors.As(err, &ce))
	assert.Equal(t, path, ce.File)

	_, err = LoadConfig(filepath.Join(dir, "missing.json"))
	require.Error(t, err)
	assert.True(t, errors.Is(err, os.ErrNotExist))

	big := filepath.Join(dir, "big.json")
	require.NoError(t, os.WriteFile(big, []byte(`{"profile":{"label":"`+strings.Repeat(" ", MaxConfigBytes)+`"}}`), 0o600))
	_, err = LoadConfig(big)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "larger than")
}

func TestSaveConfigRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, ConfigFileName)
	c := DefaultConfig()
	c.Profile.Label = "carol"
	c.P2P.Peers = []string{testPeerAddr}
	c.Presence.AdminPassword = "pw"
	require.NoError(t, SaveConfig(path, c))

	st, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "config may hold a password")
	got, err := LoadConfig(path)
	require.NoError(t, err)
	assert.Equal(t, c, got)

	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 1, "no temp file left behind")

	bad := DefaultConfig()
	bad.Viewer.HTTPAddr = "0.0.0.0:80"
	err = SaveConfig(path, bad)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "viewer.http_addr")
	got, err = LoadConfig(path)
	require.NoError(t, err)
	assert.Equal(t, "carol", got.Profile.Label, "an invalid config does not replace the file")
}

func TestConfigPaths(t *testing.T) {
	c := DefaultConfig()
	assert.Equal(t, filepath.Join("/peer", "data", "data.db"), c.SQLitePath("/peer"))
	c.Storage.DSN = "/var/goop.db"
	assert.Equal(t, "/var/goop.db", c.SQLitePath("/peer"))
	assert.Equal(t, filepath.Join("/peer", "site"), Resolve("/peer", c.Paths.SiteRoot))
}
