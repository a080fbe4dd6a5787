// Package shim is kinfer's HTTP API for clients without kubectl: the original
// service's POST /v1/inferences, answered once the request is stored as an
// InferenceRequest, plus GET, DELETE, cancel and redeliver by id, and the
// public keys that verify the namespace's ed25519-signed callbacks.
package shim

import (
	"context"
	"crypto/rand"
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
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
)

// Options configure a Handler.
type Options struct {
	// Client talks to the API server directly: every answer reflects what
	// is stored, not a cache.
	Client client.Client
	// Models, when set, is where submissions' models are read from first:
	// the manager's cache when the controller runs in the same process. A
	// cache learns of a new model, or of a model's new limits, a moment
	// after they are stored, so a submission it would refuse is judged
	// again from Client. Nil reads models with Client only.
	Models client.Reader
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
		mux.HandleFunc("POST "+prefix+"/inferences/{id}/cancel", h.call("patch", h.cancel))
		mux.HandleFunc("POST "+prefix+"/inferences/{id}/redeliver", h.call("patch", h.redeliver))
		mux.HandleFunc("GET "+prefix+"/webhook-keys", h.call("get", h.webhookKeys))
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
	if err := h.checkModel(r.Context(), namespace, s); err != nil {
		return err
	}
	ir := s.object(namespace)
	err := h.opts.Client.Create(r.Context(), ir)
	switch {
	case apierrors.IsAlreadyExists(err):
		err = h.resubmitted(r.Context(), s, ir)
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
			Labels: map[string]string{
				inferencev1alpha1.LabelIDHash: IDHashLabel(s.ID),
				// For kubectl get ir -l; it costs nothing on the create.
				inferencev1alpha1.LabelModel: s.Model,
			},
		},
		Spec: inferencev1alpha1.InferenceRequestSpec{ID: s.ID, CallbackURL: s.CallbackURL, Model: s.Model,
			Priority: s.Priority, QueueTimeoutSeconds: s.QueueTimeoutSeconds, TimeoutSeconds: s.TimeoutSeconds},
	}
	if len(s.Input) > 0 {
		ir.Spec.Input = &apiextensionsv1.JSON{Raw: s.Input}
		ir.Annotations = map[string]string{inferencev1alpha1.AnnotationInputHash: s.InputHash}
	}
	return ir
}

// checkModel refuses a submission its model cannot take: a model that does
// not exist, or a priority or limit above the model's. The admission policy
// in config/policy holds requests to the same limits, but it lets a request
// for a missing model through (a model and its requests may be applied
// together) and names no field; a client of the shim learns at once, with the
// field named, rather than from a request that fails later.
func (h *Handler) checkModel(ctx context.Context, namespace string, s *Submission) error {
	key := types.NamespacedName{Namespace: namespace, Name: s.Model}
	if h.opts.Models != nil {
		cached := &inferencev1alpha1.InferenceModel{}
		if h.opts.Models.Get(ctx, key, cached) == nil && s.withinLimits(cached) == nil {
			return nil
		}
	}
	model := &inferencev1alpha1.InferenceModel{}
	err := h.opts.Client.Get(ctx, key, model)
	if apierrors.IsNotFound(err) {
		return fail(http.StatusUnprocessableEntity, "model", "model %q does not exist in namespace %q", s.Model, namespace)
	}
	if err != nil {
		return err
	}
	if problem := s.withinLimits(model); problem != nil {
		return problem
	}
	return nil
}

// withinLimits refuses what model does not allow: a priority above its
// maxPriority, or a limit longer than its own.
func (s *Submission) withinLimits(model *inferencev1alpha1.InferenceModel) *apiError {
	longer := func(field string, asked *int64, modelField string, allowed *int64) *apiError {
		if asked == nil || allowed == nil || *asked <= *allowed {
			return nil
		}
		return fail(http.StatusUnprocessableEntity, field,
			"%s %d is longer than the %s of model %s (%d); a request may only ask for a shorter limit",
			field, *asked, modelField, model.Name, *allowed)
	}
	if allowed := ptr.Deref(model.Spec.MaxPriority, 0); s.Priority > allowed {
		return fail(http.StatusUnprocessableEntity, "priority", "priority %d is above the maxPriority of model %s (%d)",
			s.Priority, model.Name, allowed)
	}
	if problem := longer("timeout_seconds", s.TimeoutSeconds, "timeoutSeconds", model.Spec.TimeoutSeconds); problem != nil {
		return problem
	}
	return longer("queue_timeout_seconds", s.QueueTimeoutSeconds, "queueTimeoutSeconds", model.Spec.QueueTimeoutSeconds)
}

