package controllers

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

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

var (
	jobRunSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "kinfer_job_run_seconds",
		Help:    "Time from a request's Job being created to its result or failure being recorded.",
		Buckets: prometheus.ExponentialBuckets(0.5, 2, 16), // 0.5 s to about 4.5 h
	})
	callbackLatencySeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "kinfer_callback_latency_seconds",
		Help:    "Time from a request's Job ending to its callback being delivered, retries included.",
		Buckets: prometheus.ExponentialBuckets(0.05, 2, 22), // 50 ms to about 29 h
	})
	callbackAttempts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kinfer_callback_attempts_total",
		Help: "Callback delivery attempts by outcome: delivered, retrying, exhausted, gone or denied.",
	}, []string{"outcome"})
)

// requestCollector reports, at each scrape, how many requests are in each
// phase and how long the oldest undelivered result has waited. It reads the
// manager's cache, so a scrape costs no API call.
type requestCollector struct {
	mu     sync.Mutex
	reader client.Reader
	clock  clock.PassiveClock

	phases        *prometheus.Desc
	oldestPending *prometheus.Desc
}

var requests = newRequestCollector()

func newRequestCollector() *requestCollector {
	return &requestCollector{
		phases: prometheus.NewDesc("kinfer_requests",
			"InferenceRequests held in the cluster, by phase.", []string{"phase"}, nil),
		oldestPending: prometheus.NewDesc("kinfer_oldest_pending_delivery_seconds",
			"Age of the oldest completed request whose callback is not delivered yet, 0 when there is none.", nil, nil),
	}
}

func (c *requestCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.phases
	ch <- c.oldestPending
}

// use points the collector at a manager's cache; the newest manager wins.
func (c *requestCollector) use(reader client.Reader, clk clock.PassiveClock) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reader, c.clock = reader, clk
}

func (c *requestCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	reader, clk := c.reader, c.clock
	c.mu.Unlock()
	if reader == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var list inferencev1alpha1.InferenceRequestList
	// Only read, never kept: no copy of every held request per scrape.
	if err := reader.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
		ctrl.Log.WithName("metrics").Error(err, "Listing requests for metrics")
		return
	}
	counts := map[inferencev1alpha1.RequestPhase]int{
		inferencev1alpha1.PhasePending: 0, inferencev1alpha1.PhaseQueued: 0, inferencev1alpha1.PhaseRunning: 0,
		inferencev1alpha1.PhaseSucceeded: 0, inferencev1alpha1.PhaseFailed: 0,
	}
	var oldest time.Duration
	now := clk.Now()
	for i := range list.Items {
		st := &list.Items[i].Status
		phase := st.Phase
		if phase == "" {
			phase = inferencev1alpha1.PhasePending
		}
		counts[phase]++
		if st.Delivery.State == inferencev1alpha1.DeliveryPending && st.CompletionTime != nil {
			oldest = max(oldest, now.Sub(st.CompletionTime.Time))
		}
	}
	for phase, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.phases, prometheus.GaugeValue, float64(n), string(phase))
	}
	ch <- prometheus.MustNewConstMetric(c.oldestPending, prometheus.GaugeValue, oldest.Seconds())
}

// registerMetrics adds kinfer's metrics to the manager's /metrics, and points
// the request gauges at reader.
func registerMetrics(reader client.Reader, clk clock.PassiveClock) {
	requests.use(reader, clk)
	metricsOnce.Do(func() {
		metrics.Registry.MustRegister(jobRunSeconds, callbackLatencySeconds, callbackAttempts, requests)
	})
}

var metricsOnce sync.Once

// activeSlots is the newest manager's hostSlots, for the waiting gauge.
var (
	activeSlots    atomic.Pointer[hostSlots]
	waitingForSlot = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "kinfer_deliveries_waiting_for_host",
		Help: "Requests whose callback is due but wait for one of the slots of its host (--max-deliveries-per-host).",
	}, func() float64 {
		if s := activeSlots.Load(); s != nil {
			return float64(s.waiting())
		}
		return 0
	})
	slotMetricsOnce sync.Once
)

func registerSlotMetrics(s *hostSlots) {
	activeSlots.Store(s)
	slotMetricsOnce.Do(func() { metrics.Registry.MustRegister(waitingForSlot) })
}

// observe records what one reconcile changed, once its status write landed,
// so a retried reconcile never counts the same step twice.
func observe(before, after *inferencev1alpha1.InferenceRequestStatus) {
	if !completePhase(before.Phase) && completePhase(after.Phase) && after.StartTime != nil && after.CompletionTime != nil {
		jobRunSeconds.Observe(after.CompletionTime.Sub(after.StartTime.Time).Seconds())
	}
	if after.Delivery.Attempts <= before.Delivery.Attempts {
		return
	}
	callbackAttempts.WithLabelValues(attemptOutcome(after)).Inc()
	if after.Delivery.State == inferencev1alpha1.DeliveryDelivered && after.CompletionTime != nil && after.Delivery.DeliveredTime != nil {
		callbackLatencySeconds.Observe(after.Delivery.DeliveredTime.Sub(after.CompletionTime.Time).Seconds())
	}
}

func completePhase(phase inferencev1alpha1.RequestPhase) bool {
	return phase == inferencev1alpha1.PhaseSucceeded || phase == inferencev1alpha1.PhaseFailed
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
