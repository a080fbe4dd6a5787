package controllers

import (
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/api/meta"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/callback"
	"github.com/kinfer/kinfer/internal/testutil"
)

func TestRecordAttempt(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	schedule := []time.Duration{5 * time.Second, 5 * time.Minute}
	tests := []struct {
		name          string
		priorAttempts int32
		outcome       callback.Outcome
		wantState     inferencev1alpha1.DeliveryState
		wantReason    string
		wantNext      time.Duration // 0: no next attempt
	}{
		{name: "2xx delivers", outcome: callback.Outcome{StatusCode: 204},
			wantState: inferencev1alpha1.DeliveryDelivered, wantReason: inferencev1alpha1.ReasonDelivered},
		{name: "410 ends it", outcome: callback.Outcome{StatusCode: 410},
			wantState: inferencev1alpha1.DeliveryFailed, wantReason: inferencev1alpha1.ReasonGone},
		{name: "a denied address ends it", outcome: callback.Outcome{Err: &callback.DeniedAddressError{Addr: netip.MustParseAddr("10.0.0.1")}},
			wantState: inferencev1alpha1.DeliveryFailed, wantReason: inferencev1alpha1.ReasonCallbackDenied},
		{name: "first failure waits the first entry", outcome: callback.Outcome{StatusCode: 503},
			wantState: inferencev1alpha1.DeliveryPending, wantReason: inferencev1alpha1.ReasonRetrying, wantNext: 5 * time.Second},
		{name: "second failure waits the second entry", priorAttempts: 1, outcome: callback.Outcome{Err: errors.New("connection refused")},
			wantState: inferencev1alpha1.DeliveryPending, wantReason: inferencev1alpha1.ReasonRetrying, wantNext: 5 * time.Minute},
		{name: "Retry-After beyond the entry wins", outcome: callback.Outcome{StatusCode: 429, RetryAfter: time.Hour},
			wantState: inferencev1alpha1.DeliveryPending, wantReason: inferencev1alpha1.ReasonRetrying, wantNext: time.Hour},
		{name: "failure after the last entry gives up", priorAttempts: 2, outcome: callback.Outcome{StatusCode: 500},
			wantState: inferencev1alpha1.DeliveryFailed, wantReason: inferencev1alpha1.ReasonRetriesExhausted},
		{name: "a 3xx is a failure like any other", outcome: callback.Outcome{StatusCode: 302},
			wantState: inferencev1alpha1.DeliveryPending, wantReason: inferencev1alpha1.ReasonRetrying, wantNext: 5 * time.Second},
		{name: "an unusable signing secret is retried under its own reason",
			outcome: callback.Failed(&signingSecretError{problem: "signing secret not found", detail: errors.New("not found")},
				"signing secret not found"),
			wantState: inferencev1alpha1.DeliveryPending, wantReason: inferencev1alpha1.ReasonSigningSecretUnreadable,
			wantNext: 5 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ir := testutil.MakeInferenceRequest("r", "ml").Callback("https://example.com/").Obj()
			ir.UID = "0b1c2d3e-aaaa-bbbb-cccc-000000000001"
			ir.Status.Phase = inferencev1alpha1.PhaseSucceeded
			ir.Status.Delivery = inferencev1alpha1.DeliveryStatus{State: inferencev1alpha1.DeliveryPending, Attempts: tc.priorAttempts}
			s := newRequestState(ir, now)

			s.recordAttempt(tc.outcome, schedule, func(d time.Duration) time.Duration { return d })

			d := s.status.Delivery
			if d.State != tc.wantState || d.Attempts != tc.priorAttempts+1 || d.WebhookID != "msg_0b1c2d3eaaaabbbbcccc000000000001" {
				t.Errorf("delivery = %+v, want state %s after attempt %d", d, tc.wantState, tc.priorAttempts+1)
			}
			if d.LastAttemptTime == nil || !d.LastAttemptTime.Time.Equal(now) {
				t.Errorf("lastAttemptTime = %v, want %v", d.LastAttemptTime, now)
			}
			switch {
			case tc.wantNext == 0 && d.NextAttemptTime != nil:
				t.Errorf("nextAttemptTime = %v, want none", d.NextAttemptTime)
			case tc.wantNext != 0 && (d.NextAttemptTime == nil || !d.NextAttemptTime.Time.Equal(now.Add(tc.wantNext))):
				t.Errorf("nextAttemptTime = %v, want %v", d.NextAttemptTime, now.Add(tc.wantNext))
			}
			c := meta.FindStatusCondition(s.status.Conditions, inferencev1alpha1.ConditionDelivered)
			if c == nil || c.Reason != tc.wantReason {
				t.Errorf("Delivered condition = %+v, want reason %s", c, tc.wantReason)
			}
			if len(s.events) != 1 || s.events[0].reason != tc.wantReason {
				t.Errorf("events = %+v, want one with reason %s", s.events, tc.wantReason)
			}
		})
	}
}

