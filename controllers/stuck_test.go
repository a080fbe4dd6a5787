package controllers

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/slimcache"
)

func waitingPod(init bool, reasons ...string) *corev1.Pod {
	pod := &corev1.Pod{Status: corev1.PodStatus{Phase: corev1.PodPending,
		Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionTrue}}}}
	for _, reason := range reasons {
		s := corev1.ContainerStatus{Name: "c", State: corev1.ContainerState{
			Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: reason + " message"}}}
		if init {
			pod.Status.InitContainerStatuses = append(pod.Status.InitContainerStatuses, s)
		} else {
			pod.Status.ContainerStatuses = append(pod.Status.ContainerStatuses, s)
		}
	}
	return pod
}

func TestPodProblem(t *testing.T) {
	unschedulable := waitingPod(false)
	unschedulable.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse,
		Reason: corev1.PodReasonUnschedulable, Message: "0/1 nodes are available"}}
	tests := []struct {
		name                string
		pod                 *corev1.Pod
		wantReason, wantMsg string
	}{
		{name: "not yet looked at by the scheduler", pod: &corev1.Pod{Status: corev1.PodStatus{Phase: corev1.PodPending}}},
		{name: "creating its containers", pod: waitingPod(false, "ContainerCreating")},
		{name: "running its init containers", pod: waitingPod(false, "PodInitializing")},
		{name: "unschedulable", pod: unschedulable, wantReason: "Unschedulable", wantMsg: "0/1 nodes are available"},
		{name: "image pull backing off", pod: waitingPod(false, "ContainerCreating", "ImagePullBackOff"),
			wantReason: "ImagePullBackOff", wantMsg: "ImagePullBackOff message"},
		{name: "an init container's config is wrong", pod: waitingPod(true, "CreateContainerConfigError"),
			wantReason: "CreateContainerConfigError", wantMsg: "CreateContainerConfigError message"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reason, message := podProblem(tc.pod)
			if diff := cmp.Diff([]string{tc.wantReason, tc.wantMsg}, []string{reason, message}); diff != "" {
				t.Errorf("podProblem (-want +got):\n%s", diff)
			}
		})
	}
}

// The condition is written again only when the pod's reason changes: a new
// wording of the same problem, or a kubelet going from ErrImagePull to
// ImagePullBackOff and back, keeps the message as it is, so it costs no write.
func TestRunningKeepsTheMessageOfTheSameProblem(t *testing.T) {
	const shown = `ErrImagePull: not found (pod req-1-abcde of job req-1)`
	tests := []struct {
		name       string
		podReason  string
		wantReason string
		wantPrefix string
	}{
		{name: "the same reason", podReason: "ErrImagePull", wantReason: inferencev1alpha1.ReasonPodPending, wantPrefix: shown},
		{name: "backing off the same pull", podReason: "ImagePullBackOff", wantReason: inferencev1alpha1.ReasonPodPending, wantPrefix: shown},
		{name: "another problem", podReason: "CreateContainerConfigError", wantReason: inferencev1alpha1.ReasonPodPending,
			wantPrefix: "CreateContainerConfigError: CreateContainerConfigError message (pod req-1-abcde of job req-1)"},
		{name: "started", podReason: "ContainerCreating", wantReason: inferencev1alpha1.ReasonJobCreated, wantPrefix: "job req-1 is running"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			job := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "req-1", Namespace: "ml", UID: "job-uid"}}
			pod := waitingPod(false, tc.podReason)
			pod.ObjectMeta = metav1.ObjectMeta{Name: "req-1-abcde", Namespace: "ml",
				OwnerReferences: []metav1.OwnerReference{{Kind: "Job", Name: "req-1", UID: "job-uid", Controller: ptr.To(true)}}}
			scheme := runtime.NewScheme()
			if err := clientgoscheme.AddToScheme(scheme); err != nil {
				t.Fatal(err)
			}
			r := &InferenceRequestReconciler{pendingPods: fake.NewClientBuilder().WithScheme(scheme).WithObjects(pod).
				WithIndex(&corev1.Pod{}, slimcache.JobIndex, slimcache.IndexByJob).Build()}
			ir := &inferencev1alpha1.InferenceRequest{ObjectMeta: metav1.ObjectMeta{Name: "req-1", Namespace: "ml"}}
			ir.Status.Phase, ir.Status.StartTime = inferencev1alpha1.PhaseRunning, ptr.To(metav1.Now())
			ir.Status.Conditions = []metav1.Condition{{Type: inferencev1alpha1.ConditionComplete, Status: metav1.ConditionFalse,
				Reason: inferencev1alpha1.ReasonPodPending, Message: shown}}
			s := newRequestState(ir, time.Now())

			if err := r.running(context.Background(), s, job); err != nil {
				t.Fatal(err)
			}
			c := meta.FindStatusCondition(s.status.Conditions, inferencev1alpha1.ConditionComplete)
			if c.Reason != tc.wantReason || len(c.Message) < len(tc.wantPrefix) || c.Message[:len(tc.wantPrefix)] != tc.wantPrefix {
				t.Errorf("condition %s: %q, want %s: %q…", c.Reason, c.Message, tc.wantReason, tc.wantPrefix)
			}
		})
	}
}
