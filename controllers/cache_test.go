package controllers

import (
	"maps"
	"slices"
	"testing"
	"time"
	"unsafe"

	"github.com/google/go-cmp/cmp"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
)

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
		job := buildJob(ir, model, `{"text":"great movie"}`)
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
			ObjectMeta: metav1.ObjectMeta{Name: "req-1-abcde", Namespace: "ml", Labels: map[string]string{LabelRequest: "req-1"},
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
		c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(pod).Build()
		r := &InferenceRequestReconciler{Client: c, APIReader: c, jobPods: newJobPods()}
		r.jobPods.add(pod)
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
		"refused input":     {finishedJob(batchv1.JobFailed, batchv1.JobReasonPodFailurePolicy), finishedPod(corev1.PodFailed, ExitCodeBadInput, "text is required")},
		"backoff exceeded":  {finishedJob(batchv1.JobFailed, batchv1.JobReasonBackoffLimitExceeded), finishedPod(corev1.PodFailed, 1, "model file missing")},
		"deadline exceeded": {finishedJob(batchv1.JobFailed, batchv1.JobReasonDeadlineExceeded), finishedPod(corev1.PodFailed, 137, "")},
		"still running":     {func() *batchv1.Job { j := finishedJob("", ""); j.Status.Conditions = nil; return j }(), finishedPod(corev1.PodRunning, 0, "")},
	} {
		t.Run(name, func(t *testing.T) {
			slimJobObj, err := slimJob(tc.job.DeepCopy())
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

func TestSlimmingDropsWhatIsNotRead(t *testing.T) {
	model := testutil.MakeInferenceModel("sentiment", "ml", "registry.example/sentiment:1.4").Timeout(120).Obj()
	ir := testutil.MakeInferenceRequest("req-1", "ml").Model("sentiment").Obj()
	job := buildJob(ir, model, `{"text":"great movie"}`)
	job.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kube-controller-manager"}}
	job.Annotations = map[string]string{"owner": "ml-team"}
	job.Labels["team"] = "ml" // a model's template label, copied onto its Jobs
	job.Status = batchv1.JobStatus{Active: 0, Succeeded: 1, StartTime: ptr.To(metav1.Now()), Conditions: []batchv1.JobCondition{
		{Type: batchv1.JobSuccessCriteriaMet, Status: corev1.ConditionTrue, Reason: "CompletionsReached"},
		{Type: batchv1.JobComplete, Status: corev1.ConditionTrue, Reason: "CompletionsReached", Message: "Reached expected number of succeeded pods"},
	}}

	obj, err := slimJob(job)
	if err != nil {
		t.Fatal(err)
	}
	slim := obj.(*batchv1.Job)
	want := corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: job.Spec.Template.Spec.Containers[0].Name}}}}
	if diff := cmp.Diff(want, slim.Spec.Template); diff != "" {
		t.Errorf("cached Job's template keeps more than container names (-want +got):\n%s", diff)
	}
	if slim.ManagedFields != nil || slim.Annotations != nil {
		t.Errorf("cached Job keeps managedFields %v or annotations %v", slim.ManagedFields, slim.Annotations)
	}
	if want := map[string]string{LabelRequest: "req-1", LabelModel: "sentiment"}; !maps.Equal(slim.Labels, want) {
		t.Errorf("cached Job's labels are %v, want only kinfer's %v", slim.Labels, want)
	}
	if *slim.Spec.ActiveDeadlineSeconds != *job.Spec.ActiveDeadlineSeconds {
		t.Errorf("cached Job lost its deadline")
	}
	wantStatus := batchv1.JobStatus{Conditions: []batchv1.JobCondition{{Type: batchv1.JobComplete, Status: corev1.ConditionTrue,
		Reason: "CompletionsReached", Message: "Reached expected number of succeeded pods"}}}
	if diff := cmp.Diff(wantStatus, slim.Status); diff != "" {
		t.Errorf("cached Job's status keeps more or less than its final condition and failed count (-want +got):\n%s", diff)
	}

	created := metav1.NewTime(time.Unix(1700000000, 0))
	pod := &metav1.PartialObjectMetadata{TypeMeta: podMetadata().TypeMeta, ObjectMeta: metav1.ObjectMeta{
		Name: "req-1-abcde", Namespace: "ml", UID: "pod-uid", ResourceVersion: "42", CreationTimestamp: created,
		Labels: map[string]string{LabelRequest: "req-1", "batch.kubernetes.io/job-name": "req-1"}, Annotations: map[string]string{"a": "b"},
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kube-controller-manager"}},
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "batch/v1", Kind: "Job", Name: "req-1", UID: "job-uid",
			Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}},
	}}
	obj, err = slimPod(pod.DeepCopy())
	if err != nil {
		t.Fatal(err)
	}
	want2 := &metav1.PartialObjectMetadata{TypeMeta: pod.TypeMeta, ObjectMeta: metav1.ObjectMeta{
		Name: "req-1-abcde", Namespace: "ml", ResourceVersion: "42", CreationTimestamp: created,
		OwnerReferences: []metav1.OwnerReference{{Kind: "Job", Name: "req-1", UID: "job-uid", Controller: ptr.To(true)}},
	}}
	if diff := cmp.Diff(want2, obj); diff != "" {
		t.Errorf("cached pod metadata keeps more or less than its name, creation time and controller (-want +got):\n%s", diff)
	}
	if name, job, ok := controlledPod(obj); !ok || name != "req-1-abcde" || job != "job-uid" {
		t.Errorf("cached pod metadata gives pod %q of Job %q (%v), want req-1-abcde of job-uid", name, job, ok)
	}

	whole := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{ManagedFields: pod.ManagedFields}, Spec: job.Spec.Template.Spec}
	if obj, _ := slimPod(whole); obj.(*corev1.Pod).ManagedFields != nil || len(obj.(*corev1.Pod).Spec.Containers) != 1 {
		t.Errorf("a whole pod is not passed through with managedFields dropped: %+v", obj)
	}

	tombstone := "a DeletedFinalStateUnknown passes through"
	if got, _ := slimPod(tombstone); got != tombstone {
		t.Errorf("slimPod changed a non-pod: %v", got)
	}
}

