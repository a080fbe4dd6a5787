// Package worker is the Go SDK for kinfer model containers:
//
//	func main() {
//		worker.Run(func(ctx context.Context, req worker.Request) (any, error) {
//			var in struct{ Text string }
//			if err := req.Decode(&in); err != nil {
//				return nil, err // bad input: not retried
//			}
//			return classify(ctx, in.Text), nil
//		})
//	}
//
// The same program works in both of kinfer's modes. With one Job per request,
// Run reads the request from the environment kinfer sets (KINFER_REQUEST_ID,
// KINFER_MODEL, KINFER_INPUT), writes the result as JSON to the container's
// termination message file (KINFER_RESULT_PATH, or /dev/termination-log),
// where kinfer reads it, and exits 0; a result over the 4 KiB a termination
// message holds goes through the manager's work API when kinfer gives one
// (KINFER_WORK_URL), up to 64 KiB. An error becomes the request's error
// and exit 1, so Kubernetes retries the pod up to the model's maxRetries; an
// error from BadInput (or Decode) exits 42, which kinfer never retries.
//
// In a pool (KINFER_WORK_URL set, KINFER_REQUEST_ID not), the process serves
// many requests: Run takes them from the manager's work API one at a time,
// renews each lease while the handler works, reports the result or the error,
// and exits 0 when the manager says the pod is no longer needed. RunBatch
// takes up to KINFER_BATCH_SIZE requests at a time and hands them to the
// handler together. docs/workers.md describes the work API.
package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// The environment kinfer gives a worker container that handles one request.
const (
	EnvRequestID  = "KINFER_REQUEST_ID"
	EnvModel      = "KINFER_MODEL"
	EnvInput      = "KINFER_INPUT"
	EnvResultPath = "KINFER_RESULT_PATH"
)

// EnvRequestName is the InferenceRequest's name, given with one Job per
// request when the manager has a work API: the pod reports a result too
// large for its termination message there (with KINFER_WORK_URL and
// KINFER_WORK_TOKEN).
const EnvRequestName = "KINFER_REQUEST_NAME"

// The environment kinfer gives a pool pod (KINFER_MODEL too).
const (
	// EnvWorkURL is the model's base URL on the manager's work API.
	EnvWorkURL = "KINFER_WORK_URL"
	// EnvWorkToken is the model's work credential, sent as a bearer token.
	EnvWorkToken = "KINFER_WORK_TOKEN"
	// EnvPodName is the pod's name, recorded as the request's status.worker.
	EnvPodName = "KINFER_POD_NAME"
	// EnvBatchSize is how many requests RunBatch takes at a time; 1 when unset.
	EnvBatchSize = "KINFER_BATCH_SIZE"
)

// DefaultResultPath is Kubernetes' default termination message path.
const DefaultResultPath = "/dev/termination-log"

// MaxResultBytes is the most Kubernetes keeps of a termination message. A
// larger result would be cut, so Run sends it through the work API when
// there is one, and refuses it otherwise.
const MaxResultBytes = 4096

// MaxPoolResultBytes is the most the work API takes as a result. Run refuses
// a larger one itself and reports an error saying so, rather than sending
// work that the manager would refuse.
const MaxPoolResultBytes = 64 << 10

// Exit codes.
const (
	ExitOK = 0
	// ExitFailed: the handler failed, and Kubernetes may retry the pod; in a
	// pool, the work API refused the pod (a wrong token, or a URL that is not
	// a pool's).
	ExitFailed = 1
	// ExitResultTooLarge: the result is over MaxResultBytes as JSON.
	ExitResultTooLarge = 3
	// ExitBadInput: the input cannot be handled; kinfer does not retry it.
	ExitBadInput = 42
)

// Request is what a worker is asked to do.
type Request struct {
	// ID is the client's id for the request.
	ID string
	// Name is the InferenceRequest's name. Only a pool knows it; it is empty
	// with one Job per request.
	Name string
	// Model is the InferenceModel the request runs on.
	Model string
	// Input is the request's input as JSON; "null" when it has none.
	Input json.RawMessage
}

// Decode unmarshals the input into v. Its error is a bad-input error.
func (r Request) Decode(v any) error {
	if err := json.Unmarshal(r.Input, v); err != nil {
		return BadInput("input does not fit: %v", err)
	}
	return nil
}

// inputError marks an error as the input's fault.
type inputError struct{ err error }

