package queue

import (
	"context"
	"errors"
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
