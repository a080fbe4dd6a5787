package callback

import (
	"net/netip"
	"testing"
)

func TestPolicyCheck(t *testing.T) {
	tests := []struct {
		name   string
		addr   string
		allow  []string
		denied bool
	}{
		{name: "public IPv4", addr: "93.184.216.34"},
		{name: "public IPv6", addr: "2606:2800:220:1:248:1893:25c8:1946"},
		{name: "loopback", addr: "127.0.0.1", denied: true},
		{name: "loopback elsewhere in 127/8", addr: "127.5.6.7", denied: true},
		{name: "IPv6 loopback", addr: "::1", denied: true},
		{name: "cloud metadata", addr: "169.254.169.254", denied: true},
		{name: "IPv6 link-local with zone", addr: "fe80::1%eth0", denied: true},
		{name: "RFC 1918 10/8", addr: "10.1.2.3", denied: true},
		{name: "RFC 1918 172.16/12", addr: "172.31.255.255", denied: true},
		{name: "just outside 172.16/12", addr: "172.32.0.1"},
		{name: "RFC 1918 192.168/16", addr: "192.168.1.1", denied: true},
		{name: "CGNAT", addr: "100.64.0.1", denied: true},
		{name: "unique local", addr: "fd00::1", denied: true},
		{name: "multicast", addr: "224.0.0.1", denied: true},
		{name: "IPv6 multicast", addr: "ff02::1", denied: true},
		{name: "unspecified", addr: "0.0.0.0", denied: true},
		{name: "IPv6 unspecified", addr: "::", denied: true},
		{name: "broadcast", addr: "255.255.255.255", denied: true},
		{name: "IPv4-mapped loopback", addr: "::ffff:127.0.0.1", denied: true},
		{name: "IPv4-mapped metadata", addr: "::ffff:169.254.169.254", denied: true},
		{name: "IPv4-mapped public", addr: "::ffff:93.184.216.34"},
		{name: "IPv4-compatible private", addr: "::10.0.0.1", denied: true},
		{name: "NAT64 of metadata", addr: "64:ff9b::a9fe:a9fe", denied: true},
		{name: "NAT64 of public", addr: "64:ff9b::5db8:d822"},
		{name: "loopback opened by allow list", addr: "127.0.0.1", allow: []string{"127.0.0.0/8"}},
		{name: "mapped loopback opened by allow list", addr: "::ffff:127.0.0.1", allow: []string{"127.0.0.0/8"}},
		{name: "allow list opens only its range", addr: "10.0.0.1", allow: []string{"127.0.0.0/8"}, denied: true},
		{name: "allow list with host bits set", addr: "10.9.0.1", allow: []string{"10.9.0.7/16"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := NewPolicy(tc.allow, false)
			if err != nil {
				t.Fatal(err)
			}
			err = p.Check(netip.MustParseAddr(tc.addr))
			if got := IsDenied(err); got != tc.denied {
				t.Errorf("Check(%s) = %v, want denied=%v", tc.addr, err, tc.denied)
			}
		})
	}
}

func TestNewPolicyRefusesBadCIDR(t *testing.T) {
	if _, err := NewPolicy([]string{"127.0.0.1"}, false); err == nil {
		t.Error("NewPolicy accepted an address without a prefix length")
	}
}
