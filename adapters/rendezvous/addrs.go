package rendezvous

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	ma "github.com/multiformats/go-multiaddr"
)

// Dialing of the peers a node learns of.
const (
	// DialTimeout bounds each dial of a learnt peer.
	DialTimeout = 10 * time.Second
	// redialAfter is the least time between two dials of the same peer.
	redialAfter = 30 * time.Second
	// maxParallelDials bounds concurrent dials; presences beyond wait for
	// the peer's next heartbeat.
	maxParallelDials = 8
)

// Listen opens the rendezvous server's TCP listener on bind:port (bind empty:
// 127.0.0.1). Errors name presence.rendezvous_port / presence.rendezvous_bind.
func Listen(bind string, port int) (net.Listener, error) {
	if bind == "" {
		bind = "127.0.0.1"
	}
	addr := net.JoinHostPort(bind, strconv.Itoa(port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("presence.rendezvous_port: %s is in use", addr)
		}
		if errors.Is(err, syscall.EADDRNOTAVAIL) {
			return nil, fmt.Errorf("presence.rendezvous_bind: %s is not an address of this machine", bind)
		}
		return nil, fmt.Errorf("presence.rendezvous_port: listen on %s: %w", addr, err)
	}
	return ln, nil
}

// LocalURL is the URL this machine reaches a listener at: its address, with
// an unspecified IP (0.0.0.0, ::) replaced by loopback.
func LocalURL(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return "http://" + a.String()
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsUnspecified() {
		if ip.Is4() {
			host = "127.0.0.1"
		} else {
			host = "::1"
		}
	}
	return "http://" + net.JoinHostPort(host, port)
}

// HostAddrs returns up to n of h's listen addresses for a presence, public
// ones first, then private, then loopback (useful on one machine only).
func HostAddrs(h host.Host, n int) []string {
	addrs := slices.Clone(h.Addrs())
	slices.SortStableFunc(addrs, func(a, b ma.Multiaddr) int { return rankAddr(a) - rankAddr(b) })
	out := make([]string, 0, min(len(addrs), n))
	for _, a := range addrs {
		if len(out) == n {
			break
		}
		out = append(out, a.String())
	}
	return out
}

// rankAddr orders addresses for a presence: 0 public, 1 private (or a DNS
// name), 2 loopback, 3 an IP that does not parse.
func rankAddr(a ma.Multiaddr) int {
	for _, code := range []int{ma.P_IP4, ma.P_IP6} {
		if v, err := a.ValueForProtocol(code); err == nil {
			ip, err := netip.ParseAddr(v)
			switch {
			case err != nil:
				return 3
			case ip.IsLoopback():
				return 2
			case ip.IsPrivate() || ip.IsLinkLocalUnicast():
				return 1
			}
			return 0
		}
	}
	return 1 // DNS names and others
}