func (e *inputError) Error() string { return e.err.Error() }
func (e *inputError) Unwrap() error { return e.err }

// BadInput returns an error that fails the request at once, without retries.
func BadInput(format string, args ...any) error {
	return &inputError{err: fmt.Errorf(format, args...)}
}

// IsBadInput reports whether err, or an error it wraps, came from BadInput.
func IsBadInput(err error) bool {
	var in *inputError
	return errors.As(err, &in)
}

// Handler handles one request. The context ends when the pod is asked to stop
// (SIGTERM) and, in a pool, when the request's lease is gone (it was canceled,
// timed out or handed out again) or its timeout has passed; long work should
// watch it. context.Cause says which.
type Handler func(ctx context.Context, req Request) (result any, err error)

// Outcome is what became of one request of a batch: its result, or the error
// that failed it (from BadInput when the input can never work).
type Outcome struct {
	// Result is sent as JSON when Err is nil.
	Result any
	// Err fails the request; BadInput fails it without retries.
	Err error
}

// BatchHandler handles several requests at once and returns one Outcome per
// request, in the same order. Its context ends on SIGTERM, or when no request
// of the batch can still be answered: every lease is gone or every timeout
// has passed.
type BatchHandler func(ctx context.Context, reqs []Request) []Outcome

// Run serves requests with handle and exits the process with the exit code
// the outcome calls for: one request from the environment, or, in a pool,
// requests from the work API one at a time until the manager lets the pod go
// or SIGTERM arrives.
func Run(handle Handler) {
	exit(func(ctx context.Context) int { return run(ctx, os.Getenv, handle, os.Stderr) })
}

// RunBatch is Run for models that infer faster in batches: in a pool it takes
// up to KINFER_BATCH_SIZE requests at a time (the manager sets it from the
// model's batchSize) and reports each outcome; with one Job per request it
// calls handle with that one request.
func RunBatch(handle BatchHandler) {
	exit(func(ctx context.Context) int { return runBatch(ctx, os.Getenv, handle, os.Stderr) })
}

func exit(serve func(ctx context.Context) int) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	code := serve(ctx)
	stop()
	os.Exit(code)
}

// run is Run without the process: it returns the exit code.
func run(ctx context.Context, getenv func(string) string, handle Handler, stderr io.Writer) int {
	return serve(ctx, getenv, handle.batch(), 1, stderr)
}

// runBatch is RunBatch without the process.
func runBatch(ctx context.Context, getenv func(string) string, handle BatchHandler, stderr io.Writer) int {
	return serve(ctx, getenv, handle, batchSize(getenv, stderr), stderr)
}

func serve(ctx context.Context, getenv func(string) string, handle BatchHandler, size int, stderr io.Writer) int {
	if getenv(EnvRequestID) == "" && getenv(EnvWorkURL) != "" {
		return newPool(getenv, size, stderr).run(ctx, handle)
	}
	return serveOne(ctx, getenv, handle, stderr)
}

// serveOne handles the request the environment describes and writes its
// outcome to the termination message file.
func serveOne(ctx context.Context, getenv func(string) string, handle BatchHandler, stderr io.Writer) int {
	path := getenv(EnvResultPath)
	if path == "" {
		path = DefaultResultPath
	}
	finish := func(code int, message []byte) int {
		if err := os.WriteFile(path, message, 0o644); err != nil {
			_, _ = fmt.Fprintf(stderr, "kinfer worker: cannot write the result to %s: %v\n", path, err)
			return ExitFailed
		}
		if code != ExitOK {
			_, _ = fmt.Fprintf(stderr, "kinfer worker: %s\n", message)
		}
		return code
	}

	req := Request{ID: getenv(EnvRequestID), Model: getenv(EnvModel), Input: json.RawMessage(getenv(EnvInput))}
	if len(req.Input) == 0 {
		req.Input = json.RawMessage("null")
	}
	if !json.Valid(req.Input) {
		return finish(ExitBadInput, []byte(EnvInput+" is not valid JSON"))
	}

	out := outcomes(ctx, handle, []Request{req})[0]
	switch {
	case IsBadInput(out.Err):
		return finish(ExitBadInput, []byte(out.Err.Error()))
	case out.Err != nil:
		return finish(ExitFailed, []byte(out.Err.Error()))
	}
	encoded, err := encodeResult(out.Result, MaxResultBytes)
	switch {
	case errors.Is(err, errResultTooLarge) && len(encoded) <= MaxPoolResultBytes && canSendResult(getenv):
		if problem := sendResult(ctx, getenv, encoded, stderr); problem != "" {
			return finish(ExitResultTooLarge, []byte(problem))
		}
		return finish(ExitOK, []byte(sentResult))
	case errors.Is(err, errResultTooLarge):
		limit := MaxResultBytes
		if canSendResult(getenv) {
			limit = MaxPoolResultBytes
		}
		return finish(ExitResultTooLarge, []byte(fmt.Sprintf(
			"the result is %d bytes of JSON; at most %d bytes can be returned, "+
				"so store large results elsewhere and return a reference", len(encoded), limit)))
	case err != nil:
		return finish(ExitFailed, []byte(err.Error()))
	}
	return finish(ExitOK, encoded)
}