// resubmitted answers a submission whose request is stored already. When the
// request has ended and delivering its callback is over, the client that
// sends the same body again did not get the callback, or wants it again: a
// redelivery starts, as POST .../redeliver starts one, unless one is asked
// for already and the controller has yet to take it up, so that a client
// retrying in a burst starts one redelivery, not one per retry.
//
// The caller has shown it may create requests, not that it may patch them;
// the patch is made with the shim's own credentials all the same, as it asks
// for nothing the client's first submission did not: the same result to the
// same callback_url, under the same webhook-id.
func (h *Handler) resubmitted(ctx context.Context, s *Submission, want *inferencev1alpha1.InferenceRequest) error {
	stored, err := h.sameAsStored(ctx, s, want)
	if err != nil {
		return err
	}
	return h.change(ctx, stored, func(ir *inferencev1alpha1.InferenceRequest) (bool, error) {
		if redeliverable(ir) != nil || redeliveryAsked(ir) {
			return false, nil // its callback is still to come, or it has none
		}
		askRedelivery(ir)
		return true, nil
	})
}

// sameAsStored decides a resubmission: the same id with the same body is the
// same request, already stored, which it returns; another body for the id is
// a conflict. A conflict names the field that differs and never what is
// stored: whoever may submit in the namespace could otherwise read another
// client's callback URL, with any token in it, by reusing that client's id.
func (h *Handler) sameAsStored(
	ctx context.Context, s *Submission, want *inferencev1alpha1.InferenceRequest,
) (*inferencev1alpha1.InferenceRequest, error) {
	stored := &inferencev1alpha1.InferenceRequest{}
	if err := h.opts.Client.Get(ctx, client.ObjectKeyFromObject(want), stored); err != nil {
		return nil, err
	}
	if stored.Spec.ID != s.ID {
		return nil, fail(http.StatusConflict, "id", "id %q maps to request %s, which holds another id; choose another id",
			s.ID, want.Name)
	}
	differs := func(field string) error {
		return fail(http.StatusConflict, field,
			"id %q is taken by a request with another %s; send the same body again, or use a new id", s.ID, field)
	}
	switch {
	case stored.Spec.CallbackURL != s.CallbackURL:
		return nil, differs("callback_url")
	case stored.Spec.Model != s.Model:
		return nil, differs("model")
	case !sameStoredInput(stored, s):
		return nil, differs("input")
	case stored.Spec.Priority != s.Priority:
		return nil, differs("priority")
	case !ptr.Equal(stored.Spec.QueueTimeoutSeconds, s.QueueTimeoutSeconds):
		return nil, differs("queue_timeout_seconds")
	case !ptr.Equal(stored.Spec.TimeoutSeconds, s.TimeoutSeconds):
		return nil, differs("timeout_seconds")
	}
	return stored, nil
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
	// Priority, QueueTimeoutSeconds and TimeoutSeconds are what the request
	// asked of its model, where it asked.
	Priority            int32  `json:"priority,omitempty"`
	QueueTimeoutSeconds *int64 `json:"queue_timeout_seconds,omitempty"`
	TimeoutSeconds      *int64 `json:"timeout_seconds,omitempty"`
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
		ID:                  requestID(ir),
		Name:                ir.Name,
		Model:               ir.Spec.Model,
		Phase:               string(ir.CurrentPhase()),
		Error:               st.Error,
		CreatedAt:           ir.CreationTimestamp.UTC(),
		StartedAt:           timeOf(st.StartTime),
		CompletedAt:         timeOf(st.CompletionTime),
		CallbackURL:         ir.Spec.CallbackURL,
		Priority:            ir.Spec.Priority,
		QueueTimeoutSeconds: ir.Spec.QueueTimeoutSeconds,
		TimeoutSeconds:      ir.Spec.TimeoutSeconds,
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
		return notFound(requestID(ir))
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusAccepted, Deleted{Message: "Deleted", ID: requestID(ir), Name: ir.Name})
	return nil
}

