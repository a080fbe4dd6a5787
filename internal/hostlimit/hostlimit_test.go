package hostlimit

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
)

func key(name string) types.NamespacedName { return types.NamespacedName{Namespace: "ns", Name: name} }

func newTestLimiter(perHost int) (*Limiter, *clocktesting.FakeClock, *[]types.NamespacedName) {
	clk := clocktesting.NewFakeClock(time.Unix(1700000000, 0))
	var woken []types.NamespacedName
	return New(perHost, clk, func(k types.NamespacedName) { woken = append(woken, k) }), clk, &woken
}

// wantWoken fails t unless exactly the named requests were woken, in order;
// why says what that order means.
func wantWoken(t *testing.T, woken []types.NamespacedName, why string, names ...string) {
	t.Helper()
	want := make([]types.NamespacedName, 0, len(names))
	for _, name := range names {
		want = append(want, key(name))
	}
	if diff := cmp.Diff(want, woken); diff != "" {
		t.Fatalf("woken requests, want %s (-want +got):\n%s", why, diff)
	}
}

// line asks for slots at host for each name in turn: the first takes the one
// slot of a Limiter bounded at 1, the rest wait in line.
func line(s *Limiter, host string, names ...string) {
	for _, name := range names {
		s.Acquire(host, key(name))
	}
}

func TestLimiterBoundEachHostOnItsOwn(t *testing.T) {
	s, _, _ := newTestLimiter(2)
	for _, name := range []string{"a1", "a2"} {
		if !s.Acquire("slow.example:443", key(name)) {
			t.Fatalf("%s refused with a slot free", name)
		}
	}
	if s.Acquire("slow.example:443", key("a3")) {
		t.Fatal("a third delivery to a host bounded at 2 was let through")
	}
	if !s.Acquire("fast.example:443", key("b1")) {
		t.Fatal("a full host held up a delivery to another host")
	}
	if got := s.Waiting(); got != 1 {
		t.Errorf("waiting = %d, want 1", got)
	}
	if s.Acquire("slow.example:443", key("a3")) || s.Waiting() != 1 {
		t.Errorf("a request asking again is counted twice in line: waiting = %d", s.Waiting())
	}
}

func TestLimiterHandFreedSlotsToTheOldestWaiting(t *testing.T) {
	s, _, woken := newTestLimiter(1)
	host := "r.example:443"
	if !s.Acquire(host, key("first")) {
		t.Fatal("first refused")
	}
	for _, name := range []string{"second", "third"} {
		if s.Acquire(host, key(name)) {
			t.Fatalf("%s let through", name)
		}
	}
	s.Release(host)
	wantWoken(t, *woken, "second", "second")
	// The slot is kept for the request it was handed to: a newcomer does not
	// take it, and does not jump the line.
	if s.Acquire(host, key("newcomer")) {
		t.Fatal("a newcomer took the slot handed to second")
	}
	if !s.Acquire(host, key("second")) {
		t.Fatal("second refused the slot handed to it")
	}
	s.Release(host)
	s.Release(host)
	wantWoken(t, *woken, "second, third, newcomer in that order", "second", "third", "newcomer")
}

func TestLimiterTakeBackUnclaimedHandovers(t *testing.T) {
	s, clk, woken := newTestLimiter(1)
	host := "r.example:443"
	line(s, host, "first", "gone", "next")
	s.Release(host) // handed to "gone", which never comes back
	clk.Step(HandoverTimeout + time.Second)
	if s.Acquire(host, key("newcomer")) {
		t.Fatal("newcomer jumped the line")
	}
	wantWoken(t, *woken, "the slot passed from gone to next", "gone", "next")
	if !s.Acquire(host, key("next")) {
		t.Fatal("next refused the slot passed on to it")
	}
}

func TestLimiterForgetADeletedRequest(t *testing.T) {
	s, _, woken := newTestLimiter(1)
	host := "r.example:443"
	line(s, host, "first", "deleted", "next")
	s.Forget(key("deleted"))
	s.Release(host)
	wantWoken(t, *woken, "next (deleted left the line)", "next")
	// A slot handed to a request deleted before it came goes on at once.
	s.Acquire(host, key("last"))
	s.Forget(key("next"))
	wantWoken(t, *woken, "the slot handed to next passed to last", "next", "last")
	if !s.Acquire(host, key("last")) {
		t.Fatal("last refused the slot handed to it")
	}
	s.Release(host)
	if len(s.hosts) != 0 {
		t.Errorf("hosts with nothing in flight are kept: %v", s.hosts)
	}
}

// Spellings of one host and port share one bound; anything else has its own.
func TestHost(t *testing.T) {
	tests := []struct {
		url  string
		want string
	}{
		{url: "http://host/", want: "host:80"},
		{url: "http://Host/", want: "host:80"},
		{url: "http://host./", want: "host:80"},
		{url: "http://HOST:80/", want: "host:80"},
		{url: "http://host:80", want: "host:80"},
		{url: "http://host:080/x", want: "host:80"},
		{url: "HTTP://user@Host.:80/a?b", want: "host:80"},
		{url: "https://host/", want: "host:443"},
		{url: "https://HOST.:443/v1", want: "host:443"},
		{url: "http://host:8080/", want: "host:8080"},
		{url: "https://host:80/", want: "host:80"},
		{url: "https://Hooks.Example.com/v1/results", want: "hooks.example.com:443"},
		{url: "http://127.0.0.1:8001/v1/results", want: "127.0.0.1:8001"},
		{url: "http://[::ffff:127.0.0.1]:8001/", want: "127.0.0.1:8001"},
		{url: "https://[::1]:9000/x", want: "[::1]:9000"},
		{url: "https://[0:0:0:0:0:0:0:1]/x", want: "[::1]:443"},
		{url: "http://[2001:DB8::A]/", want: "[2001:db8::a]:80"},
	}
	for _, tc := range tests {
		t.Run(tc.url, func(t *testing.T) {
			if got := Host(tc.url); got != tc.want {
				t.Errorf("Host(%q) = %q, want %q", tc.url, got, tc.want)
			}
		})
	}
}
