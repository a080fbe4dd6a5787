package controllers

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

// handoverTimeout is how long a slot handed to a waiting request stays kept
// for it. A request that does not come back for it by then (it was deleted,
// or no longer needs a delivery) gives it up to the next in line.
const handoverTimeout = 10 * time.Second

// hostSlots bounds the callbacks in flight to one host (host and port of the
// callback URL). Deliveries run in the reconcile workers, so without a bound
// a receiver that answers slowly, or not at all, would soon hold every
// worker, and every other receiver would wait behind it. Requests refused a
// slot wait in line, oldest first; when a slot frees, it is handed to the
// first of them, which wake is called with.
type hostSlots struct {
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

func newHostSlots(perHost int, clk clock.PassiveClock, wake func(types.NamespacedName)) *hostSlots {
	return &hostSlots{perHost: perHost, wake: wake, clock: clk, hosts: map[string]*host{}}
}

// callbackHost is the host a callback URL is sent to, as the slots count it:
// one key per host and port however the URL spells them, so that "HOST",
// "host." and "host:80" do not each get a bound of their own. The name is
// lower case without a trailing dot, the port explicit (80 for http, 443 for
// https), and an IP address in its canonical form, IPv6 in brackets.
func callbackHost(callbackURL string) string {
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

// acquire takes a slot at hostname for key, or puts key in line and reports
// false. A taken slot must be given back with release.
func (s *hostSlots) acquire(hostname string, key types.NamespacedName) bool {
	if s == nil {
		return true // no bound: a reconciler not set up with a manager
	}
	s.mu.Lock()
	var woken []types.NamespacedName
	defer func() {
		s.mu.Unlock()
		s.wakeAll(woken)
	}()
	h := s.hosts[hostname]
	if h == nil {
		h = &host{handed: map[types.NamespacedName]time.Time{}}
		s.hosts[hostname] = h
	}
	woken = s.reclaim(h)
	if _, ok := h.handed[key]; ok {
		delete(h.handed, key)
		return true
	}
	if h.inFlight < s.perHost && len(h.waiting) == 0 {
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

// release gives back a slot at hostname: to the first request in line, or
// to nobody.
func (s *hostSlots) release(hostname string) {
	if s == nil {
		return
	}
	s.mu.Lock()
	var woken []types.NamespacedName
	defer func() {
		s.mu.Unlock()
		s.wakeAll(woken)
	}()
	h := s.hosts[hostname]
	if h == nil {
		return
	}
	woken = append(s.reclaim(h), s.handOver(hostname, h)...)
}

// forget takes key out of every line, and gives up any slot handed to it:
// its request is gone.
func (s *hostSlots) forget(key types.NamespacedName) {
	if s == nil {
		return
	}
	s.mu.Lock()
	var woken []types.NamespacedName
	defer func() {
		s.mu.Unlock()
		s.wakeAll(woken)
	}()
	for hostname, h := range s.hosts {
		for i, waiting := range h.waiting {
			if waiting == key {
				h.waiting = append(h.waiting[:i], h.waiting[i+1:]...)
				break
			}
		}
		if _, ok := h.handed[key]; ok {
			delete(h.handed, key)
			woken = append(woken, s.handOver(hostname, h)...)
		}
	}
}

// waiting is how many requests wait in line for a slot, over all hosts.
func (s *hostSlots) waiting() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, h := range s.hosts {
		n += len(h.waiting)
	}
	return n
}

// handOver passes a freed slot at h to the first request in line, or frees
// it, forgetting a host with nothing left. It returns whom to wake.
func (s *hostSlots) handOver(hostname string, h *host) []types.NamespacedName {
	if len(h.waiting) == 0 {
		h.inFlight--
		if h.inFlight == 0 {
			delete(s.hosts, hostname)
		}
		return nil
	}
	next := h.waiting[0]
	h.waiting = h.waiting[1:]
	h.handed[next] = s.clock.Now()
	return []types.NamespacedName{next}
}

// reclaim takes back the slots handed over longer than handoverTimeout ago
// and hands them on.
func (s *hostSlots) reclaim(h *host) []types.NamespacedName {
	var woken []types.NamespacedName
	for key, at := range h.handed {
		if s.clock.Since(at) < handoverTimeout {
			continue
		}
		delete(h.handed, key)
		if len(h.waiting) == 0 {
			h.inFlight--
			continue
		}
		next := h.waiting[0]
		h.waiting = h.waiting[1:]
		h.handed[next] = s.clock.Now()
		woken = append(woken, next)
	}
	return woken
}

func (s *hostSlots) wakeAll(keys []types.NamespacedName) {
	for _, key := range keys {
		s.wake(key)
	}
}
