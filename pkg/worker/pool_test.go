package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kinfer/kinfer/internal/testutil"
)

// The pool tests run the SDK's loop against fakeWorkAPI, as a pool pod runs
// against the manager, and judge it by what the API received.

// within runs serve, failing the test if it has not returned after a while.
func within(t *testing.T, serve func() int) int {
	t.Helper()
	done := make(chan int, 1)
	go func() { done <- serve() }()
	select {
	case code := <-done:
		return code
	case <-time.After(30 * time.Second):
		t.Fatal("the worker did not exit")
		return -1
	}
}

func servePool(t *testing.T, ctx context.Context, env map[string]string, handle Handler) (int, string) {
	t.Helper()
	var stderr testutil.Output
	code := within(t, func() int { return run(ctx, func(k string) string { return env[k] }, handle, &stderr) })
	return code, stderr.String()
}

func serveBatches(t *testing.T, env map[string]string, handle BatchHandler) (int, string) {
	t.Helper()
	var stderr testutil.Output
	code := within(t, func() int {
		return runBatch(context.Background(), func(k string) string { return env[k] }, handle, &stderr)
	})
	return code, stderr.String()
}

type textInput struct {
	Text string `json:"text"`
}

func TestPoolReportsEachOutcome(t *testing.T) {
	var in textInput
	decodeError := Request{Input: json.RawMessage(`[1, 2]`)}.Decode(&in).Error()
	api := newFakeWorkAPI(t,
		item("1", `{"text": "great movie"}`),
		item("2", `{"text": ""}`),
		item("3", `{"text": "too long for the GPU"}`),
		item("4", `[1, 2]`),
		item("5", `{"text": "panic"}`),
		fakeItem{Lease: "a/b c?d#e%f", ID: "6", Name: "req-6", Input: json.RawMessage(`{"text": "odd lease"}`), LeaseSeconds: 30},
		fakeItem{Lease: "lease-7", ID: "7", Name: "req-7", LeaseSeconds: 30},
	).start()

	code, stderr := servePool(t, context.Background(), api.env(), func(_ context.Context, req Request) (any, error) {
		if req.ID == "7" {
			return string(req.Input), nil
		}
		var in textInput
		if err := req.Decode(&in); err != nil {
			return nil, err
		}
		switch in.Text {
		case "":
			return nil, BadInput("text is empty")
		case "too long for the GPU":
			return nil, errors.New("CUDA out of memory")
		case "panic":
			panic("index out of range")
		}
		return map[string]string{"id": req.ID, "name": req.Name, "model": req.Model, "text": in.Text}, nil
	})

	if code != ExitOK {
		t.Errorf("exit code %d, want %d after the manager's exit (stderr %q)", code, ExitOK, stderr)
	}
	want := fakeRecord{
		Results: map[string]string{
			"lease-1":     `{"id":"1","model":"sentiment","name":"req-1","text":"great movie"}`,
			"a/b c?d#e%f": `{"id":"6","model":"sentiment","name":"req-6","text":"odd lease"}`,
			"lease-7":     `"null"`,
		},
		Errors: map[string]fakeError{
			"lease-2": {Message: "text is empty", BadInput: true},
			"lease-3": {Message: "CUDA out of memory", BadInput: false},
			"lease-4": {Message: decodeError, BadInput: true},
			"lease-5": {Message: "the worker panicked: index out of range", BadInput: false},
		},
	}
	if diff := cmp.Diff(want, api.snapshot()); diff != "" {
		t.Errorf("reports (-want +got):\n%s", diff)
	}
	for _, take := range api.takesSoFar() {
		if take.Max != 1 || take.WaitSeconds != takeWaitSeconds {
			t.Errorf("take asked for max %d, wait %d s; want max 1, wait %d s", take.Max, take.WaitSeconds, takeWaitSeconds)
		}
	}
	if len(api.takesSoFar()) != 9 { // 7 items, one empty answer, exit
		t.Errorf("%d takes, want 9: one per item, then until the manager says exit", len(api.takesSoFar()))
	}
	if !strings.Contains(stderr, "CUDA out of memory") {
		t.Errorf("stderr %q does not log the failure", stderr)
	}
}

