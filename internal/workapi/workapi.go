// Package workapi is the manager's work API: where the pods of a pool model
// take its requests, renew their leases and report outcomes, and where the
// pod of a request's own Job reports a result too large for its termination
// message. Each model has a
// credential of its own, kept in a Secret the manager makes, so a pod can
// take work for its own model only. docs/workers.md is the wire contract.
package workapi

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/pool"
)

// MaxResultBytes is the largest result a pod may report.
const MaxResultBytes = 64 << 10

// TokenKey is the key of the model's work Secret that holds its credential.
const TokenKey = "token"

// SecretName is the name of the Secret holding model's work credential.
func SecretName(model string) string { return "kinfer-work-" + model }

// Credentials makes and checks the models' work credentials.
type Credentials struct {
	// Client creates the Secrets; Reader reads them from the API server
	// (the manager's cache holds no Secrets).
	Client client.Client
	Reader client.Reader
	Scheme *runtime.Scheme

	mu    sync.Mutex
	known map[types.NamespacedName]credential
}

type credential struct {
	token   []byte
	checked time.Time
}

// recheck bounds how often a credential that did not match is read again,
// so that callers with forged tokens cannot make every call a Secret read.
const recheck = 5 * time.Second

// Ensure makes model's work Secret when it has none, owned by the model so
// that it goes with it.
func (c *Credentials) Ensure(ctx context.Context, model *inferencev1alpha1.InferenceModel) error {
	key := types.NamespacedName{Namespace: model.Namespace, Name: SecretName(model.Name)}
	existing := &corev1.Secret{}
	err := c.Reader.Get(ctx, key, existing)
	if err == nil || !apierrors.IsNotFound(err) {
		return err
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return err
	}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: key.Name, Namespace: key.Namespace,
			Labels: map[string]string{inferencev1alpha1.LabelModel: model.Name}},
		Data: map[string][]byte{TokenKey: []byte(base64.RawURLEncoding.EncodeToString(raw))},
	}
	if err := controllerutil.SetControllerReference(model, secret, c.Scheme); err != nil {
		return err
	}
	if err := c.Client.Create(ctx, secret); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// Check reports whether token is model's credential.
func (c *Credentials) Check(ctx context.Context, model types.NamespacedName, token string) (bool, error) {
	if token == "" {
		return false, nil
	}
	c.mu.Lock()
	if c.known == nil {
		c.known = map[types.NamespacedName]credential{}
	}
	known, ok := c.known[model]
	c.mu.Unlock()
	if ok && subtle.ConstantTimeCompare(known.token, []byte(token)) == 1 {
		return true, nil
	}
	if ok && time.Since(known.checked) < recheck {
		return false, nil
	}
	secret := &corev1.Secret{}
	err := c.Reader.Get(ctx, types.NamespacedName{Namespace: model.Namespace, Name: SecretName(model.Name)}, secret)
	if apierrors.IsNotFound(err) {
		c.remember(model, nil)
		return false, nil
	}
	if err != nil {
		return false, err
	}
	c.remember(model, secret.Data[TokenKey])
	return len(secret.Data[TokenKey]) > 0 && subtle.ConstantTimeCompare(secret.Data[TokenKey], []byte(token)) == 1, nil
}

func (c *Credentials) remember(model types.NamespacedName, token []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.known[model] = credential{token: token, checked: time.Now()}
}

// Handler serves the work API.
type Handler struct {
	// Models reads models (the manager's cache).
	Models      client.Reader
	Credentials *Credentials
	Dispatcher  *pool.Dispatcher
	// MaxWait bounds a take's long poll.
	MaxWait time.Duration
	mux     *http.ServeMux
}

// NewHandler returns the work API's routes.
func NewHandler(h Handler) *Handler {
	if h.MaxWait <= 0 {
		h.MaxWait = 30 * time.Second
	}
	h.mux = http.NewServeMux()
	base := "POST /v1/namespaces/{namespace}/models/{model}"
	h.mux.HandleFunc(base+"/take", h.call(true, h.take))
	h.mux.HandleFunc(base+"/leases/{lease}/renew", h.call(true, h.renew))
	h.mux.HandleFunc(base+"/leases/{lease}/result", h.call(true, h.result))
	h.mux.HandleFunc(base+"/leases/{lease}/error", h.call(true, h.failure))
	h.mux.HandleFunc(base+"/requests/{request}/result", h.call(false, h.jobResult))
	h.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		answer(w, http.StatusNotFound, problem{"no route for " + r.Method + " " + r.URL.Path})
	})
	return &h
}