// sentResult is the termination message of a worker whose result went
// through the work API. kinfer has stored the result before the worker
// exits, so it never reads this.
const sentResult = `{"kinfer":"the result was sent through the work API"}`

// sendResultTimeout bounds how long a worker keeps trying to send a large
// result through the work API.
const sendResultTimeout = 2 * time.Minute

// canSendResult reports whether the environment names a work API that takes
// this request's result: kinfer gives one when the manager serves it.
func canSendResult(getenv func(string) string) bool {
	return getenv(EnvWorkURL) != "" && getenv(EnvWorkToken) != "" && getenv(EnvRequestName) != ""
}

// sendResult sends a result too large for a termination message through the
// work API, and returns what went wrong, if anything.
func sendResult(ctx context.Context, getenv func(string) string, result []byte, stderr io.Writer) string {
	p := newPool(getenv, 1, stderr)
	path := "/requests/" + url.PathEscape(getenv(EnvRequestName)) + "/result"
	stop, cancel := context.WithTimeout(ctx, sendResultTimeout)
	defer cancel()
	ans, err := p.sendRetrying(context.WithoutCancel(stop), stop, path, result, reportTimeout)
	switch {
	case err != nil:
		return fmt.Sprintf("the result is %d bytes of JSON, too large for a termination message, "+
			"and could not be sent through the work API: %v", len(result), err)
	case ans.status/100 == 2:
		return ""
	case ans.status == http.StatusGone:
		return "the request ended before its result could be sent"
	}
	return fmt.Sprintf("the result is %d bytes of JSON, too large for a termination message, "+
		"and the work API refused it: %s", len(result), ans)
}

// errResultTooLarge: the result, encoded, is over the limit its way back allows.
var errResultTooLarge = errors.New("the result is too large")

// encodeResult encodes a result as JSON. Over limit bytes, it still returns
// the encoding, for its size, with errResultTooLarge.
func encodeResult(result any, limit int) ([]byte, error) {
	encoded, err := json.Marshal(result)
	if err != nil {
		return nil, fmt.Errorf("the result cannot be encoded as JSON: %w", err)
	}
	if len(encoded) > limit {
		return encoded, errResultTooLarge
	}
	return encoded, nil
}

// outcomes runs the handler and returns exactly one outcome per request. A
// panic, or an outcome the handler left out, becomes an error, so that it
// still reaches the request's status.
func outcomes(ctx context.Context, handle BatchHandler, reqs []Request) (out []Outcome) {
	defer func() {
		if p := recover(); p != nil {
			out = failAll(len(reqs), fmt.Errorf("the worker panicked: %v", p))
		}
	}()
	got := handle(ctx, reqs)
	if len(got) == len(reqs) {
		return got
	}
	out = failAll(len(reqs), fmt.Errorf("the batch handler returned %d outcomes for %d requests", len(got), len(reqs)))
	copy(out, got)
	return out
}

func failAll(n int, err error) []Outcome {
	out := make([]Outcome, n)
	for i := range out {
		out[i].Err = err
	}
	return out
}

// batch adapts a handler of one request to a batch, handling its requests in
// turn: a panic fails only the request that caused it.
func (h Handler) batch() BatchHandler {
	return func(ctx context.Context, reqs []Request) []Outcome {
		out := make([]Outcome, len(reqs))
		for i, req := range reqs {
			out[i].Result, out[i].Err = call(ctx, h, req)
		}
		return out
	}
}

// call runs the handler, turning a panic into an error.
func call(ctx context.Context, handle Handler, req Request) (result any, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("the worker panicked: %v", p)
		}
	}()
	return handle(ctx, req)
}
