package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/source"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/callback"
)

// +kubebuilder:rbac:groups=batch,resources=jobs,verbs=get;list;watch;create
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get

// Field index over InferenceRequests by model, to find a model's requests.
const modelIndex = "spec.model"

// InferenceRequestReconciler runs InferenceRequests as Jobs and delivers their
// results to their callbacks.
type InferenceRequestReconciler struct {
	client.Client
	// APIReader reads past the cache, where a stale cache would mislead: before
	// a callback is sent, and before a missing Job is taken for a deleted one.
	APIReader client.Reader
	Scheme    *runtime.Scheme
	Recorder  events.EventRecorder
	Clock     clock.PassiveClock
	Sender    *callback.Sender
	// Jitter spreads retry waits; callback.Jitter unless a test fixes it.
	Jitter func(time.Duration) time.Duration
	// MaxConcurrentDeliveries bounds how many requests are reconciled, and so
	// how many callbacks are in flight, at once.
	MaxConcurrentDeliveries int
	// MaxDeliveriesPerHost bounds the callbacks in flight to one host, so
	// that a slow receiver cannot hold every worker; 0 means half of
	// MaxConcurrentDeliveries.
	MaxDeliveriesPerHost int

	// ExpirySweep is how often ended requests are looked over for the ones
	// that expire before the next look; 0 means a minute.
	ExpirySweep time.Duration

	admission admission
	written   writeTracker
	slots     *hostSlots
	jobPods   *jobPods
	wakeups   chan event.TypedGenericEvent[*inferencev1alpha1.InferenceRequest]
}

// writeTracker remembers, per request, the resourceVersion that this manager's
// latest status write replaced. A reconcile that reads that version from the
// cache is reading the past: acting on it would redo the write and be refused.
type writeTracker struct {
	mu       sync.Mutex
	replaced map[types.NamespacedName]string
}

func (w *writeTracker) wrote(key types.NamespacedName, replaced string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.replaced == nil {
		w.replaced = map[types.NamespacedName]string{}
	}
	w.replaced[key] = replaced
}

// behind reports whether resourceVersion is the one the latest write replaced;
// any other version means the cache has caught up, and the entry goes.
func (w *writeTracker) behind(key types.NamespacedName, resourceVersion string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.replaced[key] == resourceVersion {
		return true
	}
	delete(w.replaced, key)
	return false
}

func (w *writeTracker) forget(key types.NamespacedName) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.replaced, key)
}

// NewInferenceRequestReconciler wires a reconciler to mgr's client, cache and
// Event recorder, with the real clock and jittered retries.
func NewInferenceRequestReconciler(
	mgr ctrl.Manager, sender *callback.Sender, maxConcurrentDeliveries, maxDeliveriesPerHost int,
) *InferenceRequestReconciler {
	return &InferenceRequestReconciler{
		Client:                  mgr.GetClient(),
		APIReader:               mgr.GetAPIReader(),
		Scheme:                  mgr.GetScheme(),
		Recorder:                mgr.GetEventRecorder("kinfer"),
		Clock:                   clock.RealClock{},
		Sender:                  sender,
		Jitter:                  callback.Jitter,
		MaxConcurrentDeliveries: maxConcurrentDeliveries,
		MaxDeliveriesPerHost:    maxDeliveriesPerHost,
	}
}

