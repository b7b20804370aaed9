package app

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	ma "github.com/multiformats/go-multiaddr"
)

// ConfigFileName is the name of a peer folder's config file (SPEC §8).
const ConfigFileName = "goop.json"

// Config limits.
const (
	// MaxConfigBytes bounds the size of goop.json.
	MaxConfigBytes = 1 << 20
	// MaxLabelBytes bounds profile.label.
	MaxLabelBytes = 256
	// MaxStaticPeers bounds p2p.peers.
	MaxStaticPeers = 256
)

// Executor modes of viewer.cluster_binary_mode (SPEC §5).
const (
	BinaryModeOneshot = "oneshot"
	BinaryModeDaemon  = "daemon"
)

// Storage drivers of storage.driver.
const (
	StorageSQLite   = "sqlite"
	StoragePostgres = "postgres"
)

// Config is a peer folder's goop.json (SPEC §8, plus storage.*). Relative
// paths in it are relative to the peer folder (see Config.Resolve). The zero
// value is not valid; start from DefaultConfig.
type Config struct {
	Profile  ProfileConfig  `json:"profile"`
	Identity IdentityConfig `json:"identity"`
	Paths    PathsConfig    `json:"paths"`
	P2P      P2PConfig      `json:"p2p"`
	Presence PresenceConfig `json:"presence"`
	Viewer   ViewerConfig   `json:"viewer"`
	Storage  StorageConfig  `json:"storage"`
}

// ProfileConfig is how the peer presents itself.
type ProfileConfig struct {
	// Label is the peer's display name (presence `content`).
	Label string `json:"label"`
}

// IdentityConfig locates the peer's private key.
type IdentityConfig struct {
	// KeyFile holds the libp2p Ed25519 private key (created on first start).
	KeyFile string `json:"key_file"`
}

// PathsConfig locates the peer's folders.
type PathsConfig struct {
	// SiteRoot is the folder served as the peer's website.
	SiteRoot string `json:"site_root"`
}

// P2PConfig configures the libp2p node.
type P2PConfig struct {
	// ListenPort is the TCP and UDP (QUIC) port; 0 picks a free one.
	ListenPort int `json:"listen_port"`
	// MDNSTag is the mDNS service tag: peers with the same tag find each other on a LAN.
	MDNSTag string `json:"mdns_tag"`
	// Peers are static peers (multiaddrs ending in /p2p/<peer id>) connected at start.
	Peers []string `json:"peers"`
	// MaxConnections is how many libp2p connections the node keeps: above
	// it, connections to peers the bus does not talk to are closed down to
	// half of it; the resource manager admits at least as many.
	MaxConnections int `json:"max_connections"`
}

// Default and bounds of p2p.max_connections. The default is the libp2p
// adapter's own (p2p.DefaultConnMgrHigh, which app may not import; a test
// of cmd/goop/node keeps the two equal).
const (
	DefaultMaxConnections = 800
	MinMaxConnections     = 16
	MaxMaxConnections     = 65536
)

// PresenceConfig configures presence and the rendezvous server (SPEC §6).
type PresenceConfig struct {
	// TTLSeconds: a peer is offline after this long without a heartbeat.
	TTLSeconds int `json:"ttl_seconds"`
	// HeartbeatSeconds is the interval of our presence heartbeats.
	HeartbeatSeconds int `json:"heartbeat_seconds"`
	// RendezvousHost runs a rendezvous server in this peer.
	RendezvousHost bool `json:"rendezvous_host"`
	// RendezvousPort is the rendezvous server's port (0 picks a free one).
	RendezvousPort int `json:"rendezvous_port"`
	// RendezvousBind is the IP address the rendezvous server listens on.
	RendezvousBind string `json:"rendezvous_bind"`
	// RendezvousWAN is the URL of a rendezvous server to publish to (empty: none).
	RendezvousWAN string `json:"rendezvous_wan"`
	// RendezvousOnly runs only the rendezvous server, no libp2p node.
	RendezvousOnly bool `json:"rendezvous_only"`
	// AdminPassword opens the rendezvous /admin page (empty: admin closed).
	AdminPassword string `json:"admin_password"`
	// ExternalURL is the public URL shown on the rendezvous page.
	ExternalURL string `json:"external_url"`
}

// ViewerConfig configures the local viewer (HTTP API and UI).
type ViewerConfig struct {
	// HTTPAddr is the viewer's host:port; the host must be a loopback address
	// or name (the viewer drives the node and is never exposed).
	HTTPAddr string `json:"http_addr"`
	// ClusterBinaryPath is the cluster executor program (empty: not a worker).
	ClusterBinaryPath string `json:"cluster_binary_path"`
	// ClusterBinaryMode is oneshot (a process per job) or daemon.
	ClusterBinaryMode string `json:"cluster_binary_mode"`
}

