package controllers

import (
	"fmt"
	"sync"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
)

var _ = Describe("The queue behind maxConcurrency", func() {
	// A start decision used to list the model's Jobs and list and copy every
	// request of the model: O(queue) a decision, O(queue²) for a backlog.
	// None of it reached the API server, so only counting what the
	// reconciler reads through its client shows it.
	It("reads no more objects to decide a start with 10 000 queued than with 100", func() {
		ns := newNamespace()
		Expect(k8sClient.Create(ctx, testutil.MakeInferenceModel("default", ns, workerImage).MaxConcurrency(2).Obj())).To(Succeed())

		// queue creates requests from to to-1 and waits until all but the two
		// running are Queued, with the probes made so far.
		probes := 0
		queue := func(from, to int) {
			GinkgoHelper()
			var wg sync.WaitGroup
			names := make(chan string)
			for range 8 {
				wg.Go(func() {
					defer GinkgoRecover()
					for name := range names {
						Expect(k8sClient.Create(ctx, testutil.MakeInferenceRequest(name, ns).Obj())).To(Succeed())
					}
				})
			}
			for i := from; i < to; i++ {
				names <- fmt.Sprintf("queued-%05d", i)
			}
			close(names)
			wg.Wait()
			Eventually(func(g Gomega) {
				var list inferencev1alpha1.InferenceRequestList
				g.Expect(k8sClient.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
				queued := 0
				for _, ir := range list.Items {
					if ir.Status.Phase == inferencev1alpha1.PhaseQueued {
						queued++
					}
				}
				g.Expect(queued).To(Equal(to - 2 + probes))
			}, "5m", "500ms").Should(Succeed())
		}
		// readsToQueue is how many objects the reconciler reads to take one
		// more request in and leave it Queued.
		readsToQueue := func(name string) int {
			GinkgoHelper()
			before := reads.Read(ns)
			probes++
			ir := testutil.MakeInferenceRequest(name, ns).Obj()
			Expect(k8sClient.Create(ctx, ir)).To(Succeed())
			Eventually(func(g Gomega) inferencev1alpha1.RequestPhase {
				g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(ir), ir)).To(Succeed())
				return ir.Status.Phase
			}).Should(Equal(inferencev1alpha1.PhaseQueued))
			// The status write brings the request back once more: wait until
			// the reads stop.
			last := -1
			Eventually(func() bool {
				now := reads.Read(ns)
				settled := now == last
				last = now
				return settled
			}, "10s", "300ms").Should(BeTrue())
			return last - before
		}

		queue(0, 100)
		small := readsToQueue("probe-at-100")
		queue(100, 10000)
		large := readsToQueue("probe-at-10000")
		By(fmt.Sprintf("reading %d objects with 100 queued and %d with 10 000", small, large))
		Expect(small).To(BeNumerically(">", 0))
		// One more reconcile of the probe may come one time and not the other.
		Expect(large).To(BeNumerically("<=", 2*small), "the cost of a decision grows with the queue")
	})
})