// ipAddressPattern matches anything that looks like an IPv4 or IPv6 address,
// and also a time of day: take times out of a text before matching it.
const ipAddressPattern = `\d{1,3}(\.\d{1,3}){3}|[0-9A-Fa-f]*:[0-9A-Fa-f]*:[0-9A-Fa-f:.]*`

var ipAddress = regexp.MustCompile(ipAddressPattern)

// The submitting client reads lastError through the shim: it says what kind
// of failure it was, and never which addresses were resolved or tried.
func TestRecordAttemptShowsOnlyTheKindOfFailure(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	dial := func(err error) error {
		return &url.Error{Op: "Post", URL: "http://hooks.internal:8001/", Err: &net.OpError{Op: "dial", Net: "tcp", Err: err}}
	}
	tests := []struct {
		name          string
		outcome       callback.Outcome
		wantLastError string
	}{
		{
			name: "a name the cluster's resolver does not know",
			outcome: callback.Outcome{Err: dial(&net.DNSError{Err: "no such host", Name: "x", Server: "10.96.0.10:53",
				IsNotFound: true})},
			wantLastError: "host name not found",
		},
		{
			name:          "a denied address",
			outcome:       callback.Outcome{Err: dial(&callback.DeniedAddressError{Addr: netip.MustParseAddr("127.0.0.9")})},
			wantLastError: callback.FailureAddressNotAllowed,
		},
		{
			name:          "a refused connection",
			outcome:       callback.Outcome{Err: dial(&os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED})},
			wantLastError: "connection refused",
		},
		{
			name:          "a failure the sender named",
			outcome:       callback.Failed(dial(errors.New("i/o timeout talking to 10.1.2.3:8001")), "timed out after 15s"),
			wantLastError: "timed out after 15s",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ir := testutil.MakeInferenceRequest("r", "ml").Callback("http://hooks.internal:8001/").Obj()
			ir.Status.Phase = inferencev1alpha1.PhaseSucceeded
			s := newRequestState(ir, now)

			s.recordAttempt(tc.outcome, []time.Duration{time.Minute}, func(d time.Duration) time.Duration { return d })

			if diff := cmp.Diff(tc.wantLastError, s.status.Delivery.LastError); diff != "" {
				t.Errorf("lastError (-want +got):\n%s", diff)
			}
			shown := []string{s.status.Delivery.LastError}
			if c := meta.FindStatusCondition(s.status.Conditions, inferencev1alpha1.ConditionDelivered); c != nil {
				shown = append(shown, c.Message)
			}
			for _, e := range s.events {
				shown = append(shown, e.note)
			}
			for _, text := range shown {
				if !strings.Contains(text, tc.wantLastError) {
					t.Errorf("%q does not name the failure %q", text, tc.wantLastError)
				}
				if ip := ipAddress.FindString(strings.ReplaceAll(text, now.Add(time.Minute).Format(time.RFC3339), "")); ip != "" {
					t.Errorf("%q names address %s", text, ip)
				}
			}
		})
	}
}

func TestPayload(t *testing.T) {
	ir := testutil.MakeInferenceRequest("req-9", "ml").Obj()
	failed := newRequestState(ir, time.Now())
	failed.fail(inferencev1alpha1.ReasonJobFailed, "boom")
	succeeded := newRequestState(ir, time.Now())
	succeeded.succeed([]byte(`{"a":1}`))
	for _, tc := range []struct {
		name string
		s    *requestState
		want callback.Payload
	}{
		{name: "failed", s: failed, want: callback.Payload{Type: callback.EventCompleted, ID: "req-9", Status: callback.StatusFailed, Error: "boom"}},
		{name: "succeeded", s: succeeded, want: callback.Payload{Type: callback.EventCompleted, ID: "req-9", Status: callback.StatusSucceeded,
			Result: json.RawMessage(`{"a":1}`)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, payload(tc.s)); diff != "" {
				t.Errorf("payload (-want +got):\n%s", diff)
			}
		})
	}
}

// Status keeps whole seconds: a next attempt stored rounded down would make a
// re-reconciled request send up to a second early.
func TestNextAttemptTimeIsRoundedUp(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 900_000_000, time.UTC)
	ir := testutil.MakeInferenceRequest("r", "ml").Callback("https://example.com/").Obj()
	ir.Status.Phase = inferencev1alpha1.PhaseSucceeded
	s := newRequestState(ir, now)
	s.recordAttempt(callback.Outcome{StatusCode: 503}, []time.Duration{2 * time.Second}, func(d time.Duration) time.Duration { return d })

	want := time.Date(2026, 11, 24, 12, 0, 3, 0, time.UTC)
	if got := s.status.Delivery.NextAttemptTime; got == nil || !got.Time.Equal(want) {
		t.Errorf("nextAttemptTime = %v, want %v (12:00:02.9 rounded up)", got, want)
	}
}