// Reconcile moves one request a step further: Job, result, callback, expiry.
func (r *InferenceRequestReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	ir := &inferencev1alpha1.InferenceRequest{}
	if err := r.Get(ctx, req.NamespacedName, ir); err != nil {
		r.written.forget(req.NamespacedName)
		r.slots.forget(req.NamespacedName)
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if r.written.behind(req.NamespacedName, ir.ResourceVersion) {
		// The cache still holds the version this manager's last status write
		// replaced; that write's own watch event brings the request back.
		return ctrl.Result{}, nil
	}
	if !ir.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	if ended(ir) {
		return r.expire(ctx, ir)
	}

	s := newRequestState(ir, r.Clock.Now())
	if err := r.run(ctx, s); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.deliver(ctx, s); err != nil || s.stale {
		return ctrl.Result{}, err
	}
	before := ir.Status.DeepCopy()
	if written, err := r.writeStatus(ctx, s); err != nil || !written {
		return ctrl.Result{}, err
	}
	r.emit(s)
	observe(before, &s.status)
	return r.requeue(s), nil
}

// run brings the request's Job into being and reads its outcome once it ends.
func (r *InferenceRequestReconciler) run(ctx context.Context, s *requestState) error {
	if s.complete() {
		return nil
	}
	model, err := r.model(ctx, s.ir)
	if err != nil {
		return err
	}
	if model == nil {
		s.waiting(inferencev1alpha1.PhasePending, inferencev1alpha1.ReasonModelNotFound,
			fmt.Sprintf("InferenceModel %s does not exist in namespace %s", s.ir.Spec.Model, s.ir.Namespace), corev1.EventTypeWarning)
		return nil
	}
	input, err := inputJSON(s.ir)
	if err != nil || len(input) > inferencev1alpha1.MaxInputBytes {
		s.fail(inferencev1alpha1.ReasonInvalidInput, inputProblem(input, err))
		return nil
	}
	job, err := r.job(ctx, s)
	if err != nil {
		return err
	}
	if job == nil {
		return r.startJob(ctx, s, model, input)
	}
	return r.readOutcome(ctx, s, job)
}

func inputProblem(input string, err error) string {
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("input is %d bytes of JSON; at most %d are accepted", len(input), inferencev1alpha1.MaxInputBytes)
}

// model returns the request's model, or nil after marking the request Pending
// when it does not exist; the model watch wakes the request once it does.
func (r *InferenceRequestReconciler) model(
	ctx context.Context, ir *inferencev1alpha1.InferenceRequest,
) (*inferencev1alpha1.InferenceModel, error) {
	model := &inferencev1alpha1.InferenceModel{}
	err := r.Get(ctx, types.NamespacedName{Namespace: ir.Namespace, Name: ir.Spec.Model}, model)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	return model, err
}

// job returns the request's Job, or nil when there is none. A Job the status
// names but the cache lacks is looked up in the API server before it is taken
// for deleted: the cache may simply not have seen it yet.
func (r *InferenceRequestReconciler) job(ctx context.Context, s *requestState) (*batchv1.Job, error) {
	job := &batchv1.Job{}
	key := client.ObjectKeyFromObject(s.ir)
	err := r.Get(ctx, key, job)
	if apierrors.IsNotFound(err) && s.status.JobName != "" {
		err = r.APIReader.Get(ctx, key, job)
	}
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if !metav1.IsControlledBy(job, s.ir) {
		return nil, fmt.Errorf("job %s exists but does not belong to this request", key)
	}
	return job, nil
}

// startJob creates the request's Job when the model has room for it.
func (r *InferenceRequestReconciler) startJob(
	ctx context.Context, s *requestState, model *inferencev1alpha1.InferenceModel, input string,
) error {
	if s.status.JobName != "" {
		s.fail(inferencev1alpha1.ReasonJobDeleted, fmt.Sprintf("job %s was deleted before it finished", s.status.JobName))
		return nil
	}
	job := buildJob(s.ir, model, input)
	if err := controllerutil.SetControllerReference(s.ir, job, r.Scheme); err != nil {
		return err
	}
	admitted, err := r.admission.create(ctx, r.Client, s.ir, model, job)
	if err != nil {
		return err
	}
	if !admitted {
		s.waiting(inferencev1alpha1.PhaseQueued, inferencev1alpha1.ReasonQueued,
			fmt.Sprintf("model %s runs at most %d requests at once", model.Name, *model.Spec.MaxConcurrency), corev1.EventTypeNormal)
		return nil
	}
	ctrl.LoggerFrom(ctx).V(1).Info("Created Job", "job", job.Name)
	s.started(job.Name)
	return r.readOutcome(ctx, s, job)
}

// readOutcome records a running Job, or the result or error of a finished one.
func (r *InferenceRequestReconciler) readOutcome(ctx context.Context, s *requestState, job *batchv1.Job) error {
	s.started(job.Name)
	condition := jobCondition(job)
	switch {
	case condition == nil && !job.DeletionTimestamp.IsZero():
		s.fail(inferencev1alpha1.ReasonJobDeleted, fmt.Sprintf("job %s was deleted before it finished", job.Name))
	case condition == nil && job.Spec.Suspend != nil && *job.Spec.Suspend:
		s.waiting(inferencev1alpha1.PhaseQueued, inferencev1alpha1.ReasonWaitingForAdmission,
			fmt.Sprintf("job %s is suspended until its queue admits it", job.Name), corev1.EventTypeNormal)
	case condition == nil:
		// No Event: status shows it, and the Job has Events of its own.
		s.waiting(inferencev1alpha1.PhaseRunning, inferencev1alpha1.ReasonJobCreated,
			fmt.Sprintf("job %s is running", job.Name), "")
	case condition.Type == batchv1.JobComplete:
		return r.readResult(ctx, s, job)
	default:
		return r.readFailure(ctx, s, job, condition)
	}
	return nil
}

// slotRecheck is how often a request waiting for a slot at its callback's
// host looks again, should its wake-up be lost.
const slotRecheck = 30 * time.Second

// requeue says when the request needs looking at again without any watch
// event: at its next delivery attempt. Everything else arrives by watch.
func (r *InferenceRequestReconciler) requeue(s *requestState) ctrl.Result {
	if s.waitingForSlot {
		// Woken when a slot at its host is handed to it; the requeue is
		// only a safety net.
		return ctrl.Result{RequeueAfter: slotRecheck}
	}
	next := s.status.Delivery.NextAttemptTime
	if s.status.Delivery.State != inferencev1alpha1.DeliveryPending || next == nil {
		return ctrl.Result{}
	}
	return ctrl.Result{RequeueAfter: max(next.Sub(r.Clock.Now()), time.Millisecond)}
}

// writeStatus writes the computed status when it differs from the stored one.
// It reports whether the reconcile may go on: a conflict means a newer version
// of the request is on its way through the watch and will be reconciled anew.
func (r *InferenceRequestReconciler) writeStatus(ctx context.Context, s *requestState) (bool, error) {
	s.status.ObservedGeneration = s.ir.Generation
	if equality.Semantic.DeepEqual(s.ir.Status, s.status) {
		return true, nil
	}
	patch := client.MergeFromWithOptions(s.ir.DeepCopy(), client.MergeFromWithOptimisticLock{})
	replaced := s.ir.ResourceVersion
	s.ir.Status = s.status
	err := r.Status().Patch(ctx, s.ir, patch)
	if err == nil {
		r.written.wrote(client.ObjectKeyFromObject(s.ir), replaced)
	}
	if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
		ctrl.LoggerFrom(ctx).V(1).Info("Status changed underneath; reconciling again", "error", err.Error())
		return false, nil
	}
	return err == nil, err
}