func TestPoolRenewsWhileTheHandlerWorks(t *testing.T) {
	slow := item("1", `null`)
	slow.LeaseSeconds = 1
	api := newFakeWorkAPI(t, slow).start()

	taken := time.Now()
	code, stderr := servePool(t, context.Background(), api.env(), func(context.Context, Request) (any, error) {
		time.Sleep(1200 * time.Millisecond)
		return "OK", nil
	})

	if code != ExitOK {
		t.Fatalf("exit code %d (stderr %q)", code, stderr)
	}
	renewals := api.renewalsOf("lease-1")
	if len(renewals) < 2 {
		t.Errorf("%d renewals in 1.2 s of a 1 s lease, want one every third of a second", len(renewals))
	}
	if len(renewals) > 0 && renewals[0].Sub(taken) < 300*time.Millisecond {
		t.Errorf("first renewal %v after the take, want a third of the lease time", renewals[0].Sub(taken))
	}
	if diff := cmp.Diff(map[string]string{"lease-1": `"OK"`}, api.snapshot().Results); diff != "" {
		t.Errorf("results (-want +got):\n%s", diff)
	}
}

func TestPoolStopsWorkWhoseLeaseIsGone(t *testing.T) {
	doomed := item("1", `null`)
	doomed.LeaseSeconds = 1
	api := newFakeWorkAPI(t, doomed, item("2", `null`)).start()
	api.gone["lease-1"] = true

	var cause error
	start := time.Now()
	code, stderr := servePool(t, context.Background(), api.env(), func(ctx context.Context, req Request) (any, error) {
		if req.ID == "2" {
			return "next", nil
		}
		select {
		case <-ctx.Done():
			cause = context.Cause(ctx)
			return nil, cause
		case <-time.After(10 * time.Second):
			return "too late", nil
		}
	})

	if code != ExitOK {
		t.Fatalf("exit code %d (stderr %q)", code, stderr)
	}
	if !errors.Is(cause, errLeaseGone) {
		t.Errorf("the handler's context ended with %v, want %v", cause, errLeaseGone)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the handler ran %v; the first renewal, after a third of a second, should have stopped it", took)
	}
	want := fakeRecord{Results: map[string]string{"lease-2": `"next"`}, Errors: map[string]fakeError{}}
	if diff := cmp.Diff(want, api.snapshot()); diff != "" {
		t.Errorf("reports (-want +got); nothing should be reported for a lease that is gone:\n%s", diff)
	}
}

