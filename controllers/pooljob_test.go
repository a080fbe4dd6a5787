package controllers

import (
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
	"github.com/kinfer/kinfer/internal/workapi"
	"github.com/kinfer/kinfer/pkg/worker"
)

// envtest runs no Job controller: these specs read the pool Job the manager
// asks for, and play its pods' end by writing the Job's status.
var _ = Describe("A model's pool", func() {
	var ns string

	BeforeEach(func() {
		ns = newNamespace()
	})

	poolJobs := func(g Gomega) []batchv1.Job {
		var list batchv1.JobList
		g.Expect(k8sClient.List(ctx, &list, client.InNamespace(ns),
			client.MatchingLabels{inferencev1alpha1.LabelPool: "default"})).To(Succeed())
		return list.Items
	}
	parallelism := func(g Gomega) []int32 {
		jobs := poolJobs(g)
		out := make([]int32, 0, len(jobs))
		for _, job := range jobs {
			out = append(out, ptr.Deref(job.Spec.Parallelism, 1))
		}
		return out
	}
	submit := func(names ...string) {
		GinkgoHelper()
		for _, name := range names {
			Expect(k8sClient.Create(ctx, testutil.MakeInferenceRequest(name, ns).Obj())).To(Succeed())
		}
	}

	It("follows its queue up to max, runs no pod while nothing waits, and comes back with the next request", func() {
		m := testutil.MakeInferenceModel("default", ns, workerImage).Workers(3).Obj()
		m.Spec.Workers.BatchSize = 2
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
		Consistently(poolJobs, "3s").Should(BeEmpty(), "min 0 and nothing queued: no pool")

		submit("a", "b", "c")
		Eventually(parallelism, "10s").Should(Equal([]int32{2}), "three requests, two per pod")
		job := poolJobs(Default)[0]
		Expect(job.OwnerReferences).To(ContainElement(HaveField("Name", "default")))
		Expect(job.Labels).To(HaveKeyWithValue(inferencev1alpha1.LabelModel, "default"))
		pod := job.Spec.Template
		Expect(pod.Labels).To(SatisfyAll(HaveKeyWithValue(inferencev1alpha1.LabelModel, "default"),
			HaveKeyWithValue(inferencev1alpha1.LabelPool, "default")))
		env := pod.Spec.Containers[0].Env
		Expect(env).To(ContainElements(
			corev1.EnvVar{Name: worker.EnvModel, Value: "default"},
			corev1.EnvVar{Name: worker.EnvWorkURL, Value: testWorkURL + "/v1/namespaces/" + ns + "/models/default"},
			corev1.EnvVar{Name: worker.EnvBatchSize, Value: "2"},
			HaveField("ValueFrom.SecretKeyRef.LocalObjectReference.Name", workapi.SecretName("default")),
			HaveField("ValueFrom.FieldRef.FieldPath", "metadata.name")))
		Expect(env).NotTo(ContainElement(HaveField("Name", worker.EnvRequestID)))

		submit("d", "e", "f", "g", "h", "i")
		Eventually(parallelism, "10s").Should(Equal([]int32{3}), "nine requests ask for five pods; max is 3")

		By("the requests ending and the pods exiting: the Job ends, and is cleared away")
		for _, name := range []string{"a", "b", "c", "d", "e", "f", "g", "h", "i"} {
			ir := &inferencev1alpha1.InferenceRequest{}
			ir.Namespace, ir.Name = ns, name
			Expect(updateRequest(ir, false, func(r *inferencev1alpha1.InferenceRequest) { r.Spec.Cancel = true })).To(Succeed())
		}
		finished := poolJobs(Default)[0]
		now := metav1.Now()
		finished.Status = batchv1.JobStatus{StartTime: &now, CompletionTime: &now, Succeeded: 3, Conditions: []batchv1.JobCondition{
			{Type: batchv1.JobSuccessCriteriaMet, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: batchv1.JobComplete, Status: corev1.ConditionTrue, LastTransitionTime: now},
		}}
		Expect(k8sClient.Status().Update(ctx, &finished)).To(Succeed())
		Eventually(poolJobs, "10s").Should(BeEmpty(), "nothing waits: the pool is at zero")

		By("a new request: the pool comes back")
		submit("j")
		Eventually(parallelism, "10s").Should(Equal([]int32{1}))
	})

	It("starts a new Job from an edited model and scales the old one to zero", func() {
		m := testutil.MakeInferenceModel("default", ns, workerImage).Workers(2).Obj()
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
		submit("a")
		Eventually(parallelism, "10s").Should(Equal([]int32{1}))
		old := poolJobs(Default)[0].Name

		Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
			if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(m), m); err != nil {
				return err
			}
			m.Spec.Template.Spec.Containers[0].Args = []string{"--new"}
			return k8sClient.Update(ctx, m)
		})).To(Succeed())
		Eventually(func(g Gomega) map[string]int32 {
			out := map[string]int32{}
			for _, job := range poolJobs(g) {
				out[job.Name] = ptr.Deref(job.Spec.Parallelism, 1)
			}
			return out
		}, "10s").Should(SatisfyAll(HaveKeyWithValue(old, int32(0)), HaveLen(2), ContainElement(int32(1))))
	})

	It("shows its mode, queue and ready pods in its status, for kubectl get", func() {
		m := testutil.MakeInferenceModel("default", ns, workerImage).Workers(3).Obj()
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
		status := func(g Gomega) inferencev1alpha1.InferenceModelStatus {
			got := &inferencev1alpha1.InferenceModel{}
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(m), got)).To(Succeed())
			return got.Status
		}
		Eventually(status, "10s").Should(SatisfyAll(HaveField("Mode", inferencev1alpha1.ModePool),
			HaveField("Queued", int32(0)), HaveField("Workers", "0/3")))

		submit("a", "b")
		Eventually(status, "10s").Should(HaveField("Queued", int32(2)))
		Eventually(parallelism, "10s").Should(Equal([]int32{2}))
		job := poolJobs(Default)[0]
		job.Status.Active, job.Status.Ready = 2, ptr.To[int32](2)
		Expect(k8sClient.Status().Update(ctx, &job)).To(Succeed())
		Eventually(status, "10s").Should(SatisfyAll(HaveField("ReadyWorkers", int32(2)), HaveField("Workers", "2/3")))

		By("the requests ending: nothing is queued")
		for _, name := range []string{"a", "b"} {
			ir := &inferencev1alpha1.InferenceRequest{}
			ir.Namespace, ir.Name = ns, name
			Expect(updateRequest(ir, false, func(r *inferencev1alpha1.InferenceRequest) { r.Spec.Cancel = true })).To(Succeed())
		}
		Eventually(status, "10s").Should(SatisfyAll(HaveField("Queued", int32(0)), HaveField("Running", int32(0))))
	})

	It("shows a model without workers as one Job per request, with its queue behind maxConcurrency", func() {
		m := testutil.MakeInferenceModel("default", ns, workerImage).MaxConcurrency(1).Obj()
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
		submit("a", "b", "c")
		Eventually(func(g Gomega) inferencev1alpha1.InferenceModelStatus {
			got := &inferencev1alpha1.InferenceModel{}
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(m), got)).To(Succeed())
			return got.Status
		}, "15s").Should(SatisfyAll(HaveField("Mode", inferencev1alpha1.ModeJob), HaveField("Queued", int32(2)),
			HaveField("Running", int32(1)), HaveField("Workers", "")))
	})
})
