package requestmetrics

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	promtestutil "github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
)

func TestMetrics(t *testing.T) {
	now := time.Unix(1700000000, 0)
	completed := metav1.NewTime(now.Add(-time.Minute))
	undelivered := testutil.MakeInferenceRequest("undelivered", "ns").Callback("https://r.example/").Obj()
	undelivered.Status.Phase = inferencev1alpha1.PhaseSucceeded
	undelivered.Status.CompletionTime = &completed
	undelivered.Status.Delivery.State = inferencev1alpha1.DeliveryPending
	fresh := testutil.MakeInferenceRequest("fresh", "ns").Obj() // no status yet: Pending

	reader := testutil.FakeClient(undelivered, fresh).Build()
	m := New(reader, clocktesting.NewFakeClock(now), func() int { return 3 })
	// Two sets of metrics, as from two managers in one process, each on a
	// registry of its own.
	for range 2 {
		if err := New(reader, clocktesting.NewFakeClock(now), func() int { return 0 }).Register(prometheus.NewRegistry()); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewRegistry()
	if err := m.Register(reg); err != nil {
		t.Fatal(err)
	}

	started, delivered := metav1.NewTime(now.Add(-2*time.Minute)), metav1.NewTime(now)
	before := inferencev1alpha1.InferenceRequestStatus{Phase: inferencev1alpha1.PhaseRunning, StartTime: &started}
	after := *before.DeepCopy()
	after.Phase, after.CompletionTime = inferencev1alpha1.PhaseSucceeded, &completed
	after.Delivery = inferencev1alpha1.DeliveryStatus{State: inferencev1alpha1.DeliveryDelivered, Attempts: 1, DeliveredTime: &delivered}
	m.Observe(&before, &after)
	m.Observe(&after, &after) // a reconcile that changed nothing counts nothing

	expectSeries(t, reg, map[string]float64{
		"kinfer_requests{phase=Pending}":                    1,
		"kinfer_requests{phase=Succeeded}":                  1,
		"kinfer_oldest_pending_delivery_seconds":            60,
		"kinfer_deliveries_waiting_for_host":                3,
		"kinfer_callback_attempts_total{outcome=delivered}": 1,
	})
	if got := promtestutil.CollectAndCount(m.jobRunSeconds); got != 1 {
		t.Errorf("kinfer_job_run_seconds has %d series, want 1", got)
	}
}

// expectSeries checks each series of want, "name" or "name{label=value}...",
// against its value in reg.
func expectSeries(t *testing.T, reg *prometheus.Registry, want map[string]float64) {
	t.Helper()
	for name, value := range want {
		if got := gaugeOrCounter(t, reg, name); got != value {
			t.Errorf("%s = %v, want %v", name, got, value)
		}
	}
}

// gaugeOrCounter reads one series, "name" or "name{label=value}", from reg.
func gaugeOrCounter(t *testing.T, reg *prometheus.Registry, series string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			name := f.GetName()
			for _, l := range m.GetLabel() {
				name += "{" + l.GetName() + "=" + l.GetValue() + "}"
			}
			if name == series {
				return m.GetGauge().GetValue() + m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no series %s", series)
	return 0
}

func TestQueueMetricsByModel(t *testing.T) {
	now := time.Unix(1700000000, 0)
	made := func(name, model string, age time.Duration, phase inferencev1alpha1.RequestPhase) *inferencev1alpha1.InferenceRequest {
		ir := testutil.MakeInferenceRequest(name, "ns").Model(model).Obj()
		ir.CreationTimestamp = metav1.NewTime(now.Add(-age))
		ir.Status.Phase = phase
		return ir
	}
	reader := testutil.FakeClient(
		made("queued-old", "default", 30*time.Second, inferencev1alpha1.PhaseQueued),
		made("queued-new", "default", 10*time.Second, inferencev1alpha1.PhaseQueued),
		made("running", "default", time.Hour, inferencev1alpha1.PhaseRunning),
		made("no-model-yet", "other", 5*time.Second, ""),
	).Build()
	reg := prometheus.NewRegistry()
	if err := New(reader, clocktesting.NewFakeClock(now), func() int { return 0 }).Register(reg); err != nil {
		t.Fatal(err)
	}
	expectSeries(t, reg, map[string]float64{
		"kinfer_queue_length{model=default}{namespace=ns}":                 2,
		"kinfer_queue_oldest_waiting_seconds{model=default}{namespace=ns}": 30,
		"kinfer_queue_length{model=other}{namespace=ns}":                   1,
		"kinfer_queue_oldest_waiting_seconds{model=other}{namespace=ns}":   5,
	})
}
