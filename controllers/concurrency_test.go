package controllers

import (
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	batchv1 "k8s.io/api/batch/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
)

var _ = Describe("Delivery concurrency", func() {
	It("delivers to a slow receiver many at a time, never more than the bound per host", func() {
		const requests = 100
		const receiverDelay = time.Second
		ns := newNamespace()
		Expect(k8sClient.Create(ctx, testutil.MakeInferenceModel("default", ns, workerImage).Obj())).To(Succeed())

		var inFlight, maxInFlight atomic.Int32
		receiver := testutil.NewReceiver(func(w http.ResponseWriter, _ *http.Request) {
			n := inFlight.Add(1)
			defer inFlight.Add(-1)
			for m := maxInFlight.Load(); n > m && !maxInFlight.CompareAndSwap(m, n); m = maxInFlight.Load() {
			}
			time.Sleep(receiverDelay)
			w.WriteHeader(http.StatusOK)
		})
		defer receiver.Close()

		irs := make([]*inferencev1alpha1.InferenceRequest, requests)
		for i := range irs {
			irs[i] = testutil.MakeInferenceRequest(fmt.Sprintf("req-%03d", i), ns).Callback(receiver.URL).Obj()
			Expect(k8sClient.Create(ctx, irs[i])).To(Succeed())
		}
		jobs := make([]*batchv1.Job, requests)
		for i, ir := range irs {
			jobs[i] = &batchv1.Job{}
			Eventually(func() error { return k8sClient.Get(ctx, client.ObjectKeyFromObject(ir), jobs[i]) }).Should(Succeed())
		}

		start := time.Now()
		var wg sync.WaitGroup
		work := make(chan *batchv1.Job)
		for range 8 {
			wg.Go(func() {
				defer GinkgoRecover()
				for job := range work {
					Expect(testutil.CompleteJob(ctx, k8sClient, job, `"OK"`)).To(Succeed())
				}
			})
		}
		for _, job := range jobs {
			work <- job
		}
		close(work)
		wg.Wait()
		// Wall time runs until every request records its delivery: the last
		// answer has come back and its status is written.
		Eventually(allDelivered(ns), "60s", "20ms").Should(Succeed())
		wall := time.Since(start)
		Expect(receiver.Calls()).To(HaveLen(requests))

		batches := (requests + testDeliveriesPerHost - 1) / testDeliveriesPerHost
		ideal := time.Duration(batches) * receiverDelay
		report := fmt.Sprintf("%d callbacks to a receiver taking %v each, %d per host: wall %v, ideal %v, "+
			"ratio %.2f; at most %d in flight", requests, receiverDelay, testDeliveriesPerHost, wall.Round(time.Millisecond),
			ideal, wall.Seconds()/ideal.Seconds(), maxInFlight.Load())
		AddReportEntry("delivery concurrency", report)
		GinkgoWriter.Println(report)

		// One at a time would take 100 s; the bound must hold.
		Expect(maxInFlight.Load()).To(BeNumerically(">", 10), "deliveries ran one at a time, or nearly")
		Expect(maxInFlight.Load()).To(BeNumerically("<=", testDeliveriesPerHost))
	})

	It("keeps delivering to other receivers while one holds its every slot", func() {
		// More requests for the hanging receiver than there are workers:
		// without a bound per host they would hold them all.
		const hanging, fast = testMaxConcurrentDeliveries + 6, 10
		ns := newNamespace()
		Expect(k8sClient.Create(ctx, testutil.MakeInferenceModel("default", ns, workerImage).CallbackTimeout(120).Obj())).To(Succeed())

		var inFlight, maxInFlight atomic.Int32
		release := make(chan struct{})
		stuck := testutil.NewReceiver(func(w http.ResponseWriter, _ *http.Request) {
			n := inFlight.Add(1)
			defer inFlight.Add(-1)
			for m := maxInFlight.Load(); n > m && !maxInFlight.CompareAndSwap(m, n); m = maxInFlight.Load() {
			}
			<-release
			w.WriteHeader(http.StatusOK)
		})
		defer stuck.Close()
		defer closeOnce(release)
		quick := testutil.NewReceiver()
		defer quick.Close()

		irs := make([]*inferencev1alpha1.InferenceRequest, 0, hanging+fast)
		for i := range hanging {
			irs = append(irs, testutil.MakeInferenceRequest(fmt.Sprintf("stuck-%03d", i), ns).Callback(stuck.URL).Obj())
		}
		for i := range fast {
			irs = append(irs, testutil.MakeInferenceRequest(fmt.Sprintf("quick-%03d", i), ns).Callback(quick.URL).Obj())
		}
		for _, ir := range irs {
			Expect(k8sClient.Create(ctx, ir)).To(Succeed())
		}
		// The hanging receiver's Jobs finish first, so its callbacks are due
		// before the others'.
		for _, ir := range irs {
			job := &batchv1.Job{}
			Eventually(func() error { return k8sClient.Get(ctx, client.ObjectKeyFromObject(ir), job) }).Should(Succeed())
			Expect(testutil.CompleteJob(ctx, k8sClient, job, `"OK"`)).To(Succeed())
		}

		Eventually(quick.Calls, "30s", "50ms").Should(HaveLen(fast), "callbacks to a prompt receiver waited behind a hanging one")
		Expect(inFlight.Load()).To(BeNumerically("==", testDeliveriesPerHost), "the hanging receiver holds its every slot meanwhile")

		closeOnce(release)
		Eventually(allDelivered(ns), "60s", "100ms").Should(Succeed())
		Expect(stuck.Calls()).To(HaveLen(hanging))
		Expect(maxInFlight.Load()).To(BeNumerically("<=", testDeliveriesPerHost))
	})
})

// allDelivered checks that every request in ns has its callback delivered.
func allDelivered(ns string) func(Gomega) {
	return func(g Gomega) {
		var list inferencev1alpha1.InferenceRequestList
		g.Expect(k8sClient.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
		for _, ir := range list.Items {
			g.Expect(ir.Status.Delivery.State).To(Equal(inferencev1alpha1.DeliveryDelivered), ir.Name)
		}
	}
}

func closeOnce(ch chan struct{}) {
	select {
	case <-ch:
	default:
		close(ch)
	}
}
