package queue

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	clocktesting "k8s.io/utils/clock/testing"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
)

var epoch = time.Unix(1700000000, 0)

func request(name string, createdAfter time.Duration) *inferencev1alpha1.InferenceRequest {
	ir := testutil.MakeInferenceRequest(name, "ns").Model("default").Obj()
	ir.CreationTimestamp = metav1.NewTime(epoch.Add(createdAfter))
	return ir
}

func job(name string, final batchv1.JobConditionType) *batchv1.Job {
	j := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns",
		Labels: map[string]string{inferencev1alpha1.LabelModel: "default", inferencev1alpha1.LabelRequest: name}}}
	if final != "" {
		j.Status.Conditions = []batchv1.JobCondition{{Type: final, Status: corev1.ConditionTrue}}
	}
	return j
}

// gateOver is a Gate whose index holds objects, as the cache's events
// would have given them to it.
func gateOver(clk *clocktesting.FakeClock, objects ...any) (*Gate, *Index) {
	index := NewIndex(clk)
	for _, o := range objects {
		switch o := o.(type) {
		case *inferencev1alpha1.InferenceRequest:
			index.SetRequest(o)
		case *batchv1.Job:
			index.SetJob(o)
		}
	}
	return NewGate(index), index
}

// A model at its maxConcurrency starts nothing; once a Job is over, the
// oldest queued request starts and a younger one waits.
func TestGateStartsTheOldestWhenThereIsRoom(t *testing.T) {
	ctx := context.Background()
	model := testutil.MakeInferenceModel("default", "ns", "worker:1").MaxConcurrency(1).Obj()
	for _, tc := range []struct {
		name      string
		runningIs batchv1.JobConditionType
		younger   bool
		want      bool
	}{
		{name: "full", want: false},
		{name: "room, oldest", runningIs: batchv1.JobComplete, want: true},
		{name: "room, someone older waits", runningIs: batchv1.JobFailed, younger: true, want: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			running, older, younger := request("running", 0), request("older", time.Second), request("younger", 2*time.Second)
			gate, _ := gateOver(clocktesting.NewFakeClock(epoch), running, older, younger, job("running", tc.runningIs))
			ir := older
			if tc.younger {
				ir = younger
			}
			created := false
			started, err := gate.Start(ctx, ir, model, func() error { created = true; return nil })
			if err != nil {
				t.Fatal(err)
			}
			if started != tc.want || created != tc.want {
				t.Errorf("started %v, created %v; want %v", started, created, tc.want)
			}
		})
	}
}

// A Job this manager created counts as running until the cache shows it, or
// for at most unseenJobGrace by the gate's clock.
func TestGateCountsJobsTheCacheHasNotShown(t *testing.T) {
	ctx := context.Background()
	model := testutil.MakeInferenceModel("default", "ns", "worker:1").MaxConcurrency(1).Obj()
	first, second := request("first", 0), request("second", time.Second)
	clk := clocktesting.NewFakeClock(epoch)
	gate, index := gateOver(clk, first, second)
	create := func() error { return nil }
	if started, err := gate.Start(ctx, first, model, create); err != nil || !started {
		t.Fatalf("first: started %v, %v", started, err)
	}
	if started, _ := gate.Start(ctx, second, model, create); started {
		t.Fatal("second started while first's Job, not yet in the cache, runs")
	}
	// first goes, and its Job never shows: after the grace the model has room.
	index.DeleteRequest(first)
	if started, _ := gate.Start(ctx, second, model, create); started {
		t.Fatal("second started within the grace of first's unseen Job")
	}
	clk.Step(unseenJobGrace + time.Second)
	if started, _ := gate.Start(ctx, second, model, create); !started {
		t.Fatal("second still waits for a Job the cache never showed")
	}
}

// A failed create takes no place: the request still waits, first in line.
func TestGateKeepsTheRequestInLineWhenTheCreateFails(t *testing.T) {
	ctx := context.Background()
	model := testutil.MakeInferenceModel("default", "ns", "worker:1").MaxConcurrency(1).Obj()
	first := request("first", 0)
	gate, index := gateOver(clocktesting.NewFakeClock(epoch), first)
	if started, err := gate.Start(ctx, first, model, func() error { return errors.New("API server unavailable") }); err == nil || started {
		t.Fatalf("started %v, error %v; want the create's error", started, err)
	}
	want := []types.NamespacedName{{Namespace: "ns", Name: "first"}}
	if diff := cmp.Diff(want, index.Next(types.NamespacedName{Namespace: "ns", Name: "default"}, 0)); diff != "" {
		t.Errorf("waiting (-want +got):\n%s", diff)
	}
}

