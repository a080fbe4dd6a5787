package controllers

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	batchv1 "k8s.io/api/batch/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	crcache "sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/priorityqueue"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/callback"
	"github.com/kinfer/kinfer/internal/expiry"
	"github.com/kinfer/kinfer/internal/hostlimit"
	"github.com/kinfer/kinfer/internal/ownwrites"
	"github.com/kinfer/kinfer/internal/pool"
	"github.com/kinfer/kinfer/internal/queue"
	"github.com/kinfer/kinfer/internal/requestmetrics"
	"github.com/kinfer/kinfer/internal/slimcache"
	"github.com/kinfer/kinfer/internal/workapi"
)

// +kubebuilder:rbac:groups=batch,resources=jobs,verbs=get;list;watch;create;delete
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;create

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
	// ExpirySweep is how often ended requests are looked over for the ones
	// that expire before the next look; 0 means a minute.
	ExpirySweep time.Duration
	// WorkURL is the work API's URL as pool pods reach it.
	WorkURL string

	gate *queue.Gate
	pool *pool.Dispatcher
	// credentials makes and checks the pool models' work credentials.
	credentials *workapi.Credentials
	workSecrets workCredentials
	index       *queue.Index
	hosts       *hostlimit.Limiter
	jobPods     *slimcache.JobPods
	// pendingPods reads the cache of pods that have not started
	// (slimcache.PendingPodOptions).
	pendingPods client.Reader
	metrics     *requestmetrics.Metrics
	sweeper     *expiry.Sweeper
	written     *ownwrites.Tracker
	wakeups     chan event.TypedGenericEvent[*inferencev1alpha1.InferenceRequest]
	// starts carries the requests a freed slot lets start; they go to the
	// front of the work queue.
	starts chan event.TypedGenericEvent[*inferencev1alpha1.InferenceRequest]
}

// Options are what the manager's flags say of the controller.
type Options struct {
	// Client reads the manager's cache and writes to the API server; the
	// manager's client when nil.
	Client client.Client
	Sender *callback.Sender
	// MaxConcurrentDeliveries bounds how many requests are reconciled at once.
	MaxConcurrentDeliveries int
	// MaxDeliveriesPerHost bounds the callbacks in flight to one host, so
	// that a slow receiver cannot hold every worker; 0 means half of
	// MaxConcurrentDeliveries.
	MaxDeliveriesPerHost int
	// Metrics is where the controller's metrics are registered:
	// controller-runtime's metrics.Registry, so that /metrics serves them.
	Metrics prometheus.Registerer
	// ExpirySweep is how often ended requests are looked over for the ones
	// that expire before the next look; 0 means a minute.
	ExpirySweep time.Duration
	// WorkURL is the work API's URL as pool pods reach it (--work-url);
	// without it no pool is started.
	WorkURL string
	// Clock and Jitter are the real clock and callback.Jitter when nil.
	Clock  clock.PassiveClock
	Jitter func(time.Duration) time.Duration
}

// NewInferenceRequestReconciler builds the reconciler and everything it keeps
// for the life of mgr: the gate that queues requests behind their model's
// maxConcurrency, the bound on callbacks per host, the index of Jobs' pods,
// the versions its own status writes replaced, the expiry sweep, and the
// metrics, which it registers.
func NewInferenceRequestReconciler(mgr ctrl.Manager, opts Options) (*InferenceRequestReconciler, error) {
	r := &InferenceRequestReconciler{
		Client:                  mgr.GetClient(),
		APIReader:               mgr.GetAPIReader(),
		Scheme:                  mgr.GetScheme(),
		Recorder:                mgr.GetEventRecorder("kinfer"),
		Clock:                   opts.Clock,
		Sender:                  opts.Sender,
		Jitter:                  opts.Jitter,
		MaxConcurrentDeliveries: opts.MaxConcurrentDeliveries,
		ExpirySweep:             opts.ExpirySweep,
		WorkURL:                 opts.WorkURL,
		jobPods:                 slimcache.NewJobPods(),
		written:                 ownwrites.New(),
		wakeups:                 make(chan event.TypedGenericEvent[*inferencev1alpha1.InferenceRequest], 1024),
		starts:                  make(chan event.TypedGenericEvent[*inferencev1alpha1.InferenceRequest], 1024),
	}
	if opts.Client != nil {
		r.Client = opts.Client
	}
	if r.Clock == nil {
		r.Clock = clock.RealClock{}
	}
	if r.Jitter == nil {
		r.Jitter = callback.Jitter
	}
	perHost := opts.MaxDeliveriesPerHost
	if perHost <= 0 {
		perHost = max(1, opts.MaxConcurrentDeliveries/2)
	}
	r.index = queue.NewIndex(r.Clock)
	r.gate = queue.NewGate(r.index)
	r.pool = pool.New(r.index, r.Client, clock.RealClock{}, func(key types.NamespacedName) { r.wake(context.Background(), key) })
	r.credentials = &workapi.Credentials{Client: r.Client, Reader: r.APIReader, Scheme: r.Scheme}
	r.hosts = hostlimit.New(perHost, r.Clock, func(key types.NamespacedName) { r.wake(context.Background(), key) })
	r.sweeper = expiry.NewSweeper(r.Client, r.Clock, r.expirySweep(), r.requestTTL, r.wake)
	r.metrics = requestmetrics.New(r.Client, r.Clock, r.hosts.Waiting)
	if err := r.metrics.Register(opts.Metrics); err != nil {
		return nil, err
	}
	return r, nil
}

