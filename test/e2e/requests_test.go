package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
)

// jobPods lists the pods the Job controller made for a Job.
func jobPods(g Gomega, namespace, job string) []corev1.Pod {
	var pods corev1.PodList
	g.Expect(k8sClient.List(ctx, &pods, client.InNamespace(namespace),
		client.MatchingLabels{batchv1.JobNameLabel: job})).To(Succeed())
	return pods.Items
}

func jobCondition(job *batchv1.Job, t batchv1.JobConditionType) *batchv1.JobCondition {
	for i := range job.Status.Conditions {
		if job.Status.Conditions[i].Type == t && job.Status.Conditions[i].Status == corev1.ConditionTrue {
			return &job.Status.Conditions[i]
		}
	}
	return nil
}

var _ = Describe("A request on the local cluster", func() {
	It("runs the original service's request, calls back with its result, and is cleaned up after its TTL", func() {
		ns := newNamespace()
		Expect(k8sClient.Create(ctx, sleepModel(ns, "--delay=2s").RequestTTL(5).Obj())).To(Succeed())
		receiver := testutil.NewReceiver()
		defer receiver.Close()

		code, answer := submit(ns, map[string]any{"id": "1234", "callback_url": receiver.URL + "/v1/results"})
		Expect(code).To(Equal(http.StatusAccepted), "%v", answer)
		Expect(answer).To(HaveKeyWithValue("message", "Received"))
		Expect(answer).To(HaveKeyWithValue("id", "1234"))

		By("receiving the callback with the id and the worker's result")
		Eventually(func() map[string][]map[string]any { return callbacks(receiver) }, "60s", "200ms").
			Should(HaveKeyWithValue("1234", ConsistOf(And(
				HaveKeyWithValue("status", "succeeded"), HaveKeyWithValue("result", "OK")))))
		call := receiver.Calls()[0]
		Expect(call.Header.Get("webhook-id")).NotTo(BeEmpty())

		By("recording the request as Succeeded and Delivered")
		ir := delivered(ns, "1234")
		Expect(ir.Status.Phase).To(Equal(inferencev1alpha1.PhaseSucceeded))
		Expect(ir.Status.Result.Raw).To(MatchJSON(`"OK"`))

		By("having run a real Job whose pod ran on the local node")
		job := &batchv1.Job{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: ir.Status.JobName}, job)).To(Succeed())
		Expect(jobCondition(job, batchv1.JobComplete)).NotTo(BeNil())
		pods := jobPods(Default, ns, job.Name)
		Expect(pods).To(HaveLen(1))
		Expect(pods[0].Spec.NodeName).To(Equal("local-node"))
		Expect(pods[0].Status.Phase).To(Equal(corev1.PodSucceeded))

		By("deleting the request after requestTTLSeconds, and its Job and pod through the garbage collector")
		Eventually(func() bool {
			err := k8sClient.Get(ctx, client.ObjectKeyFromObject(ir), &inferencev1alpha1.InferenceRequest{})
			return apierrors.IsNotFound(err)
		}, "30s", "250ms").Should(BeTrue())
		Eventually(func() bool {
			return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(job), &batchv1.Job{}))
		}, "60s", "250ms").Should(BeTrue(), "the Job outlived its request")
		Eventually(func(g Gomega) []corev1.Pod { return jobPods(g, ns, job.Name) }, "60s", "250ms").
			Should(BeEmpty(), "the pod outlived its Job")
	})

	It("reports a failing worker's message in status and in the callback", func() {
		ns := newNamespace()
		Expect(k8sClient.Create(ctx, shellModel(ns,
			`echo "the model weights are corrupt" >"$KINFER_RESULT_PATH"; exit 1`).MaxRetries(1).Obj())).To(Succeed())
		receiver := testutil.NewReceiver()
		defer receiver.Close()

		code, _ := submit(ns, map[string]any{"id": "broken", "callback_url": receiver.URL})
		Expect(code).To(Equal(http.StatusAccepted))

		Eventually(func() map[string][]map[string]any { return callbacks(receiver) }, "60s", "200ms").
			Should(HaveKeyWithValue("broken", ConsistOf(And(HaveKeyWithValue("status", "failed"),
				HaveKeyWithValue("error", ContainSubstring("the model weights are corrupt"))))))
		ir := delivered(ns, "broken")
		Expect(ir.Status.Phase).To(Equal(inferencev1alpha1.PhaseFailed))
		Expect(completeReason(ir)).To(Equal(inferencev1alpha1.ReasonBackoffLimitExceeded))
		Expect(ir.Status.Error).To(ContainSubstring("the model weights are corrupt"))
		By("having retried once, as maxRetries says")
		Expect(jobPods(Default, ns, ir.Status.JobName)).To(HaveLen(2))
	})

	It("returns a result over the 4 KiB of a termination message through the work API", func() {
		ns := newNamespace()
		Expect(k8sClient.Create(ctx, testutil.MakeInferenceModel("default", ns, echoImage).Obj())).To(Succeed())
		receiver := testutil.NewReceiver()
		defer receiver.Close()
		input := map[string]any{"text": strings.Repeat("a large result ", 2000)}

		code, answer := submit(ns, map[string]any{"id": "large", "callback_url": receiver.URL, "input": input})
		Expect(code).To(Equal(http.StatusAccepted), "%v", answer)

		Eventually(func() map[string][]map[string]any { return callbacks(receiver) }, "60s", "200ms").
			Should(HaveKeyWithValue("large", ConsistOf(And(HaveKeyWithValue("status", "succeeded"),
				HaveKeyWithValue("result", input)))))
		ir := delivered(ns, "large")
		Expect(len(ir.Status.Result.Raw)).To(BeNumerically(">", 30000))
		Expect(ir.Status.JobName).NotTo(BeEmpty(), "it ran in a Job of its own")
	})

	It("does not retry a worker that refuses its input with exit code 42", func() {
		ns := newNamespace()
		Expect(k8sClient.Create(ctx, shellModel(ns,
			`echo "input.text is required" >"$KINFER_RESULT_PATH"; exit 42`).MaxRetries(3).Obj())).To(Succeed())
		receiver := testutil.NewReceiver()
		defer receiver.Close()

		code, _ := submit(ns, map[string]any{"id": "bad-input", "callback_url": receiver.URL, "input": map[string]any{}})
		Expect(code).To(Equal(http.StatusAccepted))

		Eventually(func() map[string][]map[string]any { return callbacks(receiver) }, "60s", "200ms").
			Should(HaveKeyWithValue("bad-input", ConsistOf(And(HaveKeyWithValue("status", "failed"),
				HaveKeyWithValue("error", ContainSubstring("input.text is required"))))))
		ir := delivered(ns, "bad-input")
		Expect(completeReason(ir)).To(Equal(inferencev1alpha1.ReasonInvalidInput))
		job := &batchv1.Job{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: ir.Status.JobName}, job)).To(Succeed())
		Expect(jobCondition(job, batchv1.JobFailed)).To(HaveField("Reason", batchv1.JobReasonPodFailurePolicy))
		Expect(jobPods(Default, ns, job.Name)).To(HaveLen(1), "a refused input was retried")
	})

	It("does not retry a worker whose result is too large to return (exit code 3)", func() {
		ns := newNamespace()
		Expect(k8sClient.Create(ctx, shellModel(ns,
			`echo "the result is 9000 bytes of JSON; at most 4096 bytes can be returned" >"$KINFER_RESULT_PATH"; exit 3`).
			MaxRetries(3).Obj())).To(Succeed())
		receiver := testutil.NewReceiver()
		defer receiver.Close()

		code, _ := submit(ns, map[string]any{"id": "too-large", "callback_url": receiver.URL})
		Expect(code).To(Equal(http.StatusAccepted))

		Eventually(func() map[string][]map[string]any { return callbacks(receiver) }, "60s", "200ms").
			Should(HaveKeyWithValue("too-large", ConsistOf(And(HaveKeyWithValue("status", "failed"),
				HaveKeyWithValue("error", ContainSubstring("at most 4096 bytes can be returned"))))))
		ir := delivered(ns, "too-large")
		Expect(completeReason(ir)).To(Equal(inferencev1alpha1.ReasonResultTooLarge))
		job := &batchv1.Job{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: ir.Status.JobName}, job)).To(Succeed())
		Expect(jobCondition(job, batchv1.JobFailed)).To(HaveField("Reason", batchv1.JobReasonPodFailurePolicy))
		Expect(jobPods(Default, ns, job.Name)).To(HaveLen(1), "a result too large to return was retried")
	})

	It("says why a request whose image the node cannot pull is stuck, in status and in the shim's GET", func() {
		ns := newNamespace()
		const image = "registry.example/not-on-this-node:1"
		Expect(k8sClient.Create(ctx, testutil.MakeInferenceModel("default", ns, image).Obj())).To(Succeed())
		receiver := testutil.NewReceiver()
		defer receiver.Close()

		code, answer := submit(ns, map[string]any{"id": "stuck", "callback_url": receiver.URL})
		Expect(code).To(Equal(http.StatusAccepted), "%v", answer)

		By("showing the pod's reason in the Complete condition while the request is Running")
		pulling := MatchRegexp(`^(ErrImagePull|ImagePullBackOff): .*` + regexp.QuoteMeta(image))
		Eventually(func(g Gomega) {
			ir := request(ns, "stuck")(g)
			g.Expect(ir.Status.Phase).To(Equal(inferencev1alpha1.PhaseRunning))
			g.Expect(ir.Status.Conditions).To(ContainElement(And(
				HaveField("Type", inferencev1alpha1.ConditionComplete),
				HaveField("Reason", inferencev1alpha1.ReasonPodPending), HaveField("Message", pulling))))
		}, "60s", "200ms").Should(Succeed())

		By("answering GET with the same reason and message")
		req, err := http.NewRequest(http.MethodGet, "http://"+shimAddr+"/v1/namespaces/"+ns+"/inferences/stuck", nil)
		Expect(err).NotTo(HaveOccurred())
		req.Header.Set("Authorization", "Bearer "+clientToken)
		resp, err := http.DefaultClient.Do(req)
		Expect(err).NotTo(HaveOccurred())
		defer func() { _ = resp.Body.Close() }()
		Expect(resp.StatusCode).To(Equal(http.StatusOK))
		got := map[string]any{}
		Expect(json.NewDecoder(resp.Body).Decode(&got)).To(Succeed())
		Expect(got).To(SatisfyAll(HaveKeyWithValue("phase", "Running"),
			HaveKeyWithValue("reason", inferencev1alpha1.ReasonPodPending), HaveKeyWithValue("message", pulling)))

		By("canceling it, which ends the wait")
		code, answer = post("http://"+shimAddr+"/v1/namespaces/"+ns+"/inferences/stuck/cancel", clientToken, nil)
		Expect(code).To(Equal(http.StatusAccepted), "%v", answer)
		Eventually(func() map[string][]map[string]any { return callbacks(receiver) }, "30s", "200ms").
			Should(HaveKeyWithValue("stuck", ConsistOf(HaveKeyWithValue("status", "canceled"))))
		Expect(delivered(ns, "stuck").Status.Phase).To(Equal(inferencev1alpha1.PhaseCanceled))
	})

	It("gives the worker a client's input and id byte for byte, never expanding them from the model's secrets", func() {
		ns := newNamespace()
		const token = "s3cret-token-value"
		Expect(k8sClient.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "model-credentials", Namespace: ns},
			StringData: map[string]string{"token": token},
		})).To(Succeed())
		Expect(k8sClient.Create(ctx, testutil.MakeInferenceModel("default", ns, echoImage).Containers(corev1.Container{
			Name: "inference", Image: echoImage, Args: []string{"--request"},
			Env: []corev1.EnvVar{{Name: "SECRET_TOKEN", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
				LocalObjectReference: corev1.LocalObjectReference{Name: "model-credentials"}, Key: "token"}}}},
		}).Obj())).To(Succeed())
		receiver := testutil.NewReceiver()
		defer receiver.Close()

		sent := map[string]string{ // id -> input
			"secret-in-input":            "$(SECRET_TOKEN)",
			"dollars-in-input":           "$$5",
			"id-$(SECRET_TOKEN)-$$-$(X)": "plain",
		}
		for id, input := range sent {
			code, answer := submit(ns, map[string]any{"id": id, "callback_url": receiver.URL, "input": input})
			Expect(code).To(Equal(http.StatusAccepted), "%v", answer)
		}

		By("answering each request with exactly the id and input the client sent")
		Eventually(func() map[string][]map[string]any { return callbacks(receiver) }, "60s", "200ms").Should(HaveLen(len(sent)))
		for id, input := range sent {
			ir := delivered(ns, id)
			Expect(ir.Status.Phase).To(Equal(inferencev1alpha1.PhaseSucceeded), "request %q: %s", id, ir.Status.Error)
			var result struct{ ID, Model, Input string }
			Expect(json.Unmarshal(ir.Status.Result.Raw, &result)).To(Succeed(), "result %s", ir.Status.Result.Raw)
			Expect(result.ID).To(Equal(id))
			Expect(result.Input).To(Equal(input))
			Expect(string(ir.Status.Result.Raw)).NotTo(ContainSubstring(token))
		}
		for _, bodies := range callbacks(receiver) {
			Expect(fmt.Sprint(bodies)).NotTo(ContainSubstring(token))
		}

		By("expanding $(SECRET_TOKEN) where the model's own template writes it, as the kubelet does")
		Expect(k8sClient.Create(ctx, testutil.MakeInferenceModel("expands", ns, sleepImage).Containers(corev1.Container{
			Name: "inference", Image: sleepImage, Command: []string{"/bin/sh", "-c", `printf '%s' "$EXPANDED" >"$KINFER_RESULT_PATH"`},
			Env: []corev1.EnvVar{
				{Name: "SECRET_TOKEN", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
					LocalObjectReference: corev1.LocalObjectReference{Name: "model-credentials"}, Key: "token"}}},
				{Name: "EXPANDED", Value: "$(SECRET_TOKEN)"},
			},
		}).Obj())).To(Succeed())
		code, answer := submit(ns, map[string]any{"id": "control", "model": "expands"})
		Expect(code).To(Equal(http.StatusAccepted), "%v", answer)
		Eventually(func(g Gomega) {
			ir := request(ns, "control")(g)
			g.Expect(ir.Status.Phase).To(Equal(inferencev1alpha1.PhaseSucceeded), ir.Status.Error)
			g.Expect(ir.Status.Result.Raw).To(MatchJSON(strconv.Quote(token)))
		}, "60s", "200ms").Should(Succeed())
	})

	It("fails a request whose worker runs past timeoutSeconds, through the Job controller's deadline", func() {
		ns := newNamespace()
		Expect(k8sClient.Create(ctx, sleepModel(ns, "--delay=10m").Timeout(2).Obj())).To(Succeed())
		receiver := testutil.NewReceiver()
		defer receiver.Close()

		code, _ := submit(ns, map[string]any{"id": "slow", "callback_url": receiver.URL})
		Expect(code).To(Equal(http.StatusAccepted))

		Eventually(func() map[string][]map[string]any { return callbacks(receiver) }, "60s", "200ms").
			Should(HaveKeyWithValue("slow", ConsistOf(HaveKeyWithValue("status", "failed"))))
		ir := delivered(ns, "slow")
		Expect(completeReason(ir)).To(Equal(inferencev1alpha1.ReasonDeadlineExceeded))
		job := &batchv1.Job{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: ir.Status.JobName}, job)).To(Succeed())
		Expect(jobCondition(job, batchv1.JobFailed)).To(HaveField("Reason", batchv1.JobReasonDeadlineExceeded))
		By("stopping the worker: the Job controller deletes its pod and the node kills the process")
		Eventually(func(g Gomega) []corev1.Pod { return jobPods(g, ns, job.Name) }, "60s", "250ms").Should(BeEmpty())
	})

	It("runs no more Jobs of a model at once than its maxConcurrency", func() {
		const requests, limit = 6, 2
		ns := newNamespace()
		Expect(k8sClient.Create(ctx, sleepModel(ns, "--delay=1500ms").MaxConcurrency(limit).Obj())).To(Succeed())
		receiver := testutil.NewReceiver()
		defer receiver.Close()

		jobs, err := clientset.BatchV1().Jobs(ns).Watch(ctx, metav1.ListOptions{})
		Expect(err).NotTo(HaveOccurred())
		defer jobs.Stop()

		for i := range requests {
			code, _ := submit(ns, map[string]any{"id": "c" + strconv.Itoa(i), "callback_url": receiver.URL})
			Expect(code).To(Equal(http.StatusAccepted))
		}

		// The watch shows every Job change in the API server's order, so the
		// unfinished Jobs counted here are the ones that ran at once.
		unfinished, finished, most := map[string]bool{}, map[string]bool{}, 0
		for len(finished) < requests {
			var event watch.Event
			Eventually(jobs.ResultChan(), "60s").Should(Receive(&event))
			job, ok := event.Object.(*batchv1.Job)
			Expect(ok).To(BeTrue(), "watch event %v", event)
			if jobCondition(job, batchv1.JobComplete) != nil || jobCondition(job, batchv1.JobFailed) != nil {
				delete(unfinished, job.Name)
				finished[job.Name] = true
			} else if !finished[job.Name] {
				unfinished[job.Name] = true
			}
			Expect(len(unfinished)).To(BeNumerically("<=", limit), "Jobs running at once: %v", unfinished)
			most = max(most, len(unfinished))
		}
		Expect(most).To(Equal(limit), "the model's slots were never all used")
		Eventually(func() map[string][]map[string]any { return callbacks(receiver) }, "30s", "200ms").Should(HaveLen(requests))
	})

	It("serves the Python example client", func() {
		ns := newNamespace()
		Expect(k8sClient.Create(ctx, sleepModel(ns, "--delay=1s").Obj())).To(Succeed())
		python, err := exec.LookPath("python3")
		Expect(err).NotTo(HaveOccurred(), "python3 is needed to run examples/python")

		cmd := exec.Command(python, filepath.Join(root, "examples", "python", "client.py"),
			"--server", "http://"+shimAddr, "--listen", freeAddr(), "--namespace", ns, "--id", "py-1234", "--timeout", "60",
			"--token", clientToken)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		Expect(cmd.Run()).To(Succeed(), out.String())
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		Expect(lines).To(HaveLen(2), out.String())
		Expect(lines[0]).To(HavePrefix(`Server answered 202: {"message": "Received", "id": "py-1234"`))
		Expect(lines[1]).To(MatchRegexp(`^Callback received \(webhook-id msg_[0-9a-f]{32}\): ` +
			`\{"type":"inference.completed","id":"py-1234","status":"succeeded","result":"OK"\}$`))
	})
})
