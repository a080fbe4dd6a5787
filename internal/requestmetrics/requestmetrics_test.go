package requestmetrics

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
)

func TestMetrics(t *testing.T) {
	now := time.Unix(1700000000, 0)
	completed := metav1.NewTime(now.Add(-time.Minute))
	undelivered := testutil.MakeInferenceRequest("undelivered", "ns").Model("default").Callback("https://r.example/").Obj()
	undelivered.Status.Phase = inferencev1alpha1.PhaseSucceeded
	undelivered.Status.CompletionTime = &completed
	undelivered.Status.Delivery.State = inferencev1alpha1.DeliveryPending
	fresh := testutil.MakeInferenceRequest("fresh", "ns").Model("default").Obj() // no status yet: Pending

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

	ran := testutil.MakeInferenceRequest("ran", "ns").Model("sentiment").Obj()
	ran.CreationTimestamp = metav1.NewTime(now.Add(-5 * time.Minute))
	started, delivered := metav1.NewTime(now.Add(-2*time.Minute)), metav1.NewTime(now)
	before := inferencev1alpha1.InferenceRequestStatus{Phase: inferencev1alpha1.PhaseRunning, StartTime: &started}
	after := *before.DeepCopy()
	after.Phase, after.CompletionTime = inferencev1alpha1.PhaseSucceeded, &completed
	after.Conditions = []metav1.Condition{{Type: inferencev1alpha1.ConditionComplete, Status: metav1.ConditionTrue,
		Reason: inferencev1alpha1.ReasonSucceeded}}
	after.Delivery = inferencev1alpha1.DeliveryStatus{State: inferencev1alpha1.DeliveryDelivered, Attempts: 1, DeliveredTime: &delivered}
	m.Observe(ran, &before, &after)
	m.Observe(ran, &after, &after) // a reconcile that changed nothing counts nothing

	expectSeries(t, reg, map[string]float64{
		"kinfer_requests{model=default}{namespace=ns}{phase=Pending}":                                   1,
		"kinfer_requests{model=default}{namespace=ns}{phase=Queued}":                                    0,
		"kinfer_requests{model=default}{namespace=ns}{phase=Succeeded}":                                 1,
		"kinfer_oldest_pending_delivery_seconds":                                                        60,
		"kinfer_deliveries_waiting_for_host":                                                            3,
		"kinfer_callback_attempts_total{outcome=delivered}":                                             1,
		"kinfer_requests_ended_total{model=sentiment}{namespace=ns}{phase=Succeeded}{reason=Succeeded}": 1,
	})
	for name, want := range map[string]struct {
		histogram prometheus.Histogram
		sum       float64
	}{
		"kinfer_job_run_seconds":            {m.jobRunSeconds, 60},          // started 2 min ago, completed 1 min ago
		"kinfer_callback_latency_seconds":   {m.callbackLatencySeconds, 60}, // completed 1 min ago, delivered now
		"kinfer_submit_to_callback_seconds": {m.submitToCallback, 5 * 60},   // created 5 min ago, delivered now
	} {
		count, sum := histogramCountAndSum(t, want.histogram)
		if count != 1 || sum != want.sum {
			t.Errorf("%s: %d observations summing to %v, want 1 summing to %v", name, count, sum, want.sum)
		}
	}
}

func histogramCountAndSum(t *testing.T, h prometheus.Histogram) (uint64, float64) {
	t.Helper()
	var out dto.Metric
	if err := h.Write(&out); err != nil {
		t.Fatal(err)
	}
	return out.GetHistogram().GetSampleCount(), out.GetHistogram().GetSampleSum()
}

func TestEndsAndRedeliveries(t *testing.T) {
	now := time.Unix(1700000000, 0)
	ir := testutil.MakeInferenceRequest("a", "ml").Model("default").Obj()
	ir.CreationTimestamp = metav1.NewTime(now.Add(-time.Hour))
	ended := func(phase inferencev1alpha1.RequestPhase, reason string) *inferencev1alpha1.InferenceRequestStatus {
		completed := metav1.NewTime(now)
		return &inferencev1alpha1.InferenceRequestStatus{Phase: phase, CompletionTime: &completed,
			Conditions: []metav1.Condition{{Type: inferencev1alpha1.ConditionComplete, Status: metav1.ConditionTrue, Reason: reason}}}
	}
	m := New(testutil.FakeClient().Build(), clocktesting.NewFakeClock(now), func() int { return 0 })
	reg := prometheus.NewRegistry()
	if err := m.Register(reg); err != nil {
		t.Fatal(err)
	}
	running := &inferencev1alpha1.InferenceRequestStatus{Phase: inferencev1alpha1.PhaseRunning}
	failed := ended(inferencev1alpha1.PhaseFailed, inferencev1alpha1.ReasonJobFailed)
	m.Observe(ir, running, failed)
	m.Observe(ir, running, ended(inferencev1alpha1.PhaseFailed, inferencev1alpha1.ReasonJobFailed))
	m.Observe(ir, &inferencev1alpha1.InferenceRequestStatus{}, ended(inferencev1alpha1.PhaseCanceled, inferencev1alpha1.ReasonCanceled))
	// A redelivery of an ended request: an attempt, but no end, and no
	// submit-to-callback time, since people chose when to ask for it.
	redelivered := failed.DeepCopy()
	delivered := metav1.NewTime(now.Add(time.Hour))
	redelivered.Delivery = inferencev1alpha1.DeliveryStatus{State: inferencev1alpha1.DeliveryDelivered, Attempts: 1,
		DeliveredTime: &delivered, ObservedRedeliver: "1"}
	m.Observe(ir, failed, redelivered)

	expectSeries(t, reg, map[string]float64{
		"kinfer_requests_ended_total{model=default}{namespace=ml}{phase=Failed}{reason=JobFailed}":  2,
		"kinfer_requests_ended_total{model=default}{namespace=ml}{phase=Canceled}{reason=Canceled}": 1,
		"kinfer_callback_attempts_total{outcome=delivered}":                                         1,
	})
	if count, _ := histogramCountAndSum(t, m.submitToCallback); count != 0 {
		t.Errorf("kinfer_submit_to_callback_seconds has %d observations after a redelivery only, want 0", count)
	}
	if count, _ := histogramCountAndSum(t, m.callbackLatencySeconds); count != 1 {
		t.Errorf("kinfer_callback_latency_seconds has %d observations, want 1", count)
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
		"kinfer_requests{model=default}{namespace=ns}{phase=Queued}":       2,
		"kinfer_requests{model=default}{namespace=ns}{phase=Running}":      1,
		"kinfer_requests{model=other}{namespace=ns}{phase=Pending}":        1,
		"kinfer_requests{model=other}{namespace=ns}{phase=Running}":        0,
	})
	if series := seriesNamed(t, reg, "kinfer_queue_length"); series != 2 {
		t.Errorf("kinfer_queue_length has %d series, want 2: a model with nothing waiting has none", series)
	}
}

func seriesNamed(t *testing.T, reg *prometheus.Registry, name string) int {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			return len(f.GetMetric())
		}
	}
	return 0
}
