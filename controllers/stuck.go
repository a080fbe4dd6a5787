package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	ctrl "sigs.k8s.io/controller-runtime"
	crcache "sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/source"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/slimcache"
)

// maxPodMessageBytes bounds how much of a pod's own message a condition
// repeats; a scheduler's message lists every node's objection.
const maxPodMessageBytes = 1024

// startingReasons are the waiting reasons of a container on its way to
// running: every pod passes through them, so they are no problem.
var startingReasons = []string{"", "ContainerCreating", "PodInitializing"}

// podProblem says why a pending pod cannot start: the scheduler's reason
// while it is not scheduled (Unschedulable, SchedulingGated), or the first
// container's waiting reason other than a normal start (ImagePullBackOff,
// ErrImagePull, CreateContainerConfigError, ...). Both are "" for a pod that
// is on its way.
func podProblem(pod *corev1.Pod) (reason, message string) {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status != corev1.ConditionTrue && c.Reason != "" {
			return c.Reason, c.Message
		}
	}
	for _, statuses := range [][]corev1.ContainerStatus{pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses} {
		for _, s := range statuses {
			if w := s.State.Waiting; w != nil && !slices.Contains(startingReasons, w.Reason) {
				return w.Reason, w.Message
			}
		}
	}
	return "", ""
}

// problemKind is what a condition's message is kept by: a kubelet that
// cannot pull an image goes back and forth between ErrImagePull and
// ImagePullBackOff on every try, which is one problem, not a change to write.
func problemKind(reason string) string {
	if reason == "ErrImagePull" {
		return "ImagePullBackOff"
	}
	return reason
}

// running records a Job that has not finished as Running. While its newest
// pod cannot start, the Complete condition says why, in the pod's words
// (reason PodPending); once the pod runs, it goes back to JobCreated. The
// condition is rewritten only when the pod's reason changes, never for a new
// wording of the same reason.
func (r *InferenceRequestReconciler) running(ctx context.Context, s *requestState, job *batchv1.Job) error {
	note := s.limits.runNote(s.status.StartTime.Time)
	pod, reason, podMessage, err := r.stuckPod(ctx, job)
	if err != nil {
		return err
	}
	if reason == "" {
		// No Event: status shows it, and the Job has Events of its own.
		s.inProgress(inferencev1alpha1.PhaseRunning, inferencev1alpha1.ReasonJobCreated,
			fmt.Sprintf("job %s is running%s", job.Name, note), "")
		return nil
	}
	message := joinMessages(reason, truncate(podMessage, maxPodMessageBytes)) +
		fmt.Sprintf(" (pod %s of job %s)%s", pod, job.Name, note)
	c := meta.FindStatusCondition(s.status.Conditions, inferencev1alpha1.ConditionComplete)
	if c != nil && c.Reason == inferencev1alpha1.ReasonPodPending && s.status.Phase == inferencev1alpha1.PhaseRunning {
		shown, _, _ := strings.Cut(c.Message, ":")
		if shown, _, _ = strings.Cut(shown, " "); problemKind(shown) == problemKind(reason) {
			message = c.Message
		}
	}
	// No Event either: the pod's own Events tell the detail.
	s.inProgress(inferencev1alpha1.PhaseRunning, inferencev1alpha1.ReasonPodPending, message, "")
	return nil
}

// stuckPod finds the newest pending pod of job that cannot start, in the
// cache of pending pods, and says why.
func (r *InferenceRequestReconciler) stuckPod(ctx context.Context, job *batchv1.Job) (pod, reason, message string, err error) {
	var pods corev1.PodList
	if err := r.pendingPods.List(ctx, &pods, client.InNamespace(job.Namespace),
		client.MatchingFields{slimcache.JobIndex: string(job.UID)}); err != nil {
		return "", "", "", err
	}
	slices.SortFunc(pods.Items, func(a, b corev1.Pod) int { return b.CreationTimestamp.Compare(a.CreationTimestamp.Time) })
	for i := range pods.Items {
		if reason, message = podProblem(&pods.Items[i]); reason != "" {
			return pods.Items[i].Name, reason, message, nil
		}
	}
	return "", "", "", nil
}

// watchPendingPods starts the cache of pending pods (slimcache.PendingPodOptions)
// with mgr, and returns the source that brings a request back when why its
// pod cannot start changes: it became stuck, got stuck another way, or
// started (it then leaves the cache). A pod starting normally brings nothing.
func (r *InferenceRequestReconciler) watchPendingPods(ctx context.Context, mgr ctrl.Manager) (source.Source, error) {
	opts := slimcache.PendingPodOptions()
	opts.Scheme, opts.Mapper, opts.HTTPClient = mgr.GetScheme(), mgr.GetRESTMapper(), mgr.GetHTTPClient()
	pending, err := crcache.New(mgr.GetConfig(), opts)
	if err != nil {
		return nil, err
	}
	if err := pending.IndexField(ctx, &corev1.Pod{}, slimcache.JobIndex, slimcache.IndexByJob); err != nil {
		return nil, err
	}
	if err := mgr.Add(pending); err != nil {
		return nil, err
	}
	r.pendingPods = pending
	problem := func(pod *corev1.Pod) string {
		reason, _ := podProblem(pod)
		return problemKind(reason)
	}
	changed := predicate.TypedFuncs[*corev1.Pod]{
		CreateFunc:  func(e event.TypedCreateEvent[*corev1.Pod]) bool { return problem(e.Object) != "" },
		UpdateFunc:  func(e event.TypedUpdateEvent[*corev1.Pod]) bool { return problem(e.ObjectOld) != problem(e.ObjectNew) },
		DeleteFunc:  func(e event.TypedDeleteEvent[*corev1.Pod]) bool { return problem(e.Object) != "" },
		GenericFunc: func(event.TypedGenericEvent[*corev1.Pod]) bool { return false },
	}
	toRequest := handler.TypedEnqueueRequestsFromMapFunc(func(_ context.Context, pod *corev1.Pod) []ctrl.Request {
		name := pod.Labels[inferencev1alpha1.LabelRequest]
		if name == "" {
			return nil
		}
		return []ctrl.Request{{NamespacedName: client.ObjectKey{Namespace: pod.Namespace, Name: name}}}
	})
	return source.Kind(pending, &corev1.Pod{}, toRequest, changed), nil
}
