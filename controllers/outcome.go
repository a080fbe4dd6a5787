package controllers

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/jobstate"
	"github.com/kinfer/kinfer/pkg/worker"
)

// readOutcome records a running Job, or the result or error of a finished one.
func (r *InferenceRequestReconciler) readOutcome(ctx context.Context, s *requestState, job *batchv1.Job) error {
	s.started(job.Name)
	if o, ok := r.pool.OutcomeOf(client.ObjectKeyFromObject(s.ir)); ok && !o.Failed() {
		// The pod sent its result through the work API, and waits until it
		// is stored before it exits.
		s.succeed(o.Result)
		s.outcomeFromPool = true
		return nil
	}
	condition := jobstate.Final(job)
	switch {
	case condition == nil && !job.DeletionTimestamp.IsZero():
		s.fail(inferencev1alpha1.ReasonJobDeleted, fmt.Sprintf("job %s was deleted before it finished", job.Name))
	case condition == nil && ptr.Deref(job.Spec.Suspend, false):
		return r.awaitAdmission(ctx, s, job)
	case condition == nil:
		return r.running(ctx, s, job)
	case condition.Type == batchv1.JobComplete:
		return r.readResult(ctx, s, job)
	default:
		return r.readFailure(ctx, s, job, condition)
	}
	return nil
}

// awaitAdmission keeps a request whose Job is suspended, waiting for its
// queue (Kueue) to admit it, Queued; once its queue timeout passes, the Job
// is deleted and the request ends as QueueTimeout.
func (r *InferenceRequestReconciler) awaitAdmission(ctx context.Context, s *requestState, job *batchv1.Job) error {
	if !s.waitedTooLong() {
		s.inProgress(inferencev1alpha1.PhaseQueued, inferencev1alpha1.ReasonWaitingForAdmission,
			fmt.Sprintf("job %s is suspended until its queue admits it%s", job.Name, s.limits.waitNote(s.ir)),
			corev1.EventTypeNormal)
		return nil
	}
	err := r.Delete(ctx, job, client.PropagationPolicy(metav1.DeletePropagationBackground), client.Preconditions{UID: &job.UID})
	return client.IgnoreNotFound(err)
}

// pods reads the Job's pods, newest first, from the API server: the cache
// holds only their metadata, which names them. It stops at the first pod that
// is settled (shows what the caller needs), so a finished Job costs one read
// of its pod. The cache's pod informer can lag behind its Job informer: when
// the cache names no settled pod, the Job's pods are listed from the API
// server, since the Job controller finishes a Job only after its pods' final
// status is stored.
func (r *InferenceRequestReconciler) pods(
	ctx context.Context, job *batchv1.Job, settled func(*corev1.Pod) bool,
) ([]corev1.Pod, error) {
	var pods []corev1.Pod
	for _, name := range r.jobPods.Names(job.UID) {
		var pod corev1.Pod
		err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: job.Namespace, Name: name}, &pod)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if isOwnedByJob(&pod, job) {
			pods = append(pods, pod)
		}
	}
	pods = ownedNewestFirst(pods, job)
	if i := slices.IndexFunc(pods, func(p corev1.Pod) bool { return settled(&p) }); i >= 0 {
		return pods[:i+1], nil
	}
	var list corev1.PodList
	if err := r.APIReader.List(ctx, &list, client.InNamespace(job.Namespace),
		client.MatchingLabels{inferencev1alpha1.LabelRequest: job.Labels[inferencev1alpha1.LabelRequest]}); err != nil {
		return nil, err
	}
	return ownedNewestFirst(list.Items, job), nil
}

func ownedNewestFirst(pods []corev1.Pod, job *batchv1.Job) []corev1.Pod {
	pods = slices.DeleteFunc(pods, func(p corev1.Pod) bool { return !isOwnedByJob(&p, job) })
	slices.SortFunc(pods, func(a, b corev1.Pod) int { return b.CreationTimestamp.Compare(a.CreationTimestamp.Time) })
	return pods
}

func isOwnedByJob(pod *corev1.Pod, job *batchv1.Job) bool {
	for _, ref := range pod.OwnerReferences {
		if ref.UID == job.UID {
			return true
		}
	}
	return false
}

// readResult takes the result from the succeeded pod's first container: the
// worker wrote it to its termination message.
func (r *InferenceRequestReconciler) readResult(ctx context.Context, s *requestState, job *batchv1.Job) error {
	container := job.Spec.Template.Spec.Containers[0].Name
	succeeded := func(p *corev1.Pod) bool {
		return p.Status.Phase == corev1.PodSucceeded && terminated(p, container) != nil
	}
	pods, err := r.pods(ctx, job, succeeded)
	if err != nil {
		return err
	}
	for i := range pods {
		if succeeded(&pods[i]) {
			s.succeed(parseResult(terminated(&pods[i], container).Message))
			return nil
		}
	}
	s.fail(inferencev1alpha1.ReasonResultLost,
		fmt.Sprintf("job %s completed but no succeeded pod with a terminated %s container is left to read the result from", job.Name, container))
	return nil
}

