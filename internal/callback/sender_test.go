package callback

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

var loopbackOnly = []string{"127.0.0.0/8", "::1/128"}

func newSender(t *testing.T, allow []string, requireHTTPS bool) *Sender {
	t.Helper()
	p, err := NewPolicy(allow, requireHTTPS)
	if err != nil {
		t.Fatal(err)
	}
	return NewSender(p)
}

func TestSendDeliversSignedBody(t *testing.T) {
	secret := "whsec_" + base64.StdEncoding.EncodeToString([]byte("a-signing-key-of-32-bytes-long!!"))
	keys, err := ParseKeys(secret)
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"type":"inference.completed","id":"1234","status":"succeeded","result":"OK"}`)
	ts := time.Unix(1764000000, 0)

	var got *http.Request
	var gotBody []byte
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r
		gotBody, _ = io.ReadAll(r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer receiver.Close()

	out := newSender(t, loopbackOnly, false).Send(context.Background(), Attempt{
		URL: receiver.URL + "/v1/results", WebhookID: "msg_abc", Timestamp: ts, Body: body, Keys: keys, Timeout: 5 * time.Second,
	})
	if !out.Delivered() {
		t.Fatalf("outcome %+v, want delivered", out)
	}
	if got.Method != http.MethodPost || got.URL.Path != "/v1/results" {
		t.Errorf("request %s %s, want POST /v1/results", got.Method, got.URL.Path)
	}
	if string(gotBody) != string(body) {
		t.Errorf("body %q, want %q", gotBody, body)
	}
	for header, want := range map[string]string{
		"Content-Type":      "application/json",
		"webhook-id":        "msg_abc",
		"webhook-timestamp": "1764000000",
	} {
		if v := got.Header.Get(header); v != want {
			t.Errorf("%s = %q, want %q", header, v, want)
		}
	}
	if !verifies(secret, "msg_abc", "1764000000", gotBody, got.Header.Get("webhook-signature")) {
		t.Errorf("webhook-signature %q does not verify", got.Header.Get("webhook-signature"))
	}
}

func TestSendWithoutKeysSendsNoSignature(t *testing.T) {
	var signature atomic.Value
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		signature.Store(r.Header.Values("webhook-signature"))
	}))
	defer receiver.Close()

	out := newSender(t, loopbackOnly, false).Send(context.Background(), Attempt{URL: receiver.URL, WebhookID: "msg_1", Timestamp: time.Now()})
	if !out.Delivered() {
		t.Fatalf("outcome %+v, want delivered", out)
	}
	if v := signature.Load().([]string); len(v) != 0 {
		t.Errorf("unsigned attempt carried webhook-signature %q", v)
	}
}

func TestSendOutcomes(t *testing.T) {
	tests := []struct {
		name           string
		handler        http.HandlerFunc
		wantStatus     int
		wantDelivered  bool
		wantGone       bool
		wantRetryAfter time.Duration
		wantErr        string
	}{
		{
			name:          "201 delivers",
			handler:       func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusCreated) },
			wantStatus:    http.StatusCreated,
			wantDelivered: true,
		},
		{
			name:       "410 is gone",
			handler:    func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusGone) },
			wantStatus: http.StatusGone,
			wantGone:   true,
		},
		{
			name: "503 with Retry-After",
			handler: func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Retry-After", "30")
				w.WriteHeader(http.StatusServiceUnavailable)
			},
			wantStatus:     http.StatusServiceUnavailable,
			wantRetryAfter: 30 * time.Second,
		},
		{
			name: "a huge answer is cut off, not read whole",
			handler: func(w http.ResponseWriter, _ *http.Request) {
				chunk := []byte(strings.Repeat("x", 1<<20))
				for range 64 {
					if _, err := w.Write(chunk); err != nil {
						return
					}
				}
			},
			wantStatus:    http.StatusOK,
			wantDelivered: true,
		},
		{
			name: "no answer within the timeout",
			handler: func(_ http.ResponseWriter, r *http.Request) {
				// Once the body is read, the server notices the client hang up.
				_, _ = io.Copy(io.Discard, r.Body)
				<-r.Context().Done()
			},
			wantErr: "timed out after 200ms",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			receiver := httptest.NewServer(tc.handler)
			defer receiver.Close()

			out := newSender(t, loopbackOnly, false).Send(context.Background(), Attempt{
				URL: receiver.URL, WebhookID: "msg_1", Timestamp: time.Now(), Body: []byte(`{}`), Timeout: 200 * time.Millisecond,
			})
			if out.StatusCode != tc.wantStatus || out.Delivered() != tc.wantDelivered || out.Gone() != tc.wantGone ||
				out.RetryAfter != tc.wantRetryAfter {
				t.Errorf("outcome %+v (delivered=%v gone=%v), want status %d delivered=%v gone=%v retryAfter=%v",
					out, out.Delivered(), out.Gone(), tc.wantStatus, tc.wantDelivered, tc.wantGone, tc.wantRetryAfter)
			}
			if tc.wantErr != "" && (out.Err == nil || out.Describe() != tc.wantErr) {
				t.Errorf("outcome %+v described as %q, want %q", out, out.Describe(), tc.wantErr)
			}
			if out.Denied() {
				t.Errorf("outcome %+v is denied; the receiver was allowed", out)
			}
		})
	}
}

func TestSendDoesNotFollowRedirects(t *testing.T) {
	var followed atomic.Bool
	target := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { followed.Store(true) }))
	defer target.Close()
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL, http.StatusTemporaryRedirect)
	}))
	defer receiver.Close()

	out := newSender(t, loopbackOnly, false).Send(context.Background(), Attempt{URL: receiver.URL, WebhookID: "msg_1", Timestamp: time.Now()})
	if out.StatusCode != http.StatusTemporaryRedirect || out.Delivered() {
		t.Errorf("outcome %+v, want an undelivered 307", out)
	}
	if followed.Load() {
		t.Error("the redirect was followed")
	}
}

func TestSendRefusesDeniedAddresses(t *testing.T) {
	var reached atomic.Bool
	receiver := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { reached.Store(true) }))
	defer receiver.Close()
	port := receiver.URL[strings.LastIndex(receiver.URL, ":")+1:]

	for _, url := range []string{
		receiver.URL,                              // 127.0.0.1 literal
		"http://localhost:" + port,                // a name that resolves to loopback
		"http://[::ffff:127.0.0.1]:" + port,       // loopback in IPv4-mapped form
		"http://169.254.169.254/latest/meta-data", // cloud metadata
	} {
		t.Run(url, func(t *testing.T) {
			out := newSender(t, nil, false).Send(context.Background(), Attempt{URL: url, WebhookID: "msg_1", Timestamp: time.Now(), Timeout: time.Second})
			if !out.Denied() {
				t.Errorf("outcome %+v, want denied", out)
			}
		})
	}
	if reached.Load() {
		t.Error("a denied callback reached the receiver")
	}
}

func TestSendRequireHTTPS(t *testing.T) {
	out := newSender(t, loopbackOnly, true).Send(context.Background(), Attempt{URL: "http://127.0.0.1:1/", WebhookID: "msg_1", Timestamp: time.Now()})
	if !out.Denied() || !strings.Contains(out.Describe(), "https") {
		t.Errorf("outcome %+v, want refused for plain http", out)
	}
}

func TestSendVerifiesTLS(t *testing.T) {
	var reached atomic.Bool
	receiver := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { reached.Store(true) }))
	defer receiver.Close()

	out := newSender(t, loopbackOnly, true).Send(context.Background(), Attempt{URL: receiver.URL, WebhookID: "msg_1", Timestamp: time.Now(), Timeout: 5 * time.Second})
	if out.Delivered() || out.Err == nil || out.Describe() != FailureTLSUntrusted {
		t.Errorf("outcome %+v described as %q, want %q for a self-signed receiver", out, out.Describe(), FailureTLSUntrusted)
	}
	if reached.Load() {
		t.Error("a receiver with an untrusted certificate got the callback")
	}
}

// What status and the client read of a failed attempt names the kind of
// failure only: a resolver's address or a denied address would let a client
// map the cluster's network.
func TestSendDescribesFailuresWithoutAddresses(t *testing.T) {
	refused, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusedURL := "http://" + refused.Addr().String() + "/"
	_ = refused.Close() // nothing listens there now

	tests := []struct {
		name  string
		url   string
		allow []string
		want  string // the words the description must contain
	}{
		// Depending on the resolver at hand the lookup is not found, fails
		// or times out; each is named as a host name problem.
		{name: "unresolvable name", url: "http://does-not-exist.invalid/", want: "host name"},
		{name: "denied IPv4 literal", url: "http://10.0.0.1:8001/v1/results", want: "address not allowed"},
		{name: "denied loopback literal", url: "http://127.0.0.9/", want: "address not allowed"},
		{name: "denied IPv6 literal", url: "http://[fd00::1]:8001/", want: "address not allowed"},
		{name: "denied 6to4 literal", url: "http://[2002:7f00:1::1]/", want: "address not allowed"},
		{name: "connection refused", url: refusedURL, allow: loopbackOnly, want: FailureConnectionRefused},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := newSender(t, tc.allow, false).Send(context.Background(), Attempt{
				URL: tc.url, WebhookID: "msg_1", Timestamp: time.Now(), Body: []byte(`{}`), Timeout: 5 * time.Second,
			})
			got := out.Describe()
			if out.Delivered() || out.Err == nil {
				t.Fatalf("outcome %+v, want a failed attempt", out)
			}
			if !strings.Contains(got, tc.want) {
				t.Errorf("Describe() = %q, want it to contain %q (error: %v)", got, tc.want, out.Err)
			}
			if ip := ipAddress.FindString(got); ip != "" {
				t.Errorf("Describe() = %q names address %s", got, ip)
			}
		})
	}
}

// A receiver answering with huge headers would make the transport read them
// whole (10 MiB by default) for every attempt in flight.
func TestSendRefusesOversizedResponseHeaders(t *testing.T) {
	tests := []struct {
		name          string
		headerBytes   int
		wantDelivered bool
	}{
		{name: "headers within the limit", headerBytes: 32 << 10, wantDelivered: true},
		{name: "headers over the limit", headerBytes: 128 << 10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				for i := 0; i*1024 < tc.headerBytes; i++ {
					w.Header().Set(fmt.Sprintf("X-Padding-%d", i), strings.Repeat("x", 1000))
				}
				w.WriteHeader(http.StatusOK)
			}))
			defer receiver.Close()

			out := newSender(t, loopbackOnly, false).Send(context.Background(), Attempt{
				URL: receiver.URL, WebhookID: "msg_1", Timestamp: time.Now(), Body: []byte(`{}`), Timeout: 5 * time.Second,
			})
			if out.Delivered() != tc.wantDelivered {
				t.Fatalf("outcome %+v delivered=%v, want %v", out, out.Delivered(), tc.wantDelivered)
			}
			if !tc.wantDelivered && out.Describe() != FailureHeadersTooLarge {
				t.Errorf("Describe() = %q, want %q (error: %v)", out.Describe(), FailureHeadersTooLarge, out.Err)
			}
		})
	}
}
