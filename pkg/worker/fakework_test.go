package worker

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// fakeWorkAPI plays the manager's side of the work API as docs/workers.md
// sets it down, for one model, and records what the worker sent. It speaks
// the wire format with its own types, so that a misspelt field in the SDK
// shows up as a failure rather than agreeing with itself.
type fakeWorkAPI struct {
	t      *testing.T
	server *httptest.Server
	url    string // the model's base URL, as KINFER_WORK_URL

	mu sync.Mutex
	// queue is what takes hand out, in order; once it is empty, one take
	// answers with no items and the next with exit.
	queue []fakeItem
	idle  int
	// takeFailures answer the first takes with these statuses instead, with
	// retryAfter as Retry-After when it is set.
	takeFailures []int
	retryAfter   string
	// gone are leases whose renewals answer 410.
	gone map[string]bool

	out         map[string]bool // leases handed out and not yet reported
	leaseTimes  map[string]int
	takes       []fakeTake
	renewals    map[string][]time.Time
	results     map[string]json.RawMessage
	errors      map[string]fakeError
	lateReports []string // reports for leases that were gone
}

type fakeItem struct {
	Lease          string          `json:"lease"`
	ID             string          `json:"id"`
	Name           string          `json:"name"`
	Input          json.RawMessage `json:"input"`
	LeaseSeconds   int             `json:"lease_seconds"`
	TimeoutSeconds int             `json:"timeout_seconds,omitempty"`
}

type fakeTake struct {
	At          time.Time
	Max         int `json:"max"`
	WaitSeconds int `json:"wait_seconds"`
}

type fakeError struct {
	Message  string `json:"message"`
	BadInput bool   `json:"bad_input"`
}

const (
	fakeModelPath = "/v1/namespaces/ml/models/sentiment"
	fakeToken     = "work-token"
	fakePod       = "sentiment-pool-x7k2p"
)

// item makes a queue entry whose lease is "lease-" + id.
func item(id, input string) fakeItem {
	return fakeItem{Lease: "lease-" + id, ID: id, Name: "req-" + id, Input: json.RawMessage(input), LeaseSeconds: 30}
}

// newFakeWorkAPI returns an API that is not listening yet: see start.
func newFakeWorkAPI(t *testing.T, queue ...fakeItem) *fakeWorkAPI {
	t.Helper()
	f := &fakeWorkAPI{t: t, queue: queue, idle: 1, gone: map[string]bool{}, out: map[string]bool{}, leaseTimes: map[string]int{},
		renewals: map[string][]time.Time{}, results: map[string]json.RawMessage{}, errors: map[string]fakeError{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+fakeModelPath+"/take", f.checked(f.take))
	mux.HandleFunc("POST "+fakeModelPath+"/leases/{lease}/renew", f.checked(f.renew))
	mux.HandleFunc("POST "+fakeModelPath+"/leases/{lease}/result", f.checked(f.result))
	mux.HandleFunc("POST "+fakeModelPath+"/leases/{lease}/error", f.checked(f.failure))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("the worker called %s %s, which the work API does not have", r.Method, r.URL.EscapedPath())
		fakeAnswer(w, http.StatusNotFound, map[string]string{"error": "no such call"})
	})
	f.server = httptest.NewUnstartedServer(mux)
	return f
}

// start listens on a port of its own.
func (f *fakeWorkAPI) start() *fakeWorkAPI {
	f.server.Start()
	f.t.Cleanup(f.server.Close)
	f.url = f.server.URL + fakeModelPath
	return f
}

// startOn listens on addr, where the worker may already be calling.
func (f *fakeWorkAPI) startOn(addr string) {
	listener, err := net.Listen("tcp", addr)
	if err != nil {
		f.t.Fatalf("listening on %s again: %v", addr, err)
	}
	_ = f.server.Listener.Close()
	f.server.Listener = listener
	f.server.Start()
	f.t.Cleanup(f.server.Close)
}

// env is a pool pod's environment for this API.
func (f *fakeWorkAPI) env() map[string]string {
	return map[string]string{EnvWorkURL: f.url, EnvWorkToken: fakeToken, EnvPodName: fakePod, EnvModel: "sentiment"}
}

// checked authenticates a call as the manager would, and checks the headers
// every call carries.
func (f *fakeWorkAPI) checked(serve http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+fakeToken {
			fakeAnswer(w, http.StatusUnauthorized, map[string]string{"error": "no valid credential for this model"})
			return
		}
		if pod := r.Header.Get("Kinfer-Pod"); pod != fakePod {
			f.t.Errorf("%s: Kinfer-Pod is %q, want %q", r.URL.Path, pod, fakePod)
		}
		if ct := r.Header.Get("Content-Type"); ct != "application/json" {
			f.t.Errorf("%s: Content-Type is %q, want application/json", r.URL.Path, ct)
		}
		serve(w, r)
	}
}

