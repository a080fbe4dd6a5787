package worker

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kinfer/kinfer/internal/testutil"
)

// The Python SDK, examples/python/kinfer_worker.py, runs as a process
// against the same fake work API as the Go SDK, and must leave the same
// record.

// pythonHandler is a worker whose input says what to do.
const pythonHandler = `
import sys
import time

import kinfer_worker


def handle(req):
    command = req.input if isinstance(req.input, dict) else {}
    do = command.get("do")
    print("handling", req.id, file=sys.stderr, flush=True)
    if do == "bad":
        raise kinfer_worker.BadInput("text is empty")
    if do == "fail":
        raise RuntimeError("CUDA out of memory")
    if do == "large":
        return "x" * command["bytes"]
    if do == "set":
        return {1, 2}
    if do == "wait":
        if req.canceled.wait(command.get("seconds", 10)):
            raise RuntimeError("canceled")
        return "waited"
    if do == "sleep":
        time.sleep(command["seconds"])
        return "slept"
    return {"id": req.id, "name": req.name, "model": req.model, "input": req.input}


def handle_batch(reqs):
    return [kinfer_worker.BadInput("text is empty") if r.input == {"do": "bad"} else {"id": r.id, "batch": len(reqs)}
            for r in reqs]


if sys.argv[1:] == ["batch"]:
    kinfer_worker.run_batch(handle_batch)
else:
    kinfer_worker.run(handle)
`

// python is a Python worker process.
type python struct {
	cmd    *exec.Cmd
	stderr *testutil.Output
	done   chan error
}

