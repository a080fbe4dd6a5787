package e2e

import (
	"fmt"
	"net/http"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
)

var _ = Describe("A pool on the local cluster", func() {
	It("serves 200 requests from at most max pods of one Job, and delivers each once with its own result", func() {
		const requests = 200
		ns := newNamespace()
		model := testutil.MakeInferenceModel("default", ns, echoImage).Workers(2).Obj()
		Expect(k8sClient.Create(ctx, model)).To(Succeed())
		receiver := testutil.NewReceiver()
		defer receiver.Close()

		for i := range requests {
			code, answer := submit(ns, map[string]any{"id": fmt.Sprintf("p%03d", i), "callback_url": receiver.URL,
				"input": map[string]any{"n": i}})
			Expect(code).To(Equal(http.StatusAccepted), "%v", answer)
		}
		Eventually(func() int { return len(callbacks(receiver)) }, "120s", "500ms").Should(Equal(requests))
		for id, bodies := range callbacks(receiver) {
			Expect(bodies).To(HaveLen(1), "callbacks for %s", id)
			var n int
			_, err := fmt.Sscanf(id, "p%03d", &n)
			Expect(err).NotTo(HaveOccurred())
			Expect(bodies[0]).To(SatisfyAll(HaveKeyWithValue("status", "succeeded"),
				HaveKeyWithValue("result", map[string]any{"n": float64(n)})), id)
		}

		var jobs batchv1.JobList
		Expect(k8sClient.List(ctx, &jobs, client.InNamespace(ns))).To(Succeed())
		Expect(jobs.Items).NotTo(BeEmpty())
		for _, job := range jobs.Items {
			Expect(job.Labels).To(HaveKeyWithValue(inferencev1alpha1.LabelPool, "default"), "only pool Jobs: %s", job.Name)
		}
		var pods corev1.PodList
		Expect(k8sClient.List(ctx, &pods, client.InNamespace(ns))).To(Succeed())
		Expect(len(pods.Items)).To(BeNumerically("<=", 2*len(jobs.Items)), "at most max pods a Job")
		workers := map[string]bool{}
		for i := range requests {
			workers[request(ns, fmt.Sprintf("p%03d", i))(Default).Status.Worker] = true
		}
		Expect(workers).NotTo(HaveKey(""), "every request names the pod that ran it")
	})
})
