package callback

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"
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
		{name: "documentation TEST-NET-1", addr: "192.0.2.10", denied: true},
		{name: "documentation TEST-NET-2", addr: "198.51.100.255", denied: true},
		{name: "documentation TEST-NET-3", addr: "203.0.113.1", denied: true},
		{name: "just outside TEST-NET-1", addr: "192.0.3.1"},
		{name: "just outside TEST-NET-3", addr: "203.0.114.1"},
		{name: "IPv6 documentation", addr: "2001:db8::1", denied: true},
		{name: "IPv6 documentation, last address", addr: "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", denied: true},
		{name: "just outside IPv6 documentation", addr: "2001:db9::1"},
		{name: "IPv4-mapped documentation", addr: "::ffff:198.51.100.7", denied: true},
		{name: "6to4 of documentation", addr: "2002:cb00:7101::1", denied: true},
		{name: "IPv4-mapped loopback", addr: "::ffff:127.0.0.1", denied: true},
		{name: "IPv4-mapped metadata", addr: "::ffff:169.254.169.254", denied: true},
		{name: "IPv4-mapped public", addr: "::ffff:93.184.216.34"},
		{name: "IPv4-compatible private", addr: "::10.0.0.1", denied: true},
		{name: "NAT64 of metadata", addr: "64:ff9b::a9fe:a9fe", denied: true},
		{name: "NAT64 of public", addr: "64:ff9b::5db8:d822"},
		{name: "6to4 of loopback", addr: "2002:7f00:0001::1", denied: true},
		{name: "6to4 of private", addr: "2002:0a00:0001:1::5", denied: true},
		{name: "6to4 of metadata", addr: "2002:a9fe:a9fe::", denied: true},
		{name: "6to4 of public", addr: "2002:0808:0808::1"},
		{name: "SIIT of loopback", addr: "::ffff:0:7f00:1", denied: true},
		{name: "SIIT of metadata", addr: "::ffff:0:a9fe:a9fe", denied: true},
		{name: "SIIT of public", addr: "::ffff:0:808:808"},
		// Teredo: server IPv4 in bytes 4-7, client IPv4 inverted in bytes 12-15.
		{name: "Teredo with loopback server", addr: "2001:0:7f00:1:0:0:f7f7:f7f7", denied: true},
		{name: "Teredo with private client", addr: "2001:0:808:808:0:0:f5ff:fffe", denied: true},
		{name: "Teredo with public server and client", addr: "2001:0:808:808:0:0:f7f7:f7f7", denied: true},
		{name: "global unicast next to Teredo", addr: "2001:4860:4860::8888"},
		{name: "local-use NAT64 of private", addr: "64:ff9b:1::a00:1", denied: true},
		{name: "local-use NAT64 of public", addr: "64:ff9b:1::808:808", denied: true},
		{name: "6to4 of loopback opened by allow list", addr: "2002:7f00:1::1", allow: []string{"127.0.0.0/8"}},
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

// The dialer judges the address it is about to connect to, whatever name led
// there, so each embedded form must be refused at connect time too.
func TestDialContextRefusesEmbeddedForms(t *testing.T) {
	p, err := NewPolicy(nil, false)
	if err != nil {
		t.Fatal(err)
	}
	dial := p.DialContext(&net.Dialer{Timeout: time.Second})
	for _, addr := range []string{
		"[2002:7f00:1::1]:80",         // 6to4 of 127.0.0.1
		"[::ffff:0:7f00:1]:80",        // SIIT of 127.0.0.1
		"[2001:0:7f00:1::1]:80",       // Teredo via a loopback server
		"[64:ff9b:1::a00:1]:80",       // local-use NAT64 of 10.0.0.1
		"[64:ff9b::7f00:1]:80",        // NAT64 of 127.0.0.1
		"[::ffff:169.254.169.254]:80", // IPv4-mapped metadata
	} {
		t.Run(addr, func(t *testing.T) {
			// control must refuse the address before any connect is tried.
			if err := p.control("tcp6", addr, nil); !IsDenied(err) {
				t.Errorf("control(%s) = %v, want denied", addr, err)
			}
			conn, err := dial(context.Background(), "tcp", addr)
			if err == nil {
				_ = conn.Close()
			}
			var denied *DeniedAddressError
			if !errors.As(err, &denied) {
				t.Errorf("dial %s: %v, want a DeniedAddressError", addr, err)
			}
		})
	}
}
