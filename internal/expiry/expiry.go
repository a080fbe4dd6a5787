// Package expiry finds the ended requests due for deletion, so that a request
// far from its TTL waits in no work queue until its time comes.
package expiry

import (
	"context"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
)

// Ended reports whether nothing is left to do for the request but to expire
// it: it has completed and its delivery is over.
func Ended(ir *inferencev1alpha1.InferenceRequest) bool {
	return ir.Status.Phase.Complete() && ir.Status.Delivery.State.Over()
}

// EndTime is when an ended request reached its end, from which its TTL runs.
func EndTime(ir *inferencev1alpha1.InferenceRequest) time.Time {
	d := ir.Status.Delivery
	for _, t := range []*metav1.Time{d.DeliveredTime, d.LastAttemptTime, ir.Status.CompletionTime} {
		if t != nil {
			return t.Time
		}
	}
	return ir.CreationTimestamp.Time
}

// Sweeper looks over the cached requests at a fixed interval and wakes the
// ended ones that expire before its next look. It is a manager Runnable that
// runs on the leader only, as the controller does.
type Sweeper struct {
	reader client.Reader
	clock  clock.PassiveClock
	every  time.Duration
	ttl    func(context.Context, *inferencev1alpha1.InferenceRequest) (time.Duration, error)
	wake   func(context.Context, types.NamespacedName) bool
}

// NewSweeper returns a Sweeper that lists requests from reader every every;
// ttl says how long an ended request is kept (it is asked once per model and
// sweep), and wake puts a request in the work queue, false when ctx ended first.
func NewSweeper(
	reader client.Reader, clk clock.PassiveClock, every time.Duration,
	ttl func(context.Context, *inferencev1alpha1.InferenceRequest) (time.Duration, error),
	wake func(context.Context, types.NamespacedName) bool,
) *Sweeper {
	return &Sweeper{reader: reader, clock: clk, every: every, ttl: ttl, wake: wake}
}

// Start sweeps every interval until ctx ends.
func (s *Sweeper) Start(ctx context.Context) error {
	ticker := time.NewTicker(s.every)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
		if err := s.Sweep(ctx); err != nil && ctx.Err() == nil {
			ctrl.Log.WithName("expiry").Error(err, "Looking for expiring requests")
		}
	}
}

// Sweep wakes every ended request that expires within the interval.
func (s *Sweeper) Sweep(ctx context.Context) error {
	var list inferencev1alpha1.InferenceRequestList
	// Read only, never kept: no copy of every held request.
	if err := s.reader.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
		return err
	}
	ttls := map[types.NamespacedName]time.Duration{}
	horizon := s.clock.Now().Add(s.every)
	for i := range list.Items {
		ir := &list.Items[i]
		if !Ended(ir) || !ir.DeletionTimestamp.IsZero() {
			continue
		}
		model := types.NamespacedName{Namespace: ir.Namespace, Name: ir.Spec.Model}
		ttl, known := ttls[model]
		if !known {
			var err error
			if ttl, err = s.ttl(ctx, ir); err != nil {
				return err
			}
			ttls[model] = ttl
		}
		if EndTime(ir).Add(ttl).After(horizon) {
			continue
		}
		if !s.wake(ctx, client.ObjectKeyFromObject(ir)) {
			return ctx.Err()
		}
	}
	return nil
}