// startPython runs script (a file in examples/python, or else pythonHandler)
// with env added to a clean environment.
func startPython(t *testing.T, env map[string]string, script string, args ...string) *python {
	t.Helper()
	interpreter, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("python3 is needed to test examples/python/kinfer_worker.py: %v", err)
	}
	sdk, err := filepath.Abs(filepath.Join("..", "..", "examples", "python"))
	if err != nil {
		t.Fatal(err)
	}
	if script == "" {
		script = filepath.Join(t.TempDir(), "handler.py")
		if err := os.WriteFile(script, []byte(pythonHandler), 0o644); err != nil {
			t.Fatal(err)
		}
	} else {
		script = filepath.Join(sdk, script)
	}
	cmd := exec.Command(interpreter, append([]string{script}, args...)...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "PYTHONPATH=" + sdk, "PYTHONDONTWRITEBYTECODE=1", "NO_PROXY=127.0.0.1,localhost"}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	p := &python{cmd: cmd, stderr: &testutil.Output{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = p.stderr, p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	return p
}

// wait returns the exit code, failing the test if the process runs on.
func (p *python) wait(t *testing.T) int {
	t.Helper()
	select {
	case err := <-p.done:
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(30 * time.Second):
		t.Fatalf("the Python worker did not exit; its log:\n%s", p.stderr)
		return -1
	}
}

// waitForLog waits until the worker has logged text.
func (p *python) waitForLog(t *testing.T, text string) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(p.stderr.String(), text); {
		if time.Now().After(deadline) {
			t.Fatalf("the Python worker never logged %q; its log:\n%s", text, p.stderr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestPythonPoolReportsEachOutcome(t *testing.T) {
	api := newFakeWorkAPI(t,
		item("1", `{"text": "great movie"}`),
		item("2", `{"do": "bad"}`),
		item("3", `{"do": "fail"}`),
		fakeItem{Lease: "a/b c?d#e%f", ID: "4", Name: "req-4", Input: json.RawMessage(`{"text": "odd lease"}`), LeaseSeconds: 30},
		fakeItem{Lease: "lease-5", ID: "5", Name: "req-5", LeaseSeconds: 30},
		item("over", `{"do": "large", "bytes": 65536}`),
		item("exact", `{"do": "large", "bytes": 65534}`),
		item("set", `{"do": "set"}`),
	).start()

	p := startPython(t, api.env(), "")
	if code := p.wait(t); code != ExitOK {
		t.Errorf("exit code %d, want %d after the manager's exit; log:\n%s", code, ExitOK, p.stderr)
	}

	want := fakeRecord{
		Results: map[string]string{
			"lease-1":     `{"id":"1","name":"req-1","model":"sentiment","input":{"text":"great movie"}}`,
			"a/b c?d#e%f": `{"id":"4","name":"req-4","model":"sentiment","input":{"text":"odd lease"}}`,
			"lease-5":     `{"id":"5","name":"req-5","model":"sentiment","input":null}`,
			"lease-exact": `"` + strings.Repeat("x", 65534) + `"`,
		},
		Errors: map[string]fakeError{
			"lease-2": {Message: "text is empty", BadInput: true},
			"lease-3": {Message: "RuntimeError: CUDA out of memory"},
			"lease-over": {Message: "the result is 65538 bytes of JSON; the work API takes at most 65536 bytes, " +
				"so store large results elsewhere and return a reference"},
			"lease-set": {Message: "the result cannot be encoded as JSON: Object of type set is not JSON serializable"},
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
}

func TestPythonPoolRenewsAndDropsWhatIsGone(t *testing.T) {
	slow, doomed := item("slow", `{"do": "sleep", "seconds": 1.2}`), item("doomed", `{"do": "wait", "seconds": 10}`)
	slow.LeaseSeconds, doomed.LeaseSeconds = 1, 1
	api := newFakeWorkAPI(t, slow, doomed).start()
	api.gone["lease-doomed"] = true

	start := time.Now()
	p := startPython(t, api.env(), "")
	if code := p.wait(t); code != ExitOK {
		t.Fatalf("exit code %d; log:\n%s", code, p.stderr)
	}

	if n := len(api.renewalsOf("lease-slow")); n < 2 {
		t.Errorf("%d renewals in 1.2 s of a 1 s lease, want one every third of a second", n)
	}
	if took := time.Since(start); took > 8*time.Second {
		t.Errorf("took %v: the handler whose lease was gone should have been stopped at its first renewal", took)
	}
	want := fakeRecord{Results: map[string]string{"lease-slow": `"slept"`}, Errors: map[string]fakeError{}}
	if diff := cmp.Diff(want, api.snapshot()); diff != "" {
		t.Errorf("reports (-want +got); nothing should be reported for a lease that is gone:\n%s", diff)
	}
}

func TestPythonPoolRetries(t *testing.T) {
	t.Run("after 503 with Retry-After", func(t *testing.T) {
		api := newFakeWorkAPI(t, item("1", `null`))
		api.takeFailures, api.retryAfter = []int{http.StatusServiceUnavailable}, "1"
		api.start()

		p := startPython(t, api.env(), "")
		if code := p.wait(t); code != ExitOK {
			t.Fatalf("exit code %d; log:\n%s", code, p.stderr)
		}
		takes := api.takesSoFar()
		if waited := takes[1].At.Sub(takes[0].At); waited < time.Second {
			t.Errorf("took again after %v, want at least Retry-After (1 s)", waited)
		}
		if got := api.snapshot().Results["lease-1"]; got == "" {
			t.Error("the request taken after the retry was not reported")
		}
	})
	t.Run("while nothing listens", func(t *testing.T) {
		api := newFakeWorkAPI(t, item("1", `null`))
		listener, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := listener.Addr().String()
		_ = listener.Close()
		api.url = "http://" + addr + fakeModelPath

		p := startPython(t, api.env(), "")
		p.waitForLog(t, "trying again")
		api.startOn(addr)
		if code := p.wait(t); code != ExitOK {
			t.Fatalf("exit code %d; log:\n%s", code, p.stderr)
		}
		if got := api.snapshot().Results["lease-1"]; got == "" {
			t.Errorf("the request was not reported once the API listened; log:\n%s", p.stderr)
		}
	})
}

func TestPythonPoolGivesUpOnAWrongToken(t *testing.T) {
	api := newFakeWorkAPI(t, item("1", `null`)).start()
	env := api.env()
	env[EnvWorkToken] = "another model's token"

	p := startPython(t, env, "")
	if code := p.wait(t); code != ExitFailed {
		t.Errorf("exit code %d, want %d: the pod is misconfigured", code, ExitFailed)
	}
	if log := p.stderr.String(); !strings.Contains(log, "401") || !strings.Contains(log, EnvWorkToken) {
		t.Errorf("log %q should say the work API answered 401 and name %s", log, EnvWorkToken)
	}
}

func TestPythonPoolOnSIGTERM(t *testing.T) {
	api := newFakeWorkAPI(t, item("1", `{"do": "wait", "seconds": 20}`), item("2", `null`)).start()

	p := startPython(t, api.env(), "")
	p.waitForLog(t, "handling 1")
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if code := p.wait(t); code != ExitOK {
		t.Errorf("exit code %d after SIGTERM, want %d; log:\n%s", code, ExitOK, p.stderr)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("exited %v after SIGTERM, want at once", took)
	}
	want := fakeRecord{Results: map[string]string{}, Errors: map[string]fakeError{}}
	if diff := cmp.Diff(want, api.snapshot()); diff != "" {
		t.Errorf("reports (-want +got); work stopped by SIGTERM is not reported:\n%s", diff)
	}
	if n := len(api.takesSoFar()); n != 1 {
		t.Errorf("%d takes, want none after SIGTERM", n)
	}
}

func TestPythonPoolOnSIGTERMWhileWaitingToTakeAgain(t *testing.T) {
	api := newFakeWorkAPI(t, item("1", `null`))
	api.takeFailures, api.retryAfter = []int{http.StatusServiceUnavailable}, "30"
	api.start()

	p := startPython(t, api.env(), "")
	p.waitForLog(t, "trying again")
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if code := p.wait(t); code != ExitOK {
		t.Errorf("exit code %d after SIGTERM, want %d; log:\n%s", code, ExitOK, p.stderr)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("exited %v after SIGTERM, want at once", took)
	}
}

func TestPythonRunBatchTakesUpToTheBatchSize(t *testing.T) {
	api := newFakeWorkAPI(t, item("1", `null`), item("2", `{"do": "bad"}`), item("3", `null`)).start()
	env := api.env()
	env[EnvBatchSize] = "2"

	p := startPython(t, env, "", "batch")
	if code := p.wait(t); code != ExitOK {
		t.Fatalf("exit code %d; log:\n%s", code, p.stderr)
	}

	want := fakeRecord{
		Results: map[string]string{"lease-1": `{"id":"1","batch":2}`, "lease-3": `{"id":"3","batch":1}`},
		Errors:  map[string]fakeError{"lease-2": {Message: "text is empty", BadInput: true}},
	}
	if diff := cmp.Diff(want, api.snapshot()); diff != "" {
		t.Errorf("reports (-want +got):\n%s", diff)
	}
	for _, take := range api.takesSoFar() {
		if take.Max != 2 {
			t.Errorf("take asked for max %d, want %s (2)", take.Max, EnvBatchSize)
		}
	}
}

func TestPythonExampleWorkerInAPool(t *testing.T) {
	api := newFakeWorkAPI(t, item("1", `{"text": "great movie indeed"}`), item("2", `{"title": "x"}`)).start()

	p := startPython(t, api.env(), "worker.py")
	if code := p.wait(t); code != ExitOK {
		t.Fatalf("exit code %d; log:\n%s", code, p.stderr)
	}
	want := fakeRecord{
		Results: map[string]string{"lease-1": `{"words":3,"characters":18}`},
		Errors:  map[string]fakeError{"lease-2": {Message: `input must be {"text": "..."}`, BadInput: true}},
	}
	if diff := cmp.Diff(want, api.snapshot()); diff != "" {
		t.Errorf("reports (-want +got):\n%s", diff)
	}
}

func TestPythonOneRequest(t *testing.T) {
	tests := []struct {
		name        string
		input       string
		args        []string
		wantCode    int
		wantMessage string
	}{
		{name: "a result", input: `{"text": "great movie"}`, wantCode: ExitOK,
			wantMessage: `{"id":"1234","name":"","model":"sentiment","input":{"text":"great movie"}}`},
		{name: "no input is null", wantCode: ExitOK, wantMessage: `{"id":"1234","name":"","model":"sentiment","input":null}`},
		{name: "bad input exits 42", input: `{"do": "bad"}`, wantCode: ExitBadInput, wantMessage: "text is empty"},
		{name: "an error exits 1", input: `{"do": "fail"}`, wantCode: ExitFailed, wantMessage: "RuntimeError: CUDA out of memory"},
		{name: "input that is not JSON exits 42", input: `{"text": `, wantCode: ExitBadInput, wantMessage: "KINFER_INPUT is not valid JSON"},
		{name: "a result over 4096 bytes exits 3", input: `{"do": "large", "bytes": 4096}`, wantCode: ExitResultTooLarge,
			wantMessage: "the result is 4098 bytes of JSON; at most 4096 bytes can be returned, " +
				"so store large results elsewhere and return a reference"},
		{name: "a result of 4096 bytes is kept", input: `{"do": "large", "bytes": 4094}`, wantCode: ExitOK,
			wantMessage: `"` + strings.Repeat("x", 4094) + `"`},
		{name: "run_batch hands over the one request", args: []string{"batch"}, wantCode: ExitOK, wantMessage: `{"id":"1234","batch":1}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "result")
			env := map[string]string{EnvRequestID: "1234", EnvModel: "sentiment", EnvInput: tc.input, EnvResultPath: path,
				EnvWorkURL: "http://127.0.0.1:1/unused"} // a request id means one request, pool or not
			p := startPython(t, env, "", tc.args...)
			if code := p.wait(t); code != tc.wantCode {
				t.Errorf("exit code %d, want %d; log:\n%s", code, tc.wantCode, p.stderr)
			}
			message, err := os.ReadFile(path)
			if err != nil || string(message) != tc.wantMessage {
				t.Errorf("termination message %q (%v), want %q", message, err, tc.wantMessage)
			}
			if tc.wantCode != ExitOK && !strings.Contains(p.stderr.String(), tc.wantMessage) {
				t.Errorf("the log %q does not repeat the failure", p.stderr)
			}
		})
	}
}

func TestPythonPoolCancelsAtTheRequestsTimeout(t *testing.T) {
	timed := item("1", `{"do": "wait", "seconds": 20}`)
	timed.TimeoutSeconds = 1
	api := newFakeWorkAPI(t, timed).start()

	start := time.Now()
	p := startPython(t, api.env(), "")
	if code := p.wait(t); code != ExitOK {
		t.Fatalf("exit code %d; log:\n%s", code, p.stderr)
	}
	if took := time.Since(start); took > 8*time.Second {
		t.Errorf("took %v: req.canceled should have been set after timeout_seconds (1 s)", took)
	}
	want := map[string]fakeError{"lease-1": {Message: "RuntimeError: canceled"}}
	if diff := cmp.Diff(want, api.snapshot().Errors); diff != "" {
		t.Errorf("errors (-want +got):\n%s", diff)
	}
}

func TestPythonOneRequestOnSIGTERM(t *testing.T) {
	path := filepath.Join(t.TempDir(), "result")
	p := startPython(t, map[string]string{EnvRequestID: "1234", EnvInput: `{"do": "wait", "seconds": 20}`, EnvResultPath: path}, "")
	p.waitForLog(t, "handling 1234")
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t); code != ExitFailed {
		t.Errorf("exit code %d after SIGTERM, want %d, as the Go SDK's; log:\n%s", code, ExitFailed, p.stderr)
	}
	if message, _ := os.ReadFile(path); string(message) != "RuntimeError: canceled" {
		t.Errorf("termination message %q, want the handler's error", message)
	}
}
