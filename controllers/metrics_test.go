package controllers

import (
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	dto "github.com/prometheus/client_model/go"
	batchv1 "k8s.io/api/batch/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
)

// gathered reads one metric family from the running manager's metrics, as
// /metrics serves them.
func gathered(name string) *dto.MetricFamily {
	GinkgoHelper()
	families, err := testMetrics.Gather()
	Expect(err).NotTo(HaveOccurred())
	for _, f := range families {
		if f.GetName() == name {
			return f
		}
	}
	return nil
}

// requestsInPhase is the count of requests in phase, over every model.
func requestsInPhase(phase inferencev1alpha1.RequestPhase) float64 {
	GinkgoHelper()
	total := 0.0
	for _, m := range gathered("kinfer_requests").GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "phase" && l.GetValue() == string(phase) {
				total += m.GetGauge().GetValue()
			}
		}
	}
	return total
}

// callbackAttempts is the count of delivery attempts with outcome.
func callbackAttempts(outcome string) float64 {
	GinkgoHelper()
	for _, m := range gathered("kinfer_callback_attempts_total").GetMetric() {
		if m.GetLabel()[0].GetValue() == outcome {
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

var _ = Describe("Metrics", func() {
	It("counts requests by phase and times their Jobs", func() {
		ns := newNamespace()
		Expect(k8sClient.Create(ctx, testutil.MakeInferenceModel("default", ns, workerImage).Obj())).To(Succeed())
		runsBefore := gathered("kinfer_job_run_seconds").GetMetric()[0].GetHistogram().GetSampleCount()

		ir := testutil.MakeInferenceRequest("req-metrics", ns).Obj()
		Expect(k8sClient.Create(ctx, ir)).To(Succeed())
		Eventually(func() float64 { return requestsInPhase(inferencev1alpha1.PhaseRunning) }).Should(BeNumerically(">=", 1))
		succeededBefore := requestsInPhase(inferencev1alpha1.PhaseSucceeded)

		job := &batchv1.Job{}
		Eventually(func() error { return k8sClient.Get(ctx, client.ObjectKeyFromObject(ir), job) }).Should(Succeed())
		Expect(testutil.CompleteJob(ctx, k8sClient, job, `"OK"`)).To(Succeed())

		Eventually(func() float64 { return requestsInPhase(inferencev1alpha1.PhaseSucceeded) }).Should(Equal(succeededBefore + 1))
		// The gauge is read from the cache, which the status write's watch
		// event can reach before the reconcile that made the write has
		// observed the run time.
		Eventually(func() uint64 {
			return gathered("kinfer_job_run_seconds").GetMetric()[0].GetHistogram().GetSampleCount()
		}).Should(Equal(runsBefore + 1))
		Expect(gathered("kinfer_oldest_pending_delivery_seconds")).NotTo(BeNil())
	})
})
