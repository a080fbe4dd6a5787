package testutil

import (
	"context"
	"fmt"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// envtest runs no Job controller and no kubelet. These helpers play their
// parts: a pod owned by the Job that ran to an end, then the Job's final
// conditions, in the shape the API server accepts.

// CompleteJob finishes job successfully, its pod's first container leaving
// message as its termination message.
func CompleteJob(ctx context.Context, c client.Client, job *batchv1.Job, message string) error {
	if _, err := FinishedPod(ctx, c, job, corev1.PodSucceeded, 0, message); err != nil {
		return err
	}
	now := metav1.Now()
	job.Status.StartTime = ptr.To(metav1.NewTime(now.Add(-time.Second)))
	job.Status.CompletionTime = &now
	job.Status.Succeeded = 1
	job.Status.Conditions = append(job.Status.Conditions,
		batchv1.JobCondition{Type: batchv1.JobSuccessCriteriaMet, Status: corev1.ConditionTrue, LastTransitionTime: now, LastProbeTime: now},
		batchv1.JobCondition{Type: batchv1.JobComplete, Status: corev1.ConditionTrue, LastTransitionTime: now, LastProbeTime: now},
	)
	return c.Status().Update(ctx, job)
}

// FailJob fails job with the Job controller's reason (e.g. BackoffLimitExceeded,
// DeadlineExceeded, PodFailurePolicy). exitCode 0 leaves no failed pod behind,
// as when the deadline passes before any pod ends.
func FailJob(ctx context.Context, c client.Client, job *batchv1.Job, reason string, exitCode int32, message string) error {
	if exitCode != 0 {
		if _, err := FinishedPod(ctx, c, job, corev1.PodFailed, exitCode, message); err != nil {
			return err
		}
		job.Status.Failed = 1
	}
	now := metav1.Now()
	job.Status.StartTime = ptr.To(metav1.NewTime(now.Add(-time.Second)))
	job.Status.Conditions = append(job.Status.Conditions,
		batchv1.JobCondition{Type: batchv1.JobFailureTarget, Status: corev1.ConditionTrue, Reason: reason,
			LastTransitionTime: now, LastProbeTime: now},
		batchv1.JobCondition{Type: batchv1.JobFailed, Status: corev1.ConditionTrue, Reason: reason,
			Message: "set by the test harness", LastTransitionTime: now, LastProbeTime: now},
	)
	return c.Status().Update(ctx, job)
}

// FinishedPod creates a pod of job, as the Job controller would, and moves it
// to phase with its first container terminated with exitCode and message.
func FinishedPod(
	ctx context.Context, c client.Client, job *batchv1.Job, phase corev1.PodPhase, exitCode int32, message string,
) (*corev1.Pod, error) {
	pod, err := JobPod(ctx, c, job)
	if err != nil {
		return nil, err
	}
	now := metav1.Now()
	first := pod.Spec.Containers[0]
	pod.Status = corev1.PodStatus{
		Phase: phase,
		ContainerStatuses: []corev1.ContainerStatus{{
			Name:  first.Name,
			Image: first.Image,
			State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: exitCode, Message: message, Reason: reasonFor(exitCode), StartedAt: now, FinishedAt: now,
			}},
		}},
	}
	if err := c.Status().Update(ctx, pod); err != nil {
		return nil, fmt.Errorf("finishing pod %s: %w", pod.Name, err)
	}
	return pod, nil
}

// JobPod creates a pod of job as the Job controller would; the API server
// makes it Pending. Its status is the caller's to set, as a kubelet would.
func JobPod(ctx context.Context, c client.Client, job *batchv1.Job) (*corev1.Pod, error) {
	template := job.Spec.Template.DeepCopy()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: job.Name + "-",
			Namespace:    job.Namespace,
			Labels:       template.Labels,
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "batch/v1", Kind: "Job", Name: job.Name, UID: job.UID,
				Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true),
			}},
		},
		Spec: template.Spec,
	}
	if err := c.Create(ctx, pod); err != nil {
		return nil, fmt.Errorf("creating pod of job %s: %w", job.Name, err)
	}
	return pod, nil
}

func reasonFor(exitCode int32) string {
	if exitCode == 0 {
		return "Completed"
	}
	return "Error"
}
