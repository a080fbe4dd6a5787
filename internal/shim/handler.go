// Package shim is kinfer's HTTP API for clients without kubectl: the original
// service's POST /v1/inferences, answered once the request is stored as an
// InferenceRequest, plus GET and DELETE by id.
package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
)

// Options configure a Handler.
type Options struct {
	// Client talks to the API server directly: every answer reflects what
	// is stored, not a cache.
	Client client.Client
	// Namespace is where /v1/inferences without a namespace puts requests.
	// Without an Authorizer it is the only namespace served.
	Namespace string
	// Denied refuses callback URLs whose host is a literal address the
	// manager would never deliver to; nil allows every address.
	Denied func(netip.Addr) error
	// RequireHTTPS refuses plain http callback URLs, as the manager's
	// --callback-require-https refuses to deliver to them.
	RequireHTTPS bool
	// Authorizer checks each call. Nil checks no credentials, and then only
	// Namespace is served: an open port must not reach every namespace.
	Authorizer Authorizer
	// RetryAfter is what 503 answers ask clients to wait.
	RetryAfter time.Duration
	// Queue tells where a waiting request stands in its model's queue, for
	// GET; nil (a shim running without the controller) leaves it out.
	Queue Queue
}

// Queue is what the shim asks of the controller's queue: how many requests
// of ir's model start before it, and how many wait in all, while ir waits.
type Queue interface {
	Position(ir *inferencev1alpha1.InferenceRequest) (ahead, length int, waiting bool)
}

// Handler serves the shim's routes. Make one with NewHandler; it serves any
// number of calls at once.
type Handler struct {
	opts Options
	mux  *http.ServeMux
}

// NewHandler returns a Handler with its routes in place.
func NewHandler(opts Options) *Handler {
	h := &Handler{opts: opts}
	h.mux = h.routes()
	return h
}

// Authorizer decides whether the caller of r may perform verb on
// inferencerequests in namespace. It answers nil, or an *apiError with 401,
// 403, 429 or 503.
type Authorizer interface {
	Authorize(r *http.Request, verb, namespace string) error
}

// ServeHTTP routes a call.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mux.ServeHTTP(w, r)
}

