package controllers

import (
	"fmt"
	"sync"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	batchv1 "k8s.io/api/batch/v1"
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

	It("tells where each waiting request stands as requests start", func() {
		ns := newNamespace()
		Expect(k8sClient.Create(ctx, testutil.MakeInferenceModel("default", ns, workerImage).MaxConcurrency(1).Obj())).To(Succeed())
		// Created in one second, they start in the order of their names.
		irs := map[string]*inferencev1alpha1.InferenceRequest{}
		for _, name := range []string{"a", "b", "c"} {
			irs[name] = testutil.MakeInferenceRequest(name, ns).Obj()
			Expect(k8sClient.Create(ctx, irs[name])).To(Succeed())
		}
		position := func(name string) func() []int {
			return func() []int {
				ir := &inferencev1alpha1.InferenceRequest{}
				if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(irs[name]), ir); err != nil {
					return []int{-1, -1} // neither waiting nor not
				}
				ahead, length, waiting := queueIndex.Position(ir)
				if !waiting {
					return []int{}
				}
				return []int{ahead, length}
			}
		}
		Eventually(func() inferencev1alpha1.RequestPhase {
			ir := &inferencev1alpha1.InferenceRequest{}
			_ = k8sClient.Get(ctx, client.ObjectKeyFromObject(irs["a"]), ir)
			return ir.Status.Phase
		}).Should(Equal(inferencev1alpha1.PhaseRunning))
		Expect(position("a")()).To(BeEmpty(), "a runs, so it does not wait")
		Eventually(position("b")).Should(Equal([]int{0, 2}))
		Eventually(position("c")).Should(Equal([]int{1, 2}))

		By("completing a's Job: b starts, and c is next")
		job := &batchv1.Job{}
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(irs["a"]), job)).To(Succeed())
		Expect(testutil.CompleteJob(ctx, k8sClient, job, `"OK"`)).To(Succeed())
		Eventually(position("b")).Should(BeEmpty(), "b runs")
		Eventually(position("c")).Should(Equal([]int{0, 1}))
	})
})
