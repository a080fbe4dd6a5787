// Package worker is the Go SDK for kinfer model containers. A worker is a
// program that handles one request and exits:
//
//	func main() {
//		worker.Run(func(ctx context.Context, req worker.Request) (any, error) {
//			var in struct{ Text string }
//			if err := req.Decode(&in); err != nil {
//				return nil, err // bad input: exit 42, not retried
//			}
//			return classify(ctx, in.Text), nil
//		})
//	}
//
// Run reads the request from the environment kinfer sets (KINFER_REQUEST_ID,
// KINFER_MODEL, KINFER_INPUT), writes the result as JSON to the container's
// termination message file (KINFER_RESULT_PATH, or /dev/termination-log),
// where kinfer reads it, and exits 0. An error becomes the request's error
// and exit 1, so Kubernetes retries the pod up to the model's maxRetries; an
// error from BadInput (or Decode) exits 42, which kinfer never retries.
package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// The environment kinfer gives every worker container.
const (
	EnvRequestID  = "KINFER_REQUEST_ID"
	EnvModel      = "KINFER_MODEL"
	EnvInput      = "KINFER_INPUT"
	EnvResultPath = "KINFER_RESULT_PATH"
)

// DefaultResultPath is Kubernetes' default termination message path.
const DefaultResultPath = "/dev/termination-log"

// MaxResultBytes is the most Kubernetes keeps of a termination message. A
// larger result would be cut, so Run refuses it instead.
const MaxResultBytes = 4096

// Exit codes.
const (
	ExitOK = 0
	// ExitFailed: the handler failed; Kubernetes may retry the pod.
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
// (SIGTERM), so long work should watch it.
type Handler func(ctx context.Context, req Request) (result any, err error)

// Run handles the request described by the environment and exits the process
// with the exit code the outcome calls for.
func Run(handle Handler) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	code := run(ctx, os.Getenv, handle, os.Stderr)
	stop()
	os.Exit(code)
}

// run is Run without the process: it returns the exit code.
func run(ctx context.Context, getenv func(string) string, handle Handler, stderr io.Writer) int {
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

	result, err := call(ctx, handle, req)
	switch {
	case IsBadInput(err):
		return finish(ExitBadInput, []byte(err.Error()))
	case err != nil:
		return finish(ExitFailed, []byte(err.Error()))
	}
	encoded, err := json.Marshal(result)
	if err != nil {
		return finish(ExitFailed, []byte(fmt.Sprintf("the result cannot be encoded as JSON: %v", err)))
	}
	if len(encoded) > MaxResultBytes {
		return finish(ExitResultTooLarge, []byte(fmt.Sprintf(
			"the result is %d bytes of JSON; Kubernetes keeps at most %d bytes of a termination message, "+
				"so store large results elsewhere and return a reference", len(encoded), MaxResultBytes)))
	}
	return finish(ExitOK, encoded)
}

// call runs the handler, turning a panic into an error so that it still
// reaches the request's status.
func call(ctx context.Context, handle Handler, req Request) (result any, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("the worker panicked: %v", p)
		}
	}()
	return handle(ctx, req)
}