// Queue is the index of each model's waiting requests, for the shim to tell
// a client where its request stands.
func (r *InferenceRequestReconciler) Queue() *queue.Index { return r.index }

// Reconcile moves one request a step further: Job, result, callback, expiry.
func (r *InferenceRequestReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	ir := &inferencev1alpha1.InferenceRequest{}
	if err := r.Get(ctx, req.NamespacedName, ir); err != nil {
		r.written.Forget(req.NamespacedName)
		r.hosts.Forget(req.NamespacedName)
		r.pool.Revoke(req.NamespacedName)
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if r.written.Behind(req.NamespacedName, ir.ResourceVersion) {
		// The cache still holds the version this manager's last status write
		// replaced; that write's own watch event brings the request back.
		return ctrl.Result{}, nil
	}
	if !ir.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	redeliver, asked := redeliverAsked(ir)
	if expiry.Ended(ir) && !asked {
		// A pod that reports for a request already ended is told so.
		r.pool.Discard(req.NamespacedName)
		return r.expire(ctx, ir)
	}

	s := newRequestState(ir, r.Clock.Now())
	if asked {
		s.redeliver(redeliver)
	}
	if err := r.run(ctx, s); err != nil {
		return ctrl.Result{}, err
	}
	if s.hold {
		return r.requeue(s), nil
	}
	// A request that must deliver later comes back through the watch once
	// its end is stored, and its callback goes then.
	if !s.deliverLater {
		if err := r.deliver(ctx, s); err != nil || s.stale {
			return ctrl.Result{}, err
		}
	}
	before := ir.Status.DeepCopy()
	if written, err := r.writeStatus(ctx, s); err != nil || !written {
		return ctrl.Result{}, err
	}
	if s.outcomeFromPool {
		r.pool.Stored(req.NamespacedName)
	}
	r.emit(s)
	r.metrics.Observe(ir, before, &s.status)
	return r.requeue(s), nil
}

// SetupWithManager registers the reconciler: requests, their Jobs, and the
// models and Jobs whose changes let requests that have not started go on.
func (r *InferenceRequestReconciler) SetupWithManager(mgr ctrl.Manager) error {
	ctx := context.Background()
	pods, err := mgr.GetCache().GetInformer(ctx, slimcache.PodMetadata())
	if err != nil {
		return err
	}
	if _, err := pods.AddEventHandler(r.jobPods.Handler()); err != nil {
		return err
	}
	if err := r.feedIndex(ctx, mgr.GetCache()); err != nil {
		return err
	}
	stuck, err := r.watchPendingPods(ctx, mgr)
	if err != nil {
		return err
	}
	if err := mgr.Add(r.sweeper); err != nil {
		return err
	}
	// Leases live on the leader, with the work API that gives them out.
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		r.pool.ExpireEvery(ctx, time.Second, func(key types.NamespacedName) *inferencev1alpha1.InferenceModel {
			model := &inferencev1alpha1.InferenceModel{}
			if r.Get(ctx, key, model) != nil || model.Spec.Workers == nil {
				return nil
			}
			return model
		})
		return nil
	})); err != nil {
		return err
	}
	pools := &PoolReconciler{Client: r.Client, Scheme: r.Scheme, Recorder: r.Recorder, WorkURL: r.WorkURL,
		Demand:  func(model types.NamespacedName) (int, int) { return r.index.Length(model), r.pool.Leased(model) },
		Running: r.index.Running}
	wakeups := &modelWakeups{}
	r.index.OnWaiting(wakeups.waiting)
	err = ctrl.NewControllerManagedBy(mgr).
		// The model's own status writes bring no reconcile of it.
		For(&inferencev1alpha1.InferenceModel{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Owns(&batchv1.Job{}).
		WatchesRawSource(wakeups.source()).
		Named("pool").
		Complete(pools)
	if err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&inferencev1alpha1.InferenceRequest{}).
		WatchesRawSource(source.Channel(r.wakeups, &handler.TypedEnqueueRequestForObject[*inferencev1alpha1.InferenceRequest]{})).
		WatchesRawSource(source.Channel(r.starts, enqueueFirst())).
		WatchesRawSource(stuck).
		Owns(&batchv1.Job{}).
		Watches(&inferencev1alpha1.InferenceModel{}, handler.EnqueueRequestsFromMapFunc(r.modelChanged)).
		WithOptions(controller.Options{MaxConcurrentReconciles: r.MaxConcurrentDeliveries}).
		Named("inferencerequest").
		Complete(r)
}