// StorageConfig selects the database of the node's durable state.
type StorageConfig struct {
	// Driver is sqlite (default, data/data.db in the peer folder) or postgres.
	Driver string `json:"driver"`
	// DSN is the database: a file path for sqlite (empty: data/data.db), a
	// connection URL for postgres (required).
	DSN string `json:"dsn"`
}

// DefaultConfig returns the settings of a new peer folder (SPEC §8 defaults).
func DefaultConfig() Config {
	return Config{
		Identity: IdentityConfig{KeyFile: filepath.Join("data", "identity.key")},
		Paths:    PathsConfig{SiteRoot: "site"},
		P2P:      P2PConfig{ListenPort: 0, MDNSTag: "goop-mdns", Peers: []string{}, MaxConnections: DefaultMaxConnections},
		Presence: PresenceConfig{
			TTLSeconds:       20,
			HeartbeatSeconds: 5,
			RendezvousPort:   8787,
			RendezvousBind:   "127.0.0.1",
		},
		Viewer:  ViewerConfig{HTTPAddr: "127.0.0.1:8080", ClusterBinaryMode: BinaryModeOneshot},
		Storage: StorageConfig{Driver: StorageSQLite},
	}
}

// DefaultSQLitePath is the SQLite database of a peer folder when storage.dsn is empty.
var DefaultSQLitePath = filepath.Join("data", "data.db")

