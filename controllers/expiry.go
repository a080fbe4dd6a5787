package controllers

import (
	"context"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
)

// defaultRequestTTL applies when a request's model is gone or sets none.
const defaultRequestTTL = 24 * time.Hour

// ended reports whether nothing is left to do for the request but to expire it.
func ended(ir *inferencev1alpha1.InferenceRequest) bool {
	return ir.Status.Phase.Complete() && ir.Status.Delivery.State.Over()
}

// endTime is when an ended request reached its end, from which its TTL runs.
func endTime(ir *inferencev1alpha1.InferenceRequest) time.Time {
	d := ir.Status.Delivery
	for _, t := range []*metav1.Time{d.DeliveredTime, d.LastAttemptTime, ir.Status.CompletionTime} {
		if t != nil {
			return t.Time
		}
	}
	return ir.CreationTimestamp.Time
}

// expire deletes an ended request once its model's requestTTLSeconds have
// passed; the Job and its pods go with it through their owner references.
// A request that expires within the next sweep waits in the work queue for
// its time; one further off is left out of it (an entry per held request
// adds up over a day's requests) and found again by sweepExpiring.
func (r *InferenceRequestReconciler) expire(ctx context.Context, ir *inferencev1alpha1.InferenceRequest) (ctrl.Result, error) {
	ttl, err := r.requestTTL(ctx, ir)
	if err != nil {
		return ctrl.Result{}, err
	}
	left := endTime(ir).Add(ttl).Sub(r.Clock.Now())
	if left > r.expirySweep() {
		return ctrl.Result{}, nil
	}
	if left > 0 {
		return ctrl.Result{RequeueAfter: left}, nil
	}
	err = r.Delete(ctx, ir, client.PropagationPolicy(metav1.DeletePropagationBackground), client.Preconditions{UID: &ir.UID})
	if err == nil {
		ctrl.LoggerFrom(ctx).V(1).Info("Deleted expired request", "ttlSeconds", int64(ttl.Seconds()))
	}
	return ctrl.Result{}, client.IgnoreNotFound(err)
}

// requestTTL is how long an ended request is kept: its model's
// requestTTLSeconds, or a day.
func (r *InferenceRequestReconciler) requestTTL(ctx context.Context, ir *inferencev1alpha1.InferenceRequest) (time.Duration, error) {
	model, err := r.model(ctx, ir)
	if err != nil || model == nil || model.Spec.RequestTTLSeconds == nil {
		return defaultRequestTTL, err
	}
	return time.Duration(*model.Spec.RequestTTLSeconds) * time.Second, nil
}

func (r *InferenceRequestReconciler) expirySweep() time.Duration {
	if r.ExpirySweep > 0 {
		return r.ExpirySweep
	}
	return time.Minute
}

// sweepExpiring looks over the cached requests every ExpirySweep and wakes
// the ended ones that expire before the next look, until ctx ends. It runs
// on the leader only, as the controller does.
func (r *InferenceRequestReconciler) sweepExpiring(ctx context.Context) error {
	ticker := time.NewTicker(r.expirySweep())
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
		if err := r.wakeExpiring(ctx); err != nil && ctx.Err() == nil {
			ctrl.Log.WithName("expiry").Error(err, "Looking for expiring requests")
		}
	}
}

// wakeExpiring wakes every ended request that expires within ExpirySweep.
func (r *InferenceRequestReconciler) wakeExpiring(ctx context.Context) error {
	var list inferencev1alpha1.InferenceRequestList
	// Read only, never kept: no copy of every held request.
	if err := r.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
		return err
	}
	ttls := map[types.NamespacedName]time.Duration{}
	horizon := r.Clock.Now().Add(r.expirySweep())
	for i := range list.Items {
		ir := &list.Items[i]
		if !ended(ir) || !ir.DeletionTimestamp.IsZero() {
			continue
		}
		model := types.NamespacedName{Namespace: ir.Namespace, Name: ir.Spec.Model}
		ttl, known := ttls[model]
		if !known {
			var err error
			if ttl, err = r.requestTTL(ctx, ir); err != nil {
				return err
			}
			ttls[model] = ttl
		}
		if endTime(ir).Add(ttl).After(horizon) {
			continue
		}
		if !r.wake(ctx, client.ObjectKeyFromObject(ir)) {
			return ctx.Err()
		}
	}
	return nil
}

// wake puts a request in the work queue; false when ctx ended first.
func (r *InferenceRequestReconciler) wake(ctx context.Context, key types.NamespacedName) bool {
	ir := &inferencev1alpha1.InferenceRequest{}
	ir.Namespace, ir.Name = key.Namespace, key.Name
	select {
	case r.wakeups <- event.TypedGenericEvent[*inferencev1alpha1.InferenceRequest]{Object: ir}:
		return true
	case <-ctx.Done():
		return false
	}
}
