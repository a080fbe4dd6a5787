package queue

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"

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
		Labels: map[string]string{inferencev1alpha1.LabelModel: "default"}}}
	if final != "" {
		j.Status.Conditions = []batchv1.JobCondition{{Type: final, Status: corev1.ConditionTrue}}
	}
	return j
}

func newReader(objects ...client.Object) client.Client {
	return testutil.FakeClient(objects...).WithIndex(&inferencev1alpha1.InferenceRequest{}, ModelIndex,
		func(o client.Object) []string { return []string{o.(*inferencev1alpha1.InferenceRequest).Spec.Model} }).Build()
}

// A model at its maxConcurrency starts nothing; once a Job is over, the
// oldest queued request starts and a younger one waits.
func TestGateStartsTheOldestWhenThereIsRoom(t *testing.T) {
	ctx := context.Background()
	model := testutil.MakeInferenceModel("default", "ns", "worker:1").MaxConcurrency(1).Obj()
	running, older, younger := request("running", 0), request("older", time.Second), request("younger", 2*time.Second)
	for _, tc := range []struct {
		name      string
		runningIs batchv1.JobConditionType
		ir        *inferencev1alpha1.InferenceRequest
		want      bool
	}{
		{name: "full", ir: older, want: false},
		{name: "room, oldest", runningIs: batchv1.JobComplete, ir: older, want: true},
		{name: "room, someone older waits", runningIs: batchv1.JobFailed, ir: younger, want: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reader := newReader(running, older, younger, job("running", tc.runningIs))
			gate := New(reader, clocktesting.NewFakeClock(epoch))
			created := false
			started, err := gate.Start(ctx, tc.ir, model, func() error { created = true; return nil })
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
	reader := newReader(first, second)
	gate := New(reader, clk)
	create := func() error { return nil }
	if started, err := gate.Start(ctx, first, model, create); err != nil || !started {
		t.Fatalf("first: started %v, %v", started, err)
	}
	if started, _ := gate.Start(ctx, second, model, create); started {
		t.Fatal("second started while first's Job, not yet in the cache, runs")
	}
	// first goes, and its Job never shows: after the grace the model has room.
	if err := reader.Delete(ctx, first); err != nil {
		t.Fatal(err)
	}
	if started, _ := gate.Start(ctx, second, model, create); started {
		t.Fatal("second started within the grace of first's unseen Job")
	}
	clk.Step(unseenJobGrace + time.Second)
	if started, _ := gate.Start(ctx, second, model, create); !started {
		t.Fatal("second still waits for a Job the cache never showed")
	}
}

func TestUnstartedListsOldestFirst(t *testing.T) {
	done := request("done", 0)
	done.Status.Phase = inferencev1alpha1.PhaseSucceeded
	queued := request("queued", 2*time.Second)
	queued.Status.Phase = inferencev1alpha1.PhaseQueued
	reader := newReader(done, queued, request("new", time.Second), request("newest", 3*time.Second))

	got, err := Unstarted(context.Background(), reader, "ns", "default", 2)
	if err != nil {
		t.Fatal(err)
	}
	want := []types.NamespacedName{{Namespace: "ns", Name: "new"}, {Namespace: "ns", Name: "queued"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("unstarted requests (-want +got):\n%s", diff)
	}
}
