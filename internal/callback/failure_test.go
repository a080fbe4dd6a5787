package callback

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"syscall"
	"testing"
	"time"
)

// ipAddress matches anything that looks like an IPv4 or IPv6 address.
var ipAddress = regexp.MustCompile(`\d{1,3}(\.\d{1,3}){3}|[0-9A-Fa-f]*:[0-9A-Fa-f]*:[0-9A-Fa-f:.]*`)

// asClientSees wraps err the way http.Client.Do returns a failed POST.
func asClientSees(err error) error {
	return &url.Error{Op: "Post", URL: "http://hooks.example.com:8001/v1/results", Err: err}
}

func dialError(addr string, err error) error {
	return asClientSees(&net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(netip.MustParseAddrPort(addr)),
		Err: err})
}

func TestClassify(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{
			name: "name not found, with the cluster resolver's address",
			err: dialError("10.96.0.10:53", &net.DNSError{Err: "no such host", Name: "x", Server: "10.96.0.10:53",
				IsNotFound: true}),
			want: FailureHostNotFound,
		},
		{
			name: "lookup timed out",
			err: asClientSees(&net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "i/o timeout", Name: "x",
				Server: "10.96.0.10:53", IsTimeout: true}}),
			want: FailureLookupTimedOut,
		},
		{
			name: "resolver failed",
			err: asClientSees(&net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "server misbehaving", Name: "x",
				Server: "10.96.0.10:53", IsTemporary: true}}),
			want: FailureLookupFailed,
		},
		{
			name: "denied address, as the dialer's control refuses it",
			err:  dialError("127.0.0.9:80", &DeniedAddressError{Addr: netip.MustParseAddr("127.0.0.9")}),
			want: FailureAddressNotAllowed,
		},
		{
			name: "plain http where https is required",
			err:  ErrInsecureScheme,
			want: FailureInsecureScheme,
		},
		{
			name: "connection refused",
			err:  dialError("10.1.2.3:8001", &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}),
			want: FailureConnectionRefused,
		},
		{
			name: "connection reset",
			err:  asClientSees(&net.OpError{Op: "read", Net: "tcp", Err: &os.SyscallError{Syscall: "read", Err: syscall.ECONNRESET}}),
			want: FailureConnectionReset,
		},
		{
			name: "host unreachable",
			err:  dialError("10.1.2.3:8001", &os.SyscallError{Syscall: "connect", Err: syscall.EHOSTUNREACH}),
			want: FailureHostUnreachable,
		},
		{
			name: "network unreachable",
			err:  dialError("[2002:808:808::1]:443", &os.SyscallError{Syscall: "connect", Err: syscall.ENETUNREACH}),
			want: FailureNetUnreachable,
		},
		{
			name: "the dialer's own timeout",
			err:  dialError("203.0.113.7:443", timeoutError{}),
			want: FailureConnectionTimeout,
		},
		{
			name: "the attempt's deadline",
			err:  asClientSees(fmt.Errorf("awaiting headers: %w", context.DeadlineExceeded)),
			want: "timed out after 15s",
		},
		{
			name: "canceled",
			err:  asClientSees(context.Canceled),
			want: FailureCanceled,
		},
		{
			name: "untrusted certificate",
			err:  asClientSees(&tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}),
			want: FailureTLSUntrusted,
		},
		{
			name: "certificate for another name",
			err: asClientSees(&tls.CertificateVerificationError{Err: x509.HostnameError{
				Certificate: &x509.Certificate{}, Host: "10.0.0.5"}}),
			want: FailureTLSHostMismatch,
		},
		{
			name: "expired certificate",
			err:  asClientSees(&tls.CertificateVerificationError{Err: x509.CertificateInvalidError{Reason: x509.Expired}}),
			want: FailureTLSExpired,
		},
		{
			name: "receiver answers plain HTTP to TLS",
			err:  asClientSees(tls.RecordHeaderError{Msg: "tls: first record does not look like a TLS handshake"}),
			want: FailureTLSNotSpoken,
		},
		{
			name: "handshake failure alert from the receiver",
			err:  asClientSees(&net.OpError{Op: "remote error", Err: errors.New("tls: handshake failure")}),
			want: FailureTLS,
		},
		{
			name: "HTTP/1 headers over the limit",
			err:  asClientSees(errors.New("net/http: server response headers exceeded 65536 bytes; aborted")),
			want: FailureHeadersTooLarge,
		},
		{
			name: "HTTP/2 headers over the limit",
			err:  asClientSees(errors.New("http2: response header list larger than advertised limit")),
			want: FailureHeadersTooLarge,
		},
		{
			name: "closed before an answer",
			err:  asClientSees(io.EOF),
			want: FailureConnectionClosed,
		},
		{
			name: "anything else is named generically",
			err:  asClientSees(errors.New("proxyconnect tcp: dial 10.0.0.1:3128: something new")),
			want: FailureConnection,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := classify(tc.err, 15*time.Second)
			if got != tc.want {
				t.Errorf("classify(%q) = %q, want %q", tc.err, got, tc.want)
			}
			if ip := ipAddress.FindString(got); ip != "" {
				t.Errorf("classify(%q) = %q names address %s", tc.err, got, ip)
			}
		})
	}
}

type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

func TestDeniedAddressErrorDoesNotNameTheAddress(t *testing.T) {
	for _, addr := range []string{"10.0.0.1", "127.0.0.9", "fd00::1", "::ffff:169.254.169.254"} {
		err := &DeniedAddressError{Addr: netip.MustParseAddr(addr)}
		if ip := ipAddress.FindString(err.Error()); ip != "" {
			t.Errorf("DeniedAddressError{%s}.Error() = %q names address %s", addr, err.Error(), ip)
		}
	}
}

func TestOutcomeDescribe(t *testing.T) {
	tests := []struct {
		name    string
		outcome Outcome
		want    string
	}{
		{name: "an answer", outcome: Outcome{StatusCode: 503}, want: "receiver answered 503 Service Unavailable"},
		{name: "an answer without a standard text", outcome: Outcome{StatusCode: 599}, want: "receiver answered 599"},
		{name: "a failure named by the sender", outcome: Failed(errors.New("detail"), "timed out after 15s"), want: "timed out after 15s"},
		{
			name:    "an error without a name is classified, not printed",
			outcome: Outcome{Err: dialError("10.0.0.1:80", &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED})},
			want:    FailureConnectionRefused,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.outcome.Describe(); got != tc.want {
				t.Errorf("Describe() = %q, want %q", got, tc.want)
			}
		})
	}
}
