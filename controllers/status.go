package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
)

// Field limits from the API's validation; longer text is cut to fit.
const (
	maxErrorBytes     = 4096
	maxLastErrorBytes = 1024
)

// pendingEvent is an Event to emit once the status that records it has been written.
type pendingEvent struct {
	eventType, reason, note string
}

// requestState is one reconcile's view of a request: the object as read, the
// status being computed for it, and the Events its changes call for. Status is
// computed in memory and written once at the end.
type requestState struct {
	ir     *inferencev1alpha1.InferenceRequest
	status inferencev1alpha1.InferenceRequestStatus
	now    metav1.Time
	events []pendingEvent
	// stale is set when the API server holds a newer version of the request
	// than the cache gave; the reconcile then stops and waits for it.
	stale bool
	// waitingForHost is set when a callback is due but its host has as many
	// in flight as allowed; the request waits in line for a slot there.
	waitingForHost bool
	// limits are the request's queue and run limits, once its model is read.
	limits limits
	// wakeAt is when a request that has not ended must be looked at again
	// without any watch event: when its wait for a start runs out.
	wakeAt time.Time
	// deliverLater is set when the request ended in this reconcile and its
	// callback must wait for the end to be stored: a cancel is never held
	// up by a slow receiver.
	deliverLater bool
	// outcomeFromPool is set when the outcome came from the work API: once
	// it is stored, the pod that reported it gets its answer.
	outcomeFromPool bool
	// hold is set when the status is not to be written yet: the request is
	// looked at again at wakeAt.
	hold bool
}

// quiet holds the status as it is until until, and reports whether it does:
// it does while until is ahead.
func (s *requestState) quiet(until time.Time) bool {
	if !s.now.Time.Before(until) {
		return false
	}
	s.hold = true
	if s.wakeAt.IsZero() || until.Before(s.wakeAt) {
		s.wakeAt = until
	}
	return true
}

func newRequestState(ir *inferencev1alpha1.InferenceRequest, now time.Time) *requestState {
	s := &requestState{ir: ir, status: *ir.Status.DeepCopy(), now: metav1.NewTime(now)}
	s.status.Phase = ir.CurrentPhase()
	if s.status.Delivery.State == "" {
		s.status.Delivery.State = ir.CurrentDeliveryState()
		reason, message := inferencev1alpha1.ReasonAwaitingResult, "the callback is sent once the request completes"
		if s.status.Delivery.State == inferencev1alpha1.DeliveryNotRequested {
			reason, message = inferencev1alpha1.ReasonNoCallback, "the request has no callbackURL; read the result from status"
		}
		s.setCondition(inferencev1alpha1.ConditionDelivered, metav1.ConditionFalse, reason, message)
	}
	if meta.FindStatusCondition(s.status.Conditions, inferencev1alpha1.ConditionComplete) == nil {
		s.setCondition(inferencev1alpha1.ConditionComplete, metav1.ConditionFalse, string(inferencev1alpha1.PhasePending), "")
	}
	return s
}

func (s *requestState) setCondition(conditionType string, status metav1.ConditionStatus, reason, message string) {
	meta.SetStatusCondition(&s.status.Conditions, metav1.Condition{
		Type:               conditionType,
		Status:             status,
		Reason:             reason,
		Message:            message,
		ObservedGeneration: s.ir.Generation,
		LastTransitionTime: s.now,
	})
}

func (s *requestState) record(eventType, reason, note string) {
	s.events = append(s.events, pendingEvent{eventType: eventType, reason: reason, note: note})
}

// inProgress moves the request to a phase before completion (Pending,
// Queued or Running); an Event of eventType marks each change, unless
// eventType is empty.
func (s *requestState) inProgress(phase inferencev1alpha1.RequestPhase, reason, message, eventType string) {
	c := meta.FindStatusCondition(s.status.Conditions, inferencev1alpha1.ConditionComplete)
	changed := s.status.Phase != phase || c == nil || c.Reason != reason
	s.status.Phase = phase
	s.setCondition(inferencev1alpha1.ConditionComplete, metav1.ConditionFalse, reason, message)
	if changed && eventType != "" {
		s.record(eventType, reason, message)
	}
}

func (s *requestState) started(jobName string) {
	s.status.JobName = jobName
	if s.status.StartTime == nil {
		s.status.StartTime = s.now.DeepCopy()
	}
}

func (s *requestState) succeed(result json.RawMessage) {
	s.status.Phase = inferencev1alpha1.PhaseSucceeded
	s.status.Result = &apiextensionsv1.JSON{Raw: result}
	s.status.Error = ""
	s.status.CompletionTime = s.now.DeepCopy()
	s.setCondition(inferencev1alpha1.ConditionComplete, metav1.ConditionTrue, inferencev1alpha1.ReasonSucceeded, "the worker wrote a result")
	s.setCondition(inferencev1alpha1.ConditionFailed, metav1.ConditionFalse, inferencev1alpha1.ReasonSucceeded, "the worker wrote a result")
	s.record(corev1.EventTypeNormal, inferencev1alpha1.ReasonSucceeded, "The worker wrote a result")
}

