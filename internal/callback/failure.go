package callback

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"time"
)

// What an attempt's failure is called in status, in Events and by the shim.
// The submitting client reads these, so they name the kind of failure in
// words it can act on and never carry a resolved address, a resolver's
// address or other detail from inside the cluster; the full error goes to
// the manager's log.
const (
	FailureInvalidURL        = "callback URL is not an absolute http or https URL"
	FailureInsecureScheme    = "callback URL must use https"
	FailureAddressNotAllowed = "address not allowed: callbacks may reach public addresses only"
	FailureHostNotFound      = "host name not found"
	FailureLookupTimedOut    = "host name lookup timed out"
	FailureLookupFailed      = "host name lookup failed"
	FailureConnectionRefused = "connection refused"
	FailureConnectionReset   = "connection reset"
	FailureConnectionTimeout = "connection timed out"
	FailureConnectionClosed  = "connection closed before an answer"
	FailureHostUnreachable   = "host unreachable"
	FailureNetUnreachable    = "network unreachable"
	FailureTLS               = "TLS error"
	FailureTLSUntrusted      = "TLS error: certificate not trusted"
	FailureTLSHostMismatch   = "TLS error: certificate not valid for the host name"
	FailureTLSExpired        = "TLS error: certificate expired or not yet valid"
	FailureTLSNotSpoken      = "TLS error: the receiver does not speak TLS"
	FailureHeadersTooLarge   = "response headers too large"
	FailureCanceled          = "attempt canceled"
	FailureConnection        = "connection failed"
)

// failureTimedOut names an attempt that got no answer within its timeout.
func failureTimedOut(timeout time.Duration) string {
	if timeout <= 0 {
		return "timed out"
	}
	return "timed out after " + timeout.String()
}

// socketFailures name the errors a socket reports.
var socketFailures = []struct {
	errno   syscall.Errno
	failure string
}{
	{syscall.ECONNREFUSED, FailureConnectionRefused},
	{syscall.ECONNRESET, FailureConnectionReset},
	{syscall.ETIMEDOUT, FailureConnectionTimeout},
	{syscall.EHOSTUNREACH, FailureHostUnreachable},
	{syscall.ENETUNREACH, FailureNetUnreachable},
}

// classify names the kind of failure err is, for an attempt bounded by timeout.
func classify(err error, timeout time.Duration) string {
	if failure := classifyLookup(err); failure != "" {
		return failure // before timeouts: a lookup that timed out is a DNS failure
	}
	var (
		denied *DeniedAddressError
		opErr  *net.OpError
	)
	switch {
	case errors.As(err, &denied):
		return FailureAddressNotAllowed
	case errors.Is(err, ErrInsecureScheme):
		return FailureInsecureScheme
	case errors.As(err, &opErr) && opErr.Op == "dial" && opErr.Timeout():
		// The dialer's own bound, shorter than the attempt's.
		return FailureConnectionTimeout
	case errors.Is(err, context.DeadlineExceeded):
		return failureTimedOut(timeout)
	case errors.Is(err, context.Canceled):
		return FailureCanceled
	case headersTooLarge(err):
		return FailureHeadersTooLarge
	}
	for _, name := range []func(error) string{classifySocket, classifyTLS} {
		if failure := name(err); failure != "" {
			return failure
		}
	}
	return FailureConnection
}

// classifyLookup names a failed DNS lookup, or returns "" for other errors.
// The lookup's error names the resolver, which status must not show.
func classifyLookup(err error) string {
	var dnsErr *net.DNSError
	switch {
	case !errors.As(err, &dnsErr):
		return ""
	case dnsErr.IsNotFound:
		return FailureHostNotFound
	case dnsErr.IsTimeout:
		return FailureLookupTimedOut
	}
	return FailureLookupFailed
}

// classifySocket names what the connection itself reported, or returns ""
// when it reported nothing known.
func classifySocket(err error) string {
	for _, e := range socketFailures {
		if errors.Is(err, e.errno) {
			return e.failure
		}
	}
	var netErr net.Error
	switch {
	case errors.As(err, &netErr) && netErr.Timeout():
		return FailureConnectionTimeout
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.EPIPE):
		return FailureConnectionClosed
	}
	return ""
}

// classifyTLS names a failed TLS handshake, or returns "" for other errors.
func classifyTLS(err error) string {
	var (
		untrusted   x509.UnknownAuthorityError
		mismatch    x509.HostnameError
		invalid     x509.CertificateInvalidError
		notTLS      tls.RecordHeaderError
		alert       tls.AlertError
		verifyError *tls.CertificateVerificationError
		opErr       *net.OpError
	)
	switch {
	case errors.As(err, &untrusted):
		return FailureTLSUntrusted
	case errors.As(err, &mismatch):
		return FailureTLSHostMismatch
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return FailureTLSExpired
	case errors.As(err, &notTLS):
		return FailureTLSNotSpoken
	case errors.As(err, &invalid), errors.As(err, &alert), errors.As(err, &verifyError):
		return FailureTLS
	case errors.As(err, &opErr) && (opErr.Op == "remote error" || opErr.Op == "local error"):
		// crypto/tls reports alerts, sent or received, as these operations.
		return FailureTLS
	}
	return ""
}

// headersTooLarge reports an answer refused for headers over the
// transport's MaxResponseHeaderBytes. net/http has no error value for it, so
// its messages (HTTP/1 and HTTP/2) are matched.
func headersTooLarge(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "response headers exceeded") || strings.Contains(msg, "response header list larger than")
}