func (h *Handler) routes() *http.ServeMux {
	mux := http.NewServeMux()
	for _, prefix := range []string{"/v1", "/v1/namespaces/{namespace}"} {
		mux.HandleFunc("POST "+prefix+"/inferences", h.call("create", h.create))
		mux.HandleFunc("GET "+prefix+"/inferences/{id}", h.call("get", h.get))
		mux.HandleFunc("DELETE "+prefix+"/inferences/{id}", h.call("delete", h.remove))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, fail(http.StatusNotFound, "", "no route for %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// call resolves the namespace, authorizes verb in it, and runs serve.
func (h *Handler) call(verb string, serve func(http.ResponseWriter, *http.Request, string) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		namespace := r.PathValue("namespace")
		if namespace == "" {
			namespace = h.opts.Namespace
		}
		err := h.authorize(r, verb, namespace)
		if err == nil {
			err = serve(w, r, namespace)
		}
		if err != nil {
			h.writeFailure(w, r, err)
		}
	}
}

func (h *Handler) authorize(r *http.Request, verb, namespace string) error {
	if h.opts.Authorizer != nil {
		return h.opts.Authorizer.Authorize(r, verb, namespace)
	}
	if namespace != h.opts.Namespace {
		return fail(http.StatusForbidden, "", "this server checks no credentials, so it serves namespace %q only",
			h.opts.Namespace)
	}
	return nil
}

// Received is the answer to a submission.
type Received struct {
	Message string `json:"message"`
	ID      string `json:"id"`
	Name    string `json:"name"`
}

func (h *Handler) create(w http.ResponseWriter, r *http.Request, namespace string) error {
	s, problem := decodeSubmission(r, callbackRules{denied: h.opts.Denied, requireHTTPS: h.opts.RequireHTTPS})
	if problem != nil {
		return problem
	}
	ir := s.object(namespace)
	err := h.opts.Client.Create(r.Context(), ir)
	switch {
	case apierrors.IsAlreadyExists(err):
		err = h.sameAsStored(r.Context(), s, ir)
	case apierrors.IsNotFound(err):
		err = fail(http.StatusNotFound, "namespace", "namespace %q does not exist", namespace)
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusAccepted, Received{Message: "Received", ID: s.ID, Name: ir.Name})
	return nil
}

// object is the InferenceRequest for a submission.
func (s *Submission) object(namespace string) *inferencev1alpha1.InferenceRequest {
	ir := &inferencev1alpha1.InferenceRequest{
		ObjectMeta: metav1.ObjectMeta{
			Name:      ObjectName(s.ID),
			Namespace: namespace,
			Labels:    map[string]string{inferencev1alpha1.LabelIDHash: IDHashLabel(s.ID)},
		},
		Spec: inferencev1alpha1.InferenceRequestSpec{ID: s.ID, CallbackURL: s.CallbackURL, Model: s.Model},
	}
	if len(s.Input) > 0 {
		ir.Spec.Input = &apiextensionsv1.JSON{Raw: s.Input}
		ir.Annotations = map[string]string{inferencev1alpha1.AnnotationInputHash: s.InputHash}
	}
	return ir
}

// sameAsStored decides a resubmission: the same id with the same body is the
// same request, already stored; another body for the id is a conflict. A
// conflict names the field that differs and never what is stored: whoever
// may submit in the namespace could otherwise read another client's callback
// URL, with any token in it, by reusing that client's id.
func (h *Handler) sameAsStored(ctx context.Context, s *Submission, want *inferencev1alpha1.InferenceRequest) error {
	stored := &inferencev1alpha1.InferenceRequest{}
	if err := h.opts.Client.Get(ctx, client.ObjectKeyFromObject(want), stored); err != nil {
		return err
	}
	if stored.Spec.ID != s.ID {
		return fail(http.StatusConflict, "id", "id %q maps to request %s, which holds another id; choose another id", s.ID, want.Name)
	}
	differs := func(field string) error {
		return fail(http.StatusConflict, field,
			"id %q is taken by a request with another %s; send the same body again, or use a new id", s.ID, field)
	}
	switch {
	case stored.Spec.CallbackURL != s.CallbackURL:
		return differs("callback_url")
	case stored.Spec.Model != s.Model:
		return differs("model")
	case !sameStoredInput(stored, s):
		return differs("input")
	}
	return nil
}

// sameStoredInput compares inputs by the hash the shim stored with the
// request, which the API server leaves alone; a request made another way has
// none, and its stored input is compared value by value, numbers exactly.
func sameStoredInput(stored *inferencev1alpha1.InferenceRequest, s *Submission) bool {
	if hash, ok := stored.Annotations[inferencev1alpha1.AnnotationInputHash]; ok {
		return hash == s.InputHash
	}
	var raw json.RawMessage
	if stored.Spec.Input != nil && !absent(stored.Spec.Input.Raw) {
		raw = stored.Spec.Input.Raw
	}
	return sameInput(raw, s.Input)
}

// Status is the answer to GET: where the request stands.
type Status struct {
	ID          string          `json:"id"`
	Name        string          `json:"name"`
	Model       string          `json:"model"`
	Phase       string          `json:"phase"`
	Result      json.RawMessage `json:"result,omitempty"`
	Error       string          `json:"error,omitempty"`
	Delivery    Delivery        `json:"delivery"`
	CreatedAt   time.Time       `json:"created_at"`
	StartedAt   *time.Time      `json:"started_at,omitempty"`
	CompletedAt *time.Time      `json:"completed_at,omitempty"`
	CallbackURL string          `json:"callback_url,omitempty"`
	// Reason and Message say why the request is where it is, in the words
	// of its Complete condition: Queued behind maxConcurrency, waiting for
	// its model, running, or why it failed.
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
	// QueuePosition is how many requests of the model start before this
	// one, and QueueLength how many wait in all, while it waits to start.
	QueuePosition *int `json:"queue_position,omitempty"`
	QueueLength   *int `json:"queue_length,omitempty"`
}

// Delivery is where delivery of the result to the callback stands.
type Delivery struct {
	State          string     `json:"state"`
	Attempts       int32      `json:"attempts"`
	LastStatusCode int32      `json:"last_status_code,omitempty"`
	LastError      string     `json:"last_error,omitempty"`
	NextAttemptAt  *time.Time `json:"next_attempt_at,omitempty"`
	DeliveredAt    *time.Time `json:"delivered_at,omitempty"`
}

func (h *Handler) get(w http.ResponseWriter, r *http.Request, namespace string) error {
	ir, err := h.lookup(r.Context(), namespace, r.PathValue("id"))
	if err != nil {
		return err
	}
	out := statusOf(ir)
	if h.opts.Queue != nil {
		if ahead, length, waiting := h.opts.Queue.Position(ir); waiting {
			out.QueuePosition, out.QueueLength = &ahead, &length
		}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func statusOf(ir *inferencev1alpha1.InferenceRequest) Status {
	st := ir.Status
	out := Status{
		ID:          ir.Spec.ID,
		Name:        ir.Name,
		Model:       ir.Spec.Model,
		Phase:       string(ir.CurrentPhase()),
		Error:       st.Error,
		CreatedAt:   ir.CreationTimestamp.UTC(),
		StartedAt:   timeOf(st.StartTime),
		CompletedAt: timeOf(st.CompletionTime),
		CallbackURL: ir.Spec.CallbackURL,
		Delivery: Delivery{
			State:          string(ir.CurrentDeliveryState()),
			Attempts:       st.Delivery.Attempts,
			LastStatusCode: st.Delivery.LastStatusCode,
			LastError:      st.Delivery.LastError,
			NextAttemptAt:  timeOf(st.Delivery.NextAttemptTime),
			DeliveredAt:    timeOf(st.Delivery.DeliveredTime),
		},
	}
	if st.Result != nil {
		out.Result = st.Result.Raw
	}
	if c := meta.FindStatusCondition(st.Conditions, inferencev1alpha1.ConditionComplete); c != nil {
		out.Reason, out.Message = c.Reason, c.Message
	}
	return out
}

func timeOf(t *metav1.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// Deleted is the answer to DELETE.
type Deleted struct {
	Message string `json:"message"`
	ID      string `json:"id"`
	Name    string `json:"name"`
}

func (h *Handler) remove(w http.ResponseWriter, r *http.Request, namespace string) error {
	ir, err := h.lookup(r.Context(), namespace, r.PathValue("id"))
	if err != nil {
		return err
	}
	// The Job and its pods go with the request through their owner references.
	err = h.opts.Client.Delete(r.Context(), ir, client.PropagationPolicy(metav1.DeletePropagationBackground),
		client.Preconditions{UID: &ir.UID})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return notFound(ir.Spec.ID)
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusAccepted, Deleted{Message: "Deleted", ID: ir.Spec.ID, Name: ir.Name})
	return nil
}

// lookup finds the request the shim stored for id; one whose name matches
// but whose id differs (or was made by hand without one) is not it.
func (h *Handler) lookup(ctx context.Context, namespace, id string) (*inferencev1alpha1.InferenceRequest, error) {
	if id == "" || len(id) > maxIDLength {
		return nil, notFound(id)
	}
	ir := &inferencev1alpha1.InferenceRequest{}
	err := h.opts.Client.Get(ctx, types.NamespacedName{Namespace: namespace, Name: ObjectName(id)}, ir)
	if apierrors.IsNotFound(err) || (err == nil && ir.Spec.ID != id) {
		return nil, notFound(id)
	}
	return ir, err
}

func notFound(id string) *apiError {
	return fail(http.StatusNotFound, "id", "no inference with id %q", id)
}

// writeFailure answers err: an *apiError as it is, an API server error
// translated for clients, anything else as a 500 without internals.
func (h *Handler) writeFailure(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		// The client hung up: nothing went wrong here, and nobody reads the answer.
		ctrl.LoggerFrom(r.Context()).V(1).Info("Client went away before the answer", "method", r.Method,
			"path", r.URL.Path, "error", err.Error())
		return
	}
	var problem *apiError
	if errors.As(err, &problem) {
		switch {
		case problem.retryAfter > 0:
			w.Header().Set("Retry-After", retryAfterSeconds(problem.retryAfter))
		case problem.status == http.StatusServiceUnavailable:
			w.Header().Set("Retry-After", retryAfterSeconds(h.opts.RetryAfter))
		}
		writeError(w, problem)
		return
	}
	if unavailable(err) {
		w.Header().Set("Retry-After", retryAfterSeconds(h.opts.RetryAfter))
		writeError(w, fail(http.StatusServiceUnavailable, "", "the Kubernetes API server is unavailable; try again later"))
		return
	}
	var status apierrors.APIStatus
	if errors.As(err, &status) && apierrors.IsInvalid(err) {
		writeError(w, invalid(status.Status()))
		return
	}
	logFailure(r, err)
	writeError(w, fail(http.StatusInternalServerError, "", "internal error"))
}

// invalid turns the API server's validation error into a 422 naming the
// field as the client knows it.
func invalid(status metav1.Status) *apiError {
	field, message := "", status.Message
	if status.Details != nil && len(status.Details.Causes) > 0 {
		c := status.Details.Causes[0]
		field, message = clientField(c.Field), c.Message
	}
	return fail(http.StatusUnprocessableEntity, field, "%s", message)
}

func clientField(apiField string) string {
	switch apiField {
	case "spec.id":
		return "id"
	case "spec.callbackURL":
		return "callback_url"
	case "spec.model":
		return "model"
	case "spec.input":
		return "input"
	}
	return apiField
}

// unavailable reports an API server that cannot be reached or did not answer
// in time, which clients should retry.
func unavailable(err error) bool {
	if apierrors.IsServiceUnavailable(err) || apierrors.IsTimeout(err) || apierrors.IsServerTimeout(err) ||
		apierrors.IsTooManyRequests(err) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var netErr net.Error
	var opErr *net.OpError
	return errors.As(err, &netErr) || errors.As(err, &opErr) || strings.Contains(err.Error(), "connection refused")
}

func logFailure(r *http.Request, err error) {
	ctrl.LoggerFrom(r.Context()).Error(err, "Shim call failed", "method", r.Method, "path", r.URL.Path)
}

func retryAfterSeconds(d time.Duration) string {
	return fmt.Sprint(max(int(d.Seconds()), 1))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, e *apiError) {
	writeJSON(w, e.status, e)
}