// readFailure says why the Job failed, in the words of its latest failed pod
// where there is one.
func (r *InferenceRequestReconciler) readFailure(
	ctx context.Context, s *requestState, job *batchv1.Job, failed *batchv1.JobCondition,
) error {
	pods, err := r.pods(ctx, job, func(p *corev1.Pod) bool {
		message, _ := failureMessage(p)
		return p.Status.Phase == corev1.PodFailed && message != ""
	})
	if err != nil {
		return err
	}
	var message string
	var exitCode int32
	for i := range pods {
		if pods[i].Status.Phase == corev1.PodFailed {
			if message, exitCode = failureMessage(&pods[i]); message != "" {
				break
			}
		}
	}
	s.fail(failureReason(job, failed, exitCode, message))
	return nil
}

// failureReason names why the Job failed, and says so before what the pod
// said (podMessage, from a pod that exited with exitCode).
func failureReason(job *batchv1.Job, failed *batchv1.JobCondition, exitCode int32, podMessage string) (reason, message string) {
	reason, message = inferencev1alpha1.ReasonJobFailed, podMessage
	switch {
	case failed.Reason == batchv1.JobReasonDeadlineExceeded:
		reason = inferencev1alpha1.ReasonDeadlineExceeded
		timeout := ptr.Deref(job.Spec.ActiveDeadlineSeconds, 0)
		message = joinMessages(fmt.Sprintf("ran longer than its timeoutSeconds (%d)", timeout), message)
	case failed.Reason == batchv1.JobReasonPodFailurePolicy && exitCode == worker.ExitBadInput:
		reason = inferencev1alpha1.ReasonInvalidInput
		message = joinMessages(fmt.Sprintf("the worker refused the input (exit code %d); not retried", worker.ExitBadInput), message)
	case failed.Reason == batchv1.JobReasonPodFailurePolicy && exitCode == worker.ExitResultTooLarge:
		reason = inferencev1alpha1.ReasonResultTooLarge
		message = joinMessages(fmt.Sprintf("the worker could not return its result (exit code %d); not retried",
			worker.ExitResultTooLarge), message)
	case failed.Reason == batchv1.JobReasonBackoffLimitExceeded:
		reason = inferencev1alpha1.ReasonBackoffLimitExceeded
		message = joinMessages(fmt.Sprintf("failed %d times", job.Status.Failed), message)
	default:
		message = joinMessages(failed.Message, message)
	}
	return reason, message
}

func joinMessages(what, why string) string {
	why = strings.TrimSpace(why)
	if why == "" {
		return what
	}
	if what == "" {
		return why
	}
	return what + ": " + why
}

// parseResult keeps a termination message that is JSON as that JSON, and
// anything else as a JSON string; an empty message is a null result.
func parseResult(message string) json.RawMessage {
	trimmed := strings.TrimSpace(message)
	if trimmed == "" {
		return json.RawMessage("null")
	}
	if json.Valid([]byte(trimmed)) {
		var compact bytes.Buffer
		if err := json.Compact(&compact, []byte(trimmed)); err == nil {
			return compact.Bytes()
		}
	}
	quoted, _ := json.Marshal(message)
	return quoted
}

// terminated returns the terminated state of the pod's first container (the
// one whose message is the result), or nil while it has not terminated.
func terminated(pod *corev1.Pod, container string) *corev1.ContainerStateTerminated {
	for _, s := range pod.Status.ContainerStatuses {
		if s.Name == container && s.State.Terminated != nil {
			return s.State.Terminated
		}
	}
	return nil
}

// failureMessage picks what a failed pod says about its failure: the first
// container that exited non-zero, its message or else its reason and code.
func failureMessage(pod *corev1.Pod) (message string, exitCode int32) {
	for _, s := range pod.Status.ContainerStatuses {
		t := s.State.Terminated
		if t == nil || t.ExitCode == 0 {
			continue
		}
		if msg := strings.TrimSpace(t.Message); msg != "" {
			return msg, t.ExitCode
		}
		return fmt.Sprintf("container %s exited with code %d (%s)", s.Name, t.ExitCode, t.Reason), t.ExitCode
	}
	if pod.Status.Message != "" {
		return pod.Status.Message, 0
	}
	return "", 0
}