// Resolve returns p made absolute against the peer folder dir (p unchanged if
// already absolute).
func Resolve(dir, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

// SQLitePath returns the SQLite database file of the peer folder dir.
func (c *Config) SQLitePath(dir string) string {
	if c.Storage.DSN != "" {
		return Resolve(dir, c.Storage.DSN)
	}
	return Resolve(dir, DefaultSQLitePath)
}

// ConfigError is an invalid or unknown config value. Key is the dotted key
// path (e.g. "p2p.listen_port"); it is empty for errors of the whole file.
type ConfigError struct {
	File string
	Key  string
	Msg  string
}

func (e *ConfigError) Error() string {
	file := e.File
	if file == "" {
		file = ConfigFileName
	}
	if e.Key == "" {
		return file + ": " + e.Msg
	}
	return file + ": " + e.Key + ": " + e.Msg
}

func keyErr(key, format string, args ...any) *ConfigError {
	return &ConfigError{Key: key, Msg: fmt.Sprintf(format, args...)}
}

// Validate checks every value and returns the first problem as a
// *ConfigError naming its key.
func (c *Config) Validate() error {
	checks := []func() error{
		func() error {
			l := c.Profile.Label
			if len(l) > MaxLabelBytes {
				return keyErr("profile.label", "longer than %d bytes", MaxLabelBytes)
			}
			if !utf8.ValidString(l) || strings.ContainsFunc(l, isControl) {
				return keyErr("profile.label", "must be printable UTF-8 text")
			}
			return nil
		},
		func() error { return checkPath("identity.key_file", c.Identity.KeyFile) },
		func() error { return checkPath("paths.site_root", c.Paths.SiteRoot) },
		func() error { return checkPort("p2p.listen_port", c.P2P.ListenPort) },
		func() error {
			t := c.P2P.MDNSTag
			if t == "" || len(t) > 63 || strings.ContainsFunc(t, func(r rune) bool {
				return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.')
			}) {
				return keyErr("p2p.mdns_tag", "%q must be 1-63 letters, digits, '-', '_' or '.'", t)
			}
			return nil
		},
		func() error {
			if len(c.P2P.Peers) > MaxStaticPeers {
				return keyErr("p2p.peers", "more than %d peers", MaxStaticPeers)
			}
			for i, p := range c.P2P.Peers {
				if err := checkPeerAddr(p); err != nil {
					return keyErr(fmt.Sprintf("p2p.peers[%d]", i), "%v", err)
				}
			}
			return nil
		},
		func() error {
			if n := c.P2P.MaxConnections; n < MinMaxConnections || n > MaxMaxConnections {
				return keyErr("p2p.max_connections", "%d is not between %d and %d", n, MinMaxConnections, MaxMaxConnections)
			}
			return nil
		},
		func() error {
			if c.Presence.TTLSeconds < 1 || c.Presence.TTLSeconds > 86400 {
				return keyErr("presence.ttl_seconds", "%d is not between 1 and 86400", c.Presence.TTLSeconds)
			}
			return nil
		},
		func() error {
			h := c.Presence.HeartbeatSeconds
			if h < 1 || h > 86400 {
				return keyErr("presence.heartbeat_seconds", "%d is not between 1 and 86400", h)
			}
			if h >= c.Presence.TTLSeconds {
				return keyErr("presence.heartbeat_seconds", "%d must be less than presence.ttl_seconds (%d)", h, c.Presence.TTLSeconds)
			}
			return nil
		},
		func() error { return checkPort("presence.rendezvous_port", c.Presence.RendezvousPort) },
		func() error {
			if _, err := netip.ParseAddr(c.Presence.RendezvousBind); err != nil {
				return keyErr("presence.rendezvous_bind", "%q is not an IP address", c.Presence.RendezvousBind)
			}
			return nil
		},
		func() error { return checkURL("presence.rendezvous_wan", c.Presence.RendezvousWAN) },
		func() error {
			if c.Presence.RendezvousOnly && !c.Presence.RendezvousHost {
				return keyErr("presence.rendezvous_only", "requires presence.rendezvous_host to be true")
			}
			return nil
		},
		func() error { return checkURL("presence.external_url", c.Presence.ExternalURL) },
		func() error { return CheckLoopbackAddr("viewer.http_addr", c.Viewer.HTTPAddr) },
		func() error {
			switch c.Viewer.ClusterBinaryMode {
			case "", BinaryModeOneshot, BinaryModeDaemon:
				return nil
			}
			return keyErr("viewer.cluster_binary_mode", "%q is not %q or %q", c.Viewer.ClusterBinaryMode, BinaryModeOneshot, BinaryModeDaemon)
		},
		func() error {
			switch c.Storage.Driver {
			case StorageSQLite:
				return nil
			case StoragePostgres:
				if c.Storage.DSN == "" {
					return keyErr("storage.dsn", "required when storage.driver is %q", StoragePostgres)
				}
				u, err := url.Parse(c.Storage.DSN)
				if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
					return keyErr("storage.dsn", "must be a postgres:// URL")
				}
				return nil
			}
			return keyErr("storage.driver", "%q is not %q or %q", c.Storage.Driver, StorageSQLite, StoragePostgres)
		},
	}
	for _, check := range checks {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

func checkPath(key, p string) error {
	if p == "" {
		return keyErr(key, "must not be empty")
	}
	if strings.ContainsFunc(p, isControl) {
		return keyErr(key, "must not contain control characters")
	}
	return nil
}

func checkPort(key string, port int) error {
	if port < 0 || port > 65535 {
		return keyErr(key, "%d is not a port (0-65535)", port)
	}
	return nil
}

func checkURL(key, s string) error {
	if s == "" {
		return nil
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return keyErr(key, "%q is not an http:// or https:// URL", s)
	}
	return nil
}

// checkPeerAddr checks a static peer: a multiaddr that names the peer (/p2p/<id>).
func checkPeerAddr(s string) error {
	a, err := ma.NewMultiaddr(s)
	if err != nil {
		return fmt.Errorf("%q is not a multiaddr: %v", s, err)
	}
	if _, err := a.ValueForProtocol(ma.P_P2P); err != nil {
		return fmt.Errorf("%q does not end in /p2p/<peer id>", s)
	}
	return nil
}

// IsLoopbackHost reports whether host (a name or IP, without port or
// brackets) always designates this machine: localhost, *.localhost
// (RFC 6761) or a loopback IP.
func IsLoopbackHost(host string) bool {
	h := strings.ToLower(strings.TrimSuffix(host, "."))
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true
	}
	ip, err := netip.ParseAddr(h)
	return err == nil && ip.IsLoopback()
}

// CheckLoopbackAddr checks that addr is host:port with a loopback host and a
// port in 0-65535; errors name key.
func CheckLoopbackAddr(key, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return keyErr(key, "%q is not host:port", addr)
	}
	if !IsLoopbackHost(host) {
		return keyErr(key, "%q is not a loopback address (use 127.0.0.1, ::1 or localhost): the viewer controls the node and must not be reachable from the network", addr)
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		return keyErr(key, "%q: port %q is not a number", addr, port)
	}
	return checkPort(key, n)
}

// LoadConfig reads and validates the config file at path. Keys missing from
// the file keep their DefaultConfig values. Unknown keys, wrong types and
// invalid values are reported as *ConfigError naming the key path.
func LoadConfig(path string) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return Config{}, fmt.Errorf("load config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxConfigBytes+1))
	if err != nil {
		return Config{}, fmt.Errorf("load config %s: %w", path, err)
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		var ce *ConfigError
		if errors.As(err, &ce) {
			ce.File = path
		}
		return Config{}, err
	}
	return cfg, nil
}

