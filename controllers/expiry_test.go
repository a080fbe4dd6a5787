package controllers

import (
	"context"
	"slices"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/event"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
)

// Ended requests far from their expiry stay out of the work queue; the sweep
// wakes each one in time for it to be deleted when its TTL has passed.
func TestExpiringRequestsAreWokenInTime(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1700000000, 0)
	ended := func(name, model string, endedAgo time.Duration) *inferencev1alpha1.InferenceRequest {
		ir := testutil.MakeInferenceRequest(name, "ns").Model(model).Obj()
		ir.UID = types.UID(name + "-uid")
		at := metav1.NewTime(now.Add(-endedAgo))
		ir.Status.Phase = inferencev1alpha1.PhaseSucceeded
		ir.Status.CompletionTime = &at
		ir.Status.Delivery = inferencev1alpha1.DeliveryStatus{State: inferencev1alpha1.DeliveryDelivered, DeliveredTime: &at}
		return ir
	}
	running := testutil.MakeInferenceRequest("running", "ns").Model("hourly").Obj()
	objects := []client.Object{
		testutil.MakeInferenceModel("hourly", "ns", "worker:1").RequestTTL(3600).Obj(),
		ended("fresh", "hourly", time.Minute),                 // expires in 59 minutes
		ended("due-soon", "hourly", time.Hour-30*time.Second), // in 30 s
		ended("overdue", "hourly", 2*time.Hour),               // 1 h ago
		ended("orphan-fresh", "gone", time.Hour),              // no model: kept a day, 23 h left
		ended("orphan-due", "gone", 24*time.Hour-10*time.Second),
		running,
	}
	scheme := runtime.NewScheme()
	if err := inferencev1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(objects...).
		WithStatusSubresource(&inferencev1alpha1.InferenceRequest{}).Build()
	r := &InferenceRequestReconciler{Client: c, Clock: clocktesting.NewFakeClock(now),
		wakeups: make(chan event.TypedGenericEvent[*inferencev1alpha1.InferenceRequest], len(objects))}

	if err := r.wakeExpiring(ctx); err != nil {
		t.Fatal(err)
	}
	close(r.wakeups)
	var woken []string
	for e := range r.wakeups {
		woken = append(woken, e.Object.Name)
	}
	slices.Sort(woken)
	if want := []string{"due-soon", "orphan-due", "overdue"}; !slices.Equal(woken, want) {
		t.Errorf("the sweep woke %v, want %v", woken, want)
	}

	for name, want := range map[string]time.Duration{"fresh": 0, "due-soon": 30 * time.Second, "orphan-fresh": 0, "orphan-due": 10 * time.Second} {
		ir := &inferencev1alpha1.InferenceRequest{}
		if err := c.Get(ctx, types.NamespacedName{Namespace: "ns", Name: name}, ir); err != nil {
			t.Fatal(err)
		}
		res, err := r.expire(ctx, ir)
		if err != nil || res.RequeueAfter != want {
			t.Errorf("expire(%s) = %+v, %v; want a requeue after %v (0: left to the sweep)", name, res, err, want)
		}
	}
	overdue := &inferencev1alpha1.InferenceRequest{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: "ns", Name: "overdue"}, overdue); err != nil {
		t.Fatal(err)
	}
	if _, err := r.expire(ctx, overdue); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(ctx, client.ObjectKeyFromObject(overdue), overdue); !apierrors.IsNotFound(err) {
		t.Errorf("the overdue request is still there (%v)", err)
	}
}