// ServeHTTP routes a call.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

type problem struct {
	Error string `json:"error"`
}

type call struct {
	model *inferencev1alpha1.InferenceModel
	key   types.NamespacedName
	pod   string
}

// call authenticates a call for its model before anything else is looked
// at: without the model's credential, a caller learns nothing, not even
// whether the model exists. Calls about leases need a pool model.
func (h *Handler) call(poolOnly bool, serve func(http.ResponseWriter, *http.Request, call)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		key := types.NamespacedName{Namespace: r.PathValue("namespace"), Name: r.PathValue("model")}
		token, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		ok, err := h.Credentials.Check(r.Context(), key, token)
		if err != nil {
			ctrl.LoggerFrom(r.Context()).Error(err, "Checking a work credential", "model", key)
			w.Header().Set("Retry-After", "1")
			answer(w, http.StatusServiceUnavailable, problem{"the credential cannot be checked now; try again"})
			return
		}
		if !ok {
			answer(w, http.StatusUnauthorized, problem{"no valid credential for this model"})
			return
		}
		model := &inferencev1alpha1.InferenceModel{}
		err = h.Models.Get(r.Context(), key, model)
		switch {
		case apierrors.IsNotFound(err):
			answer(w, http.StatusNotFound, problem{fmt.Sprintf("model %s does not exist", key.Name)})
			return
		case err != nil:
			// A manager just started may not have its models yet.
			ctrl.LoggerFrom(r.Context()).Info("Reading a model for the work API", "model", key, "error", err.Error())
			w.Header().Set("Retry-After", "1")
			answer(w, http.StatusServiceUnavailable, problem{"the model cannot be read now; try again"})
			return
		}
		if poolOnly && model.Spec.Workers == nil {
			answer(w, http.StatusNotFound, problem{fmt.Sprintf("model %s has no pool", key.Name)})
			return
		}
		serve(w, r, call{model: model, key: key, pod: r.Header.Get("Kinfer-Pod")})
	}
}

type takeBody struct {
	Max         *int `json:"max"`
	WaitSeconds *int `json:"wait_seconds"`
}

type taken struct {
	Items []pool.Item `json:"items"`
	Exit  bool        `json:"exit"`
}

func (h *Handler) take(w http.ResponseWriter, r *http.Request, c call) {
	var body takeBody
	if r.ContentLength != 0 {
		if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&body); err != nil && !errors.Is(err, io.EOF) {
			answer(w, http.StatusBadRequest, problem{"the body is not {\"max\": n, \"wait_seconds\": s}: " + err.Error()})
			return
		}
	}
	batch := int(max(c.model.Spec.Workers.BatchSize, 1))
	n := min(ptr.Deref(body.Max, batch), batch)
	wait := min(time.Duration(ptr.Deref(body.WaitSeconds, 20))*time.Second, h.MaxWait)
	if n < 1 || wait < 0 {
		answer(w, http.StatusBadRequest, problem{"max must be at least 1 and wait_seconds at least 0"})
		return
	}
	items, exit, err := h.Dispatcher.Take(r.Context(), c.model, c.pod, n, wait)
	if err != nil {
		ctrl.LoggerFrom(r.Context()).Error(err, "Handing out work", "model", c.key)
	}
	if items == nil {
		items = []pool.Item{}
	}
	answer(w, http.StatusOK, taken{Items: items, Exit: exit})
}

func (h *Handler) renew(w http.ResponseWriter, r *http.Request, c call) {
	length, err := h.Dispatcher.Renew(c.key, r.PathValue("lease"))
	if err != nil {
		gone(w)
		return
	}
	answer(w, http.StatusOK, map[string]int64{"lease_seconds": int64(length / time.Second)})
}

func (h *Handler) result(w http.ResponseWriter, r *http.Request, c call) {
	if raw, ok := readResult(w, r); ok {
		h.report(w, r, c, &pool.Outcome{Result: raw, Pod: c.pod})
	}
}

