package callback

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
)

// deniedPrefixes are the address ranges a callback may not reach unless an
// allow list opens them: everything that is not the public internet, where a
// callback URL chosen by an outside client could reach the cluster's own
// services, the node, or a cloud metadata endpoint.
var deniedPrefixes = mustPrefixes(
	"0.0.0.0/8",       // "this network", including the unspecified 0.0.0.0
	"10.0.0.0/8",      // private (RFC 1918)
	"100.64.0.0/10",   // carrier-grade NAT (RFC 6598)
	"127.0.0.0/8",     // loopback
	"169.254.0.0/16",  // link-local, including cloud metadata at 169.254.169.254
	"172.16.0.0/12",   // private (RFC 1918)
	"192.0.0.0/24",    // IETF protocol assignments
	"192.0.2.0/24",    // documentation (TEST-NET-1, RFC 5737)
	"192.168.0.0/16",  // private (RFC 1918)
	"198.18.0.0/15",   // benchmarking
	"198.51.100.0/24", // documentation (TEST-NET-2, RFC 5737)
	"203.0.113.0/24",  // documentation (TEST-NET-3, RFC 5737)
	"224.0.0.0/4",     // multicast
	"240.0.0.0/4",     // reserved, including broadcast 255.255.255.255
	"::/128",          // unspecified
	"::1/128",         // loopback
	"fc00::/7",        // unique local (ULA)
	"fe80::/10",       // link-local
	"ff00::/8",        // multicast
	"100::/64",        // discard-only
	"2001:db8::/32",   // documentation (RFC 3849)
	"fec0::/10",       // deprecated site-local
)

// IPv6 forms that carry an IPv4 address, which is judged in their place.
var (
	nat64Prefix      = netip.MustParsePrefix("64:ff9b::/96")    // NAT64, well-known prefix (RFC 6052)
	compatV4         = netip.MustParsePrefix("::/96")           // IPv4-compatible (deprecated)
	siitPrefix       = netip.MustParsePrefix("::ffff:0:0:0/96") // SIIT IPv4-translated (RFC 2765)
	sixToFourPrefix  = netip.MustParsePrefix("2002::/16")       // 6to4: the IPv4 address in bytes 2 to 5 (RFC 3056)
	teredoPrefix     = netip.MustParsePrefix("2001::/32")       // Teredo (RFC 4380)
	localNAT64Prefix = netip.MustParsePrefix("64:ff9b:1::/48")  // NAT64, local-use prefix (RFC 8215)
)

// opaquePrefixes are denied whole: the IPv4 address they lead to is either
// obfuscated (Teredo's client) or placed where the operator of the network
// chose (local-use NAT64), so no single reading of the address can be judged
// safely, and neither has a use as a callback target.
var opaquePrefixes = []netip.Prefix{teredoPrefix, localNAT64Prefix}

func mustPrefixes(cidrs ...string) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(cidrs))
	for _, c := range cidrs {
		out = append(out, netip.MustParsePrefix(c))
	}
	return out
}

// Policy decides which addresses callbacks may connect to.
type Policy struct {
	allow        []netip.Prefix
	requireHTTPS bool
}

// NewPolicy returns a policy that denies every non-public address except those
// in allow, given as CIDRs (e.g. 127.0.0.0/8 for a local stack).
func NewPolicy(allow []string, requireHTTPS bool) (*Policy, error) {
	p := &Policy{requireHTTPS: requireHTTPS}
	for _, c := range allow {
		prefix, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, fmt.Errorf("allowed callback range %q is not a CIDR: %w", c, err)
		}
		p.allow = append(p.allow, prefix.Masked())
	}
	return p, nil
}

// DeniedAddressError says a callback would have reached a denied address.
// Retrying cannot help: the request's delivery fails at once. Its message
// does not name the address, as it reaches status and the submitting client;
// the address is kept for the manager's log.
type DeniedAddressError struct {
	Addr netip.Addr
}

func (e *DeniedAddressError) Error() string {
	return FailureAddressNotAllowed
}

// IsDenied reports whether err, or an error it wraps, is a DeniedAddressError
// or an insecure scheme refused by --callback-require-https.
func IsDenied(err error) bool {
	var denied *DeniedAddressError
	return errors.As(err, &denied) || errors.Is(err, ErrInsecureScheme)
}

// ErrInsecureScheme refuses plain http callbacks under --callback-require-https.
var ErrInsecureScheme = errors.New(FailureInsecureScheme)

// Check returns a DeniedAddressError when addr may not be reached.
func (p *Policy) Check(addr netip.Addr) error {
	addr = addr.WithZone("")
	for _, o := range opaquePrefixes {
		if o.Contains(addr) && !p.allows(addr) {
			return &DeniedAddressError{Addr: addr}
		}
	}
	ipv4 := embeddedIPv4(addr)
	if p.allows(addr) || p.allows(ipv4) {
		return nil
	}
	for _, d := range deniedPrefixes {
		if d.Contains(ipv4) {
			return &DeniedAddressError{Addr: addr}
		}
	}
	return nil
}

func (p *Policy) allows(addr netip.Addr) bool {
	for _, a := range p.allow {
		if a.Contains(addr) {
			return true
		}
	}
	return false
}

// embeddedIPv4 unwraps the IPv4 address carried in IPv4-mapped (::ffff:a.b.c.d),
// IPv4-compatible (::a.b.c.d), SIIT (::ffff:0:a.b.c.d), NAT64 (64:ff9b::a.b.c.d)
// and 6to4 (2002:aabb:ccdd::) IPv6 addresses, so that none of them is a way
// around the IPv4 deny list.
func embeddedIPv4(addr netip.Addr) netip.Addr {
	if addr.Is4In6() {
		return addr.Unmap()
	}
	b := addr.As16()
	switch {
	case sixToFourPrefix.Contains(addr):
		return netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]})
	case nat64Prefix.Contains(addr), siitPrefix.Contains(addr),
		compatV4.Contains(addr) && !addr.IsUnspecified() && !addr.IsLoopback():
		return netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
	}
	return addr
}

// control runs after DNS resolution, just before each connect: the address it
// sees is the one the socket will reach, so DNS rebinding cannot slip past.
func (p *Policy) control(_, address string, _ syscall.RawConn) error {
	addrPort, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("callback dial to %q: %w", address, err)
	}
	return p.Check(addrPort.Addr())
}

// DialContext dials like net.Dialer but refuses denied addresses at connect time.
func (p *Policy) DialContext(dialer *net.Dialer) func(ctx context.Context, network, address string) (net.Conn, error) {
	d := *dialer
	d.Control = p.control
	return d.DialContext
}
