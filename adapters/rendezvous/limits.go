package rendezvous

import (
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// limiter is a set of token buckets keyed by string (an IP, a peer id), with
// a bounded number of keys. A bucket holds up to burst tokens and gains rate
// tokens per second; each allowed event takes one. A key that has been idle
// long enough to refill completely is equivalent to a fresh one, so such keys
// are dropped first when the map is full; if that is not enough, arbitrary
// keys go (an attacker with that many keys could have used fresh ones anyway).
// Safe for concurrent use.
type limiter struct {
	rate, burst float64
	max         int

	mu sync.Mutex
	m  map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newLimiter(rate float64, burst, max int) *limiter {
	return &limiter{rate: rate, burst: float64(burst), max: max, m: make(map[string]*bucket)}
}

// allow takes a token from key's bucket. If there is none it returns false
// and how long until there will be one.
func (l *limiter) allow(key string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.m[key]
	if !ok {
		if len(l.m) >= l.max {
			l.evictLocked(now)
		}
		b = &bucket{tokens: l.burst, last: now}
		l.m[key] = b
	} else if el := now.Sub(b.last); el > 0 {
		b.tokens = math.Min(l.burst, b.tokens+el.Seconds()*l.rate)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	wait := time.Duration((1 - b.tokens) / l.rate * float64(time.Second))
	return false, wait
}

// prune drops the keys whose buckets are full again.
func (l *limiter) prune(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pruneLocked(now)
}

func (l *limiter) pruneLocked(now time.Time) {
	for k, b := range l.m {
		if b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst {
			delete(l.m, k)
		}
	}
}

// evictLocked makes room for a key: full buckets first, then arbitrary ones
// down to 90% of max so that the O(n) scan is amortised.
func (l *limiter) evictLocked(now time.Time) {
	l.pruneLocked(now)
	target := l.max * 9 / 10
	for k := range l.m {
		if len(l.m) <= target {
			break
		}
		delete(l.m, k)
	}
}

func (l *limiter) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}

// retryAfter formats a wait as a Retry-After header value (whole seconds, at least 1).
func retryAfter(d time.Duration) string {
	s := int(math.Ceil(d.Seconds()))
	if s < 1 {
		s = 1
	}
	return strconv.Itoa(s)
}

// clientKey returns the key per-IP limits use for r: the remote IP (an IPv6
// address by its /64, which one host usually owns whole). When the
// connection comes from a loopback address and trustProxy is set, the
// right-most X-Forwarded-For entry is used instead: that is the address the
// local reverse proxy (e.g. Caddy, as the docs recommend) saw.
func clientKey(r *http.Request, trustProxy bool) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap()
	if trustProxy && ip.IsLoopback() {
		if xff := r.Header.Values("X-Forwarded-For"); len(xff) > 0 {
			last := xff[len(xff)-1]
			if i := strings.LastIndexByte(last, ','); i >= 0 {
				last = last[i+1:]
			}
			if fip, err := netip.ParseAddr(strings.TrimSpace(last)); err == nil {
				ip = fip.Unmap()
			}
		}
	}
	if ip.Is6() {
		p, err := ip.Prefix(64)
		if err == nil {
			return p.String()
		}
	}
	return ip.String()
}
