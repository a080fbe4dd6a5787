package queue

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
)

var (
	t0        = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	modelKey  = types.NamespacedName{Namespace: "ml", Name: "default"}
	otherKey  = types.NamespacedName{Namespace: "ml", Name: "other"}
	jobFinish = batchv1.JobCondition{Type: batchv1.JobComplete, Status: corev1.ConditionTrue}
)

// request is a request of model created at t0 plus age seconds.
func queuedRequest(name, model string, age int) *inferencev1alpha1.InferenceRequest {
	ir := testutil.MakeInferenceRequest(name, "ml").Model(model).Obj()
	ir.CreationTimestamp = metav1.NewTime(t0.Add(time.Duration(age) * time.Second))
	return ir
}

func jobOf(ir *inferencev1alpha1.InferenceRequest, conditions ...batchv1.JobCondition) *batchv1.Job {
	return &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: ir.Name, Namespace: ir.Namespace, Labels: map[string]string{
			inferencev1alpha1.LabelRequest: ir.Name, inferencev1alpha1.LabelModel: ir.Spec.Model}},
		Status: batchv1.JobStatus{Conditions: conditions},
	}
}

func names(keys []types.NamespacedName) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k.Name
	}
	return out
}

func TestIndexStartsTheOldestFirstUpToTheLimit(t *testing.T) {
	x := NewIndex(clocktesting.NewFakePassiveClock(t0))
	a, b, c := queuedRequest("a", "default", 1), queuedRequest("b", "default", 2), queuedRequest("c", "default", 3)
	for _, ir := range []*inferencev1alpha1.InferenceRequest{c, a, b, queuedRequest("x", "other", 0)} {
		x.SetRequest(ir)
	}
	if diff := cmp.Diff([]string{"a", "b", "c"}, names(x.Next(modelKey, 0))); diff != "" {
		t.Errorf("waiting (-want +got):\n%s", diff)
	}
	const limit = 2
	if !x.MayStart(a, limit) || !x.MayStart(b, limit) || x.MayStart(c, limit) {
		t.Errorf("with no Job running and a limit of 2, a and b may start and c may not: %v %v %v",
			x.MayStart(a, limit), x.MayStart(b, limit), x.MayStart(c, limit))
	}

	x.Started(a)
	if !x.MayStart(b, limit) || x.MayStart(c, limit) {
		t.Error("after a started, b may take the one free place and c may not")
	}
	x.Started(b)
	if x.MayStart(c, limit) || x.Free(modelKey, limit) != 0 {
		t.Errorf("two Jobs run; c may not start (free %d)", x.Free(modelKey, limit))
	}

	// The cache shows a's Job running, then complete.
	x.SetJob(jobOf(a))
	if x.MayStart(c, limit) {
		t.Error("a's Job, seen running, still holds its place")
	}
	x.SetJob(jobOf(a, jobFinish))
	if !x.MayStart(c, limit) {
		t.Error("a's Job is complete: c may start")
	}
	if ahead, length, ok := x.Position(c); !ok || ahead != 0 || length != 1 {
		t.Errorf("Position(c) = %d, %d, %v; want 0, 1, true", ahead, length, ok)
	}
	if got := names(x.Next(otherKey, 0)); len(got) != 1 {
		t.Errorf("another model's queue is its own: %v", got)
	}
}

func TestIndexTakesOutRequestsThatNoLongerWait(t *testing.T) {
	x := NewIndex(clocktesting.NewFakePassiveClock(t0))
	running, ended, deleting, queued := queuedRequest("running", "default", 1), queuedRequest("ended", "default", 2),
		queuedRequest("deleting", "default", 3), queuedRequest("queued", "default", 4)
	for _, ir := range []*inferencev1alpha1.InferenceRequest{running, ended, deleting, queued} {
		x.SetRequest(ir)
	}
	running.Status.Phase, running.Status.JobName = inferencev1alpha1.PhaseRunning, "running"
	ended.Status.Phase = inferencev1alpha1.PhaseFailed
	deleting.DeletionTimestamp = &metav1.Time{Time: t0}
	queued.Status.Phase = inferencev1alpha1.PhaseQueued
	for _, ir := range []*inferencev1alpha1.InferenceRequest{running, ended, deleting, queued} {
		x.SetRequest(ir)
	}
	if diff := cmp.Diff([]string{"queued"}, names(x.Next(modelKey, 0))); diff != "" {
		t.Errorf("waiting (-want +got):\n%s", diff)
	}
	x.DeleteRequest(queued)
	if n := x.Length(modelKey); n != 0 {
		t.Errorf("%d wait after the last waiting request was deleted", n)
	}
}

// A manager that restarts after creating a Job but before writing the
// request's status finds a Pending request with a Job: the Job wins, in
// whichever order the cache delivers them.
func TestIndexRebuiltFromTheCacheCountsJobsWhoseRequestLooksPending(t *testing.T) {
	for _, jobFirst := range []bool{true, false} {
		t.Run(fmt.Sprintf("job first %v", jobFirst), func(t *testing.T) {
			x := NewIndex(clocktesting.NewFakePassiveClock(t0))
			started, next := queuedRequest("started", "default", 1), queuedRequest("next", "default", 2)
			if jobFirst {
				x.SetJob(jobOf(started))
			}
			x.SetRequest(started)
			x.SetRequest(next)
			if !jobFirst {
				x.SetJob(jobOf(started))
			}
			if diff := cmp.Diff([]string{"next"}, names(x.Next(modelKey, 0))); diff != "" {
				t.Errorf("waiting (-want +got):\n%s", diff)
			}
			if x.MayStart(next, 1) {
				t.Error("the started request's Job runs, so next may not start under a limit of 1")
			}
		})
	}
}

func TestIndexTrustsTheCacheOverAnUnseenJobAfterAWhile(t *testing.T) {
	clk := clocktesting.NewFakePassiveClock(t0)
	x := NewIndex(clk)
	a, b := queuedRequest("a", "default", 1), queuedRequest("b", "default", 2)
	x.SetRequest(a)
	x.SetRequest(b)
	x.Started(a)
	if x.MayStart(b, 1) {
		t.Error("a's Job, created but not yet seen, holds the only place")
	}
	clk.SetTime(t0.Add(unseenJobGrace + time.Second))
	if !x.MayStart(b, 1) {
		t.Error("a Job the cache never showed stops counting after the grace")
	}
}

func TestIndexDeletedJobFreesItsPlace(t *testing.T) {
	x := NewIndex(clocktesting.NewFakePassiveClock(t0))
	a, b := queuedRequest("a", "default", 1), queuedRequest("b", "default", 2)
	x.SetRequest(a)
	x.SetRequest(b)
	x.Started(a)
	x.SetJob(jobOf(a))
	deleting := jobOf(a)
	deleting.DeletionTimestamp = &metav1.Time{Time: t0}
	x.SetJob(deleting)
	if !x.MayStart(b, 1) {
		t.Error("a Job being deleted no longer runs")
	}
	x.DeleteJob(deleting)
	if x.Free(modelKey, 1) != 1 {
		t.Errorf("free %d after a's Job went", x.Free(modelKey, 1))
	}
}

func TestIndexIgnoresJobsKinferDidNotMake(t *testing.T) {
	x := NewIndex(clocktesting.NewFakePassiveClock(t0))
	x.SetJob(&batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "other", Namespace: "ml"}})
	if x.Free(modelKey, 1) != 1 {
		t.Error("a Job without kinfer's labels counts against a model")
	}
}
