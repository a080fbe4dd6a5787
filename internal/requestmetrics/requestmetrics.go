// Package requestmetrics holds the Prometheus metrics of InferenceRequests:
// phases, Job run times and callback delivery.
package requestmetrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
)

// Outcomes of a delivery attempt, as the attempts metric labels them.
const (
	attemptDelivered = "delivered"
	attemptGone      = "gone"
	attemptDenied    = "denied"
	attemptRetrying  = "retrying"
	attemptExhausted = "exhausted"
)

// Metrics are the InferenceRequest controller's metrics, built for one
// manager and registered by Register.
type Metrics struct {
	jobRunSeconds          prometheus.Histogram
	callbackLatencySeconds prometheus.Histogram
	callbackAttempts       *prometheus.CounterVec
	requests               *requestCollector
	waitingForHost         prometheus.GaugeFunc
}

// New builds the metrics: request gauges read from reader (the manager's
// cache, so a scrape costs no API call) at clk's time, and waitingForHost
// says how many deliveries wait for their callback host.
func New(reader client.Reader, clk clock.PassiveClock, waitingForHost func() int) *Metrics {
	return &Metrics{
		jobRunSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kinfer_job_run_seconds",
			Help:    "Time from a request's Job being created to its result or failure being recorded.",
			Buckets: prometheus.ExponentialBuckets(0.5, 2, 16), // 0.5 s to about 4.5 h
		}),
		callbackLatencySeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kinfer_callback_latency_seconds",
			Help:    "Time from a request's Job ending to its callback being delivered, retries included.",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 22), // 50 ms to about 29 h
		}),
		callbackAttempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kinfer_callback_attempts_total",
			Help: "Callback delivery attempts by outcome: delivered, retrying, exhausted, gone or denied.",
		}, []string{"outcome"}),
		requests: newRequestCollector(reader, clk),
		waitingForHost: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kinfer_deliveries_waiting_for_host",
			Help: "Requests whose callback is due but wait for one of the slots of its host (--max-deliveries-per-host).",
		}, func() float64 { return float64(waitingForHost()) }),
	}
}

// Register adds the metrics to reg: controller-runtime's metrics.Registry
// in the manager, so /metrics serves them; a registry of its own for each
// manager a test starts, since one name is registered once per registry.
func (m *Metrics) Register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.jobRunSeconds, m.callbackLatencySeconds, m.callbackAttempts, m.requests, m.waitingForHost} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// requestCollector reports, at each scrape, how many requests are in each
// phase, how long the oldest undelivered result has waited, and for each
// model how many requests wait to start and for how long the oldest has. It reads the
// manager's cache, so a scrape costs no API call.
type requestCollector struct {
	reader client.Reader
	clock  clock.PassiveClock

	phases        *prometheus.Desc
	oldestPending *prometheus.Desc
	queueLength   *prometheus.Desc
	oldestWaiting *prometheus.Desc
}

func newRequestCollector(reader client.Reader, clk clock.PassiveClock) *requestCollector {
	return &requestCollector{
		reader: reader,
		clock:  clk,
		phases: prometheus.NewDesc("kinfer_requests",
			"InferenceRequests held in the cluster, by phase.", []string{"phase"}, nil),
		oldestPending: prometheus.NewDesc("kinfer_oldest_pending_delivery_seconds",
			"Age of the oldest completed request whose callback is not delivered yet, 0 when there is none.", nil, nil),
		queueLength: prometheus.NewDesc("kinfer_queue_length",
			"Requests waiting to start (Pending or Queued), by model.", []string{"namespace", "model"}, nil),
		oldestWaiting: prometheus.NewDesc("kinfer_queue_oldest_waiting_seconds",
			"Age of the oldest request waiting to start, by model.", []string{"namespace", "model"}, nil),
	}
}

func (c *requestCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.phases
	ch <- c.oldestPending
	ch <- c.queueLength
	ch <- c.oldestWaiting
}

