package e2e

import (
	"net/http"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
)

var _ = Describe("The queue on the local cluster", func() {
	It("ends a request that waits past its queue timeout, with an expired callback", func() {
		ns := newNamespace()
		Expect(k8sClient.Create(ctx, sleepModel(ns, "--delay=10m").MaxConcurrency(1).QueueTimeout(3).Obj())).To(Succeed())
		receiver := testutil.NewReceiver()
		defer receiver.Close()

		for _, id := range []string{"first", "second"} {
			code, answer := submit(ns, map[string]any{"id": id, "callback_url": receiver.URL})
			Expect(code).To(Equal(http.StatusAccepted), "%v", answer)
		}

		Eventually(func() map[string][]map[string]any { return callbacks(receiver) }, "30s", "200ms").
			Should(HaveKeyWithValue("second", ConsistOf(SatisfyAll(
				HaveKeyWithValue("status", "expired"),
				HaveKeyWithValue("error", "waited longer than its queueTimeoutSeconds (3) to start")))))
		second := delivered(ns, "second")
		Expect(completeReason(second)).To(Equal(inferencev1alpha1.ReasonQueueTimeout))
		Expect(second.Status.JobName).To(BeEmpty(), "it never started")
		Expect(request(ns, "first")(Default).Status.Phase).To(Equal(inferencev1alpha1.PhaseRunning),
			"the request that started has no queue timeout")
		Expect(callbacks(receiver)).NotTo(HaveKey("first"))
	})

	It("cancels a running request: its Job and pod go, and the callback says canceled", func() {
		ns := newNamespace()
		Expect(k8sClient.Create(ctx, sleepModel(ns, "--delay=10m").Obj())).To(Succeed())
		receiver := testutil.NewReceiver()
		defer receiver.Close()

		code, answer := submit(ns, map[string]any{"id": "long", "callback_url": receiver.URL})
		Expect(code).To(Equal(http.StatusAccepted), "%v", answer)
		var jobName string
		Eventually(func(g Gomega) {
			ir := request(ns, "long")(g)
			g.Expect(ir.Status.Phase).To(Equal(inferencev1alpha1.PhaseRunning))
			jobName = ir.Status.JobName
			pods := jobPods(g, ns, jobName)
			g.Expect(pods).To(HaveLen(1))
			g.Expect(pods[0].Status.Phase).To(Equal(corev1.PodRunning))
		}, "60s", "200ms").Should(Succeed())

		code, answer = post("http://"+shimAddr+"/v1/namespaces/"+ns+"/inferences/long/cancel", clientToken, nil)
		Expect(code).To(Equal(http.StatusAccepted), "%v", answer)

		Eventually(func() map[string][]map[string]any { return callbacks(receiver) }, "30s", "200ms").
			Should(HaveKeyWithValue("long", ConsistOf(HaveKeyWithValue("status", "canceled"))))
		ir := delivered(ns, "long")
		Expect(ir.Status.Phase).To(Equal(inferencev1alpha1.PhaseCanceled))
		Expect(completeReason(ir)).To(Equal(inferencev1alpha1.ReasonCanceled))
		Eventually(func() bool {
			err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: jobName}, &batchv1.Job{})
			return apierrors.IsNotFound(err)
		}, "30s", "200ms").Should(BeTrue(), "the Job is deleted")
		By("the garbage collector deleting the pod, and the node stopping the worker")
		Eventually(func(g Gomega) []corev1.Pod { return jobPods(g, ns, jobName) }, "60s", "250ms").Should(BeEmpty())

		code, answer = post("http://"+shimAddr+"/v1/namespaces/"+ns+"/inferences/long/cancel", clientToken, nil)
		Expect(code).To(Equal(http.StatusConflict), "a request that has ended cannot be canceled: %v", answer)
	})
})
