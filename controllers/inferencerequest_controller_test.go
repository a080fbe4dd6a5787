package controllers

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/onsi/gomega/types"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/callback"
	"github.com/kinfer/kinfer/internal/testutil"
	"github.com/kinfer/kinfer/pkg/worker"
)

// The controller's specs play the Job controller and kubelet with the
// testutil helpers, and the client's receiver with testutil.Receiver.
var _ = Describe("InferenceRequest controller", func() {
	var ns string

	BeforeEach(func() {
		ns = newNamespace()
	})

	createModel := func(name string, mutate func(*testutil.InferenceModelWrapper)) *inferencev1alpha1.InferenceModel {
		GinkgoHelper()
		w := testutil.MakeInferenceModel(name, ns, workerImage)
		if mutate != nil {
			mutate(w)
		}
		Expect(k8sClient.Create(ctx, w.Obj())).To(Succeed())
		// The manager writes a model's status once its cache holds the
		// model: from then on a request finds it at its first reconcile.
		Eventually(func(g Gomega) inferencev1alpha1.ModelMode {
			got := &inferencev1alpha1.InferenceModel{}
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(w.Obj()), got)).To(Succeed())
			return got.Status.Mode
		}).ShouldNot(BeEmpty())
		return w.Obj()
	}
	createRequest := func(w *testutil.InferenceRequestWrapper) *inferencev1alpha1.InferenceRequest {
		GinkgoHelper()
		Expect(k8sClient.Create(ctx, w.Obj())).To(Succeed())
		return w.Obj()
	}
	request := func(ir *inferencev1alpha1.InferenceRequest) func(Gomega) *inferencev1alpha1.InferenceRequest {
		return func(g Gomega) *inferencev1alpha1.InferenceRequest {
			got := &inferencev1alpha1.InferenceRequest{}
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(ir), got)).To(Succeed())
			return got
		}
	}
	phaseOf := func(ir *inferencev1alpha1.InferenceRequest) func(Gomega) inferencev1alpha1.RequestPhase {
		return func(g Gomega) inferencev1alpha1.RequestPhase { return request(ir)(g).Status.Phase }
	}
	deliveryOf := func(ir *inferencev1alpha1.InferenceRequest) func(Gomega) inferencev1alpha1.DeliveryStatus {
		return func(g Gomega) inferencev1alpha1.DeliveryStatus { return request(ir)(g).Status.Delivery }
	}
	jobOf := func(ir *inferencev1alpha1.InferenceRequest) *batchv1.Job {
		GinkgoHelper()
		job := &batchv1.Job{}
		Eventually(func() error { return k8sClient.Get(ctx, client.ObjectKeyFromObject(ir), job) }).Should(Succeed())
		return job
	}
	eventNotes := func(ir *inferencev1alpha1.InferenceRequest) func(Gomega) map[string]string {
		return func(g Gomega) map[string]string {
			var list eventsv1.EventList
			g.Expect(k8sClient.List(ctx, &list, client.InNamespace(ir.Namespace))).To(Succeed())
			notes := map[string]string{}
			for _, e := range list.Items {
				if e.Regarding.Name == ir.Name {
					notes[e.Reason] = e.Note
				}
			}
			return notes
		}
	}
	eventReasons := func(ir *inferencev1alpha1.InferenceRequest) func(Gomega) []string {
		return func(g Gomega) []string {
			var list eventsv1.EventList
			g.Expect(k8sClient.List(ctx, &list, client.InNamespace(ir.Namespace))).To(Succeed())
			var reasons []string
			for _, e := range list.Items {
				if e.Regarding.Name == ir.Name {
					reasons = append(reasons, e.Reason)
				}
			}
			return reasons
		}
	}

	It("runs a request as a Job and delivers its signed result", func() {
		secret := "whsec_" + base64.StdEncoding.EncodeToString([]byte("a-signing-key-of-32-bytes-long!!"))
		Expect(k8sClient.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "kinfer-webhook", Namespace: ns,
				Labels: map[string]string{inferencev1alpha1.LabelSigningKey: "true"}},
			StringData: map[string]string{"secret": secret},
		})).To(Succeed())
		createModel("default", func(w *testutil.InferenceModelWrapper) {
			w.Timeout(600).MaxRetries(3).SigningSecret("kinfer-webhook", "").
				TemplateLabel("team", "ml").TemplateAnnotation("example.com/owner", "ml-team")
		})
		receiver := testutil.NewReceiver()
		defer receiver.Close()
		ir := createRequest(testutil.MakeInferenceRequest("req-1234", ns).ID("1234").
			Callback(receiver.URL + "/v1/results").Input(map[string]any{"text": "great movie"}))

		job := jobOf(ir)
		By("building the Job from the model")
		Expect(metav1.IsControlledBy(job, ir)).To(BeTrue())
		Expect(job.Labels).To(SatisfyAll(HaveKeyWithValue(inferencev1alpha1.LabelRequest, "req-1234"), HaveKeyWithValue(inferencev1alpha1.LabelModel, "default"),
			HaveKeyWithValue("team", "ml")))
		Expect(job.Annotations).To(HaveKeyWithValue("example.com/owner", "ml-team"))
		Expect(job.Spec.ActiveDeadlineSeconds).To(HaveValue(BeEquivalentTo(600)))
		Expect(job.Spec.BackoffLimit).To(HaveValue(BeEquivalentTo(3)))
		Expect(job.Spec.Template.Labels).To(HaveKeyWithValue(inferencev1alpha1.LabelRequest, "req-1234"))
		Expect(job.Spec.Template.Spec.RestartPolicy).To(Equal(corev1.RestartPolicyNever))
		container := job.Spec.Template.Spec.Containers[0]
		Expect(container.TerminationMessagePolicy).To(Equal(corev1.TerminationMessageFallbackToLogsOnError))
		Expect(container.Env).To(ContainElements(
			corev1.EnvVar{Name: worker.EnvRequestID, Value: "1234"},
			corev1.EnvVar{Name: worker.EnvModel, Value: "default"},
			corev1.EnvVar{Name: worker.EnvInput, Value: `{"text":"great movie"}`},
		))
		Expect(job.Spec.PodFailurePolicy.Rules).To(ContainElement(HaveField("OnExitCodes.Values",
			ConsistOf(int32(worker.ExitResultTooLarge), int32(worker.ExitBadInput)))))
		Expect(job.Spec.Suspend).To(Or(BeNil(), HaveValue(BeFalse())))

		Eventually(phaseOf(ir)).Should(Equal(inferencev1alpha1.PhaseRunning))
		Expect(receiver.Calls()).To(BeEmpty())

		By("finishing the Job")
		Expect(testutil.CompleteJob(ctx, k8sClient, job, `{"label": "positive", "score": 0.98}`)).To(Succeed())
		Eventually(deliveryOf(ir)).Should(HaveField("State", inferencev1alpha1.DeliveryDelivered))

		got := request(ir)(Default)
		Expect(got.Status.Phase).To(Equal(inferencev1alpha1.PhaseSucceeded))
		Expect(got.Status.Result.Raw).To(MatchJSON(`{"label":"positive","score":0.98}`))
		Expect(got.Status.JobName).To(Equal("req-1234"))
		Expect(got.Status.StartTime).NotTo(BeNil())
		Expect(got.Status.CompletionTime).NotTo(BeNil())
		Expect(got.Status.ObservedGeneration).To(Equal(got.Generation))
		Expect(got.Status.Delivery.Attempts).To(BeEquivalentTo(1))
		Expect(got.Status.Delivery.LastStatusCode).To(BeEquivalentTo(http.StatusOK))
		Expect(got.Status.Delivery.DeliveredTime).NotTo(BeNil())
		Expect(meta.IsStatusConditionTrue(got.Status.Conditions, inferencev1alpha1.ConditionComplete)).To(BeTrue())
		Expect(meta.IsStatusConditionTrue(got.Status.Conditions, inferencev1alpha1.ConditionDelivered)).To(BeTrue())

		By("sending the body and Standard Webhooks headers")
		calls := receiver.Calls()
		Expect(calls).To(HaveLen(1))
		Expect(calls[0].Body).To(MatchJSON(`{"type":"inference.completed","id":"1234","status":"succeeded",` +
			`"result":{"label":"positive","score":0.98}}`))
		Expect(calls[0].Header.Get("Content-Type")).To(Equal("application/json"))
		Expect(calls[0].Header.Get("webhook-id")).To(Equal(got.Status.Delivery.WebhookID))
		Expect(calls[0].Header.Get("webhook-id")).To(HavePrefix("msg_"))
		Expect(verifyStandardWebhook(secret, calls[0].Header, calls[0].Body)).To(Succeed())

		// Result and delivery came in one reconcile: one Event tells both.
		Eventually(eventNotes(ir)).Should(Equal(map[string]string{
			inferencev1alpha1.ReasonDelivered: "The worker wrote a result; callback delivered on attempt 1"}))
	})

	It("keeps a result that is not JSON as a string", func() {
		createModel("default", nil)
		ir := createRequest(testutil.MakeInferenceRequest("req-text", ns))
		Expect(testutil.CompleteJob(ctx, k8sClient, jobOf(ir), "OK\n")).To(Succeed())
		Eventually(phaseOf(ir)).Should(Equal(inferencev1alpha1.PhaseSucceeded))
		Expect(request(ir)(Default).Status.Result.Raw).To(MatchJSON(`"OK\n"`))
	})

	It("ends a request without a callback as NotRequested", func() {
		createModel("default", nil)
		ir := createRequest(testutil.MakeInferenceRequest("req-poll", ns))
		Eventually(deliveryOf(ir)).Should(HaveField("State", inferencev1alpha1.DeliveryNotRequested))
		Expect(testutil.CompleteJob(ctx, k8sClient, jobOf(ir), `"OK"`)).To(Succeed())
		Eventually(phaseOf(ir)).Should(Equal(inferencev1alpha1.PhaseSucceeded))
		got := request(ir)(Default)
		Expect(got.Status.Delivery.State).To(Equal(inferencev1alpha1.DeliveryNotRequested))
		Expect(got.Status.Delivery.Attempts).To(BeZero())
		Expect(got.Status.Conditions).To(testutil.HaveCondition(inferencev1alpha1.ConditionDelivered, inferencev1alpha1.ReasonNoCallback))
	})

	DescribeTable("fails a request and sends the failure",
		func(reason string, exitCode int32, message, wantReason, wantError string) {
			createModel("default", func(w *testutil.InferenceModelWrapper) { w.Timeout(30) })
			receiver := testutil.NewReceiver()
			defer receiver.Close()
			ir := createRequest(testutil.MakeInferenceRequest("req-fail", ns).ID("77").Callback(receiver.URL))

			Expect(testutil.FailJob(ctx, k8sClient, jobOf(ir), reason, exitCode, message)).To(Succeed())
			Eventually(deliveryOf(ir)).Should(HaveField("State", inferencev1alpha1.DeliveryDelivered))

			got := request(ir)(Default)
			Expect(got.Status.Phase).To(Equal(inferencev1alpha1.PhaseFailed))
			Expect(got.Status.Error).To(ContainSubstring(wantError))
			Expect(got.Status.Conditions).To(testutil.HaveCondition(inferencev1alpha1.ConditionComplete, wantReason,
				HaveField("Status", metav1.ConditionTrue)))

			var body map[string]any
			Expect(json.Unmarshal(receiver.Calls()[0].Body, &body)).To(Succeed())
			Expect(body).To(SatisfyAll(HaveKeyWithValue("id", "77"), HaveKeyWithValue("status", "failed"),
				HaveKeyWithValue("error", got.Status.Error), Not(HaveKey("result"))))
			Eventually(eventReasons(ir)).Should(ContainElement(wantReason))
		},
		Entry("bad input: exit code 42", batchv1.JobReasonPodFailurePolicy, int32(42), "text is empty",
			inferencev1alpha1.ReasonInvalidInput, "text is empty"),
		Entry("a result too large to return: exit code 3", batchv1.JobReasonPodFailurePolicy, int32(3),
			"the result is 5000 bytes of JSON; at most 4096 bytes can be returned",
			inferencev1alpha1.ReasonResultTooLarge, "the result is 5000 bytes of JSON"),
		Entry("every retry failed", batchv1.JobReasonBackoffLimitExceeded, int32(1), "CUDA out of memory",
			inferencev1alpha1.ReasonBackoffLimitExceeded, "CUDA out of memory"),
		Entry("the deadline passed", batchv1.JobReasonDeadlineExceeded, int32(0), "",
			inferencev1alpha1.ReasonDeadlineExceeded, "ran longer than its timeoutSeconds (30)"),
	)

	It("waits for a missing model and proceeds once it exists", func() {
		ir := createRequest(testutil.MakeInferenceRequest("req-early", ns).Model("late"))
		Eventually(func(g Gomega) []metav1.Condition { return request(ir)(g).Status.Conditions }).
			Should(testutil.HaveCondition(inferencev1alpha1.ConditionComplete, inferencev1alpha1.ReasonModelNotFound))
		Expect(request(ir)(Default).Status.Phase).To(Equal(inferencev1alpha1.PhasePending))
		Eventually(eventReasons(ir)).Should(ContainElement(inferencev1alpha1.ReasonModelNotFound))

		createModel("late", nil)
		Eventually(phaseOf(ir)).Should(Equal(inferencev1alpha1.PhaseRunning))
		Expect(jobOf(ir).Labels).To(HaveKeyWithValue(inferencev1alpha1.LabelModel, "late"))
	})

	It("hands a Job with a Kueue queue label to Kueue suspended", func() {
		createModel("default", func(w *testutil.InferenceModelWrapper) { w.TemplateLabel(kueueQueueLabel, "gpu") })
		ir := createRequest(testutil.MakeInferenceRequest("req-kueue", ns))
		job := jobOf(ir)
		Expect(job.Spec.Suspend).To(HaveValue(BeTrue()))
		Expect(job.Spec.Template.Labels).To(HaveKeyWithValue(kueueQueueLabel, "gpu"))
		Eventually(phaseOf(ir)).Should(Equal(inferencev1alpha1.PhaseQueued))
	})

	It("fails a request whose input is over 64 KiB without running it", func() {
		createModel("default", nil)
		ir := createRequest(testutil.MakeInferenceRequest("req-big", ns).Input(strings.Repeat("x", inferencev1alpha1.MaxInputBytes)))
		Eventually(phaseOf(ir)).Should(Equal(inferencev1alpha1.PhaseFailed))
		Expect(request(ir)(Default).Status.Error).To(ContainSubstring("at most 65536"))
		Consistently(func() error {
			return k8sClient.Get(ctx, client.ObjectKeyFromObject(ir), &batchv1.Job{})
		}, "1s").Should(Satisfy(apierrors.IsNotFound))
	})

	It("says why a Running request's pod cannot start, and goes back to running once it does", func() {
		createModel("default", nil)
		ir := createRequest(testutil.MakeInferenceRequest("req-stuck", ns))
		job := jobOf(ir)
		Eventually(phaseOf(ir)).Should(Equal(inferencev1alpha1.PhaseRunning))
		pod, err := testutil.JobPod(ctx, k8sClient, job)
		Expect(err).NotTo(HaveOccurred())
		// setStatus plays the scheduler and the kubelet.
		setStatus := func(status corev1.PodStatus) {
			GinkgoHelper()
			Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
				if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(pod), pod); err != nil {
					return err
				}
				pod.Status = status
				return k8sClient.Status().Update(ctx, pod)
			})).To(Succeed())
		}
		scheduled := []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionTrue}}
		waiting := func(reason, message string) corev1.PodStatus {
			return corev1.PodStatus{Phase: corev1.PodPending, Conditions: scheduled, ContainerStatuses: []corev1.ContainerStatus{{
				Name: "inference", Image: workerImage,
				State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: message}}}}}
		}
		complete := func(g Gomega) metav1.Condition {
			got := request(ir)(g)
			g.Expect(got.Status.Phase).To(Equal(inferencev1alpha1.PhaseRunning))
			c := meta.FindStatusCondition(got.Status.Conditions, inferencev1alpha1.ConditionComplete)
			g.Expect(c).NotTo(BeNil())
			return *c
		}
		podPending := func(message string) types.GomegaMatcher {
			return And(HaveField("Reason", inferencev1alpha1.ReasonPodPending), HaveField("Status", metav1.ConditionFalse),
				HaveField("Message", HavePrefix(message+" (pod "+pod.Name+" of job "+job.Name+"); it may run until about ")))
		}

		By("starting normally: no change")
		version := request(ir)(Default).ResourceVersion
		setStatus(waiting("ContainerCreating", ""))
		Consistently(func(g Gomega) string { return request(ir)(g).ResourceVersion }, "1s").Should(Equal(version))

		By("finding no node for the pod")
		setStatus(corev1.PodStatus{Phase: corev1.PodPending, Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled,
			Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable, Message: "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."}}})
		Eventually(complete, "5s").Should(podPending("Unschedulable: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu."))

		By("failing to pull the image")
		setStatus(waiting("ErrImagePull", `failed to pull image "registry.example/worker:1": not found`))
		Eventually(complete, "5s").Should(podPending(`ErrImagePull: failed to pull image "registry.example/worker:1": not found`))

		By("writing nothing while the pull goes on failing, however the kubelet words it")
		version = request(ir)(Default).ResourceVersion
		setStatus(waiting("ImagePullBackOff", `Back-off pulling image "registry.example/worker:1"`))
		setStatus(waiting("ErrImagePull", `failed to pull image "registry.example/worker:1": i/o timeout`))
		Consistently(func(g Gomega) string { return request(ir)(g).ResourceVersion }, "1s").Should(Equal(version))

		By("saying so when the problem changes")
		setStatus(waiting("CreateContainerConfigError", `secret "hf-token" not found`))
		Eventually(complete, "5s").Should(podPending(`CreateContainerConfigError: secret "hf-token" not found`))

		By("going back to the Running message once the pod runs")
		setStatus(corev1.PodStatus{Phase: corev1.PodRunning, Conditions: scheduled, ContainerStatuses: []corev1.ContainerStatus{{
			Name: "inference", Image: workerImage, Ready: true,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}}}}})
		Eventually(complete, "5s").Should(And(HaveField("Reason", inferencev1alpha1.ReasonJobCreated),
			HaveField("Message", HavePrefix("job req-stuck is running"))))
	})

	It("runs at most maxConcurrency Jobs of a model, oldest request first", func() {
		createModel("default", func(w *testutil.InferenceModelWrapper) { w.MaxConcurrency(1) })
		names := []string{"req-c", "req-a", "req-b"}
		irs := make([]*inferencev1alpha1.InferenceRequest, 0, len(names))
		for _, name := range names {
			ir := createRequest(testutil.MakeInferenceRequest(name, ns))
			irs = append(irs, ir)
			// Creation timestamps have one-second resolution: the next request
			// is created once this one's second is over, so it is younger.
			Eventually(time.Now, "3s").Should(BeTemporally(">=", ir.CreationTimestamp.Add(time.Second)))
		}
		jobs := func(g Gomega) []string {
			var list batchv1.JobList
			g.Expect(k8sClient.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
			created := make([]string, 0, len(list.Items))
			for _, j := range list.Items {
				created = append(created, j.Name)
			}
			return created
		}
		for i, ir := range irs {
			Eventually(jobs).Should(HaveLen(i + 1))
			Consistently(jobs, "1s").Should(HaveLen(i+1), "a second Job ran while %s was running", ir.Name)
			Expect(jobs(Default)).To(ContainElement(ir.Name), "requests must start oldest first")
			for _, waiting := range irs[i+1:] {
				Eventually(phaseOf(waiting)).Should(Equal(inferencev1alpha1.PhaseQueued))
			}
			Expect(testutil.CompleteJob(ctx, k8sClient, jobOf(ir), `"OK"`)).To(Succeed())
			Eventually(phaseOf(ir)).Should(Equal(inferencev1alpha1.PhaseSucceeded))
		}
	})

	It("fails a request whose Job is deleted while it runs, and gives its slot to the next", func() {
		createModel("default", func(w *testutil.InferenceModelWrapper) { w.MaxConcurrency(1) })
		first := createRequest(testutil.MakeInferenceRequest("req-first", ns))
		Eventually(phaseOf(first)).Should(Equal(inferencev1alpha1.PhaseRunning))
		second := createRequest(testutil.MakeInferenceRequest("req-second", ns))
		Eventually(phaseOf(second)).Should(Equal(inferencev1alpha1.PhaseQueued))

		Expect(k8sClient.Delete(ctx, jobOf(first))).To(Succeed())
		Eventually(phaseOf(first)).Should(Equal(inferencev1alpha1.PhaseFailed))
		Expect(request(first)(Default).Status.Conditions).
			To(testutil.HaveCondition(inferencev1alpha1.ConditionComplete, inferencev1alpha1.ReasonJobDeleted))
		Eventually(phaseOf(second)).Should(Equal(inferencev1alpha1.PhaseRunning))
	})

	DescribeTable("fails a request whose Job name is taken by a Job it does not own",
		func(labels map[string]string) {
			createModel("default", nil)
			receiver := testutil.NewReceiver()
			defer receiver.Close()
			foreign := &batchv1.Job{
				ObjectMeta: metav1.ObjectMeta{Name: "req-taken", Namespace: ns, Labels: labels},
				Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
					RestartPolicy: corev1.RestartPolicyNever,
					Containers:    []corev1.Container{{Name: "other", Image: "registry.example/other:1"}},
				}}},
			}
			Expect(k8sClient.Create(ctx, foreign)).To(Succeed())
			ir := createRequest(testutil.MakeInferenceRequest("req-taken", ns).Callback(receiver.URL))

			Eventually(phaseOf(ir)).Should(Equal(inferencev1alpha1.PhaseFailed))
			got := request(ir)(Default)
			Expect(got.Status.Error).To(ContainSubstring("a Job named req-taken exists in namespace " + ns))
			Expect(got.Status.Conditions).To(testutil.HaveCondition(inferencev1alpha1.ConditionComplete, inferencev1alpha1.ReasonJobConflict,
				HaveField("Status", metav1.ConditionTrue)))
			Eventually(deliveryOf(ir)).Should(HaveField("State", inferencev1alpha1.DeliveryDelivered))
			Eventually(eventReasons(ir)).Should(ContainElement(inferencev1alpha1.ReasonJobConflict))
			Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(foreign), foreign)).To(Succeed())
			Expect(foreign.Spec.Template.Spec.Containers[0].Name).To(Equal("other"), "the foreign Job was changed")
		},
		Entry("a Job the cache does not hold", nil),
		Entry("a Job with kinfer's request label", map[string]string{inferencev1alpha1.LabelRequest: "req-taken"}),
	)

	It("deletes a request requestTTLSeconds after it ends", func() {
		createModel("default", func(w *testutil.InferenceModelWrapper) { w.RequestTTL(2) })
		ir := createRequest(testutil.MakeInferenceRequest("req-ttl", ns))
		Expect(testutil.CompleteJob(ctx, k8sClient, jobOf(ir), `"OK"`)).To(Succeed())
		Eventually(phaseOf(ir)).Should(Equal(inferencev1alpha1.PhaseSucceeded))
		ended := time.Now()
		Eventually(func() error {
			return k8sClient.Get(ctx, client.ObjectKeyFromObject(ir), &inferencev1alpha1.InferenceRequest{})
		}, "10s").Should(Satisfy(apierrors.IsNotFound))
		Expect(time.Since(ended)).To(BeNumerically(">=", time.Second), "deleted long before its TTL")
	})

	Describe("delivery", func() {
		// finished creates a request for a model with the given schedule and
		// callback timeout, completes its Job, and returns the request.
		finished := func(url string, timeoutSeconds int32, schedule ...string) *inferencev1alpha1.InferenceRequest {
			GinkgoHelper()
			createModel("default", func(w *testutil.InferenceModelWrapper) {
				w.CallbackTimeout(timeoutSeconds).RetrySchedule(schedule...)
			})
			ir := createRequest(testutil.MakeInferenceRequest("req-"+rand.String(6), ns).ID("1234").Callback(url))
			Expect(testutil.CompleteJob(ctx, k8sClient, jobOf(ir), `"OK"`)).To(Succeed())
			return ir
		}

		It("retries after a 503 on the schedule and delivers", func() {
			receiver := testutil.NewReceiver(testutil.Answer(http.StatusServiceUnavailable), testutil.Answer(http.StatusOK))
			defer receiver.Close()
			ir := finished(receiver.URL, 5, "2s")

			Eventually(deliveryOf(ir)).Should(SatisfyAll(
				HaveField("State", inferencev1alpha1.DeliveryPending), HaveField("Attempts", BeEquivalentTo(1)),
				HaveField("LastStatusCode", BeEquivalentTo(503)), HaveField("NextAttemptTime", Not(BeNil()))))
			Eventually(deliveryOf(ir), "10s").Should(HaveField("State", inferencev1alpha1.DeliveryDelivered))

			calls := receiver.Calls()
			Expect(calls).To(HaveLen(2))
			Expect(calls[1].At.Sub(calls[0].At)).To(BeNumerically(">=", 2*time.Second-100*time.Millisecond))
			Expect(calls[1].Header.Get("webhook-id")).To(Equal(calls[0].Header.Get("webhook-id")))
			Expect(request(ir)(Default).Status.Delivery.Attempts).To(BeEquivalentTo(2))
		})

		It("does not send early when the request is reconciled before its next attempt", func() {
			receiver := testutil.NewReceiver(testutil.Answer(http.StatusServiceUnavailable), testutil.Answer(http.StatusOK))
			defer receiver.Close()
			ir := finished(receiver.URL, 5, "4s")
			Eventually(deliveryOf(ir)).Should(HaveField("Attempts", BeEquivalentTo(1)))

			// Any change to the request brings it back to the reconciler at once.
			Expect(updateRequest(ir, false, func(r *inferencev1alpha1.InferenceRequest) {
				r.Labels = map[string]string{"touched": "yes"}
			})).To(Succeed())
			Consistently(receiver.Calls, "2s").Should(HaveLen(1))
			Eventually(deliveryOf(ir), "10s").Should(HaveField("State", inferencev1alpha1.DeliveryDelivered))
		})

		It("waits for Retry-After when it is longer than the schedule", func() {
			receiver := testutil.NewReceiver(testutil.Answer(http.StatusTooManyRequests, "Retry-After", "3"), testutil.Answer(http.StatusOK))
			defer receiver.Close()
			ir := finished(receiver.URL, 5, "100ms")

			Eventually(deliveryOf(ir), "10s").Should(HaveField("State", inferencev1alpha1.DeliveryDelivered))
			calls := receiver.Calls()
			Expect(calls).To(HaveLen(2))
			Expect(calls[1].At.Sub(calls[0].At)).To(BeNumerically(">=", 3*time.Second-100*time.Millisecond))
		})

		It("stops at a 410 Gone", func() {
			receiver := testutil.NewReceiver(testutil.Answer(http.StatusGone))
			defer receiver.Close()
			ir := finished(receiver.URL, 5, "100ms", "100ms")

			Eventually(deliveryOf(ir)).Should(HaveField("State", inferencev1alpha1.DeliveryFailed))
			Consistently(receiver.Calls, "1s").Should(HaveLen(1))
			got := request(ir)(Default)
			Expect(got.Status.Conditions).To(testutil.HaveCondition(inferencev1alpha1.ConditionDelivered, inferencev1alpha1.ReasonGone))
			Expect(got.Status.Result.Raw).To(MatchJSON(`"OK"`), "the result stays readable")
		})

		It("gives up when the schedule is used up", func() {
			receiver := testutil.NewReceiver(testutil.Answer(http.StatusInternalServerError))
			defer receiver.Close()
			ir := finished(receiver.URL, 5, "100ms", "200ms")

			Eventually(deliveryOf(ir), "10s").Should(SatisfyAll(
				HaveField("State", inferencev1alpha1.DeliveryFailed), HaveField("Attempts", BeEquivalentTo(3))))
			Consistently(receiver.Calls, "1s").Should(HaveLen(3))
			got := request(ir)(Default)
			Expect(got.Status.Conditions).To(testutil.HaveCondition(inferencev1alpha1.ConditionDelivered, inferencev1alpha1.ReasonRetriesExhausted))
			Expect(got.Status.Delivery.LastError).To(ContainSubstring("500"))
			Eventually(eventReasons(ir)).Should(ContainElement(inferencev1alpha1.ReasonRetriesExhausted))
		})

		It("abandons an attempt that gets no answer within the timeout", func() {
			release := make(chan struct{})
			receiver := testutil.NewReceiver(func(w http.ResponseWriter, r *http.Request) {
				select {
				case <-r.Context().Done():
				case <-release:
				}
			})
			defer receiver.Close()
			defer close(release)
			ir := finished(receiver.URL, 1, "1h")

			Eventually(deliveryOf(ir), "10s").Should(SatisfyAll(
				HaveField("State", inferencev1alpha1.DeliveryPending), HaveField("Attempts", BeEquivalentTo(1)),
				HaveField("LastStatusCode", BeZero()), HaveField("LastError", Equal("timed out after 1s"))))
		})

		It("does not follow redirects", func() {
			target := testutil.NewReceiver()
			defer target.Close()
			receiver := testutil.NewReceiver(func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, target.URL, http.StatusFound)
			})
			defer receiver.Close()
			ir := finished(receiver.URL, 5)

			Eventually(deliveryOf(ir)).Should(SatisfyAll(
				HaveField("State", inferencev1alpha1.DeliveryFailed), HaveField("Attempts", BeEquivalentTo(1)),
				HaveField("LastStatusCode", BeEquivalentTo(http.StatusFound))))
			Expect(target.Calls()).To(BeEmpty())
		})

		DescribeTable("refuses denied addresses at once",
			func(url func(port string) string) {
				receiver := testutil.NewReceiver()
				defer receiver.Close()
				port := receiver.URL[strings.LastIndex(receiver.URL, ":")+1:]
				ir := finished(url(port), 2, "1h")

				Eventually(deliveryOf(ir)).Should(SatisfyAll(
					HaveField("State", inferencev1alpha1.DeliveryFailed), HaveField("Attempts", BeEquivalentTo(1)),
					HaveField("LastError", Equal(callback.FailureAddressNotAllowed))))
				Expect(request(ir)(Default).Status.Conditions).To(testutil.HaveCondition(inferencev1alpha1.ConditionDelivered,
					inferencev1alpha1.ReasonCallbackDenied, HaveField("Message", Not(MatchRegexp(ipAddressPattern)))))
				Eventually(eventNotes(ir)).Should(HaveKeyWithValue(inferencev1alpha1.ReasonCallbackDenied,
					Not(MatchRegexp(ipAddressPattern))))
				Expect(receiver.Calls()).To(BeEmpty())
			},
			Entry("loopback outside the allowed range", func(port string) string { return "http://127.0.0.1:" + port }),
			Entry("a name resolving to loopback", func(port string) string { return "http://localhost:" + port }),
			Entry("cloud metadata", func(string) string { return "http://169.254.169.254/latest/meta-data/" }),
			Entry("a private address", func(string) string { return "http://10.0.0.1:8001/v1/results" }),
		)

		It("says a name was not found without naming the resolver", func() {
			ir := finished("http://does-not-exist.invalid/v1/results", 2, "1h")

			Eventually(deliveryOf(ir), "10s").Should(SatisfyAll(
				HaveField("State", inferencev1alpha1.DeliveryPending), HaveField("Attempts", BeEquivalentTo(1)),
				HaveField("LastError", HavePrefix("host name ")), HaveField("LastError", Not(MatchRegexp(ipAddressPattern)))))
			Expect(meta.FindStatusCondition(request(ir)(Default).Status.Conditions, inferencev1alpha1.ConditionDelivered).Message).
				To(ContainSubstring("host name "))
		})

		It("signs only with a Secret labelled as a signing key, and sends nothing unsigned", func() {
			secret := "whsec_" + base64.StdEncoding.EncodeToString([]byte("another-team's-key-of-32-bytes!!"))
			signingSecret := &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: "other-team-webhook", Namespace: ns},
				StringData: map[string]string{"secret": secret},
			}
			Expect(k8sClient.Create(ctx, signingSecret)).To(Succeed())
			schedule := make([]string, 30)
			for i := range schedule {
				schedule[i] = "1s"
			}
			createModel("default", func(w *testutil.InferenceModelWrapper) {
				w.SigningSecret(signingSecret.Name, "").CallbackTimeout(5).RetrySchedule(schedule...)
			})
			receiver := testutil.NewReceiver()
			defer receiver.Close()
			ir := createRequest(testutil.MakeInferenceRequest("req-signed", ns).Callback(receiver.URL))
			Expect(testutil.CompleteJob(ctx, k8sClient, jobOf(ir), `"OK"`)).To(Succeed())

			By("failing each attempt, and saying why, while the Secret is not labelled")
			Eventually(func(g Gomega) {
				got := request(ir)(g)
				g.Expect(got.Status.Delivery).To(SatisfyAll(
					HaveField("State", inferencev1alpha1.DeliveryPending), HaveField("Attempts", BeNumerically(">=", 2)),
					HaveField("LastError", ContainSubstring(inferencev1alpha1.LabelSigningKey))))
				g.Expect(got.Status.Conditions).To(testutil.HaveCondition(inferencev1alpha1.ConditionDelivered,
					inferencev1alpha1.ReasonSigningSecretUnreadable, HaveField("Message", ContainSubstring(inferencev1alpha1.LabelSigningKey))))
			}, "10s").Should(Succeed())
			Expect(receiver.Calls()).To(BeEmpty(), "a callback was sent without the signature the model asks for")

			By("delivering, signed, once an admin labels the Secret")
			Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
				if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(signingSecret), signingSecret); err != nil {
					return err
				}
				signingSecret.Labels = map[string]string{inferencev1alpha1.LabelSigningKey: "true"}
				return k8sClient.Update(ctx, signingSecret)
			})).To(Succeed())
			Eventually(deliveryOf(ir), "10s").Should(HaveField("State", inferencev1alpha1.DeliveryDelivered))
			calls := receiver.Calls()
			Expect(calls).To(HaveLen(1))
			Expect(verifyStandardWebhook(secret, calls[0].Header, calls[0].Body)).To(Succeed())
		})

		It("signs with every ed25519 key in the Secret as v1a", func() {
			oldSeed, newSeed := sha256.Sum256([]byte("old "+ns)), sha256.Sum256([]byte("new "+ns))
			oldKey, newKey := ed25519.NewKeyFromSeed(oldSeed[:]), ed25519.NewKeyFromSeed(newSeed[:])
			Expect(k8sClient.Create(ctx, &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: "kinfer-webhook", Namespace: ns,
					Labels: map[string]string{inferencev1alpha1.LabelSigningKey: "true"}},
				// The seed alone, and the seed with its public key: both are whsk_ keys.
				StringData: map[string]string{"secret": "whsk_" + base64.StdEncoding.EncodeToString(oldSeed[:]) +
					" whsk_" + base64.StdEncoding.EncodeToString(newKey)},
			})).To(Succeed())
			createModel("default", func(w *testutil.InferenceModelWrapper) { w.SigningSecret("kinfer-webhook", "") })
			receiver := testutil.NewReceiver()
			defer receiver.Close()
			ir := createRequest(testutil.MakeInferenceRequest("req-v1a", ns).Callback(receiver.URL))
			Expect(testutil.CompleteJob(ctx, k8sClient, jobOf(ir), `"OK"`)).To(Succeed())

			Eventually(deliveryOf(ir)).Should(HaveField("State", inferencev1alpha1.DeliveryDelivered))
			calls := receiver.Calls()
			Expect(calls).To(HaveLen(1))
			Expect(strings.Fields(calls[0].Header.Get("webhook-signature"))).To(HaveExactElements(
				HavePrefix("v1a,"), HavePrefix("v1a,")))
			public := []ed25519.PublicKey{oldKey.Public().(ed25519.PublicKey), newKey.Public().(ed25519.PublicKey)}
			Expect(verifyEd25519Webhook(public, calls[0].Header, calls[0].Body)).To(Succeed())
			other := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize)).Public().(ed25519.PublicKey)
			Expect(verifyEd25519Webhook([]ed25519.PublicKey{other}, calls[0].Header, calls[0].Body)).NotTo(Succeed())
		})
	})

	Describe("across a manager restart", func() {
		AfterEach(func() {
			stopManager()
			startManager()
		})

		It("never creates a second Job", func() {
			createModel("default", nil)
			ir := createRequest(testutil.MakeInferenceRequest("req-restart", ns))
			first := jobOf(ir)
			Eventually(phaseOf(ir)).Should(Equal(inferencev1alpha1.PhaseRunning))

			stopManager()
			startManager()

			Consistently(func(g Gomega) {
				var list batchv1.JobList
				g.Expect(k8sClient.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
				g.Expect(list.Items).To(HaveLen(1))
				g.Expect(list.Items[0].UID).To(Equal(first.UID))
			}, "2s").Should(Succeed())
			Expect(testutil.CompleteJob(ctx, k8sClient, jobOf(ir), `"OK"`)).To(Succeed())
			Eventually(phaseOf(ir)).Should(Equal(inferencev1alpha1.PhaseSucceeded))
		})

		It("keeps the time and count of the next delivery attempt", func() {
			receiver := testutil.NewReceiver(testutil.Answer(http.StatusServiceUnavailable), testutil.Answer(http.StatusOK))
			defer receiver.Close()
			createModel("default", func(w *testutil.InferenceModelWrapper) { w.RetrySchedule("4s") })
			ir := createRequest(testutil.MakeInferenceRequest("req-resched", ns).Callback(receiver.URL))
			Expect(testutil.CompleteJob(ctx, k8sClient, jobOf(ir), `"OK"`)).To(Succeed())
			Eventually(deliveryOf(ir)).Should(HaveField("Attempts", BeEquivalentTo(1)))
			scheduled := request(ir)(Default).Status.Delivery.NextAttemptTime.Time

			stopManager()
			startManager()

			Eventually(deliveryOf(ir), "10s").Should(SatisfyAll(
				HaveField("State", inferencev1alpha1.DeliveryDelivered), HaveField("Attempts", BeEquivalentTo(2))))
			calls := receiver.Calls()
			Expect(calls).To(HaveLen(2))
			// Status times have one-second resolution.
			Expect(calls[1].At).To(BeTemporally(">=", scheduled.Add(-time.Second)), "the restarted manager sent early")
		})
	})
})

