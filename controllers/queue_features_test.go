package controllers

import (
	"encoding/json"
	"net/http"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	batchv1 "k8s.io/api/batch/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
)

// These specs cover what a client of a queue can ask for: limits on the
// wait and the run, cancel, priority and a second delivery.
var _ = Describe("Deadlines, cancel, priority and redelivery", func() {
	var ns string

	BeforeEach(func() {
		ns = newNamespace()
	})

	model := func(name string, mutate func(*testutil.InferenceModelWrapper)) {
		GinkgoHelper()
		w := testutil.MakeInferenceModel(name, ns, workerImage)
		if mutate != nil {
			mutate(w)
		}
		Expect(k8sClient.Create(ctx, w.Obj())).To(Succeed())
	}
	submit := func(w *testutil.InferenceRequestWrapper) *inferencev1alpha1.InferenceRequest {
		GinkgoHelper()
		ir := w.Obj()
		Expect(k8sClient.Create(ctx, ir)).To(Succeed())
		return ir
	}
	get := func(ir *inferencev1alpha1.InferenceRequest) func(Gomega) *inferencev1alpha1.InferenceRequest {
		return func(g Gomega) *inferencev1alpha1.InferenceRequest {
			got := &inferencev1alpha1.InferenceRequest{}
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(ir), got)).To(Succeed())
			return got
		}
	}
	phase := func(ir *inferencev1alpha1.InferenceRequest) func(Gomega) inferencev1alpha1.RequestPhase {
		return func(g Gomega) inferencev1alpha1.RequestPhase { return get(ir)(g).Status.Phase }
	}
	complete := func(ir *inferencev1alpha1.InferenceRequest) func(Gomega) *metav1.Condition {
		return func(g Gomega) *metav1.Condition {
			return meta.FindStatusCondition(get(ir)(g).Status.Conditions, inferencev1alpha1.ConditionComplete)
		}
	}
	job := func(ir *inferencev1alpha1.InferenceRequest) *batchv1.Job {
		GinkgoHelper()
		j := &batchv1.Job{}
		Eventually(func() error { return k8sClient.Get(ctx, client.ObjectKeyFromObject(ir), j) }).Should(Succeed())
		return j
	}
	// jobGone reports whether ir has no Job, or one on its way out.
	jobGone := func(ir *inferencev1alpha1.InferenceRequest) func(Gomega) bool {
		return func(g Gomega) bool {
			j := &batchv1.Job{}
			err := k8sClient.Get(ctx, client.ObjectKeyFromObject(ir), j)
			if apierrors.IsNotFound(err) {
				return true
			}
			g.Expect(err).NotTo(HaveOccurred())
			return !j.DeletionTimestamp.IsZero()
		}
	}
	cancelRequest := func(ir *inferencev1alpha1.InferenceRequest) {
		GinkgoHelper()
		patch := client.RawPatch("application/merge-patch+json", []byte(`{"spec":{"cancel":true}}`))
		Expect(k8sClient.Patch(ctx, ir.DeepCopy(), patch)).To(Succeed())
	}
	body := func(call testutil.Call) map[string]any {
		GinkgoHelper()
		var b map[string]any
		Expect(json.Unmarshal(call.Body, &b)).To(Succeed())
		return b
	}
	events := func(ir *inferencev1alpha1.InferenceRequest) func(Gomega) []eventsv1.Event {
		return func(g Gomega) []eventsv1.Event {
			var list eventsv1.EventList
			g.Expect(k8sClient.List(ctx, &list, client.InNamespace(ir.Namespace))).To(Succeed())
			var out []eventsv1.Event
			for _, e := range list.Items {
				if e.Regarding.Name == ir.Name {
					out = append(out, e)
				}
			}
			return out
		}
	}

	Describe("the queue timeout", func() {
		It("ends a request that waited too long as QueueTimeout, and its callback says expired", func() {
			receiver := testutil.NewReceiver()
			defer receiver.Close()
			model("default", func(w *testutil.InferenceModelWrapper) { w.MaxConcurrency(1).QueueTimeout(3) })
			running := submit(testutil.MakeInferenceRequest("running", ns))
			Eventually(phase(running)).Should(Equal(inferencev1alpha1.PhaseRunning))
			waiting := submit(testutil.MakeInferenceRequest("waiting", ns).ID("w-1").Callback(receiver.URL))

			Eventually(complete(waiting)).Should(SatisfyAll(
				HaveField("Reason", inferencev1alpha1.ReasonQueued),
				HaveField("Message", MatchRegexp(`must start by \S+Z \(queueTimeoutSeconds 3\) or it fails with reason QueueTimeout`))))

			Eventually(phase(waiting), "10s").Should(Equal(inferencev1alpha1.PhaseFailed))
			got := get(waiting)(Default)
			Expect(got.Status.Conditions).To(testutil.HaveCondition(inferencev1alpha1.ConditionComplete, inferencev1alpha1.ReasonQueueTimeout))
			Expect(got.Status.Error).To(Equal("waited longer than its queueTimeoutSeconds (3) to start"))
			Expect(got.Status.CompletionTime.Sub(got.CreationTimestamp.Time)).To(BeNumerically(">=", 2*time.Second))
			Expect(jobGone(waiting)(Default)).To(BeTrue(), "a request that timed out waiting never gets a Job")
			Eventually(receiver.Calls).Should(HaveLen(1))
			Expect(body(receiver.Calls()[0])).To(SatisfyAll(HaveKeyWithValue("id", "w-1"), HaveKeyWithValue("status", "expired"),
				HaveKeyWithValue("error", got.Status.Error)))
			Expect(phase(running)(Default)).To(Equal(inferencev1alpha1.PhaseRunning), "a started request has no queue timeout")
		})

		It("takes a request's shorter limits over its model's", func() {
			model("default", func(w *testutil.InferenceModelWrapper) { w.MaxConcurrency(1).QueueTimeout(3600).Timeout(900) })
			running := submit(testutil.MakeInferenceRequest("running", ns).Timeout(45))
			Expect(job(running).Spec.ActiveDeadlineSeconds).To(Equal(ptr.To[int64](45)), "the Job runs under the request's limit")
			Eventually(complete(running)).Should(HaveField("Message", MatchRegexp(`may run until about \S+Z \(timeoutSeconds 45\)`)))

			impatient := submit(testutil.MakeInferenceRequest("impatient", ns).QueueTimeout(2))
			Eventually(complete(impatient), "10s").Should(SatisfyAll(
				HaveField("Reason", inferencev1alpha1.ReasonQueueTimeout),
				HaveField("Message", "waited longer than its queueTimeoutSeconds (2) to start")))
		})

		It("applies to a request whose model does not exist yet", func() {
			orphan := submit(testutil.MakeInferenceRequest("orphan", ns).Model("missing").QueueTimeout(2))
			Eventually(complete(orphan), "10s").Should(HaveField("Reason", inferencev1alpha1.ReasonQueueTimeout))
		})

		It("deletes a Job its queue never admitted", func() {
			model("default", func(w *testutil.InferenceModelWrapper) {
				w.TemplateLabel(kueueQueueLabel, "team-a").QueueTimeout(2)
			})
			ir := submit(testutil.MakeInferenceRequest("unadmitted", ns))
			Expect(job(ir).Spec.Suspend).To(Equal(ptr.To(true)))
			Eventually(complete(ir)).Should(SatisfyAll(
				HaveField("Reason", inferencev1alpha1.ReasonWaitingForAdmission), HaveField("Message", ContainSubstring("must start by"))))
			Eventually(complete(ir), "10s").Should(HaveField("Reason", inferencev1alpha1.ReasonQueueTimeout))
			Eventually(jobGone(ir)).Should(BeTrue())
		})
	})

	Describe("cancel", func() {
		It("ends a waiting request at once, and it never starts", func() {
			receiver := testutil.NewReceiver()
			defer receiver.Close()
			model("default", func(w *testutil.InferenceModelWrapper) { w.MaxConcurrency(1) })
			running := submit(testutil.MakeInferenceRequest("running", ns))
			Eventually(phase(running)).Should(Equal(inferencev1alpha1.PhaseRunning))
			waiting := submit(testutil.MakeInferenceRequest("waiting", ns).ID("c-1").Callback(receiver.URL))
			next := submit(testutil.MakeInferenceRequest("next", ns))
			Eventually(phase(waiting)).Should(Equal(inferencev1alpha1.PhaseQueued))

			cancelRequest(waiting)
			Eventually(phase(waiting)).Should(Equal(inferencev1alpha1.PhaseCanceled))
			Expect(complete(waiting)(Default)).To(SatisfyAll(HaveField("Reason", inferencev1alpha1.ReasonCanceled),
				HaveField("Status", metav1.ConditionTrue)))
			Eventually(receiver.Calls).Should(HaveLen(1))
			Expect(body(receiver.Calls()[0])).To(SatisfyAll(HaveKeyWithValue("id", "c-1"), HaveKeyWithValue("status", "canceled"),
				Not(HaveKey("result"))))

			By("freeing the slot: the request after it starts, and it does not")
			Expect(testutil.CompleteJob(ctx, k8sClient, job(running), `"OK"`)).To(Succeed())
			Eventually(phase(next)).Should(Equal(inferencev1alpha1.PhaseRunning))
			Expect(jobGone(waiting)(Default)).To(BeTrue())
		})

		It("deletes a running request's Job, and the next request takes its place", func() {
			model("default", func(w *testutil.InferenceModelWrapper) { w.MaxConcurrency(1) })
			running := submit(testutil.MakeInferenceRequest("running", ns))
			Eventually(phase(running)).Should(Equal(inferencev1alpha1.PhaseRunning))
			next := submit(testutil.MakeInferenceRequest("next", ns))
			Eventually(phase(next)).Should(Equal(inferencev1alpha1.PhaseQueued))

			cancelRequest(running)
			Eventually(phase(running)).Should(Equal(inferencev1alpha1.PhaseCanceled))
			Expect(complete(running)(Default)).To(HaveField("Message", "canceled through spec.cancel; job running was deleted"))
			Eventually(jobGone(running)).Should(BeTrue())
			Eventually(phase(next)).Should(Equal(inferencev1alpha1.PhaseRunning))
			Expect(events(running)(Default)).To(ContainElement(HaveField("Reason", inferencev1alpha1.ReasonCanceled)))
		})

		It("leaves an ended request as it was", func() {
			model("default", nil)
			ir := submit(testutil.MakeInferenceRequest("ended", ns))
			Expect(testutil.CompleteJob(ctx, k8sClient, job(ir), `"OK"`)).To(Succeed())
			Eventually(phase(ir)).Should(Equal(inferencev1alpha1.PhaseSucceeded))

			cancelRequest(ir)
			Consistently(phase(ir), "2s").Should(Equal(inferencev1alpha1.PhaseSucceeded))
			Expect(get(ir)(Default).Status.Result.Raw).To(MatchJSON(`"OK"`))
		})

		It("is never held up by a callback that hangs", func() {
			release := make(chan struct{})
			hang := func(w http.ResponseWriter, r *http.Request) {
				select {
				case <-release:
				case <-r.Context().Done():
				}
			}
			receiver := testutil.NewReceiver(hang)
			defer receiver.Close()
			defer close(release)
			model("default", func(w *testutil.InferenceModelWrapper) { w.CallbackTimeout(120) })

			By("one request's callback hanging at the receiver")
			ended := submit(testutil.MakeInferenceRequest("ended", ns).Callback(receiver.URL))
			Expect(testutil.CompleteJob(ctx, k8sClient, job(ended), `"OK"`)).To(Succeed())
			Eventually(receiver.Calls).Should(HaveLen(1))

			By("canceling a running request whose callback goes to the same receiver")
			running := submit(testutil.MakeInferenceRequest("running", ns).Callback(receiver.URL))
			Eventually(phase(running)).Should(Equal(inferencev1alpha1.PhaseRunning))
			cancelRequest(running)
			Eventually(phase(running), "5s").Should(Equal(inferencev1alpha1.PhaseCanceled))
			Eventually(jobGone(running)).Should(BeTrue())
			// Its own callback now hangs too; the end was stored before it went.
			Eventually(receiver.Calls, "5s").Should(HaveLen(2))
			Expect(body(receiver.Calls()[1])).To(HaveKeyWithValue("status", "canceled"))
		})

		It("takes effect when the manager restarts between the cancel and its effect", func() {
			model("default", func(w *testutil.InferenceModelWrapper) { w.MaxConcurrency(1) })
			running := submit(testutil.MakeInferenceRequest("running", ns))
			Eventually(phase(running)).Should(Equal(inferencev1alpha1.PhaseRunning))
			waiting := submit(testutil.MakeInferenceRequest("waiting", ns))
			Eventually(phase(waiting)).Should(Equal(inferencev1alpha1.PhaseQueued))

			stopManager()
			DeferCleanup(func() {
				stopManager()
				startManager()
			})
			cancelRequest(running)
			Expect(jobGone(running)(Default)).To(BeFalse(), "nothing acts on the cancel while the manager is down")
			startManager()

			Eventually(phase(running)).Should(Equal(inferencev1alpha1.PhaseCanceled))
			Eventually(jobGone(running)).Should(BeTrue())
			Eventually(phase(waiting)).Should(Equal(inferencev1alpha1.PhaseRunning))
		})
	})

	Describe("priority", func() {
		It("starts a high-priority request submitted last first", func() {
			model("default", func(w *testutil.InferenceModelWrapper) { w.MaxConcurrency(1).MaxPriority(10) })
			first := submit(testutil.MakeInferenceRequest("first", ns))
			Eventually(phase(first)).Should(Equal(inferencev1alpha1.PhaseRunning))
			low := []*inferencev1alpha1.InferenceRequest{
				submit(testutil.MakeInferenceRequest("low-a", ns)),
				submit(testutil.MakeInferenceRequest("low-b", ns)),
			}
			// A second later, so that age alone would put it last.
			time.Sleep(time.Second)
			urgent := submit(testutil.MakeInferenceRequest("urgent", ns).Priority(5))
			Eventually(phase(urgent)).Should(Equal(inferencev1alpha1.PhaseQueued))
			ahead, length, waiting := queueIndex.Position(get(urgent)(Default))
			Expect([]any{ahead, length, waiting}).To(Equal([]any{0, 3, true}))

			Expect(testutil.CompleteJob(ctx, k8sClient, job(first), `"OK"`)).To(Succeed())
			Eventually(phase(urgent)).Should(Equal(inferencev1alpha1.PhaseRunning))
			for _, ir := range low {
				Expect(phase(ir)(Default)).To(Equal(inferencev1alpha1.PhaseQueued))
			}
			Expect(testutil.CompleteJob(ctx, k8sClient, job(urgent), `"OK"`)).To(Succeed())
			Eventually(phase(low[0])).Should(Equal(inferencev1alpha1.PhaseRunning))
			Expect(phase(low[1])(Default)).To(Equal(inferencev1alpha1.PhaseQueued))
		})

		It("fails a request whose priority is above its model's maxPriority", func() {
			// Created before its model, the request passes admission; the
			// controller holds it to the model once it exists.
			ir := submit(testutil.MakeInferenceRequest("greedy", ns).Model("late").Priority(3))
			model("late", func(w *testutil.InferenceModelWrapper) { w.MaxPriority(2) })
			Eventually(complete(ir)).Should(SatisfyAll(
				HaveField("Reason", inferencev1alpha1.ReasonPriorityNotAllowed),
				HaveField("Message", "spec.priority 3 is above the maxPriority of model late (2)")))
			Expect(jobGone(ir)(Default)).To(BeTrue())
		})
	})

	Describe("redelivery", func() {
		It("delivers again after the schedule ran out, with the same webhook-id and attempts from one", func() {
			receiver := testutil.NewReceiver(testutil.Answer(http.StatusInternalServerError), testutil.Answer(http.StatusOK))
			defer receiver.Close()
			model("default", func(w *testutil.InferenceModelWrapper) { w.RetrySchedule() })
			ir := submit(testutil.MakeInferenceRequest("redeliver", ns).Callback(receiver.URL))
			Expect(testutil.CompleteJob(ctx, k8sClient, job(ir), `"OK"`)).To(Succeed())
			Eventually(func(g Gomega) inferencev1alpha1.DeliveryState { return get(ir)(g).Status.Delivery.State }).
				Should(Equal(inferencev1alpha1.DeliveryFailed))

			Expect(updateRequest(ir, false, func(r *inferencev1alpha1.InferenceRequest) {
				r.Annotations = map[string]string{inferencev1alpha1.AnnotationRedeliver: "1"}
			})).To(Succeed())
			Eventually(func(g Gomega) inferencev1alpha1.DeliveryStatus { return get(ir)(g).Status.Delivery }).Should(SatisfyAll(
				HaveField("State", inferencev1alpha1.DeliveryDelivered), HaveField("Attempts", BeEquivalentTo(1)),
				HaveField("ObservedRedeliver", "1")))
			calls := receiver.Calls()
			Expect(calls).To(HaveLen(2))
			Expect(calls[1].Header.Get("webhook-id")).To(Equal(calls[0].Header.Get("webhook-id")))
			Expect(calls[1].Body).To(MatchJSON(calls[0].Body))
			// Normal Events of one reconcile fold into one, which tells both
			// the redelivery and its outcome.
			Eventually(events(ir)).Should(ContainElement(HaveField("Note", SatisfyAll(
				ContainSubstring("Redelivery asked for; the previous delivery ended Failed after 1 attempts (RetriesExhausted"),
				ContainSubstring("callback delivered on attempt 1")))))

			By("the same value again: nothing more is sent")
			Expect(updateRequest(ir, false, func(r *inferencev1alpha1.InferenceRequest) { r.Labels = map[string]string{"x": "y"} })).
				To(Succeed())
			Consistently(receiver.Calls, "2s").Should(HaveLen(2))
		})
	})
})
