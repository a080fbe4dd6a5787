package controllers

import (
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/slimcache"
	"github.com/kinfer/kinfer/pkg/worker"
)

// The manager's pod informer can lag behind its Job informer: the Job is seen
// finished while its pod, in the cache, still looks running. The outcome must
// then come from the API server, never be taken from the stale pod.
var _ = Describe("Reading a finished Job's outcome with a lagging pod cache", func() {
	var job *batchv1.Job

	BeforeEach(func() {
		job = &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "req-1", Namespace: "ns", UID: "job-uid",
			Labels: map[string]string{inferencev1alpha1.LabelRequest: "req-1"}}}
		job.Spec.Template.Spec.Containers = []corev1.Container{{Name: "inference", Image: "worker"}}
	})

	pod := func(phase corev1.PodPhase, terminated *corev1.ContainerStateTerminated) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "req-1-abcde", Namespace: "ns",
			Labels:          map[string]string{inferencev1alpha1.LabelRequest: "req-1"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "batch/v1", Kind: "Job", Name: "req-1", UID: "job-uid", Controller: ptr.To(true)}}}}
		p.Status.Phase = phase
		if terminated != nil {
			p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "inference", State: corev1.ContainerState{Terminated: terminated}}}
		}
		return p
	}
	// cached is what the manager's cache holds (nil: not seen yet), stored
	// what the API server has.
	reconciler := func(cached, stored *corev1.Pod) *InferenceRequestReconciler {
		scheme := runtime.NewScheme()
		Expect(clientgoscheme.AddToScheme(scheme)).To(Succeed())
		r := &InferenceRequestReconciler{
			APIReader: fake.NewClientBuilder().WithScheme(scheme).WithObjects(stored).Build(),
			jobPods:   slimcache.NewJobPods(),
		}
		if cached != nil {
			r.jobPods.Handler().OnAdd(cached, false)
		}
		return r
	}
	state := func() *requestState {
		return newRequestState(&inferencev1alpha1.InferenceRequest{ObjectMeta: metav1.ObjectMeta{Name: "req-1", Namespace: "ns"}}, time.Now())
	}

	It("reads the result from the API server when the cached pod has not finished", func() {
		r := reconciler(pod(corev1.PodRunning, nil), pod(corev1.PodSucceeded, &corev1.ContainerStateTerminated{Message: `"OK"`}))
		s := state()
		Expect(r.readResult(ctx, s, job)).To(Succeed())
		Expect(s.status.Phase).To(Equal(inferencev1alpha1.PhaseSucceeded))
		Expect(s.status.Result.Raw).To(MatchJSON(`"OK"`))
	})

	It("reads the result from the API server when the cache has not seen the pod yet", func() {
		r := reconciler(nil, pod(corev1.PodSucceeded, &corev1.ContainerStateTerminated{Message: `"OK"`}))
		s := state()
		Expect(r.readResult(ctx, s, job)).To(Succeed())
		Expect(s.status.Phase).To(Equal(inferencev1alpha1.PhaseSucceeded))
		Expect(s.status.Result.Raw).To(MatchJSON(`"OK"`))
	})

	It("takes no result from a pod another Job owns", func() {
		other := pod(corev1.PodSucceeded, &corev1.ContainerStateTerminated{Message: `"not mine"`})
		other.OwnerReferences[0].UID = "other-job-uid"
		r := reconciler(other, other)
		s := state()
		Expect(r.readResult(ctx, s, job)).To(Succeed())
		Expect(s.status.Phase).To(Equal(inferencev1alpha1.PhaseFailed))
		Expect(s.status.Conditions).To(ContainElement(HaveField("Reason", inferencev1alpha1.ReasonResultLost)))
	})

	It("reads the exit code from the API server when the cached pod has not failed yet", func() {
		r := reconciler(pod(corev1.PodRunning, nil),
			pod(corev1.PodFailed, &corev1.ContainerStateTerminated{ExitCode: worker.ExitBadInput, Message: "input.text is required"}))
		s := state()
		failed := &batchv1.JobCondition{Type: batchv1.JobFailed, Status: corev1.ConditionTrue, Reason: batchv1.JobReasonPodFailurePolicy}
		Expect(r.readFailure(ctx, s, job, failed)).To(Succeed())
		Expect(s.status.Phase).To(Equal(inferencev1alpha1.PhaseFailed))
		Expect(s.status.Error).To(ContainSubstring("input.text is required"))
		Expect(s.status.Conditions).To(ContainElement(HaveField("Reason", inferencev1alpha1.ReasonInvalidInput)))
	})
})