// verifyStandardWebhook checks a delivery with the official Standard Webhooks
// library for Go, as receivers do: the timestamp is recent, and one of the v1
// signatures is that of the whsec_ secret.
func verifyStandardWebhook(secret string, header http.Header, body []byte) error {
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		return err
	}
	return wh.Verify(body, header)
}

// verifyEd25519Webhook checks a delivery's v1a signatures with crypto/ed25519,
// as a receiver holding only public keys does: each of public (whpk_ keys)
// must verify one of them, over "{webhook-id}.{webhook-timestamp}.{body}".
func verifyEd25519Webhook(public []ed25519.PublicKey, header http.Header, body []byte) error {
	signed := []byte(header.Get("webhook-id") + "." + header.Get("webhook-timestamp") + "." + string(body))
	var signatures [][]byte
	for _, entry := range strings.Fields(header.Get("webhook-signature")) {
		if version, encoded, _ := strings.Cut(entry, ","); version == "v1a" {
			sig, err := base64.StdEncoding.DecodeString(encoded)
			if err != nil {
				return fmt.Errorf("v1a entry %q is not base64", entry)
			}
			signatures = append(signatures, sig)
		}
	}
	for i, key := range public {
		if !slices.ContainsFunc(signatures, func(sig []byte) bool { return ed25519.Verify(key, signed, sig) }) {
			return fmt.Errorf("no v1a signature in %q verifies with public key %d", header.Get("webhook-signature"), i+1)
		}
	}
	return nil
}