// What the cache keeps of a decoded Job or pod is copied out of it, so that
// the decoded object's memory is all freed once it is dropped.
func TestCachedObjectsShareNoStringWithTheDecodedOne(t *testing.T) {
	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: "req-1", Namespace: "ml", UID: "job-uid", ResourceVersion: "7",
			Labels: map[string]string{LabelRequest: "req-1", LabelModel: "sentiment"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "kinfer.dev/v1alpha1", Kind: "InferenceRequest", Name: "req-1",
				UID: "ir-uid", Controller: ptr.To(true)}}},
		Status: batchv1.JobStatus{Conditions: []batchv1.JobCondition{{Type: batchv1.JobFailed, Status: corev1.ConditionTrue,
			Reason: "BackoffLimitExceeded", Message: "Job has reached the specified backoff limit"}}},
	}
	obj, err := slimJob(job)
	if err != nil {
		t.Fatal(err)
	}
	slim := obj.(*batchv1.Job)
	for what, pair := range map[string][2]string{
		"name":              {job.Name, slim.Name},
		"uid":               {string(job.UID), string(slim.UID)},
		"resourceVersion":   {job.ResourceVersion, slim.ResourceVersion},
		"request label":     {job.Labels[LabelRequest], slim.Labels[LabelRequest]},
		"owner's name":      {job.OwnerReferences[0].Name, slim.OwnerReferences[0].Name},
		"owner's uid":       {string(job.OwnerReferences[0].UID), string(slim.OwnerReferences[0].UID)},
		"condition message": {job.Status.Conditions[0].Message, slim.Status.Conditions[0].Message},
	} {
		if pair[0] != pair[1] {
			t.Errorf("cached Job's %s is %q, want %q", what, pair[1], pair[0])
		}
		if unsafe.StringData(pair[0]) == unsafe.StringData(pair[1]) {
			t.Errorf("cached Job's %s shares memory with the decoded Job", what)
		}
	}

	pod := &metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Name: "req-1-abcde", Namespace: "ml", ResourceVersion: "9",
		OwnerReferences: []metav1.OwnerReference{{Kind: "Job", Name: "req-1", UID: "job-uid", Controller: ptr.To(true)}}}}
	obj, err = slimPod(pod)
	if err != nil {
		t.Fatal(err)
	}
	slimMeta := obj.(*metav1.PartialObjectMetadata)
	for what, pair := range map[string][2]string{
		"name":            {pod.Name, slimMeta.Name},
		"resourceVersion": {pod.ResourceVersion, slimMeta.ResourceVersion},
		"owner's uid":     {string(pod.OwnerReferences[0].UID), string(slimMeta.OwnerReferences[0].UID)},
	} {
		if unsafe.StringData(pair[0]) == unsafe.StringData(pair[1]) {
			t.Errorf("cached pod's %s shares memory with the decoded pod", what)
		}
	}
}

// jobPods follows the pod informer: pods are found under the Job that
// controls them until they are deleted, also when the deletion comes as a
// tombstone.
func TestJobPodsFollowsTheInformer(t *testing.T) {
	pod := func(name string, job types.UID) *metav1.PartialObjectMetadata {
		p := podMetadata()
		p.Name, p.Namespace = name, "ml"
		p.OwnerReferences = []metav1.OwnerReference{{Kind: "Job", Name: "req-1", UID: job, Controller: ptr.To(true)}}
		return p
	}
	p := newJobPods()
	h := p.handler()
	first, retry, other := pod("req-1-aaaaa", "job-1"), pod("req-1-bbbbb", "job-1"), pod("req-2-ccccc", "job-2")
	h.OnAdd(first, true)
	h.OnAdd(retry, false)
	h.OnAdd(other, false)
	h.OnUpdate(first, first) // a status change: still one entry
	orphan := podMetadata()
	orphan.Name = "no-owner"
	h.OnAdd(orphan, false)

	if got := p.names("job-1"); !slices.Equal(got, []string{"req-1-aaaaa", "req-1-bbbbb"}) {
		t.Errorf("job-1's pods = %v", got)
	}
	h.OnDelete(first)
	h.OnDelete(toolscache.DeletedFinalStateUnknown{Key: "ml/req-1-bbbbb", Obj: retry})
	if got := p.names("job-1"); len(got) != 0 {
		t.Errorf("job-1's pods after both were deleted = %v", got)
	}
	if _, kept := p.byJob["job-1"]; kept {
		t.Error("a Job without pods keeps its entry")
	}
	if got := p.names("job-2"); !slices.Equal(got, []string{"req-2-ccccc"}) {
		t.Errorf("job-2's pods = %v", got)
	}
	var none *jobPods
	if got := none.names("job-2"); got != nil {
		t.Errorf("a nil jobPods names %v", got)
	}
}
