// Package callback delivers inference results to callback URLs: the body and
// Standard Webhooks headers, one HTTP attempt at a time, through a dialer that
// refuses non-public addresses. When to try again is the caller's business;
// Next computes it from the retry schedule.
package callback

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// EventCompleted is the type of every callback kinfer sends.
const EventCompleted = "inference.completed"

// Payload statuses: how the request ended.
const (
	// StatusSucceeded: the worker wrote a result, in the payload's result.
	StatusSucceeded = "succeeded"
	// StatusFailed: the request failed; the payload's error says why.
	StatusFailed = "failed"
	// StatusCanceled: the request was canceled before it finished.
	StatusCanceled = "canceled"
	// StatusExpired: the request waited longer to start than its queue
	// timeout allows, and never ran.
	StatusExpired = "expired"
)

// Payload is the callback body. id and result are the fields the service kinfer
// replaced sent, so its receivers keep working.
type Payload struct {
	Type   string          `json:"type"`
	ID     string          `json:"id"`
	Status string          `json:"status"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  string          `json:"error,omitempty"`
}

// responseLimit bounds how much of an answer's body is read; the rest is
// dropped with the connection.
const responseLimit = 64 << 10

// responseHeaderLimit bounds an answer's headers. net/http's default, 10 MiB,
// would let each receiver that answers with huge headers hold that much of
// the manager's memory per attempt in flight.
const responseHeaderLimit = 64 << 10

// Sender makes delivery attempts.
type Sender struct {
	client *http.Client
	policy *Policy
}

// NewSender returns a Sender whose connections pass policy. Redirects are not
// followed (a 3xx is an answer like any other non-2xx), proxies from the
// environment are not used, and TLS certificates are verified.
func NewSender(policy *Policy) *Sender {
	transport := &http.Transport{
		Proxy:                  nil,
		DialContext:            policy.DialContext(&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}),
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           256,
		MaxIdleConnsPerHost:    16,
		IdleConnTimeout:        90 * time.Second,
		TLSHandshakeTimeout:    10 * time.Second,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: responseHeaderLimit,
	}
	return &Sender{
		policy: policy,
		client: &http.Client{
			Transport: transport,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		},
	}
}

// Attempt is one POST of a payload.
type Attempt struct {
	URL       string
	WebhookID string
	Timestamp time.Time
	Body      []byte
	// Keys sign the attempt; none means unsigned.
	Keys    []Key
	Timeout time.Duration
}

// Outcome is what one attempt got.
type Outcome struct {
	// StatusCode is the answer's HTTP status, 0 when there was none.
	StatusCode int
	// RetryAfter is how long the receiver asked to wait, 0 when it did not.
	RetryAfter time.Duration
	// Err says in full why the attempt got no answer, or why it may not be
	// made. It can name internal addresses, so it is for the manager's log
	// only; Describe says what status and clients may read.
	Err error
	// Failure names the kind of failure when Err is set: one of the Failure
	// constants, or a description of the same kind from the caller.
	Failure string
}

// Failed is the outcome of an attempt that could not be made: err goes to
// the manager's log, failure to status and the client.
func Failed(err error, failure string) Outcome {
	return Outcome{Err: err, Failure: failure}
}

// Delivered reports a 2xx answer: the receiver has the result.
func (o Outcome) Delivered() bool { return o.Err == nil && o.StatusCode >= 200 && o.StatusCode < 300 }

// Gone reports a 410 answer: the receiver wants no more attempts.
func (o Outcome) Gone() bool { return o.Err == nil && o.StatusCode == http.StatusGone }

// Denied reports an attempt refused by the outbound policy; retrying cannot help.
func (o Outcome) Denied() bool { return IsDenied(o.Err) }

// Describe says in a line why an attempt did not deliver, for status, Events
// and the client: the kind of failure, never the addresses involved.
func (o Outcome) Describe() string {
	switch {
	case o.Err != nil && o.Failure != "":
		return o.Failure
	case o.Err != nil:
		return classify(o.Err, 0)
	}
	return strings.TrimSpace(fmt.Sprintf("receiver answered %d %s", o.StatusCode, http.StatusText(o.StatusCode)))
}

// Send makes one attempt. It never returns a Go error: every way an attempt can
// end is an Outcome, so the caller can record it and schedule the next.
func (s *Sender) Send(ctx context.Context, a Attempt) Outcome {
	target, err := url.Parse(a.URL)
	if err != nil || (target.Scheme != "http" && target.Scheme != "https") || target.Host == "" {
		if err == nil {
			err = errors.New("not an absolute http or https URL")
		}
		return Failed(fmt.Errorf("callback URL %q: %w", a.URL, err), FailureInvalidURL)
	}
	if s.policy.requireHTTPS && target.Scheme != "https" {
		return Failed(ErrInsecureScheme, FailureInsecureScheme)
	}

	if a.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, a.Timeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.URL, bytes.NewReader(a.Body))
	if err != nil {
		return Failed(err, FailureInvalidURL)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "kinfer-callback/1")
	req.Header.Set("webhook-id", a.WebhookID)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(a.Timestamp.Unix(), 10))
	if len(a.Keys) > 0 {
		req.Header.Set("webhook-signature", Signature(a.Keys, a.WebhookID, a.Timestamp, a.Body))
	}

	resp, err := s.client.Do(req)
	if err != nil {
		return Failed(err, classify(err, a.Timeout))
	}
	_, _ = io.CopyN(io.Discard, resp.Body, responseLimit)
	_ = resp.Body.Close()
	return Outcome{StatusCode: resp.StatusCode, RetryAfter: retryAfter(resp.Header.Get("Retry-After"), a.Timestamp)}
}

// retryAfter reads a Retry-After header, in seconds or as an HTTP date.
func retryAfter(header string, now time.Time) time.Duration {
	if header == "" {
		return 0
	}
	if seconds, err := strconv.ParseInt(header, 10, 64); err == nil {
		if seconds <= 0 {
			return 0
		}
		return time.Duration(min(seconds, int64(maxRetryAfter/time.Second))) * time.Second
	}
	if at, err := http.ParseTime(header); err == nil && at.After(now) {
		return min(at.Sub(now), maxRetryAfter)
	}
	return 0
}