func (s *requestState) fail(reason, message string) {
	s.end(inferencev1alpha1.PhaseFailed, reason, message)
}

// end ends the request without a result: Failed, with message as its error,
// or Canceled. The Failed condition is True only for the first: a cancel is
// what the client asked for.
func (s *requestState) end(phase inferencev1alpha1.RequestPhase, reason, message string) {
	message = truncate(message, maxErrorBytes)
	s.status.Phase = phase
	s.status.CompletionTime = s.now.DeepCopy()
	s.setCondition(inferencev1alpha1.ConditionComplete, metav1.ConditionTrue, reason, message)
	if phase == inferencev1alpha1.PhaseCanceled {
		s.setCondition(inferencev1alpha1.ConditionFailed, metav1.ConditionFalse, reason, message)
		s.record(corev1.EventTypeNormal, reason, upperFirst(message))
		return
	}
	s.setCondition(inferencev1alpha1.ConditionFailed, metav1.ConditionTrue, reason, message)
	s.status.Error = message
	s.record(corev1.EventTypeWarning, reason, message)
}

// waitedTooLong ends a request that has not started once its wait passes its
// queue timeout, and otherwise has it looked at again when it does.
func (s *requestState) waitedTooLong() bool {
	deadline, ok := s.limits.startDeadline(s.ir)
	if !ok {
		return false
	}
	if s.now.Time.Before(deadline) {
		s.wakeAt = deadline
		return false
	}
	s.fail(inferencev1alpha1.ReasonQueueTimeout, fmt.Sprintf("waited longer than its queueTimeoutSeconds (%d) to start",
		int64(s.limits.queueTimeout.Seconds())))
	return true
}

// truncate cuts s to at most n bytes without splitting a UTF-8 character.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// writeStatus writes the computed status when it differs from the stored one.
// It reports whether the reconcile may go on: a conflict means a newer version
// of the request is on its way through the watch and will be reconciled anew.
func (r *InferenceRequestReconciler) writeStatus(ctx context.Context, s *requestState) (bool, error) {
	s.status.ObservedGeneration = s.ir.Generation
	if equality.Semantic.DeepEqual(s.ir.Status, s.status) {
		return true, nil
	}
	patch := client.MergeFromWithOptions(s.ir.DeepCopy(), client.MergeFromWithOptimisticLock{})
	replaced := s.ir.ResourceVersion
	s.ir.Status = s.status
	err := r.Status().Patch(ctx, s.ir, patch)
	if err == nil {
		r.written.Wrote(client.ObjectKeyFromObject(s.ir), replaced)
	}
	if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
		ctrl.LoggerFrom(ctx).V(1).Info("Status changed underneath; reconciling again", "error", err.Error())
		return false, nil
	}
	return err == nil, err
}

// emit sends the Events one reconcile's changes call for. Every Warning is
// an Event of its own; Normal changes made in the same reconcile fold into
// one Event with the last reason and every note, so that the happy path
// (result read and callback delivered at once) costs the API server one
// Event rather than one per step.
func (r *InferenceRequestReconciler) emit(s *requestState) {
	var normal *pendingEvent
	for _, e := range s.events {
		if e.eventType != corev1.EventTypeNormal {
			r.Recorder.Eventf(s.ir, nil, e.eventType, e.reason, e.reason, "%s", e.note)
			continue
		}
		if normal == nil {
			normal = &pendingEvent{eventType: e.eventType, reason: e.reason, note: e.note}
			continue
		}
		normal.reason, normal.note = e.reason, normal.note+"; "+lowerFirst(e.note)
	}
	if normal != nil {
		r.Recorder.Eventf(s.ir, nil, normal.eventType, normal.reason, normal.reason, "%s", normal.note)
	}
}

func lowerFirst(note string) string {
	if note == "" {
		return note
	}
	return strings.ToLower(note[:1]) + note[1:]
}

func upperFirst(note string) string {
	if note == "" {
		return note
	}
	return strings.ToUpper(note[:1]) + note[1:]
}

// hostRecheck is how often a request waiting for a slot at its callback's
// host looks again, should its wake-up be lost.
const hostRecheck = 30 * time.Second

// requeue says when the request needs looking at again without any watch
// event: when its wait for a start runs out, or at its next delivery
// attempt. Everything else arrives by watch.
func (r *InferenceRequestReconciler) requeue(s *requestState) ctrl.Result {
	if s.waitingForHost {
		// Woken when a slot at its host is handed to it; the requeue is
		// only a safety net.
		return ctrl.Result{RequeueAfter: hostRecheck}
	}
	if !s.wakeAt.IsZero() && !s.status.Phase.Complete() {
		return ctrl.Result{RequeueAfter: max(s.wakeAt.Sub(r.Clock.Now()), time.Millisecond)}
	}
	next := s.status.Delivery.NextAttemptTime
	if s.status.Delivery.State != inferencev1alpha1.DeliveryPending || next == nil {
		return ctrl.Result{}
	}
	return ctrl.Result{RequeueAfter: max(next.Sub(r.Clock.Now()), time.Millisecond)}
}