// waiting is one model's requests waiting to start, as a scrape counts them.
type waiting struct {
	length int
	oldest time.Duration
}

func (c *requestCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var list inferencev1alpha1.InferenceRequestList
	// Only read, never kept: no copy of every held request per scrape.
	if err := c.reader.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
		ctrl.Log.WithName("metrics").Error(err, "Listing requests for metrics")
		return
	}
	counts := map[inferencev1alpha1.RequestPhase]int{
		inferencev1alpha1.PhasePending: 0, inferencev1alpha1.PhaseQueued: 0, inferencev1alpha1.PhaseRunning: 0,
		inferencev1alpha1.PhaseSucceeded: 0, inferencev1alpha1.PhaseFailed: 0, inferencev1alpha1.PhaseCanceled: 0,
	}
	var oldest time.Duration
	queues := map[types.NamespacedName]*waiting{}
	now := c.clock.Now()
	for i := range list.Items {
		ir := &list.Items[i]
		phase := ir.CurrentPhase()
		counts[phase]++
		if phase == inferencev1alpha1.PhasePending || phase == inferencev1alpha1.PhaseQueued {
			key := types.NamespacedName{Namespace: ir.Namespace, Name: ir.Spec.Model}
			q := queues[key]
			if q == nil {
				q = &waiting{}
				queues[key] = q
			}
			q.length++
			q.oldest = max(q.oldest, now.Sub(ir.CreationTimestamp.Time))
		}
		if ir.CurrentDeliveryState() == inferencev1alpha1.DeliveryPending && ir.Status.CompletionTime != nil {
			oldest = max(oldest, now.Sub(ir.Status.CompletionTime.Time))
		}
	}
	for phase, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.phases, prometheus.GaugeValue, float64(n), string(phase))
	}
	ch <- prometheus.MustNewConstMetric(c.oldestPending, prometheus.GaugeValue, oldest.Seconds())
	for model, q := range queues {
		ch <- prometheus.MustNewConstMetric(c.queueLength, prometheus.GaugeValue, float64(q.length), model.Namespace, model.Name)
		ch <- prometheus.MustNewConstMetric(c.oldestWaiting, prometheus.GaugeValue, q.oldest.Seconds(), model.Namespace, model.Name)
	}
}

// Observe records what one reconcile changed, once its status write landed,
// so a retried reconcile never counts the same step twice.
func (m *Metrics) Observe(before, after *inferencev1alpha1.InferenceRequestStatus) {
	if !before.Phase.Complete() && after.Phase.Complete() && after.StartTime != nil && after.CompletionTime != nil {
		m.jobRunSeconds.Observe(after.CompletionTime.Sub(after.StartTime.Time).Seconds())
	}
	if after.Delivery.Attempts <= before.Delivery.Attempts {
		return
	}
	m.callbackAttempts.WithLabelValues(attemptOutcome(after)).Inc()
	if after.Delivery.State == inferencev1alpha1.DeliveryDelivered && after.CompletionTime != nil && after.Delivery.DeliveredTime != nil {
		m.callbackLatencySeconds.Observe(after.Delivery.DeliveredTime.Sub(after.CompletionTime.Time).Seconds())
	}
}

func attemptOutcome(st *inferencev1alpha1.InferenceRequestStatus) string {
	switch st.Delivery.State {
	case inferencev1alpha1.DeliveryDelivered:
		return attemptDelivered
	case inferencev1alpha1.DeliveryFailed:
		c := meta.FindStatusCondition(st.Conditions, inferencev1alpha1.ConditionDelivered)
		switch {
		case c != nil && c.Reason == inferencev1alpha1.ReasonGone:
			return attemptGone
		case c != nil && c.Reason == inferencev1alpha1.ReasonCallbackDenied:
			return attemptDenied
		}
		return attemptExhausted
	}
	return attemptRetrying
}
