package workers

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The example workers are built and run as the local node runs them: a
// process with kinfer's environment, judged by its exit code and the result
// file it leaves.

func build(t *testing.T, name string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	out, err := exec.Command("go", "build", "-o", bin, "./"+name).CombinedOutput()
	if err != nil {
		t.Fatalf("building %s: %v\n%s", name, err, out)
	}
	return bin
}

func start(t *testing.T, bin, input string, args ...string) (*exec.Cmd, string) {
	t.Helper()
	result := filepath.Join(t.TempDir(), "result")
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "KINFER_REQUEST_ID=1234", "KINFER_MODEL=m", "KINFER_INPUT="+input, "KINFER_RESULT_PATH="+result)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, result
}

func exitCode(err error) int {
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func runWorker(t *testing.T, bin, input string, args ...string) (int, string) {
	t.Helper()
	cmd, result := start(t, bin, input, args...)
	code := exitCode(cmd.Wait())
	out, err := os.ReadFile(result)
	if err != nil {
		t.Fatal(err)
	}
	return code, string(out)
}

func TestSleepAnswersOKAfterItsDelay(t *testing.T) {
	bin := build(t, "sleep")
	start := time.Now()
	code, result := runWorker(t, bin, "null", "--delay=300ms")
	if code != 0 || result != `"OK"` {
		t.Errorf("exit %d, result %s; want 0 and \"OK\"", code, result)
	}
	if waited := time.Since(start); waited < 300*time.Millisecond {
		t.Errorf("answered after %v, before its delay", waited)
	}
}

func TestSleepStopsOnSIGTERM(t *testing.T) {
	bin := build(t, "sleep")
	cmd, result := start(t, bin, "null", "--delay=1h")
	time.Sleep(300 * time.Millisecond) // let it install its signal handler
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if code := exitCode(err); code != 1 {
			t.Errorf("exit %d after SIGTERM, want 1", code)
		}
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("the worker ignored SIGTERM")
	}
	if out, _ := os.ReadFile(result); len(out) == 0 {
		t.Error("a stopped worker left no message saying why")
	}
}

func TestEchoAnswersItsInput(t *testing.T) {
	code, result := runWorker(t, build(t, "echo"), `{"text": "great movie", "n": [1, 2]}`)
	if code != 0 || result != `{"text":"great movie","n":[1,2]}` {
		t.Errorf("exit %d, result %s", code, result)
	}
}

func TestEchoAnswersTheWholeRequest(t *testing.T) {
	code, result := runWorker(t, build(t, "echo"), `{"text":"$(X)"}`, "--request")
	if code != 0 || result != `{"id":"1234","input":{"text":"$(X)"},"model":"m"}` {
		t.Errorf("exit %d, result %s", code, result)
	}
}

func TestSentimentClassifies(t *testing.T) {
	bin := build(t, "sentiment")
	tests := []struct {
		input, label string
	}{
		{`{"text": "great movie"}`, "positive"},
		{`"A boring, predictable mess. What a waste."`, "negative"},
		{`{"text": "not good at all"}`, "negative"},
		{`{"text": "I loved it, a masterpiece"}`, "positive"},
	}
	for _, tc := range tests {
		code, out := runWorker(t, bin, tc.input)
		var result struct {
			Label string  `json:"label"`
			Score float64 `json:"score"`
		}
		if err := json.Unmarshal([]byte(out), &result); err != nil || code != 0 {
			t.Fatalf("input %s: exit %d, result %s", tc.input, code, out)
		}
		if result.Label != tc.label || result.Score < 0 || result.Score > 1 {
			t.Errorf("input %s: %+v, want label %s", tc.input, result, tc.label)
		}
	}
	if code, out := runWorker(t, bin, `{"title": "no text"}`); code != 42 {
		t.Errorf("input without text: exit %d (%s), want 42", code, out)
	}
}

func TestPythonWorkerKeepsTheContract(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("python3 is needed to test examples/python/worker.py: %v", err)
	}
	script := filepath.Join("..", "python", "worker.py")
	code, result := runWorker(t, python, `{"text": "great movie indeed"}`, script)
	if code != 0 || result != `{"words":3,"characters":18}` {
		t.Errorf("exit %d, result %s", code, result)
	}
	if code, result := runWorker(t, python, `{"title": "x"}`, script); code != 42 || result == "" {
		t.Errorf("bad input: exit %d, result %q; want 42 and a message", code, result)
	}
}

// In a pool one process serves many requests: the sentiment worker loads its
// model once, before the first, and says so in one line on stderr.
func TestSentimentLoadsItsModelOncePerProcess(t *testing.T) {
	texts := []string{"great movie", "a boring mess", "I loved it", "not good at all"}
	labels := []string{"positive", "negative", "positive", "negative"}
	var mu sync.Mutex
	taken, results := 0, map[string]string{}
	work := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if lease, ok := strings.CutSuffix(strings.TrimPrefix(r.URL.Path, "/leases/"), "/result"); ok {
			body, _ := io.ReadAll(r.Body)
			results[lease] = string(body)
			_, _ = w.Write([]byte(`{}`))
			return
		}
		if r.URL.Path != "/take" || taken == len(texts) {
			_, _ = w.Write([]byte(`{"items": [], "exit": true}`))
			return
		}
		item, _ := json.Marshal(map[string]any{"lease": strconv.Itoa(taken), "id": strconv.Itoa(taken),
			"input": map[string]string{"text": texts[taken]}, "lease_seconds": 30})
		taken++
		_, _ = fmt.Fprintf(w, `{"items": [%s], "exit": false}`, item)
	}))
	defer work.Close()

	cmd := exec.Command(build(t, "sentiment"))
	cmd.Env = append(os.Environ(), "KINFER_MODEL=sentiment", "KINFER_WORK_URL="+work.URL,
		"KINFER_WORK_TOKEN=t", "KINFER_POD_NAME=p")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("the pool worker failed: %v\n%s", err, stderr.String())
	}
	mu.Lock()
	defer mu.Unlock()
	if len(results) != len(texts) {
		t.Fatalf("%d results for %d requests: %v\n%s", len(results), len(texts), results, stderr.String())
	}
	for i, label := range labels {
		if !strings.Contains(results[strconv.Itoa(i)], `"label":"`+label+`"`) {
			t.Errorf("%q: result %s, want label %s", texts[i], results[strconv.Itoa(i)], label)
		}
	}
	loads := 0
	for _, line := range strings.Split(stderr.String(), "\n") {
		if strings.HasPrefix(line, "loaded model ") {
			loads++
		}
	}
	if loads != 1 {
		t.Errorf("loaded its model %d times for %d requests, want once:\n%s", loads, len(texts), stderr.String())
	}
	if !regexp.MustCompile(`(?m)^loaded model lexicon-sentiment-v1 \(\d+ weights\) in \S+$`).MatchString(stderr.String()) {
		t.Errorf("no load line naming the model, its weights and the time it took:\n%s", stderr.String())
	}
}