// Whatever the length of the queue, the handler that tells of a Job that
// stopped running names its model once, and only then.
func TestJobHandlerTellsWhenAJobStopsRunning(t *testing.T) {
	index := NewIndex(clocktesting.NewFakeClock(epoch))
	var freed []string
	h := index.JobHandler(func(model types.NamespacedName) { freed = append(freed, model.Name) })
	running, complete := job("a", ""), job("a", batchv1.JobComplete)
	h.OnAdd(running, false)
	h.OnUpdate(running, running)
	if len(freed) != 0 {
		t.Fatalf("freed %v while the Job runs", freed)
	}
	h.OnUpdate(running, complete)
	h.OnUpdate(complete, complete)
	h.OnDelete(complete)
	if diff := cmp.Diff([]string{"default"}, freed); diff != "" {
		t.Errorf("models freed (-want +got):\n%s", diff)
	}
	h.OnAdd(job("b", ""), false)
	h.OnDelete(toolscache.DeletedFinalStateUnknown{Key: "ns/b", Obj: job("b", "")})
	if len(freed) != 2 {
		t.Errorf("a running Job deleted (seen as a tombstone) frees its place: freed %v", freed)
	}
}

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

// A higher priority starts first, whatever its age; equal priorities go
// oldest first.
func TestIndexStartsTheHighestPriorityFirst(t *testing.T) {
	x := NewIndex(clocktesting.NewFakePassiveClock(t0))
	old, urgent, older, middling := queuedRequest("old", "default", 1), queuedRequest("urgent", "default", 9),
		queuedRequest("older", "default", 0), queuedRequest("middling", "default", 5)
	urgent.Spec.Priority, middling.Spec.Priority = 7, 3
	for _, ir := range []*inferencev1alpha1.InferenceRequest{old, urgent, older, middling} {
		x.SetRequest(ir)
	}
	if diff := cmp.Diff([]string{"urgent", "middling", "older", "old"}, names(x.Next(modelKey, 0))); diff != "" {
		t.Errorf("start order (-want +got):\n%s", diff)
	}
	if !x.MayStart(urgent, 1) || x.MayStart(older, 1) {
		t.Error("with one free place, the urgent request takes it, not the oldest")
	}
	if ahead, length, ok := x.Position(old); !ok || ahead != 3 || length != 4 {
		t.Errorf("Position(old) = %d, %d, %v; want 3, 4, true", ahead, length, ok)
	}
}

func TestIndexTakesOutRequestsThatNoLongerWait(t *testing.T) {
	x := NewIndex(clocktesting.NewFakePassiveClock(t0))
	running, ended, deleting, canceled, queued := queuedRequest("running", "default", 1), queuedRequest("ended", "default", 2),
		queuedRequest("deleting", "default", 3), queuedRequest("canceled", "default", 4), queuedRequest("queued", "default", 5)
	all := []*inferencev1alpha1.InferenceRequest{running, ended, deleting, canceled, queued}
	for _, ir := range all {
		x.SetRequest(ir)
	}
	running.Status.Phase, running.Status.JobName = inferencev1alpha1.PhaseRunning, "running"
	ended.Status.Phase = inferencev1alpha1.PhaseFailed
	deleting.DeletionTimestamp = &metav1.Time{Time: t0}
	// Asked to cancel, it will never start, though its status has not caught up.
	canceled.Spec.Cancel, canceled.Status.Phase = true, inferencev1alpha1.PhaseQueued
	queued.Status.Phase = inferencev1alpha1.PhaseQueued
	for _, ir := range all {
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

// A request handed to a pool's pod leaves the waiting, whatever the cache
// says of it meanwhile, and goes back to its place when its lease ends
// without an outcome; pods waiting for work hear of it.
func TestIndexHoldsRequestsHandedToAPool(t *testing.T) {
	x := NewIndex(clocktesting.NewFakePassiveClock(t0))
	var told []string
	x.OnWaiting(func(model types.NamespacedName) { told = append(told, model.Name) })
	a, b := queuedRequest("a", "default", 1), queuedRequest("b", "default", 2)
	x.SetRequest(a)
	x.SetRequest(b)
	if diff := cmp.Diff([]string{"default", "default"}, told); diff != "" {
		t.Errorf("models told of new waiting requests (-want +got):\n%s", diff)
	}
	key := types.NamespacedName{Namespace: a.Namespace, Name: a.Name}
	if !x.Hold(modelKey, key) {
		t.Fatal("a waits, so it can be held")
	}
	a.Status.Phase = inferencev1alpha1.PhaseRunning // its Running status, written while held
	x.SetRequest(a)
	if diff := cmp.Diff([]string{"b"}, names(x.Next(modelKey, 0))); diff != "" {
		t.Errorf("waiting while a is held (-want +got):\n%s", diff)
	}
	x.Release(modelKey, key)
	if diff := cmp.Diff([]string{"a", "b"}, names(x.Next(modelKey, 0))); diff != "" {
		t.Errorf("waiting after a's lease ended (-want +got):\n%s", diff)
	}
	if len(told) != 3 {
		t.Errorf("a going back in line tells the model's pods: %v", told)
	}
	x.Hold(modelKey, key)
	x.Forget(key)
	a.Status.Phase = inferencev1alpha1.PhaseSucceeded
	x.SetRequest(a)
	if diff := cmp.Diff([]string{"b"}, names(x.Next(modelKey, 0))); diff != "" {
		t.Errorf("waiting once a ended (-want +got):\n%s", diff)
	}
}