// jobResult takes the result of a request that runs in a Job of its own,
// from its pod: results too large for a termination message come this way.
func (h *Handler) jobResult(w http.ResponseWriter, r *http.Request, c call) {
	raw, ok := readResult(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), reportWait)
	defer cancel()
	key := types.NamespacedName{Namespace: c.key.Namespace, Name: r.PathValue("request")}
	h.answerReport(w, r, h.Dispatcher.ReportFromJob(ctx, c.key, key, &pool.Outcome{Result: raw, Pod: c.pod}))
}

// readResult reads a reported result, answering the call itself when the
// result is too large or not JSON.
func readResult(w http.ResponseWriter, r *http.Request) (json.RawMessage, bool) {
	raw, err := io.ReadAll(io.LimitReader(r.Body, MaxResultBytes+1))
	if err != nil {
		answer(w, http.StatusBadRequest, problem{"the result could not be read: " + err.Error()})
		return nil, false
	}
	if len(raw) > MaxResultBytes {
		answer(w, http.StatusRequestEntityTooLarge, problem{fmt.Sprintf(
			"the result is over %d bytes; store a large result elsewhere and return a reference to it", MaxResultBytes)})
		return nil, false
	}
	if !json.Valid(raw) {
		answer(w, http.StatusBadRequest, problem{"the result is not JSON"})
		return nil, false
	}
	return raw, true
}

type failureBody struct {
	Message  string `json:"message"`
	BadInput bool   `json:"bad_input"`
}

func (h *Handler) failure(w http.ResponseWriter, r *http.Request, c call) {
	var body failureBody
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&body); err != nil {
		answer(w, http.StatusBadRequest, problem{"the body is not {\"message\": ..., \"bad_input\": ...}: " + err.Error()})
		return
	}
	if body.BadInput {
		h.report(w, r, c, &pool.Outcome{Reason: inferencev1alpha1.ReasonInvalidInput, Message: body.Message, Pod: c.pod})
		return
	}
	err := h.Dispatcher.Retry(r.Context(), c.model, r.PathValue("lease"), c.pod, body.Message)
	h.answerReport(w, r, err)
}

// reportWait bounds how long a report waits for its outcome to be stored;
// past it the pod is asked to report again.
const reportWait = 30 * time.Second

func (h *Handler) report(w http.ResponseWriter, r *http.Request, c call, o *pool.Outcome) {
	ctx, cancel := context.WithTimeout(r.Context(), reportWait)
	defer cancel()
	h.answerReport(w, r, h.Dispatcher.Report(ctx, c.key, r.PathValue("lease"), o))
}

func (h *Handler) answerReport(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, pool.ErrGone):
		gone(w)
	case err != nil:
		ctrl.LoggerFrom(r.Context()).Info("A reported outcome is not stored yet", "error", err.Error())
		w.Header().Set("Retry-After", "1")
		answer(w, http.StatusServiceUnavailable, problem{"the outcome is not stored yet; report it again"})
	default:
		answer(w, http.StatusOK, struct{}{})
	}
}

func gone(w http.ResponseWriter) {
	answer(w, http.StatusGone, problem{"the lease is gone: the request was canceled, ended or handed out again; drop it"})
}

func answer(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// Server runs the work API on its own listener. The leases live in the
// leader's memory, so only the leader hands out work: every replica listens,
// and until this one is elected it answers 503 with Retry-After, which the
// SDKs retry on, so a Service in front of several replicas works.
type Server struct {
	Addr    string
	Handler http.Handler
	// Elected is closed once this replica leads (the manager's Elected()).
	Elected <-chan struct{}
}

// NeedLeaderElection is false: a replica that does not lead answers too.
func (s *Server) NeedLeaderElection() bool { return false }

// ServeHTTP serves a call once this replica leads, and refuses it for now
// before then.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	select {
	case <-s.Elected:
		s.Handler.ServeHTTP(w, r)
	default:
		w.Header().Set("Retry-After", "1")
		answer(w, http.StatusServiceUnavailable, problem{"this replica of the manager does not lead; try again"})
	}
}

// Start serves until ctx ends, then lets calls in flight finish.
func (s *Server) Start(ctx context.Context) error {
	srv := &http.Server{Addr: s.Addr, Handler: s, ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	listener, err := net.Listen("tcp", s.Addr)
	if err != nil {
		return fmt.Errorf("work API: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(listener) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), reportWait)
	defer cancel()
	return srv.Shutdown(shutdown)
}
