// Package hostlimit bounds the callbacks in flight to each callback host, and
// lines up, oldest first, the deliveries that wait for a slot there.
package hostlimit

import (
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
)

// HandoverTimeout is how long a slot handed to a waiting request stays kept
// for it. A request that does not come back for it by then (it was deleted,
// or no longer needs a delivery) gives it up to the next in line.
const HandoverTimeout = 10 * time.Second

// Limiter bounds the callbacks in flight to one host (host and port of the
// callback URL). Deliveries run in the reconcile workers, so without a bound
// a receiver that answers slowly, or not at all, would soon hold every
// worker, and every other receiver would wait behind it. Requests refused a
// slot wait in line, oldest first; when a slot frees, it is handed to the
// first of them, which wake is called with.
type Limiter struct {
	perHost int
	wake    func(types.NamespacedName)
	clock   clock.PassiveClock

	mu    sync.Mutex
	hosts map[string]*host
}

type host struct {
	inFlight int // slots taken, handed-over ones included
	waiting  []types.NamespacedName
	handed   map[types.NamespacedName]time.Time // slots handed over, not yet taken
}

// New returns a Limiter allowing perHost callbacks in flight to each host;
// wake is called, outside the Limiter's lock, with each request a freed slot
// is handed to.
func New(perHost int, clk clock.PassiveClock, wake func(types.NamespacedName)) *Limiter {
	return &Limiter{perHost: perHost, wake: wake, clock: clk, hosts: map[string]*host{}}
}

// Host is the host a callback URL is sent to, as the Limiter counts it: one
// key per host and port however the URL spells them, so that "HOST", "host."
// and "host:80" do not each get a bound of their own. The name is lower case
// without a trailing dot, the port explicit (80 for http, 443 for https), and
// an IP address in its canonical form, IPv6 in brackets.
func Host(callbackURL string) string {
	u, err := url.Parse(callbackURL)
	if err != nil || u.Host == "" {
		return strings.ToLower(callbackURL)
	}
	hostname := strings.TrimSuffix(strings.ToLower(u.Hostname()), ".")
	if addr, err := netip.ParseAddr(hostname); err == nil {
		hostname = addr.WithZone("").Unmap().String()
	}
	port := u.Port()
	if n, err := strconv.ParseUint(port, 10, 16); err == nil {
		port = strconv.FormatUint(n, 10)
	}
	if port == "" {
		port = defaultPorts[strings.ToLower(u.Scheme)]
	}
	return net.JoinHostPort(hostname, port)
}

var defaultPorts = map[string]string{"http": "80", "https": "443"}

// Acquire takes a slot at hostname for key, or puts key in line and reports
// false. A taken slot must be given back with Release.
func (l *Limiter) Acquire(hostname string, key types.NamespacedName) bool {
	l.mu.Lock()
	woken := l.reclaim(hostname)
	defer func() {
		l.mu.Unlock()
		l.wakeAll(woken)
	}()
	h := l.hosts[hostname]
	if h == nil {
		h = &host{handed: map[types.NamespacedName]time.Time{}}
		l.hosts[hostname] = h
	}
	if _, ok := h.handed[key]; ok {
		delete(h.handed, key)
		return true
	}
	if h.inFlight < l.perHost && len(h.waiting) == 0 {
		h.inFlight++
		return true
	}
	for _, waiting := range h.waiting {
		if waiting == key {
			return false
		}
	}
	h.waiting = append(h.waiting, key)
	return false
}

// Release gives back a slot at hostname: to the first request in line, or
// to nobody.
func (l *Limiter) Release(hostname string) {
	l.mu.Lock()
	woken := l.reclaim(hostname)
	defer func() {
		l.mu.Unlock()
		l.wakeAll(woken)
	}()
	if h := l.hosts[hostname]; h != nil {
		woken = append(woken, l.handOver(hostname, h)...)
	}
}

// Forget takes key out of every line, and gives up any slot handed to it:
// its request is gone.
func (l *Limiter) Forget(key types.NamespacedName) {
	l.mu.Lock()
	var woken []types.NamespacedName
	defer func() {
		l.mu.Unlock()
		l.wakeAll(woken)
	}()
	for hostname, h := range l.hosts {
		for i, waiting := range h.waiting {
			if waiting == key {
				h.waiting = append(h.waiting[:i], h.waiting[i+1:]...)
				break
			}
		}
		if _, ok := h.handed[key]; ok {
			delete(h.handed, key)
			woken = append(woken, l.handOver(hostname, h)...)
		}
	}
}

// Waiting is how many requests wait in line for a slot, over all hosts.
func (l *Limiter) Waiting() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, h := range l.hosts {
		n += len(h.waiting)
	}
	return n
}

// handOver passes a freed slot at h to the first request in line, or frees
// it, forgetting a host with nothing left. It returns whom to wake.
func (l *Limiter) handOver(hostname string, h *host) []types.NamespacedName {
	if len(h.waiting) == 0 {
		h.inFlight--
		if h.inFlight == 0 {
			delete(l.hosts, hostname)
		}
		return nil
	}
	next := h.waiting[0]
	h.waiting = h.waiting[1:]
	h.handed[next] = l.clock.Now()
	return []types.NamespacedName{next}
}

// reclaim takes back the slots at hostname handed over longer than
// HandoverTimeout ago and hands them on.
func (l *Limiter) reclaim(hostname string) []types.NamespacedName {
	h := l.hosts[hostname]
	if h == nil {
		return nil
	}
	var woken []types.NamespacedName
	for key, at := range h.handed {
		if l.clock.Since(at) < HandoverTimeout {
			continue
		}
		delete(h.handed, key)
		woken = append(woken, l.handOver(hostname, h)...)
	}
	return woken
}

func (l *Limiter) wakeAll(keys []types.NamespacedName) {
	for _, key := range keys {
		l.wake(key)
	}
}
