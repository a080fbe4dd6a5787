package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
)

// statusResync is how soon a model's status is looked at again while it
// has requests waiting or running, and the shortest time between two
// looks brought on by new requests: the counts it shows cost a write every
// few seconds at most, never one per request.
const statusResync = 3 * time.Second

// modelStatus is what a model's status says now: its mode, its queue and
// its pool's ready pods, counted from the index, the leases and the pool
// Jobs in the cache.
func (r *PoolReconciler) modelStatus(model *inferencev1alpha1.InferenceModel, jobs []batchv1.Job) inferencev1alpha1.InferenceModelStatus {
	key := types.NamespacedName{Namespace: model.Namespace, Name: model.Name}
	waiting, leased := r.Demand(key)
	status := inferencev1alpha1.InferenceModelStatus{
		ObservedGeneration: model.Generation,
		Mode:               inferencev1alpha1.ModeJob,
		Queued:             int32(min(waiting, 1<<31-1)),
		Running:            int32(min(r.Running(key), 1<<31-1)),
		Conditions:         model.Status.Conditions,
	}
	if w := model.Spec.Workers; w != nil {
		status.Mode, status.Running = inferencev1alpha1.ModePool, int32(min(leased, 1<<31-1))
		for i := range jobs {
			status.ReadyWorkers += ptr.Deref(jobs[i].Status.Ready, 0)
		}
		status.Workers = fmt.Sprintf("%d/%d", status.ReadyWorkers, w.Max)
	}
	return status
}

// updateStatus writes the model's status when it changed, and reports
// whether the model has requests waiting or running, so that it is looked
// at again while they move.
func (r *PoolReconciler) updateStatus(ctx context.Context, model *inferencev1alpha1.InferenceModel, jobs []batchv1.Job) (bool, error) {
	status := r.modelStatus(model, jobs)
	busy := status.Queued > 0 || status.Running > 0
	if statusEqual(&model.Status, &status) {
		return busy, nil
	}
	// A merge patch of the fields kinfer owns: conditions others set stay.
	// A model without a pool has no pool fields (null removes them).
	var workers any
	if status.Workers != "" {
		workers = status.Workers
	}
	patch, err := json.Marshal(map[string]any{"status": map[string]any{
		"observedGeneration": status.ObservedGeneration,
		"mode":               status.Mode,
		"queued":             status.Queued,
		"running":            status.Running,
		"readyWorkers":       status.ReadyWorkers,
		"workers":            workers,
	}})
	if err != nil {
		return busy, err
	}
	return busy, client.IgnoreNotFound(r.Status().Patch(ctx, model, client.RawPatch(types.MergePatchType, patch)))
}

func statusEqual(a, b *inferencev1alpha1.InferenceModelStatus) bool {
	return a.ObservedGeneration == b.ObservedGeneration && a.Mode == b.Mode && a.Queued == b.Queued &&
		a.Running == b.Running && a.ReadyWorkers == b.ReadyWorkers && a.Workers == b.Workers
}

// modelWakeups brings a model's status up to date soon after it gains a
// waiting request, at most once per statusResync: the index tells it of
// each such model, and it adds the model to the controller's queue after
// a delay, which the queue folds into one.
type modelWakeups struct {
	queue atomic.Pointer[workqueue.TypedRateLimitingInterface[reconcile.Request]]
}

// source is the controller's source of these wake-ups: it only keeps the
// controller's queue.
func (w *modelWakeups) source() source.Source {
	return source.Func(func(_ context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
		w.queue.Store(&q)
		return nil
	})
}

// waiting is told by the index of a model that gains a waiting request.
func (w *modelWakeups) waiting(model types.NamespacedName) {
	if q := w.queue.Load(); q != nil {
		(*q).AddAfter(reconcile.Request{NamespacedName: model}, statusResync)
	}
}
