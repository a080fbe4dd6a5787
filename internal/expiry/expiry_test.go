package expiry

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
)

// The sweep wakes each ended request whose TTL runs out before its next look,
// and leaves the others, and requests that have not ended, alone.
func TestSweepWakesTheRequestsDueBeforeTheNextSweep(t *testing.T) {
	now := time.Unix(1700000000, 0)
	requests := map[string]struct {
		model string
		ended time.Duration // ago; 0 for not ended
	}{
		"fresh":        {"hourly", time.Minute},                // expires in 59 minutes
		"due-soon":     {"hourly", time.Hour - 30*time.Second}, // in 30 s
		"overdue":      {"hourly", 2 * time.Hour},              // 1 h ago
		"orphan-fresh": {"gone", time.Hour},                    // the default TTL, a day: 23 h left
		"orphan-due":   {"gone", 24*time.Hour - 10*time.Second},
		"running":      {"hourly", 0},
	}
	objects := make([]client.Object, 0, len(requests))
	for name, r := range requests {
		w := testutil.MakeInferenceRequest(name, "ns").Model(r.model)
		if r.ended > 0 {
			w.Delivered(now.Add(-r.ended))
		}
		objects = append(objects, w.Obj())
	}
	ttl := func(_ context.Context, ir *inferencev1alpha1.InferenceRequest) (time.Duration, error) {
		if ir.Spec.Model == "hourly" {
			return time.Hour, nil
		}
		return 24 * time.Hour, nil
	}
	woken := make(chan types.NamespacedName, len(objects))
	wake := func(_ context.Context, key types.NamespacedName) bool { woken <- key; return true }
	s := NewSweeper(testutil.FakeClient(objects...).Build(), clocktesting.NewFakeClock(now), time.Minute, ttl, wake)

	if err := s.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	close(woken)
	var names []string
	for key := range woken {
		names = append(names, key.Name)
	}
	slices.Sort(names)
	if diff := cmp.Diff([]string{"due-soon", "orphan-due", "overdue"}, names); diff != "" {
		t.Errorf("the sweep woke (-want +got):\n%s", diff)
	}
}
