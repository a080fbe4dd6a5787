package testutil

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"time"
)

// ReceiverAddr is where test receivers listen. It is a loopback address other
// than 127.0.0.1, so a suite can open it alone to callbacks and still prove
// that the rest of loopback (and names resolving to it) stays closed.
const ReceiverAddr = "127.0.0.2"

// Call is one request a Receiver got.
type Call struct {
	At     time.Time
	Header http.Header
	Body   []byte
}

// Receiver is a callback receiver that records every call and answers each
// with the next of its scripted handlers, repeating the last one.
type Receiver struct {
	*httptest.Server

	mu      sync.Mutex
	calls   []Call
	answers []http.HandlerFunc
}

// Answer writes status, with headers given as name/value pairs.
func Answer(status int, headers ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		for i := 0; i+1 < len(headers); i += 2 {
			w.Header().Set(headers[i], headers[i+1])
		}
		w.WriteHeader(status)
	}
}

// NewReceiver starts a receiver on ReceiverAddr; with no answers it answers 200.
func NewReceiver(answers ...http.HandlerFunc) *Receiver {
	if len(answers) == 0 {
		answers = []http.HandlerFunc{Answer(http.StatusOK)}
	}
	r := &Receiver{answers: answers}
	r.Server = httptest.NewUnstartedServer(http.HandlerFunc(r.serve))
	listener, err := net.Listen("tcp", ReceiverAddr+":0")
	if err != nil {
		panic("testutil: cannot listen on " + ReceiverAddr + ": " + err.Error())
	}
	r.Listener = listener
	r.Start()
	return r
}

func (r *Receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	r.calls = append(r.calls, Call{At: time.Now(), Header: req.Header.Clone(), Body: body})
	answer := r.answers[min(len(r.calls), len(r.answers))-1]
	r.mu.Unlock()
	answer(w, req)
}

// Calls returns the calls received so far.
func (r *Receiver) Calls() []Call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Call(nil), r.calls...)
}
