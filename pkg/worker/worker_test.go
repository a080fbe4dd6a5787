package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestRun(t *testing.T) {
	tests := []struct {
		name        string
		input       string
		handle      Handler
		wantCode    int
		wantMessage string // the termination message, exactly
		wantPrefix  string // or its beginning
	}{
		{
			name:        "a string result is written as JSON",
			handle:      func(context.Context, Request) (any, error) { return "OK", nil },
			wantCode:    ExitOK,
			wantMessage: `"OK"`,
		},
		{
			name:  "the handler sees id, model and input",
			input: `{"text": "great movie"}`,
			handle: func(_ context.Context, req Request) (any, error) {
				var in struct{ Text string }
				if err := req.Decode(&in); err != nil {
					return nil, err
				}
				return map[string]string{"id": req.ID, "model": req.Model, "text": in.Text}, nil
			},
			wantCode:    ExitOK,
			wantMessage: `{"id":"1234","model":"sentiment","text":"great movie"}`,
		},
		{
			name:        "no input is null",
			handle:      func(_ context.Context, req Request) (any, error) { return string(req.Input), nil },
			wantCode:    ExitOK,
			wantMessage: `"null"`,
		},
		{
			name:        "an error fails the request with its message",
			handle:      func(context.Context, Request) (any, error) { return nil, errors.New("CUDA out of memory") },
			wantCode:    ExitFailed,
			wantMessage: "CUDA out of memory",
		},
		{
			name:        "bad input exits 42",
			handle:      func(context.Context, Request) (any, error) { return nil, BadInput("text is empty") },
			wantCode:    ExitBadInput,
			wantMessage: "text is empty",
		},
		{
			name:  "input that does not decode is bad input",
			input: `[1, 2]`,
			handle: func(_ context.Context, req Request) (any, error) {
				var in struct{ Text string }
				return nil, req.Decode(&in)
			},
			wantCode:   ExitBadInput,
			wantPrefix: "input does not fit",
		},
		{
			name:        "input that is not JSON is bad input",
			input:       `{"text": `,
			handle:      func(context.Context, Request) (any, error) { return "unreachable", nil },
			wantCode:    ExitBadInput,
			wantMessage: "KINFER_INPUT is not valid JSON",
		},
		{
			name:       "a result over 4096 bytes is refused, not cut",
			handle:     func(context.Context, Request) (any, error) { return strings.Repeat("x", MaxResultBytes), nil },
			wantCode:   ExitResultTooLarge,
			wantPrefix: "the result is 4098 bytes of JSON",
		},
		{
			name:        "a result of exactly 4096 bytes is kept",
			handle:      func(context.Context, Request) (any, error) { return strings.Repeat("x", MaxResultBytes-2), nil },
			wantCode:    ExitOK,
			wantMessage: `"` + strings.Repeat("x", MaxResultBytes-2) + `"`,
		},
		{
			name:       "a panic still reaches the status",
			handle:     func(context.Context, Request) (any, error) { panic("index out of range") },
			wantCode:   ExitFailed,
			wantPrefix: "the worker panicked: index out of range",
		},
		{
			name:       "a result that is not JSON-encodable fails",
			handle:     func(context.Context, Request) (any, error) { return make(chan int), nil },
			wantCode:   ExitFailed,
			wantPrefix: "the result cannot be encoded as JSON",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "result")
			env := map[string]string{EnvRequestID: "1234", EnvModel: "sentiment", EnvInput: tc.input, EnvResultPath: path}
			var stderr bytes.Buffer

			code := run(context.Background(), func(k string) string { return env[k] }, tc.handle, &stderr)

			if code != tc.wantCode {
				t.Errorf("exit code %d, want %d (stderr %q)", code, tc.wantCode, stderr.String())
			}
			message, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantMessage != "" && string(message) != tc.wantMessage {
				t.Errorf("termination message %q, want %q", message, tc.wantMessage)
			}
			if tc.wantPrefix != "" && !strings.HasPrefix(string(message), tc.wantPrefix) {
				t.Errorf("termination message %q, want it to start with %q", message, tc.wantPrefix)
			}
			if len(message) > MaxResultBytes {
				t.Errorf("termination message is %d bytes, over what Kubernetes keeps", len(message))
			}
			if code != ExitOK && !strings.Contains(stderr.String(), string(message)) {
				t.Errorf("stderr %q does not repeat the failure", stderr.String())
			}
		})
	}
}