// ParseConfig decodes and validates goop.json content; see LoadConfig.
func ParseConfig(data []byte) (Config, error) {
	if len(data) > MaxConfigBytes {
		return Config{}, &ConfigError{Msg: fmt.Sprintf("larger than %d bytes", MaxConfigBytes)}
	}
	cfg := DefaultConfig()
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return Config{}, decodeError(data, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Config{}, &ConfigError{Msg: "trailing data after the JSON object"}
	}
	if cfg.P2P.Peers == nil {
		cfg.P2P.Peers = []string{}
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// decodeError turns an encoding/json error into a *ConfigError naming the
// key path or the line and column.
func decodeError(data []byte, err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		line, col := lineCol(data, max(syn.Offset-1, 0)) // Offset is just past the bad byte
		return &ConfigError{Msg: fmt.Sprintf("line %d, column %d: %v", line, col, syn)}
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return &ConfigError{Msg: "unexpected end of JSON"}
	case errors.As(err, &typ):
		key := typ.Field
		if key == "" {
			return &ConfigError{Msg: fmt.Sprintf("must be a JSON object, not %s", typ.Value)}
		}
		return keyErr(key, "must be %s, not %s", describeType(typ.Type), typ.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		if path, known, ok := firstUnknownKey(data); ok {
			msg := fmt.Sprintf("unknown key %q", path)
			if s := suggest(path, known); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			return &ConfigError{Msg: msg}
		}
		return &ConfigError{Msg: strings.Replace(strings.TrimPrefix(err.Error(), "json: "), "field", "key", 1)}
	}
	return &ConfigError{Msg: err.Error()}
}

func describeType(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int64, reflect.Int32:
		return "an integer"
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	case reflect.Slice:
		return "an array of " + strings.TrimPrefix(describeType(t.Elem()), "a ") + "s"
	case reflect.Struct:
		return "an object"
	}
	return t.String()
}

func lineCol(data []byte, off int64) (int, int) {
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	before := data[:off]
	line := bytes.Count(before, []byte("\n")) + 1
	col := int(off) - bytes.LastIndexByte(before, '\n')
	return line, col
}

// firstUnknownKey walks the JSON document in order against Config's fields
// and returns the dotted path of the first key Config does not know, with the
// known keys at that level.
func firstUnknownKey(data []byte) (path string, known []string, ok bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	var walk func(t reflect.Type, prefix string) bool
	walk = func(t reflect.Type, prefix string) bool {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		delim, isDelim := tok.(json.Delim)
		if !isDelim {
			return false // scalar: consumed
		}
		switch delim {
		case '[':
			for dec.More() {
				var elem reflect.Type
				if t != nil && t.Kind() == reflect.Slice {
					elem = t.Elem()
				}
				if walk(elem, prefix) {
					return true
				}
			}
			_, _ = dec.Token()
			return false
		case '{':
			fields := map[string]reflect.Type{}
			if t != nil && t.Kind() == reflect.Struct {
				for i := 0; i < t.NumField(); i++ {
					name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
					fields[name] = t.Field(i).Type
				}
			}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return false
				}
				k, _ := kt.(string)
				ft, found := matchField(fields, k)
				if t != nil && t.Kind() == reflect.Struct && !found {
					path = joinKey(prefix, k)
					for name := range fields {
						known = append(known, joinKey(prefix, name))
					}
					sort.Strings(known)
					return true
				}
				if walk(ft, joinKey(prefix, k)) {
					return true
				}
			}
			_, _ = dec.Token()
		}
		return false
	}
	ok = walk(reflect.TypeFor[Config](), "")
	return path, known, ok
}

// matchField finds k among fields the way encoding/json does (exact, then
// case-insensitive).
func matchField(fields map[string]reflect.Type, k string) (reflect.Type, bool) {
	if t, ok := fields[k]; ok {
		return t, true
	}
	for name, t := range fields {
		if strings.EqualFold(name, k) {
			return t, true
		}
	}
	return nil, false
}

func joinKey(prefix, k string) string {
	if prefix == "" {
		return k
	}
	return prefix + "." + k
}

// suggest returns the known key closest to path if it is a likely typo.
func suggest(path string, known []string) string {
	best, bestD := "", 3
	for _, k := range known {
		if d := editDistance(path, k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// SaveConfig validates cfg and writes it to path atomically (temp file,
// fsync, rename) with mode 0600, since it may hold presence.admin_password.
func SaveConfig(path string, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		var ce *ConfigError
		if errors.As(err, &ce) {
			ce.File = path
		}
		return err
	}
	if cfg.P2P.Peers == nil {
		cfg.P2P.Peers = []string{}
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return fmt.Errorf("save config: %w", err)
	}
	data = append(data, '\n')
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("save config: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("save config: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("save config: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("save config: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save config: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("save config: %w", err)
	}
	return nil
}
