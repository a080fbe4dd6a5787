package controllers

import (
	"context"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
)

// Ended requests far from their expiry stay out of the work queue (the sweep
// wakes them in time); one due within the sweep waits for its time; one
// whose TTL has passed is deleted.
func TestExpire(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1700000000, 0)
	ended := func(name, model string, ago time.Duration) client.Object {
		return testutil.MakeInferenceRequest(name, "ns").Model(model).Delivered(now.Add(-ago)).Obj()
	}
	c := testutil.FakeClient(
		testutil.MakeInferenceModel("hourly", "ns", "worker:1").RequestTTL(3600).Obj(),
		ended("fresh", "hourly", time.Minute), ended("due-soon", "hourly", time.Hour-30*time.Second),
		ended("overdue", "hourly", 2*time.Hour), ended("orphan-due", "gone", 24*time.Hour-10*time.Second),
	).Build()
	r := &InferenceRequestReconciler{Client: c, Clock: clocktesting.NewFakeClock(now)}

	// A requeue after 0 leaves the request to the sweep; a model that is gone
	// keeps its requests a day.
	for name, want := range map[string]time.Duration{"fresh": 0, "due-soon": 30 * time.Second, "orphan-due": 10 * time.Second} {
		ir := &inferencev1alpha1.InferenceRequest{}
		if err := c.Get(ctx, types.NamespacedName{Namespace: "ns", Name: name}, ir); err != nil {
			t.Fatal(err)
		}
		if res, err := r.expire(ctx, ir); err != nil || res.RequeueAfter != want {
			t.Errorf("expire(%s) = %+v, %v; want a requeue after %v", name, res, err, want)
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