// Started is the answer to cancel and redeliver: the change is stored, and
// the controller acts on it in its own time.
type Started struct {
	Message string `json:"message"`
	ID      string `json:"id"`
	Name    string `json:"name"`
}

// cancel sets spec.cancel, which ends the request as Canceled with a
// "canceled" callback. It answers once that is stored, never waiting for
// the controller; a request already being canceled is answered the same.
func (h *Handler) cancel(w http.ResponseWriter, r *http.Request, namespace string) error {
	ir, err := h.lookup(r.Context(), namespace, r.PathValue("id"))
	if err != nil {
		return err
	}
	err = h.change(r.Context(), ir, func(ir *inferencev1alpha1.InferenceRequest) (bool, error) {
		if phase := ir.CurrentPhase(); phase.Complete() {
			return false, fail(http.StatusConflict, "", "inference %q has already ended (phase %s); there is nothing to cancel",
				requestID(ir), phase)
		}
		changed := !ir.Spec.Cancel
		ir.Spec.Cancel = true
		return changed, nil
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusAccepted, Started{Message: "Canceling", ID: requestID(ir), Name: ir.Name})
	return nil
}

// redeliver starts a fresh delivery of an ended request's callback, under the
// same webhook-id, for a receiver that lost it or that gave up answering.
func (h *Handler) redeliver(w http.ResponseWriter, r *http.Request, namespace string) error {
	ir, err := h.lookup(r.Context(), namespace, r.PathValue("id"))
	if err != nil {
		return err
	}
	err = h.change(r.Context(), ir, func(ir *inferencev1alpha1.InferenceRequest) (bool, error) {
		if problem := redeliverable(ir); problem != nil {
			return false, problem
		}
		askRedelivery(ir)
		return true, nil
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusAccepted, Started{Message: "Redelivering", ID: requestID(ir), Name: ir.Name})
	return nil
}

// redeliverable says why a fresh delivery of ir's callback cannot start, or
// nil when it can: the request has ended and its delivery is over.
func redeliverable(ir *inferencev1alpha1.InferenceRequest) *apiError {
	phase, state := ir.CurrentPhase(), ir.CurrentDeliveryState()
	switch {
	case state == inferencev1alpha1.DeliveryNotRequested:
		return fail(http.StatusConflict, "", "inference %q has no callback_url, so there is nothing to deliver; "+
			"read its result with GET /v1/inferences/{id}", requestID(ir))
	case !phase.Complete():
		return fail(http.StatusConflict, "", "a delivery is pending; inference %q has not ended yet (phase %s), "+
			"and its callback goes out when it ends", requestID(ir), phase)
	case state == inferencev1alpha1.DeliveryPending:
		return fail(http.StatusConflict, "", "a delivery is pending; the callback of inference %q is still being delivered "+
			"(GET shows delivery.attempts and next_attempt_at); ask again once it is Delivered or Failed", requestID(ir))
	}
	return nil
}

// askRedelivery sets the redeliver annotation to a value it has never had,
// which the controller acts on once: the time in nanoseconds, then a random
// suffix for two calls in the same nanosecond.
func askRedelivery(ir *inferencev1alpha1.InferenceRequest) {
	if ir.Annotations == nil {
		ir.Annotations = map[string]string{}
	}
	ir.Annotations[inferencev1alpha1.AnnotationRedeliver] = fmt.Sprintf("%d-%s", time.Now().UnixNano(), rand.Text()[:8])
}

// redeliveryAsked reports a redeliver annotation the controller has not acted on yet.
func redeliveryAsked(ir *inferencev1alpha1.InferenceRequest) bool {
	value, ok := ir.Annotations[inferencev1alpha1.AnnotationRedeliver]
	return ok && value != ir.Status.Delivery.ObservedRedeliver
}

// maxChangeAttempts bounds how often change reads a request again after
// another writer changed it first.
const maxChangeAttempts = 3

// change stores edit's change to ir as a merge patch that applies only to
// the version read, so that what edit decided from that version is never
// written over a request that has moved on (ended, say); when another writer
// came first, it reads the request again and lets edit decide anew. edit
// reports whether it changed anything; an error from it is the answer.
func (h *Handler) change(
	ctx context.Context, ir *inferencev1alpha1.InferenceRequest, edit func(*inferencev1alpha1.InferenceRequest) (bool, error),
) error {
	for attempt := 1; ; attempt++ {
		edited := ir.DeepCopy()
		changed, err := edit(edited)
		if err != nil || !changed {
			return err
		}
		err = h.opts.Client.Patch(ctx, edited, client.MergeFromWithOptions(ir, client.MergeFromWithOptimisticLock{}))
		switch {
		case apierrors.IsNotFound(err):
			return notFound(requestID(ir))
		case !apierrors.IsConflict(err):
			return err
		case attempt == maxChangeAttempts:
			return fail(http.StatusServiceUnavailable, "", "inference %q kept changing while it was being updated; try again",
				requestID(ir))
		}
		if ir, err = h.lookup(ctx, ir.Namespace, requestID(ir)); err != nil {
			return err
		}
	}
}

// lookup finds the request whose id is id: the one the shim stored for it
// (named ObjectName(id), with spec.id equal to id) or else one made with
// kubectl under the name id and without spec.id, whose name is its id. Ids
// and names so share one space per namespace, the shim's own requests first;
// the second read is made only when the first finds nothing. A request whose
// name is ObjectName(id) but whose spec.id differs is not id's.
func (h *Handler) lookup(ctx context.Context, namespace, id string) (*inferencev1alpha1.InferenceRequest, error) {
	if id == "" || len(id) > maxIDLength {
		return nil, notFound(id)
	}
	ir := &inferencev1alpha1.InferenceRequest{}
	err := h.opts.Client.Get(ctx, types.NamespacedName{Namespace: namespace, Name: ObjectName(id)}, ir)
	switch {
	case err == nil && ir.Spec.ID == id:
		return ir, nil
	case err != nil && !apierrors.IsNotFound(err):
		return nil, err
	case len(validation.IsDNS1123Subdomain(id)) > 0:
		return nil, notFound(id)
	}
	byName := &inferencev1alpha1.InferenceRequest{}
	err = h.opts.Client.Get(ctx, types.NamespacedName{Namespace: namespace, Name: id}, byName)
	if apierrors.IsNotFound(err) || (err == nil && byName.Spec.ID != "") {
		return nil, notFound(id)
	}
	return byName, err
}

// requestID is the id a request is known by: spec.id, or its name when it
// was made without one.
func requestID(ir *inferencev1alpha1.InferenceRequest) string {
	if ir.Spec.ID != "" {
		return ir.Spec.ID
	}
	return ir.Name
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
	if field == "" {
		field, message = policyRefusal(message)
	}
	return fail(http.StatusUnprocessableEntity, field, "%s", message)
}

// policyRefusal finds the field in the refusal of an admission policy: the
// API server passes such a refusal on with no field, after words of its own
// ("ValidatingAdmissionPolicy '...' with binding '...' denied request: "),
// and the policies in config/policy start their messages with the field.
// The answer is the policy's message, the field named as the client knows it.
func policyRefusal(message string) (field, text string) {
	_, text, denied := strings.Cut(message, "denied request: ")
	if !denied {
		text = message
	}
	for _, apiField := range []string{"spec.priority", "spec.queueTimeoutSeconds", "spec.timeoutSeconds"} {
		if rest, ok := strings.CutPrefix(text, apiField+" "); ok {
			field = clientField(apiField)
			return field, field + " " + rest
		}
	}
	return "", message
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
	case "spec.priority":
		return "priority"
	case "spec.queueTimeoutSeconds":
		return "queue_timeout_seconds"
	case "spec.timeoutSeconds":
		return "timeout_seconds"
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
