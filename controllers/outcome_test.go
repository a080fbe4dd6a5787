package controllers

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/pool"
	"github.com/kinfer/kinfer/internal/queue"
	"github.com/kinfer/kinfer/internal/slimcache"
	"github.com/kinfer/kinfer/internal/testutil"
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
		Expect(s.status.Conditions).To(testutil.HaveCondition(inferencev1alpha1.ConditionComplete, inferencev1alpha1.ReasonResultLost))
	})

	It("reads the exit code from the API server when the cached pod has not failed yet", func() {
		r := reconciler(pod(corev1.PodRunning, nil),
			pod(corev1.PodFailed, &corev1.ContainerStateTerminated{ExitCode: worker.ExitBadInput, Message: "input.text is required"}))
		s := state()
		failed := &batchv1.JobCondition{Type: batchv1.JobFailed, Status: corev1.ConditionTrue, Reason: batchv1.JobReasonPodFailurePolicy}
		Expect(r.readFailure(ctx, s, job, failed)).To(Succeed())
		Expect(s.status.Phase).To(Equal(inferencev1alpha1.PhaseFailed))
		Expect(s.status.Error).To(ContainSubstring("input.text is required"))
		Expect(s.status.Conditions).To(testutil.HaveCondition(inferencev1alpha1.ConditionComplete, inferencev1alpha1.ReasonInvalidInput))
	})
})

// The cache keeps slimmed Jobs and pods' metadata. Every outcome the
// controller reads through them must be the one it reads from the stored
// objects.
func TestSlimmedObjectsGiveTheSameOutcome(t *testing.T) {
	model := testutil.MakeInferenceModel("sentiment", "ml", "registry.example/sentiment:1.4").Timeout(120).MaxRetries(1).
		Containers(
			corev1.Container{Name: "inference", Image: "registry.example/sentiment:1.4",
				Env: []corev1.EnvVar{{Name: "MODEL_DIR", Value: "/models"}}},
			corev1.Container{Name: "sidecar", Image: "registry.example/proxy:2"},
		).Obj()
	ir := testutil.MakeInferenceRequest("req-1", "ml").Model("sentiment").Obj()
	ir.UID = "ir-uid"

	finishedJob := func(condition batchv1.JobConditionType, reason string) *batchv1.Job {
		job := buildJob(ir, model, `{"text":"great movie"}`, "")
		job.UID = "job-uid"
		job.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kube-controller-manager"}}
		job.OwnerReferences = []metav1.OwnerReference{{APIVersion: inferencev1alpha1.GroupVersion.String(), Kind: "InferenceRequest",
			Name: "req-1", UID: ir.UID, Controller: ptr.To(true)}}
		job.Status.Failed = 2
		job.Status.Conditions = []batchv1.JobCondition{{Type: condition, Status: corev1.ConditionTrue, Reason: reason}}
		return job
	}
	finishedPod := func(phase corev1.PodPhase, exitCode int32, message string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "req-1-abcde", Namespace: "ml", Labels: map[string]string{inferencev1alpha1.LabelRequest: "req-1"},
				CreationTimestamp: metav1.NewTime(time.Unix(1700000000, 0)),
				OwnerReferences:   []metav1.OwnerReference{{APIVersion: "batch/v1", Kind: "Job", Name: "req-1", UID: "job-uid", Controller: ptr.To(true)}}},
			Spec: corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "inference", Image: "registry.example/sentiment:1.4"}}},
			Status: corev1.PodStatus{Phase: phase, PodIP: "10.0.0.7", ContainerStatuses: []corev1.ContainerStatus{
				{Name: "inference", Image: "registry.example/sentiment:1.4", ImageID: "sha256:abc", State: corev1.ContainerState{
					Terminated: &corev1.ContainerStateTerminated{ExitCode: exitCode, Reason: "Completed", Message: message}}},
				{Name: "sidecar", State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Reason: "Completed"}}},
			}},
		}
	}
	outcome := func(t *testing.T, job *batchv1.Job, pod *corev1.Pod) inferencev1alpha1.InferenceRequestStatus {
		t.Helper()
		scheme := runtime.NewScheme()
		if err := clientgoscheme.AddToScheme(scheme); err != nil {
			t.Fatal(err)
		}
		c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(pod).
			WithIndex(&corev1.Pod{}, slimcache.JobIndex, slimcache.IndexByJob).Build()
		r := &InferenceRequestReconciler{Client: c, APIReader: c, jobPods: slimcache.NewJobPods(), pendingPods: c,
			pool: pool.New(queue.NewIndex(clock.RealClock{}), c, clock.RealClock{}, func(types.NamespacedName) {})}
		r.jobPods.Handler().OnAdd(pod, false)
		s := newRequestState(ir.DeepCopy(), time.Unix(1700000100, 0))
		if err := r.readOutcome(ctx, s, job); err != nil {
			t.Fatal(err)
		}
		return s.status
	}

	for name, tc := range map[string]struct {
		job *batchv1.Job
		pod *corev1.Pod
	}{
		"succeeded":         {finishedJob(batchv1.JobComplete, ""), finishedPod(corev1.PodSucceeded, 0, `{"label":"positive"}`)},
		"refused input":     {finishedJob(batchv1.JobFailed, batchv1.JobReasonPodFailurePolicy), finishedPod(corev1.PodFailed, worker.ExitBadInput, "text is required")},
		"result too large":  {finishedJob(batchv1.JobFailed, batchv1.JobReasonPodFailurePolicy), finishedPod(corev1.PodFailed, worker.ExitResultTooLarge, "the result is 5000 bytes of JSON")},
		"backoff exceeded":  {finishedJob(batchv1.JobFailed, batchv1.JobReasonBackoffLimitExceeded), finishedPod(corev1.PodFailed, 1, "model file missing")},
		"deadline exceeded": {finishedJob(batchv1.JobFailed, batchv1.JobReasonDeadlineExceeded), finishedPod(corev1.PodFailed, 137, "")},
		"still running":     {func() *batchv1.Job { j := finishedJob("", ""); j.Status.Conditions = nil; return j }(), finishedPod(corev1.PodRunning, 0, "")},
	} {
		t.Run(name, func(t *testing.T) {
			slimJobObj, err := slimcache.JobTransform()(tc.job.DeepCopy())
			if err != nil {
				t.Fatal(err)
			}
			want := outcome(t, tc.job, tc.pod)
			got := outcome(t, slimJobObj.(*batchv1.Job), tc.pod)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("outcome from slimmed objects differs (-stored +slimmed):\n%s", diff)
			}
		})
	}
}
