package controllers

import (
	"context"
	"testing"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/controller/priorityqueue"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
)

// A request a freed slot lets start is reconciled before the work already
// waiting in the queue, such as a burst of new requests.
func TestStartsGoToTheFrontOfTheWorkQueue(t *testing.T) {
	q := priorityqueue.New[reconcile.Request]("test")
	defer q.ShutDown()
	for _, name := range []string{"new-1", "new-2", "new-3"} {
		q.Add(reconcile.Request{NamespacedName: types.NamespacedName{Namespace: "ml", Name: name}})
	}
	next := &inferencev1alpha1.InferenceRequest{}
	next.Namespace, next.Name = "ml", "next-in-line"
	enqueueFirst().Generic(context.Background(), event.TypedGenericEvent[*inferencev1alpha1.InferenceRequest]{Object: next}, q)

	got, priority, _ := q.GetWithPriority()
	if got.Name != "next-in-line" || priority != startPriority {
		t.Errorf("first out of the work queue: %s at priority %d; want next-in-line at %d", got.Name, priority, startPriority)
	}
}