// feedIndex keeps the queue's index from the cache's requests and Jobs, and
// wakes the requests first in line when one of a model's Jobs stops running.
func (r *InferenceRequestReconciler) feedIndex(ctx context.Context, cache crcache.Informers) error {
	requests, err := cache.GetInformer(ctx, &inferencev1alpha1.InferenceRequest{})
	if err != nil {
		return err
	}
	registration, err := requests.AddEventHandler(r.index.RequestHandler())
	if err != nil {
		return err
	}
	r.index.AddSynced(registration.HasSynced)
	jobs, err := cache.GetInformer(ctx, &batchv1.Job{})
	if err != nil {
		return err
	}
	registration, err = jobs.AddEventHandler(r.index.JobHandler(func(model types.NamespacedName) {
		r.startNext(ctx, model)
	}))
	if err != nil {
		return err
	}
	r.index.AddSynced(registration.HasSynced)
	return nil
}

// modelChanged wakes a model's requests that have not started: they wait for
// it to exist or for a raised maxConcurrency.
func (r *InferenceRequestReconciler) modelChanged(_ context.Context, o client.Object) []ctrl.Request {
	model := types.NamespacedName{Namespace: o.GetNamespace(), Name: o.GetName()}
	limit := 0 // all of them
	if m, ok := o.(*inferencev1alpha1.InferenceModel); ok && m.Spec.MaxConcurrency != nil {
		limit = r.index.Free(model, int(*m.Spec.MaxConcurrency))
		if limit == 0 {
			return nil
		}
	}
	keys := r.index.Next(model, limit)
	out := make([]ctrl.Request, 0, len(keys))
	for _, key := range keys {
		out = append(out, ctrl.Request{NamespacedName: key})
	}
	return out
}

// startNext wakes the requests first in line for model, as many as it has
// room for, when one of its Jobs stopped running: it finished, or it was
// deleted while it ran. Only they can start, so waking the rest would be
// wasted work.
func (r *InferenceRequestReconciler) startNext(ctx context.Context, key types.NamespacedName) {
	model := &inferencev1alpha1.InferenceModel{}
	if r.Get(ctx, key, model) != nil || model.Spec.MaxConcurrency == nil {
		return
	}
	for _, next := range r.index.Next(key, r.index.Free(key, int(*model.Spec.MaxConcurrency))) {
		ir := &inferencev1alpha1.InferenceRequest{}
		ir.Namespace, ir.Name = next.Namespace, next.Name
		select {
		case r.starts <- event.TypedGenericEvent[*inferencev1alpha1.InferenceRequest]{Object: ir}:
		case <-ctx.Done():
			return
		}
	}
}

// startPriority puts a request a freed slot lets start ahead of the other
// work waiting in the work queue (new requests' first reconciles among it):
// under a burst of submissions, a free slot would otherwise stay free until
// the burst's reconciles before it were done.
const startPriority = 10

// enqueueFirst adds requests to the work queue at startPriority.
func enqueueFirst() handler.TypedEventHandler[*inferencev1alpha1.InferenceRequest, reconcile.Request] {
	return handler.TypedFuncs[*inferencev1alpha1.InferenceRequest, reconcile.Request]{
		GenericFunc: func(_ context.Context, e event.TypedGenericEvent[*inferencev1alpha1.InferenceRequest],
			q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			req := reconcile.Request{NamespacedName: client.ObjectKeyFromObject(e.Object)}
			if pq, ok := q.(priorityqueue.PriorityQueue[reconcile.Request]); ok {
				pq.AddWithOpts(priorityqueue.AddOpts{Priority: ptr.To(startPriority)}, req)
				return
			}
			q.Add(req)
		},
	}
}