func TestPoolRetriesWhenTheManagerCannotAnswer(t *testing.T) {
	tests := []struct {
		name       string
		status     int
		retryAfter string
		minWait    time.Duration
	}{
		{name: "503 with Retry-After", status: http.StatusServiceUnavailable, retryAfter: "1", minWait: time.Second},
		{name: "503 without Retry-After backs off", status: http.StatusServiceUnavailable, minWait: 250 * time.Millisecond},
		{name: "a 500 is tried again", status: http.StatusInternalServerError, minWait: 250 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			api := newFakeWorkAPI(t, item("1", `null`))
			api.takeFailures, api.retryAfter = []int{tc.status}, tc.retryAfter
			api.start()

			code, stderr := servePool(t, context.Background(), api.env(),
				func(context.Context, Request) (any, error) { return "OK", nil })

			if code != ExitOK {
				t.Fatalf("exit code %d (stderr %q)", code, stderr)
			}
			takes := api.takesSoFar()
			if waited := takes[1].At.Sub(takes[0].At); waited < tc.minWait {
				t.Errorf("took again after %v, want at least %v", waited, tc.minWait)
			}
			if diff := cmp.Diff(map[string]string{"lease-1": `"OK"`}, api.snapshot().Results); diff != "" {
				t.Errorf("results (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPoolRetriesWhileNothingListens(t *testing.T) {
	api := newFakeWorkAPI(t, item("1", `null`))
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := listener.Addr().String()
	_ = listener.Close() // connections are refused until the API starts there
	api.url = "http://" + addr + fakeModelPath
	env := api.env()

	var stderr testutil.Output
	p := newPool(func(k string) string { return env[k] }, 1, &stderr)
	p.minBackoff, p.maxBackoff = 20*time.Millisecond, 100*time.Millisecond
	done := make(chan int, 1)
	go func() {
		done <- p.run(context.Background(), Handler(func(context.Context, Request) (any, error) { return "OK", nil }).batch())
	}()

	for deadline := time.Now().Add(10 * time.Second); strings.Count(stderr.String(), "trying again") < 2; {
		if time.Now().After(deadline) {
			t.Fatalf("no retries logged while nothing listens: %q", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	api.startOn(addr)

	select {
	case code := <-done:
		if code != ExitOK {
			t.Errorf("exit code %d (stderr %q)", code, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the worker did not reach the API once it listened")
	}
	if diff := cmp.Diff(map[string]string{"lease-1": `"OK"`}, api.snapshot().Results); diff != "" {
		t.Errorf("results (-want +got):\n%s", diff)
	}
}

func TestPoolGivesUpOnAWrongToken(t *testing.T) {
	api := newFakeWorkAPI(t, item("1", `null`)).start()
	env := api.env()
	env[EnvWorkToken] = "another model's token"

	called := false
	code, stderr := servePool(t, context.Background(), env, func(context.Context, Request) (any, error) {
		called = true
		return "OK", nil
	})

	if code == ExitOK {
		t.Errorf("exit code %d, want a failure: the pod is misconfigured", code)
	}
	if !strings.Contains(stderr, "401") || !strings.Contains(stderr, EnvWorkToken) {
		t.Errorf("stderr %q should say the work API answered 401 and name %s", stderr, EnvWorkToken)
	}
	if called || len(api.takesSoFar()) != 0 {
		t.Errorf("handler called %v, %d takes recorded; want neither", called, len(api.takesSoFar()))
	}
}

func TestPoolRefusesALargeResultItself(t *testing.T) {
	api := newFakeWorkAPI(t, item("over", `null`), item("exact", `null`)).start()

	code, stderr := servePool(t, context.Background(), api.env(), func(_ context.Context, req Request) (any, error) {
		if req.ID == "over" {
			return strings.Repeat("x", MaxPoolResultBytes), nil
		}
		return strings.Repeat("x", MaxPoolResultBytes-2), nil
	})

	if code != ExitOK {
		t.Fatalf("exit code %d (stderr %q)", code, stderr)
	}
	want := fakeRecord{
		Results: map[string]string{"lease-exact": `"` + strings.Repeat("x", MaxPoolResultBytes-2) + `"`},
		Errors: map[string]fakeError{"lease-over": {Message: "the result is 65538 bytes of JSON; the work API takes at most 65536 bytes, " +
			"so store large results elsewhere and return a reference"}},
	}
	if diff := cmp.Diff(want, api.snapshot()); diff != "" {
		t.Errorf("reports (-want +got):\n%s", diff)
	}
}

func TestPoolEndsTheContextAtTheRequestsTimeout(t *testing.T) {
	timed := item("1", `null`)
	timed.TimeoutSeconds = 1
	api := newFakeWorkAPI(t, timed).start()

	start := time.Now()
	var deadline time.Time
	code, stderr := servePool(t, context.Background(), api.env(), func(ctx context.Context, _ Request) (any, error) {
		deadline, _ = ctx.Deadline()
		<-ctx.Done()
		return nil, context.Cause(ctx)
	})

	if code != ExitOK {
		t.Fatalf("exit code %d (stderr %q)", code, stderr)
	}
	if d := deadline.Sub(start); d < 900*time.Millisecond || d > 2*time.Second {
		t.Errorf("the context's deadline is %v after the start, want timeout_seconds (1 s)", d)
	}
	want := map[string]fakeError{"lease-1": {Message: errTimedOut.Error()}}
	if diff := cmp.Diff(want, api.snapshot().Errors); diff != "" {
		t.Errorf("errors (-want +got):\n%s", diff)
	}
}

func TestPoolOnSIGTERM(t *testing.T) {
	tests := []struct {
		name string
		// finish is what the handler does once the context ends.
		finish      func(ctx context.Context) (any, error)
		wantResults map[string]string
	}{
		{
			name:        "work stopped by SIGTERM is not reported",
			finish:      func(ctx context.Context) (any, error) { return nil, ctx.Err() },
			wantResults: map[string]string{},
		},
		{
			name:        "work finished after SIGTERM is reported",
			finish:      func(context.Context) (any, error) { return "finished", nil },
			wantResults: map[string]string{"lease-1": `"finished"`},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			api := newFakeWorkAPI(t, item("1", `null`), item("2", `null`)).start()
			ctx, terminate := context.WithCancel(context.Background())
			defer terminate()

			code, stderr := servePool(t, ctx, api.env(), func(ctx context.Context, _ Request) (any, error) {
				terminate() // SIGTERM arrives while the handler works
				<-ctx.Done()
				return tc.finish(ctx)
			})

			if code != ExitOK {
				t.Errorf("exit code %d, want %d (stderr %q)", code, ExitOK, stderr)
			}
			want := fakeRecord{Results: tc.wantResults, Errors: map[string]fakeError{}}
			if diff := cmp.Diff(want, api.snapshot()); diff != "" {
				t.Errorf("reports (-want +got):\n%s", diff)
			}
			if len(api.takesSoFar()) != 1 {
				t.Errorf("%d takes, want none after SIGTERM", len(api.takesSoFar()))
			}
		})
	}
}

func TestPoolOnSIGTERMWhileWaitingToTakeAgain(t *testing.T) {
	api := newFakeWorkAPI(t, item("1", `null`))
	api.takeFailures, api.retryAfter = []int{http.StatusServiceUnavailable}, "30"
	api.start()
	ctx, terminate := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, terminate)

	start := time.Now()
	code, stderr := servePool(t, ctx, api.env(), func(context.Context, Request) (any, error) { return "OK", nil })

	if code != ExitOK {
		t.Errorf("exit code %d, want %d (stderr %q)", code, ExitOK, stderr)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("exited %v after SIGTERM, want at once", took)
	}
}

func TestRunBatchTakesUpToTheBatchSize(t *testing.T) {
	api := newFakeWorkAPI(t, item("1", `1`), item("2", `2`), item("3", `3`), item("4", `4`), item("5", `5`)).start()
	env := api.env()
	env[EnvBatchSize] = "3"

	var sizes []int
	code, stderr := serveBatches(t, env, func(_ context.Context, reqs []Request) []Outcome {
		sizes = append(sizes, len(reqs))
		if len(reqs) == 2 {
			return []Outcome{{Err: BadInput("four is not a number I take")}} // one short
		}
		out := make([]Outcome, len(reqs))
		for i, req := range reqs {
			out[i].Result = map[string]string{"id": req.ID, "input": string(req.Input)}
		}
		return out
	})

	if code != ExitOK {
		t.Fatalf("exit code %d (stderr %q)", code, stderr)
	}
	if diff := cmp.Diff([]int{3, 2}, sizes); diff != "" {
		t.Errorf("batch sizes (-want +got):\n%s", diff)
	}
	for _, take := range api.takesSoFar() {
		if take.Max != 3 {
			t.Errorf("take asked for max %d, want %s (3)", take.Max, EnvBatchSize)
		}
	}
	want := fakeRecord{
		Results: map[string]string{
			"lease-1": `{"id":"1","input":"1"}`,
			"lease-2": `{"id":"2","input":"2"}`,
			"lease-3": `{"id":"3","input":"3"}`,
		},
		Errors: map[string]fakeError{
			"lease-4": {Message: "four is not a number I take", BadInput: true},
			"lease-5": {Message: "the batch handler returned 1 outcomes for 2 requests"},
		},
	}
	if diff := cmp.Diff(want, api.snapshot()); diff != "" {
		t.Errorf("reports (-want +got):\n%s", diff)
	}
}

func TestRunBatchDropsOnlyTheRequestWhoseLeaseIsGone(t *testing.T) {
	kept, doomed := item("1", `null`), item("2", `null`)
	kept.LeaseSeconds, doomed.LeaseSeconds = 1, 1
	api := newFakeWorkAPI(t, kept, doomed).start()
	api.gone["lease-2"] = true
	env := api.env()
	env[EnvBatchSize] = "2"

	var ctxErr error
	code, stderr := serveBatches(t, env, func(ctx context.Context, reqs []Request) []Outcome {
		time.Sleep(800 * time.Millisecond) // past the first renewal
		ctxErr = ctx.Err()
		return []Outcome{{Result: "kept"}, {Result: "dropped"}}
	})

	if code != ExitOK {
		t.Fatalf("exit code %d (stderr %q)", code, stderr)
	}
	if ctxErr != nil {
		t.Errorf("the batch's context ended (%v) while one of its leases was still held", ctxErr)
	}
	want := fakeRecord{Results: map[string]string{"lease-1": `"kept"`}, Errors: map[string]fakeError{}}
	if diff := cmp.Diff(want, api.snapshot()); diff != "" {
		t.Errorf("reports (-want +got):\n%s", diff)
	}
}

func TestRunBatchWithOneRequest(t *testing.T) {
	tests := []struct {
		name        string
		outcome     Outcome
		wantCode    int
		wantMessage string
	}{
		{name: "a result", outcome: Outcome{Result: map[string]int{"n": 1}}, wantCode: ExitOK, wantMessage: `{"n":1}`},
		{name: "bad input", outcome: Outcome{Err: BadInput("no")}, wantCode: ExitBadInput, wantMessage: "no"},
		{name: "an error", outcome: Outcome{Err: errors.New("OOM")}, wantCode: ExitFailed, wantMessage: "OOM"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "result")
			env := map[string]string{EnvRequestID: "1234", EnvModel: "m", EnvInput: `{"a":1}`, EnvResultPath: path, EnvBatchSize: "8"}
			var got []Request
			code, _ := serveBatches(t, env, func(_ context.Context, reqs []Request) []Outcome {
				got = reqs
				return []Outcome{tc.outcome}
			})

			if code != tc.wantCode {
				t.Errorf("exit code %d, want %d", code, tc.wantCode)
			}
			if diff := cmp.Diff([]Request{{ID: "1234", Model: "m", Input: json.RawMessage(`{"a":1}`)}}, got); diff != "" {
				t.Errorf("requests (-want +got):\n%s", diff)
			}
			if message, err := os.ReadFile(path); err != nil || string(message) != tc.wantMessage {
				t.Errorf("termination message %q (%v), want %q", message, err, tc.wantMessage)
			}
		})
	}
}

func TestARequestIDMeansOneRequestEvenWithAWorkURL(t *testing.T) {
	api := newFakeWorkAPI(t, item("1", `null`)).start()
	env := api.env()
	path := filepath.Join(t.TempDir(), "result")
	env[EnvRequestID], env[EnvResultPath] = "1234", path

	code, stderr := servePool(t, context.Background(), env, func(context.Context, Request) (any, error) { return "OK", nil })

	if message, _ := os.ReadFile(path); code != ExitOK || string(message) != `"OK"` {
		t.Errorf("exit %d, termination message %q (stderr %q); want 0 and \"OK\"", code, message, stderr)
	}
	if len(api.takesSoFar()) != 0 {
		t.Errorf("%d takes from the work API, want none", len(api.takesSoFar()))
	}
}

func TestBatchSize(t *testing.T) {
	tests := []struct {
		value   string
		want    int
		wantLog bool
	}{
		{value: "", want: 1},
		{value: "8", want: 8},
		{value: "0", want: 1, wantLog: true},
		{value: "eight", want: 1, wantLog: true},
	}
	for _, tc := range tests {
		t.Run(tc.value, func(t *testing.T) {
			var stderr bytes.Buffer
			got := batchSize(func(string) string { return tc.value }, &stderr)
			if got != tc.want || (stderr.Len() > 0) != tc.wantLog {
				t.Errorf("batchSize(%q) = %d, logged %q; want %d, a log line %v", tc.value, got, stderr.String(), tc.want, tc.wantLog)
			}
		})
	}
}

func TestRetryAfter(t *testing.T) {
	tests := []struct {
		value    string
		min, max time.Duration
	}{
		{value: "", min: 0, max: 0},
		{value: "3", min: 3 * time.Second, max: 3 * time.Second},
		{value: "-1", min: 0, max: 0},
		{value: time.Now().Add(10 * time.Second).UTC().Format(http.TimeFormat), min: 8 * time.Second, max: 10 * time.Second},
		{value: "soon", min: 0, max: 0},
	}
	for _, tc := range tests {
		t.Run(tc.value, func(t *testing.T) {
			if got := retryAfter(tc.value); got < tc.min || got > tc.max {
				t.Errorf("retryAfter(%q) = %v, want %v to %v", tc.value, got, tc.min, tc.max)
			}
		})
	}
}

func TestBackoffGrowsToItsCap(t *testing.T) {
	p := &pool{minBackoff: 100 * time.Millisecond, maxBackoff: time.Second}
	for attempt, ceiling := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		ceiling *= time.Millisecond
		for range 20 {
			if got := p.backoff(attempt); got < ceiling/2 || got > ceiling {
				t.Fatalf("backoff(%d) = %v, want %v to %v", attempt, got, ceiling/2, ceiling)
			}
		}
	}
	if got := p.backoff(200); got > time.Second {
		t.Errorf("backoff(200) = %v, over the cap", got)
	}
}

func TestRenewIntervalIsAThirdOfTheShortestLeaseHeld(t *testing.T) {
	items := []workItem{{LeaseSeconds: 60}, {LeaseSeconds: 3}, {LeaseSeconds: 90}, {}}
	tests := []struct {
		name string
		gone []bool
		want time.Duration
	}{
		{name: "all held", gone: []bool{false, false, false, false}, want: time.Second},
		{name: "the shortest gone", gone: []bool{false, true, false, false}, want: 10 * time.Second},
		{name: "a lease time left out counts as 30 s", gone: []bool{true, true, true, false}, want: 10 * time.Second},
		{name: "long leases only", gone: []bool{false, true, true, true}, want: 20 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := renewInterval(items, tc.gone); got != tc.want {
				t.Errorf("renewInterval = %v, want %v", got, tc.want)
			}
		})
	}
}