// emit sends the Events one reconcile's changes call for. Every Warning is
// an Event of its own; Normal changes made in the same reconcile fold into
// one Event with the last reason and every note, so that the happy path
// (result read and callback delivered at once) costs the API server one
// Event rather than one per step.
func (r *InferenceRequestReconciler) emit(s *requestState) {
	var normal *pendingEvent
	for _, e := range s.events {
		if e.eventType != corev1.EventTypeNormal {
			r.Recorder.Eventf(s.ir, nil, e.eventType, e.reason, e.reason, "%s", e.note)
			continue
		}
		if normal == nil {
			normal = &pendingEvent{eventType: e.eventType, reason: e.reason, note: e.note}
			continue
		}
		normal.reason, normal.note = e.reason, normal.note+"; "+lowerFirst(e.note)
	}
	if normal != nil {
		r.Recorder.Eventf(s.ir, nil, normal.eventType, normal.reason, normal.reason, "%s", normal.note)
	}
}

func lowerFirst(note string) string {
	if note == "" {
		return note
	}
	return strings.ToLower(note[:1]) + note[1:]
}

// SetupWithManager registers the reconciler: requests, their Jobs, and the
// models and Jobs whose changes let waiting requests go on.
func (r *InferenceRequestReconciler) SetupWithManager(mgr ctrl.Manager) error {
	registerMetrics(mgr.GetClient(), r.Clock)
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &inferencev1alpha1.InferenceRequest{}, modelIndex,
		func(o client.Object) []string { return []string{o.(*inferencev1alpha1.InferenceRequest).Spec.Model} }); err != nil {
		return err
	}
	pods, err := mgr.GetCache().GetInformer(context.Background(), podMetadata())
	if err != nil {
		return err
	}
	r.jobPods = newJobPods()
	if _, err := pods.AddEventHandler(r.jobPods.handler()); err != nil {
		return err
	}
	r.wakeups = make(chan event.TypedGenericEvent[*inferencev1alpha1.InferenceRequest], 1024)
	r.slots = newHostSlots(r.deliveriesPerHost(), r.Clock, func(key types.NamespacedName) { r.wake(context.Background(), key) })
	registerSlotMetrics(r.slots)
	if err := mgr.Add(manager.RunnableFunc(r.sweepExpiring)); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&inferencev1alpha1.InferenceRequest{}).
		WatchesRawSource(source.Channel(r.wakeups, &handler.TypedEnqueueRequestForObject[*inferencev1alpha1.InferenceRequest]{})).
		Owns(&batchv1.Job{}).
		Watches(&inferencev1alpha1.InferenceModel{}, handler.EnqueueRequestsFromMapFunc(r.waitingOnModel)).
		Watches(&batchv1.Job{}, r.slotFreed()).
		WithOptions(controller.Options{MaxConcurrentReconciles: r.MaxConcurrentDeliveries}).
		Named("inferencerequest").
		Complete(r)
}

