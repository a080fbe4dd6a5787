package controllers

import (
	"encoding/json"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

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
	// waitingForSlot is set when a callback is due but its host has as many
	// in flight as allowed; the request waits in line for a slot.
	waitingForSlot bool
}

func newRequestState(ir *inferencev1alpha1.InferenceRequest, now time.Time) *requestState {
	s := &requestState{ir: ir, status: *ir.Status.DeepCopy(), now: metav1.NewTime(now)}
	if s.status.Phase == "" {
		s.status.Phase = inferencev1alpha1.PhasePending
	}
	if s.status.Delivery.State == "" {
		s.status.Delivery.State = inferencev1alpha1.DeliveryPending
		reason, message := inferencev1alpha1.ReasonAwaitingResult, "the callback is sent once the request completes"
		if ir.Spec.CallbackURL == "" {
			s.status.Delivery.State = inferencev1alpha1.DeliveryNotRequested
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

// complete reports whether the request has succeeded or failed.
func (s *requestState) complete() bool {
	return s.status.Phase == inferencev1alpha1.PhaseSucceeded || s.status.Phase == inferencev1alpha1.PhaseFailed
}

// waiting moves the request to a not-yet-complete phase; an Event of
// eventType marks each change, unless eventType is empty.
func (s *requestState) waiting(phase inferencev1alpha1.RequestPhase, reason, message, eventType string) {
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
	s.record(corev1.EventTypeNormal, inferencev1alpha1.ReasonSucceeded, "The worker wrote a result")
}

func (s *requestState) fail(reason, message string) {
	message = truncate(message, maxErrorBytes)
	s.status.Phase = inferencev1alpha1.PhaseFailed
	s.status.Error = message
	s.status.CompletionTime = s.now.DeepCopy()
	s.setCondition(inferencev1alpha1.ConditionComplete, metav1.ConditionTrue, reason, message)
	s.record(corev1.EventTypeWarning, reason, message)
}

// deliveryOver reports whether delivery has reached an end: delivered, given
// up, or never asked for.
func deliveryOver(state inferencev1alpha1.DeliveryState) bool {
	return state == inferencev1alpha1.DeliveryDelivered || state == inferencev1alpha1.DeliveryFailed ||
		state == inferencev1alpha1.DeliveryNotRequested
}

// ended reports whether nothing is left to do for the request but to expire it.
func ended(ir *inferencev1alpha1.InferenceRequest) bool {
	phase := ir.Status.Phase
	return (phase == inferencev1alpha1.PhaseSucceeded || phase == inferencev1alpha1.PhaseFailed) &&
		deliveryOver(ir.Status.Delivery.State)
}

// endTime is when an ended request reached its end, from which its TTL runs.
func endTime(ir *inferencev1alpha1.InferenceRequest) time.Time {
	d := ir.Status.Delivery
	for _, t := range []*metav1.Time{d.DeliveredTime, d.LastAttemptTime, ir.Status.CompletionTime} {
		if t != nil {
			return t.Time
		}
	}
	return ir.CreationTimestamp.Time
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
