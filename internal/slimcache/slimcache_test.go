package slimcache

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
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
)

func TestSlimmingDropsWhatIsNotRead(t *testing.T) {
	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: "req-1", Namespace: "ml",
			Labels: map[string]string{inferencev1alpha1.LabelRequest: "req-1", inferencev1alpha1.LabelModel: "sentiment"}},
		Spec: batchv1.JobSpec{ActiveDeadlineSeconds: ptr.To[int64](120), BackoffLimit: ptr.To[int32](2), Template: corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{inferencev1alpha1.LabelRequest: "req-1"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "inference", Image: "registry.example/sentiment:1.4",
				Env: []corev1.EnvVar{{Name: "MODEL_DIR", Value: "/models"}}}}},
		}},
	}
	job.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kube-controller-manager"}}
	job.Annotations = map[string]string{"owner": "ml-team"}
	job.Labels["team"] = "ml" // a model's template label, copied onto its Jobs
	job.Status = batchv1.JobStatus{Active: 0, Succeeded: 1, StartTime: ptr.To(metav1.Now()), Conditions: []batchv1.JobCondition{
		{Type: batchv1.JobSuccessCriteriaMet, Status: corev1.ConditionTrue, Reason: "CompletionsReached"},
		{Type: batchv1.JobComplete, Status: corev1.ConditionTrue, Reason: "CompletionsReached", Message: "Reached expected number of succeeded pods"},
	}}

	obj, err := JobTransform()(job)
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
	if want := map[string]string{inferencev1alpha1.LabelRequest: "req-1", inferencev1alpha1.LabelModel: "sentiment"}; !maps.Equal(slim.Labels, want) {
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
	pod := &metav1.PartialObjectMetadata{TypeMeta: PodMetadata().TypeMeta, ObjectMeta: metav1.ObjectMeta{
		Name: "req-1-abcde", Namespace: "ml", UID: "pod-uid", ResourceVersion: "42", CreationTimestamp: created,
		Labels: map[string]string{inferencev1alpha1.LabelRequest: "req-1", "batch.kubernetes.io/job-name": "req-1"}, Annotations: map[string]string{"a": "b"},
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
			Labels: map[string]string{inferencev1alpha1.LabelRequest: "req-1", inferencev1alpha1.LabelModel: "sentiment"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "kinfer.dev/v1alpha1", Kind: "InferenceRequest", Name: "req-1",
				UID: "ir-uid", Controller: ptr.To(true)}}},
		Status: batchv1.JobStatus{Conditions: []batchv1.JobCondition{{Type: batchv1.JobFailed, Status: corev1.ConditionTrue,
			Reason: "BackoffLimitExceeded", Message: "Job has reached the specified backoff limit"}}},
	}
	obj, err := JobTransform()(job)
	if err != nil {
		t.Fatal(err)
	}
	slim := obj.(*batchv1.Job)
	for what, pair := range map[string][2]string{
		"name":              {job.Name, slim.Name},
		"uid":               {string(job.UID), string(slim.UID)},
		"resourceVersion":   {job.ResourceVersion, slim.ResourceVersion},
		"request label":     {job.Labels[inferencev1alpha1.LabelRequest], slim.Labels[inferencev1alpha1.LabelRequest]},
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

// JobPods follows the pod informer: pods are found under the Job that
// controls them until they are deleted, also when the deletion comes as a
// tombstone.
func TestJobPodsFollowsTheInformer(t *testing.T) {
	pod := func(name string, job types.UID) *metav1.PartialObjectMetadata {
		p := PodMetadata()
		p.Name, p.Namespace = name, "ml"
		p.OwnerReferences = []metav1.OwnerReference{{Kind: "Job", Name: "req-1", UID: job, Controller: ptr.To(true)}}
		return p
	}
	p := NewJobPods()
	h := p.Handler()
	first, retry, other := pod("req-1-aaaaa", "job-1"), pod("req-1-bbbbb", "job-1"), pod("req-2-ccccc", "job-2")
	h.OnAdd(first, true)
	h.OnAdd(retry, false)
	h.OnAdd(other, false)
	h.OnUpdate(first, first) // a status change: still one entry
	orphan := PodMetadata()
	orphan.Name = "no-owner"
	h.OnAdd(orphan, false)

	if got := p.Names("job-1"); !slices.Equal(got, []string{"req-1-aaaaa", "req-1-bbbbb"}) {
		t.Errorf("job-1's pods = %v", got)
	}
	h.OnDelete(first)
	h.OnDelete(toolscache.DeletedFinalStateUnknown{Key: "ml/req-1-bbbbb", Obj: retry})
	if got := p.Names("job-1"); len(got) != 0 {
		t.Errorf("job-1's pods after both were deleted = %v", got)
	}
	if _, kept := p.byJob["job-1"]; kept {
		t.Error("a Job without pods keeps its entry")
	}
	if got := p.Names("job-2"); !slices.Equal(got, []string{"req-2-ccccc"}) {
		t.Errorf("job-2's pods = %v", got)
	}
}

// A pending pod is kept as what says why it has not started, and nothing of
// its spec; the strings kept are its own.
func TestPendingPodKeepsOnlyWhyItWaits(t *testing.T) {
	created := metav1.NewTime(time.Unix(1700000000, 0))
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "req-1-abcde", Namespace: "ml", UID: "pod-uid", ResourceVersion: "42", CreationTimestamp: created,
			Labels:        map[string]string{inferencev1alpha1.LabelRequest: "req-1", inferencev1alpha1.LabelModel: "sentiment", "team": "ml"},
			Annotations:   map[string]string{"a": "b"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet"}},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "batch/v1", Kind: "Job", Name: "req-1", UID: "job-uid",
				Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}}},
		Spec: corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "inference", Image: "registry.example/sentiment:1.4"}}},
		Status: corev1.PodStatus{Phase: corev1.PodPending, HostIP: "10.0.0.1",
			Conditions: []corev1.PodCondition{
				{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: "Unschedulable", Message: "0/1 nodes are available"},
				{Type: corev1.PodReady, Status: corev1.ConditionFalse, Reason: "ContainersNotReady"},
			},
			InitContainerStatuses: []corev1.ContainerStatus{{Name: "fetch", Image: "busybox",
				State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Reason: "Completed"}}}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "inference", Image: "registry.example/sentiment:1.4", ImageID: "sha256:abc",
				State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ImagePullBackOff", Message: "Back-off pulling image"}}}},
		},
	}
	obj, err := slimPendingPod(pod)
	if err != nil {
		t.Fatal(err)
	}
	want := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "req-1-abcde", Namespace: "ml", ResourceVersion: "42", CreationTimestamp: created,
			Labels:          map[string]string{inferencev1alpha1.LabelRequest: "req-1"},
			OwnerReferences: []metav1.OwnerReference{{Kind: "Job", Name: "req-1", UID: "job-uid", Controller: ptr.To(true)}}},
		Status: corev1.PodStatus{Phase: corev1.PodPending,
			Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse,
				Reason: "Unschedulable", Message: "0/1 nodes are available"}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "inference",
				State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ImagePullBackOff", Message: "Back-off pulling image"}}}},
		},
	}
	if diff := cmp.Diff(want, obj); diff != "" {
		t.Errorf("cached pending pod keeps more or less than why it waits (-want +got):\n%s", diff)
	}
	slim := obj.(*corev1.Pod)
	for what, pair := range map[string][2]string{
		"name":               {pod.Name, slim.Name},
		"request label":      {pod.Labels[inferencev1alpha1.LabelRequest], slim.Labels[inferencev1alpha1.LabelRequest]},
		"waiting message":    {pod.Status.ContainerStatuses[0].State.Waiting.Message, slim.Status.ContainerStatuses[0].State.Waiting.Message},
		"scheduling message": {pod.Status.Conditions[0].Message, slim.Status.Conditions[0].Message},
	} {
		if unsafe.StringData(pair[0]) == unsafe.StringData(pair[1]) {
			t.Errorf("cached pending pod's %s shares memory with the decoded pod", what)
		}
	}
	if got := IndexByJob(slim); !slices.Equal(got, []string{"job-uid"}) {
		t.Errorf("IndexByJob = %v, want the controlling Job's UID", got)
	}

	scheduled := pod.DeepCopy()
	scheduled.Status.Conditions[0] = corev1.PodCondition{Type: corev1.PodScheduled, Status: corev1.ConditionTrue}
	if obj, _ := slimPendingPod(scheduled); len(obj.(*corev1.Pod).Status.Conditions) != 0 {
		t.Errorf("a scheduled pod keeps conditions %v", obj.(*corev1.Pod).Status.Conditions)
	}
}
