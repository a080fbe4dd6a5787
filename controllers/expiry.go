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
	"github.com/kinfer/kinfer/internal/expiry"
)

// defaultRequestTTL applies when a request's model is gone or sets none.
const defaultRequestTTL = 24 * time.Hour

// expire deletes an ended request once its model's requestTTLSeconds have
// passed; the Job and its pods go with it through their owner references.
// A request that expires within the next sweep waits in the work queue for
// its time; one further off is left out of it (an entry per held request
// adds up over a day's requests) and found again by the sweep.
func (r *InferenceRequestReconciler) expire(ctx context.Context, ir *inferencev1alpha1.InferenceRequest) (ctrl.Result, error) {
	ttl, err := r.requestTTL(ctx, ir)
	if err != nil {
		return ctrl.Result{}, err
	}
	left := expiry.EndTime(ir).Add(ttl).Sub(r.Clock.Now())
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