func (f *fakeWorkAPI) take(w http.ResponseWriter, r *http.Request) {
	call := fakeTake{At: time.Now()}
	decoder := json.NewDecoder(r.Body)
	decoder.DisallowUnknownFields()
	if err := decoder.Decode(&call); err != nil || call.Max < 1 || call.WaitSeconds < 0 || call.WaitSeconds > 30 {
		f.t.Errorf("take: body is not {\"max\": n ≥ 1, \"wait_seconds\": 0–30} (%v, %+v)", err, call)
		fakeAnswer(w, http.StatusBadRequest, map[string]string{"error": "bad take"})
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.takes = append(f.takes, call)
	if len(f.takeFailures) > 0 {
		status := f.takeFailures[0]
		f.takeFailures = f.takeFailures[1:]
		if f.retryAfter != "" {
			w.Header().Set("Retry-After", f.retryAfter)
		}
		fakeAnswer(w, status, map[string]string{"error": "not now"})
		return
	}
	items := f.queue[:min(call.Max, len(f.queue))]
	f.queue = f.queue[len(items):]
	for _, it := range items {
		f.out[it.Lease] = true
		f.leaseTimes[it.Lease] = it.LeaseSeconds
	}
	exit := len(items) == 0 && f.idle == 0
	if len(items) == 0 && f.idle > 0 {
		f.idle--
	}
	fakeAnswer(w, http.StatusOK, map[string]any{"items": append([]fakeItem{}, items...), "exit": exit})
}

func (f *fakeWorkAPI) renew(w http.ResponseWriter, r *http.Request) {
	lease := r.PathValue("lease")
	f.mu.Lock()
	defer f.mu.Unlock()
	f.renewals[lease] = append(f.renewals[lease], time.Now())
	if f.gone[lease] || !f.out[lease] {
		fakeAnswer(w, http.StatusGone, map[string]string{"error": "the lease is gone"})
		return
	}
	fakeAnswer(w, http.StatusOK, map[string]int{"lease_seconds": f.leaseTimes[lease]})
}

func (f *fakeWorkAPI) result(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxPoolResultBytes+1))
	switch {
	case err != nil:
		fakeAnswer(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
	case len(body) > MaxPoolResultBytes:
		fakeAnswer(w, http.StatusRequestEntityTooLarge, map[string]string{"error": "over 64 KiB"})
	case !json.Valid(body):
		fakeAnswer(w, http.StatusBadRequest, map[string]string{"error": "not JSON"})
	default:
		f.reported(w, r.PathValue("lease"), func() { f.results[r.PathValue("lease")] = body })
	}
}

func (f *fakeWorkAPI) failure(w http.ResponseWriter, r *http.Request) {
	var report fakeError
	decoder := json.NewDecoder(r.Body)
	decoder.DisallowUnknownFields()
	if err := decoder.Decode(&report); err != nil {
		f.t.Errorf("error report: body is not {\"message\", \"bad_input\"}: %v", err)
		fakeAnswer(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	f.reported(w, r.PathValue("lease"), func() { f.errors[r.PathValue("lease")] = report })
}

func (f *fakeWorkAPI) reported(w http.ResponseWriter, lease string, record func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.gone[lease] || !f.out[lease] {
		f.lateReports = append(f.lateReports, lease)
		fakeAnswer(w, http.StatusGone, map[string]string{"error": "the lease is gone"})
		return
	}
	delete(f.out, lease)
	record()
	fakeAnswer(w, http.StatusOK, struct{}{})
}

func fakeAnswer(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// snapshot returns what the worker sent, once it is done.
func (f *fakeWorkAPI) snapshot() fakeRecord {
	f.mu.Lock()
	defer f.mu.Unlock()
	results := map[string]string{}
	for lease, raw := range f.results {
		results[lease] = string(raw)
	}
	errs := map[string]fakeError{}
	for lease, e := range f.errors {
		errs[lease] = e
	}
	return fakeRecord{Results: results, Errors: errs, LateReports: append([]string(nil), f.lateReports...)}
}

type fakeRecord struct {
	Results     map[string]string
	Errors      map[string]fakeError
	LateReports []string
}

// takesSoFar returns the takes the worker made.
func (f *fakeWorkAPI) takesSoFar() []fakeTake {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeTake(nil), f.takes...)
}

// renewalsOf returns when the worker renewed lease.
func (f *fakeWorkAPI) renewalsOf(lease string) []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Time(nil), f.renewals[lease]...)
}
