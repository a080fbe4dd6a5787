package controllers

import (
	"slices"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
)

func key(name string) types.NamespacedName { return types.NamespacedName{Namespace: "ns", Name: name} }

func newTestSlots(perHost int) (*hostSlots, *clocktesting.FakeClock, *[]types.NamespacedName) {
	clk := clocktesting.NewFakeClock(time.Unix(1700000000, 0))
	var woken []types.NamespacedName
	return newHostSlots(perHost, clk, func(k types.NamespacedName) { woken = append(woken, k) }), clk, &woken
}

func TestHostSlotsBoundEachHostOnItsOwn(t *testing.T) {
	s, _, _ := newTestSlots(2)
	for _, name := range []string{"a1", "a2"} {
		if !s.acquire("slow.example:443", key(name)) {
			t.Fatalf("%s refused with a slot free", name)
		}
	}
	if s.acquire("slow.example:443", key("a3")) {
		t.Fatal("a third delivery to a host bounded at 2 was let through")
	}
	if !s.acquire("fast.example:443", key("b1")) {
		t.Fatal("a full host held up a delivery to another host")
	}
	if got := s.waiting(); got != 1 {
		t.Errorf("waiting = %d, want 1", got)
	}
	if s.acquire("slow.example:443", key("a3")) || s.waiting() != 1 {
		t.Errorf("a request asking again is counted twice in line: waiting = %d", s.waiting())
	}
}

func TestHostSlotsHandFreedSlotsToTheOldestWaiting(t *testing.T) {
	s, _, woken := newTestSlots(1)
	host := "r.example:443"
	if !s.acquire(host, key("first")) {
		t.Fatal("first refused")
	}
	for _, name := range []string{"second", "third"} {
		if s.acquire(host, key(name)) {
			t.Fatalf("%s let through", name)
		}
	}
	s.release(host)
	if !slices.Equal(*woken, []types.NamespacedName{key("second")}) {
		t.Fatalf("woken %v, want second", *woken)
	}
	// The slot is kept for the request it was handed to: a newcomer does not
	// take it, and does not jump the line.
	if s.acquire(host, key("newcomer")) {
		t.Fatal("a newcomer took the slot handed to second")
	}
	if !s.acquire(host, key("second")) {
		t.Fatal("second refused the slot handed to it")
	}
	s.release(host)
	s.release(host)
	if !slices.Equal(*woken, []types.NamespacedName{key("second"), key("third"), key("newcomer")}) {
		t.Fatalf("woken %v, want second, third, newcomer in that order", *woken)
	}
}

func TestHostSlotsTakeBackUnclaimedHandovers(t *testing.T) {
	s, clk, woken := newTestSlots(1)
	host := "r.example:443"
	s.acquire(host, key("first"))
	s.acquire(host, key("gone"))
	s.acquire(host, key("next"))
	s.release(host) // handed to "gone", which never comes back
	clk.Step(handoverTimeout + time.Second)
	if s.acquire(host, key("newcomer")) {
		t.Fatal("newcomer jumped the line")
	}
	if !slices.Equal(*woken, []types.NamespacedName{key("gone"), key("next")}) {
		t.Fatalf("woken %v, want the slot passed from gone to next", *woken)
	}
	if !s.acquire(host, key("next")) {
		t.Fatal("next refused the slot passed on to it")
	}
}

func TestHostSlotsForgetADeletedRequest(t *testing.T) {
	s, _, woken := newTestSlots(1)
	host := "r.example:443"
	s.acquire(host, key("first"))
	s.acquire(host, key("deleted"))
	s.acquire(host, key("next"))
	s.forget(key("deleted"))
	s.release(host)
	if !slices.Equal(*woken, []types.NamespacedName{key("next")}) {
		t.Fatalf("woken %v, want next (deleted left the line)", *woken)
	}
	// A slot handed to a request deleted before it came goes on at once.
	s.acquire(host, key("last"))
	s.forget(key("next"))
	if !slices.Equal(*woken, []types.NamespacedName{key("next"), key("last")}) {
		t.Fatalf("woken %v, want the slot handed to next passed to last", *woken)
	}
	if !s.acquire(host, key("last")) {
		t.Fatal("last refused the slot handed to it")
	}
	s.release(host)
	if len(s.hosts) != 0 {
		t.Errorf("hosts with nothing in flight are kept: %v", s.hosts)
	}
}

// Spellings of one host and port share one bound; anything else has its own.
func TestCallbackHost(t *testing.T) {
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
			if got := callbackHost(tc.url); got != tc.want {
				t.Errorf("callbackHost(%q) = %q, want %q", tc.url, got, tc.want)
			}
		})
	}
}