func TestRunPassesCancellation(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // as SIGTERM would
	path := filepath.Join(t.TempDir(), "result")
	code := run(ctx, func(k string) string { return map[string]string{EnvResultPath: path}[k] },
		func(ctx context.Context, _ Request) (any, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}, &bytes.Buffer{})
	if code != ExitFailed {
		t.Errorf("exit code %d, want %d for a handler stopped by its context", code, ExitFailed)
	}
}

func TestRunReportsAnUnwritableResultPath(t *testing.T) {
	env := map[string]string{EnvResultPath: filepath.Join(t.TempDir(), "missing", "dir", "result")}
	var stderr bytes.Buffer
	code := run(context.Background(), func(k string) string { return env[k] },
		func(context.Context, Request) (any, error) { return "OK", nil }, &stderr)
	if code != ExitFailed || !strings.Contains(stderr.String(), "cannot write the result") {
		t.Errorf("exit %d, stderr %q; want a failure saying the result could not be written", code, stderr.String())
	}
}

func TestRunSendsALargeResultThroughTheWorkAPI(t *testing.T) {
	large := strings.Repeat("x", 10<<10)
	tests := []struct {
		name       string
		answers    []int // the work API's answers, in turn
		result     string
		wantCode   int
		wantPrefix string
		wantCalls  int
	}{
		{name: "stored: exits 0", answers: []int{http.StatusOK}, result: large, wantCode: ExitOK,
			wantPrefix: sentResult, wantCalls: 1},
		{name: "not now, then stored: sent again", answers: []int{http.StatusServiceUnavailable, http.StatusOK},
			result: large, wantCode: ExitOK, wantPrefix: sentResult, wantCalls: 2},
		{name: "the request ended meanwhile", answers: []int{http.StatusGone}, result: large,
			wantCode: ExitResultTooLarge, wantPrefix: "the request ended before its result could be sent", wantCalls: 1},
		{name: "refused", answers: []int{http.StatusUnauthorized}, result: large, wantCode: ExitResultTooLarge,
			wantPrefix: "the result is 10242 bytes of JSON, too large for a termination message, and the work API refused it: 401",
			wantCalls:  1},
		{name: "over 64 KiB is not sent", result: strings.Repeat("x", MaxPoolResultBytes), wantCode: ExitResultTooLarge,
			wantPrefix: "the result is 65538 bytes of JSON; at most 65536 bytes can be returned"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var calls int
			server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				defer mu.Unlock()
				body, _ := io.ReadAll(r.Body)
				if r.Method != http.MethodPost || r.URL.Path != fakeModelPath+"/requests/req-1/result" {
					t.Errorf("called %s %s", r.Method, r.URL.Path)
				}
				if r.Header.Get("Authorization") != "Bearer "+fakeToken {
					t.Errorf("Authorization %q", r.Header.Get("Authorization"))
				}
				if want, _ := json.Marshal(tc.result); !bytes.Equal(body, want) {
					t.Errorf("sent %d bytes, want the result's %d", len(body), len(want))
				}
				status := tc.answers[min(calls, len(tc.answers)-1)]
				calls++
				w.Header().Set("Retry-After", "0")
				w.WriteHeader(status)
				_, _ = w.Write([]byte(`{}`))
			}))
			defer server.Close()
			path := filepath.Join(t.TempDir(), "result")
			env := map[string]string{EnvRequestID: "1234", EnvRequestName: "req-1", EnvModel: "sentiment", EnvResultPath: path,
				EnvWorkURL: server.URL + fakeModelPath, EnvWorkToken: fakeToken, EnvPodName: fakePod}
			var stderr bytes.Buffer

			code := run(context.Background(), func(k string) string { return env[k] },
				func(context.Context, Request) (any, error) { return tc.result, nil }, &stderr)

			if code != tc.wantCode {
				t.Errorf("exit code %d, want %d (stderr %q)", code, tc.wantCode, stderr.String())
			}
			message, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(string(message), tc.wantPrefix) {
				t.Errorf("termination message %q, want it to start with %q", message, tc.wantPrefix)
			}
			mu.Lock()
			defer mu.Unlock()
			if calls != tc.wantCalls {
				t.Errorf("%d calls to the work API, want %d", calls, tc.wantCalls)
			}
		})
	}
}
