// Package requestmetrics holds the Prometheus metrics of InferenceRequests:
// phases, endings, Job run times and callback delivery.
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

// Labels of the metrics kept for each model.
const (
	labelNamespace = "namespace"
	labelModel     = "model"
	labelPhase     = "phase"
)

// Metrics are the InferenceRequest controller's metrics, built for one
// manager and registered by Register.
type Metrics struct {
	jobRunSeconds          prometheus.Histogram
	callbackLatencySeconds prometheus.Histogram
	submitToCallback       prometheus.Histogram
	callbackAttempts       *prometheus.CounterVec
	ended                  *prometheus.CounterVec
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
		submitToCallback: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "kinfer_submit_to_callback_seconds",
			Help: "Time from a request being created to its first callback being delivered: " +
				"queue, run and delivery, retries included. Redeliveries are not counted.",
			Buckets: prometheus.ExponentialBuckets(0.1, 2, 22), // 100 ms to about 58 h
		}),
		ended: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kinfer_requests_ended_total",
			Help: "Requests that ended, by namespace, model, phase (Succeeded, Failed, Canceled) and the reason of their Complete condition.",
		}, []string{labelNamespace, labelModel, labelPhase, "reason"}),
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
	for _, c := range []prometheus.Collector{
		m.jobRunSeconds, m.callbackLatencySeconds, m.submitToCallback, m.callbackAttempts, m.ended, m.requests, m.waitingForHost,
	} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// requestCollector reports, at each scrape, how many requests each model has
// in each phase, how long the oldest undelivered result has waited, and for each
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
			"InferenceRequests held in the cluster, by namespace, model and phase.", []string{labelNamespace, labelModel, labelPhase}, nil),
		oldestPending: prometheus.NewDesc("kinfer_oldest_pending_delivery_seconds",
			"Age of the oldest completed request whose callback is not delivered yet, 0 when there is none.", nil, nil),
		queueLength: prometheus.NewDesc("kinfer_queue_length",
			"Requests waiting to start (Pending or Queued), by model.", []string{labelNamespace, labelModel}, nil),
		oldestWaiting: prometheus.NewDesc("kinfer_queue_oldest_waiting_seconds",
			"Age of the oldest request waiting to start, by model.", []string{labelNamespace, labelModel}, nil),
	}
}

func (c *requestCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.phases
	ch <- c.oldestPending
	ch <- c.queueLength
	ch <- c.oldestWaiting
}

// allPhases are the phases each model's requests are counted in, so that a
// phase with none of them reads 0 rather than nothing.
var allPhases = []inferencev1alpha1.RequestPhase{
	inferencev1alpha1.PhasePending, inferencev1alpha1.PhaseQueued, inferencev1alpha1.PhaseRunning,
	inferencev1alpha1.PhaseSucceeded, inferencev1alpha1.PhaseFailed, inferencev1alpha1.PhaseCanceled,
}

// modelCounts is one model's requests as a scrape counts them: how many in
// each phase, and how many wait to start and for how long the oldest has.
type modelCounts struct {
	phases        map[inferencev1alpha1.RequestPhase]int
	waiting       int
	oldestWaiting time.Duration
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
	var oldest time.Duration
	models := map[types.NamespacedName]*modelCounts{}
	now := c.clock.Now()
	for i := range list.Items {
		ir := &list.Items[i]
		key := types.NamespacedName{Namespace: ir.Namespace, Name: ir.Spec.Model}
		m := models[key]
		if m == nil {
			m = &modelCounts{phases: map[inferencev1alpha1.RequestPhase]int{}}
			models[key] = m
		}
		phase := ir.CurrentPhase()
		m.phases[phase]++
		if phase == inferencev1alpha1.PhasePending || phase == inferencev1alpha1.PhaseQueued {
			m.waiting++
			m.oldestWaiting = max(m.oldestWaiting, now.Sub(ir.CreationTimestamp.Time))
		}
		if ir.CurrentDeliveryState() == inferencev1alpha1.DeliveryPending && ir.Status.CompletionTime != nil {
			oldest = max(oldest, now.Sub(ir.Status.CompletionTime.Time))
		}
	}
	ch <- prometheus.MustNewConstMetric(c.oldestPending, prometheus.GaugeValue, oldest.Seconds())
	for model, m := range models {
		for _, phase := range allPhases {
			ch <- prometheus.MustNewConstMetric(c.phases, prometheus.GaugeValue, float64(m.phases[phase]),
				model.Namespace, model.Name, string(phase))
		}
		if m.waiting > 0 {
			ch <- prometheus.MustNewConstMetric(c.queueLength, prometheus.GaugeValue, float64(m.waiting), model.Namespace, model.Name)
			ch <- prometheus.MustNewConstMetric(c.oldestWaiting, prometheus.GaugeValue, m.oldestWaiting.Seconds(), model.Namespace, model.Name)
		}
	}
}

// Observe records what one reconcile of ir changed, from before to after,
// once its status write landed, so a retried reconcile never counts the same
// step twice.
func (m *Metrics) Observe(ir *inferencev1alpha1.InferenceRequest, before, after *inferencev1alpha1.InferenceRequestStatus) {
	if !before.Phase.Complete() && after.Phase.Complete() {
		m.observeEnd(ir, after)
	}
	if after.Delivery.Attempts <= before.Delivery.Attempts {
		return
	}
	m.callbackAttempts.WithLabelValues(attemptOutcome(after)).Inc()
	if after.Delivery.State != inferencev1alpha1.DeliveryDelivered || after.Delivery.DeliveredTime == nil {
		return
	}
	delivered := after.Delivery.DeliveredTime.Time
	if after.CompletionTime != nil {
		m.callbackLatencySeconds.Observe(delivered.Sub(after.CompletionTime.Time).Seconds())
	}
	// A redelivery is asked for by people, at a time of their choosing: its
	// delivery says nothing of how long a client waits for an answer.
	if after.Delivery.ObservedRedeliver == "" && !ir.CreationTimestamp.IsZero() {
		m.submitToCallback.Observe(delivered.Sub(ir.CreationTimestamp.Time).Seconds())
	}
}

// observeEnd counts a request that has just ended and times its Job.
func (m *Metrics) observeEnd(ir *inferencev1alpha1.InferenceRequest, after *inferencev1alpha1.InferenceRequestStatus) {
	reason := ""
	if c := meta.FindStatusCondition(after.Conditions, inferencev1alpha1.ConditionComplete); c != nil {
		reason = c.Reason
	}
	m.ended.WithLabelValues(ir.Namespace, ir.Spec.Model, string(after.Phase), reason).Inc()
	if after.StartTime != nil && after.CompletionTime != nil {
		m.jobRunSeconds.Observe(after.CompletionTime.Sub(after.StartTime.Time).Seconds())
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