// deliveriesPerHost is MaxDeliveriesPerHost, or half the workers when unset.
func (r *InferenceRequestReconciler) deliveriesPerHost() int {
	if r.MaxDeliveriesPerHost > 0 {
		return r.MaxDeliveriesPerHost
	}
	return max(1, r.MaxConcurrentDeliveries/2)
}

// waitingOnModel wakes a model's requests that wait for it to exist or for a
// slot under a raised maxConcurrency.
func (r *InferenceRequestReconciler) waitingOnModel(ctx context.Context, o client.Object) []ctrl.Request {
	return r.waiting(ctx, o.GetNamespace(), o.GetName(), 0)
}

// slotFreed wakes the requests queued behind a Job's model when the Job stops
// holding a slot: it finished, or it was deleted while it ran.
func (r *InferenceRequestReconciler) slotFreed() handler.TypedEventHandler[client.Object, ctrl.Request] {
	wake := func(ctx context.Context, job client.Object, q workqueue.TypedRateLimitingInterface[ctrl.Request]) {
		model := &inferencev1alpha1.InferenceModel{}
		key := types.NamespacedName{Namespace: job.GetNamespace(), Name: job.GetLabels()[LabelModel]}
		if key.Name == "" || r.Get(ctx, key, model) != nil || model.Spec.MaxConcurrency == nil {
			return
		}
		for _, req := range r.waiting(ctx, key.Namespace, key.Name, int(*model.Spec.MaxConcurrency)) {
			q.Add(req)
		}
	}
	return handler.Funcs{
		UpdateFunc: func(ctx context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[ctrl.Request]) {
			if holdsSlot(e.ObjectOld.(*batchv1.Job)) && !holdsSlot(e.ObjectNew.(*batchv1.Job)) {
				wake(ctx, e.ObjectNew, q)
			}
		},
		DeleteFunc: func(ctx context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[ctrl.Request]) {
			if job, ok := e.Object.(*batchv1.Job); !ok || holdsSlot(job) {
				wake(ctx, e.Object, q)
			}
		},
	}
}

// waiting lists the requests of a model that have not started, oldest first,
// at most limit of them when limit is positive: only the oldest can take a
// freed slot, so waking the rest would be wasted work.
func (r *InferenceRequestReconciler) waiting(ctx context.Context, namespace, model string, limit int) []ctrl.Request {
	var list inferencev1alpha1.InferenceRequestList
	if err := r.List(ctx, &list, client.InNamespace(namespace), client.MatchingFields{modelIndex: model}); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Listing a model's requests")
		return nil
	}
	waiting := slices.DeleteFunc(list.Items, func(ir inferencev1alpha1.InferenceRequest) bool {
		phase := ir.Status.Phase
		return phase != "" && phase != inferencev1alpha1.PhasePending && phase != inferencev1alpha1.PhaseQueued
	})
	slices.SortFunc(waiting, func(a, b inferencev1alpha1.InferenceRequest) int {
		if before(&a, &b) {
			return -1
		}
		return 1
	})
	if limit > 0 && len(waiting) > limit {
		waiting = waiting[:limit]
	}
	out := make([]ctrl.Request, 0, len(waiting))
	for i := range waiting {
		out = append(out, ctrl.Request{NamespacedName: client.ObjectKeyFromObject(&waiting[i])})
	}
	return out
}
