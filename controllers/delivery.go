package controllers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/callback"
	"github.com/kinfer/kinfer/internal/hostlimit"
)

// Delivery settings for what the model leaves unset, and the schedule used
// when the model is gone by the time a callback is due.
var (
	defaultCallbackTimeout = 15 * time.Second
	defaultRetrySchedule   = []time.Duration{
		5 * time.Second, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour, 5 * time.Hour, 10 * time.Hour, 10 * time.Hour,
	}
)

// deliver makes the callback attempt that is due, if one is, and records its
// outcome in the status being computed.
func (r *InferenceRequestReconciler) deliver(ctx context.Context, s *requestState) error {
	d := &s.status.Delivery
	if !s.status.Phase.Complete() || d.State.Over() {
		return nil
	}
	if d.NextAttemptTime != nil && s.now.Before(d.NextAttemptTime) {
		return nil
	}
	hostname := hostlimit.Host(s.ir.Spec.CallbackURL)
	if !r.hosts.Acquire(hostname, client.ObjectKeyFromObject(s.ir)) {
		s.waitingForHost = true
		return nil
	}
	defer r.hosts.Release(hostname)
	// The cache may lag behind this manager's own last status write, and a
	// request read from it could look undelivered when it is not. Sending is
	// the one step that cannot be taken back, so it waits for the fresh copy.
	fresh := &inferencev1alpha1.InferenceRequest{}
	if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(s.ir), fresh); err != nil {
		return err
	}
	if fresh.ResourceVersion != s.ir.ResourceVersion {
		s.stale = true
		return nil
	}

	model, err := r.model(ctx, s.ir)
	if err != nil {
		return err
	}
	schedule := defaultRetrySchedule
	var outcome callback.Outcome
	if model == nil {
		// Without the model its signing keys are unknown, and an unsigned
		// callback must not stand in for a signed one.
		gone := fmt.Sprintf("InferenceModel %s no longer exists", s.ir.Spec.Model)
		outcome = callback.Failed(errors.New(gone), gone)
	} else {
		var timeout time.Duration
		timeout, schedule = deliverySettings(model)
		outcome = r.send(ctx, s, model, timeout)
	}
	logAttempt(ctx, outcome, s.status.Delivery.Attempts+1)
	s.recordAttempt(outcome, schedule, r.Jitter)
	return nil
}

// logAttempt logs an attempt's outcome. A failure is logged in full, with
// the addresses and resolver errors that status and the client never see.
func logAttempt(ctx context.Context, o callback.Outcome, attempt int32) {
	log := ctrl.LoggerFrom(ctx)
	if o.Delivered() {
		log.V(1).Info("Delivered callback", "attempt", attempt, "statusCode", o.StatusCode)
		return
	}
	if o.Err == nil {
		log.Info("Callback attempt failed", "attempt", attempt, "failure", o.Describe(), "statusCode", o.StatusCode)
		return
	}
	log.Info("Callback attempt failed", "attempt", attempt, "failure", o.Describe(), "error", o.Err.Error())
}

func deliverySettings(model *inferencev1alpha1.InferenceModel) (time.Duration, []time.Duration) {
	timeout := defaultCallbackTimeout
	if t := model.Spec.Callback.TimeoutSeconds; t != nil {
		timeout = time.Duration(*t) * time.Second
	}
	schedule := make([]time.Duration, 0, len(model.Spec.Callback.RetrySchedule))
	for _, wait := range model.Spec.Callback.RetrySchedule {
		schedule = append(schedule, wait.Duration)
	}
	return timeout, schedule
}

// send POSTs the request's outcome to its callback, signed with the model's keys.
func (r *InferenceRequestReconciler) send(
	ctx context.Context, s *requestState, model *inferencev1alpha1.InferenceModel, timeout time.Duration,
) callback.Outcome {
	keys, err := r.signingKeys(ctx, model)
	var unusable *signingSecretError
	if errors.As(err, &unusable) {
		return callback.Failed(err, unusable.problem)
	}
	if err != nil {
		return callback.Failed(err, "signing secret could not be read")
	}
	body, err := json.Marshal(payload(s))
	if err != nil {
		return callback.Failed(err, "the callback body could not be encoded")
	}
	return r.Sender.Send(ctx, callback.Attempt{
		URL:       s.ir.Spec.CallbackURL,
		WebhookID: webhookID(s.ir),
		Timestamp: r.Clock.Now(),
		Body:      body,
		Keys:      keys,
		Timeout:   timeout,
	})
}

// signingSecretError says why the model's signing secret cannot sign. No
// callback is sent without the signatures the model asks for; the attempt
// fails and is retried on the schedule, so fixing the Secret resumes delivery.
type signingSecretError struct {
	// problem is what status and the client read: it names neither the
	// Secret nor anything the API server said.
	problem string
	// detail is the full story, for the manager's log.
	detail error
}

func (e *signingSecretError) Error() string { return e.detail.Error() }
func (e *signingSecretError) Unwrap() error { return e.detail }

// signingKeys reads the model's signing secret; a model without one signs
// nothing. Only a Secret labelled as a signing key signs: a model may name
// any Secret of its namespace, and must not be a way to obtain signatures
// made with keys its editor cannot read.
func (r *InferenceRequestReconciler) signingKeys(ctx context.Context, model *inferencev1alpha1.InferenceModel) ([]callback.Key, error) {
	ref := model.Spec.Callback.SigningSecretRef
	if ref == nil {
		return nil, nil
	}
	unusable := func(problem string, detail error) error {
		return &signingSecretError{problem: problem, detail: fmt.Errorf("signing secret %s: %w", ref.Name, detail)}
	}
	secret := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: model.Namespace, Name: ref.Name}, secret); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, unusable("signing secret not found", err)
		}
		return nil, unusable("signing secret could not be read", err)
	}
	if secret.Labels[inferencev1alpha1.LabelSigningKey] != "true" {
		problem := fmt.Sprintf("signing secret is not labelled %s=true", inferencev1alpha1.LabelSigningKey)
		return nil, unusable(problem, errors.New(problem))
	}
	value, ok := secret.Data[ref.Key]
	if !ok {
		problem := fmt.Sprintf("signing secret has no key %q", ref.Key)
		return nil, unusable(problem, errors.New(problem))
	}
	keys, err := callback.ParseKeys(string(value))
	if err != nil {
		return nil, unusable(fmt.Sprintf("signing secret key %q: %v", ref.Key, err), err)
	}
	return keys, nil
}

// webhookID is the request's webhook-id: derived from its UID, so every
// attempt, by this manager or a restarted one, carries the same id.
func webhookID(ir *inferencev1alpha1.InferenceRequest) string {
	return "msg_" + strings.ReplaceAll(string(ir.UID), "-", "")
}

func payload(s *requestState) callback.Payload {
	p := callback.Payload{Type: callback.EventCompleted, ID: requestID(s.ir)}
	if s.status.Phase == inferencev1alpha1.PhaseSucceeded {
		p.Status = callback.StatusSucceeded
		p.Result = json.RawMessage("null")
		if s.status.Result != nil && len(s.status.Result.Raw) > 0 {
			p.Result = s.status.Result.Raw
		}
		return p
	}
	if s.status.Phase == inferencev1alpha1.PhaseCanceled {
		p.Status = callback.StatusCanceled
		return p
	}
	p.Status = callback.StatusFailed
	if c := meta.FindStatusCondition(s.status.Conditions, inferencev1alpha1.ConditionComplete); c != nil &&
		c.Reason == inferencev1alpha1.ReasonQueueTimeout {
		p.Status = callback.StatusExpired
	}
	p.Error = s.status.Error
	return p
}

// redeliverAsked returns the redeliver annotation's value when it asks for
// something not yet acted on.
func redeliverAsked(ir *inferencev1alpha1.InferenceRequest) (string, bool) {
	value, ok := ir.Annotations[inferencev1alpha1.AnnotationRedeliver]
	return value, ok && value != ir.Status.Delivery.ObservedRedeliver
}

// redeliver starts a fresh delivery of an ended request whose delivery is
// over: the same webhook-id, so receivers that deduplicate can, and attempts
// counted again from one. How the last delivery ended is told in an Event.
// A request whose callback is still to be delivered needs none.
func (s *requestState) redeliver(value string) {
	d := &s.status.Delivery
	d.ObservedRedeliver = value
	switch {
	case d.State == inferencev1alpha1.DeliveryNotRequested:
		s.record(corev1.EventTypeWarning, inferencev1alpha1.ReasonNoCallback,
			"Redelivery asked for, but the request has no callbackURL")
		return
	case !s.status.Phase.Complete() || d.State == inferencev1alpha1.DeliveryPending:
		s.record(corev1.EventTypeNormal, inferencev1alpha1.ReasonRedelivering,
			"Redelivery asked for while the callback is still to be delivered; nothing more to do")
		return
	}
	previous := fmt.Sprintf("the previous delivery ended %s after %d attempts", d.State, d.Attempts)
	if c := meta.FindStatusCondition(s.status.Conditions, inferencev1alpha1.ConditionDelivered); c != nil {
		previous = fmt.Sprintf("%s (%s: %s)", previous, c.Reason, c.Message)
	}
	*d = inferencev1alpha1.DeliveryStatus{
		State: inferencev1alpha1.DeliveryPending, WebhookID: webhookID(s.ir), ObservedRedeliver: value,
	}
	s.setCondition(inferencev1alpha1.ConditionDelivered, metav1.ConditionFalse, inferencev1alpha1.ReasonRedelivering,
		truncate("a redelivery was asked for; "+previous, maxErrorBytes))
	s.record(corev1.EventTypeNormal, inferencev1alpha1.ReasonRedelivering, "Redelivery asked for; "+previous)
}

// recordAttempt writes one attempt's outcome into the delivery status, and
// either ends delivery or schedules the next attempt.
func (s *requestState) recordAttempt(o callback.Outcome, schedule []time.Duration, jitter func(time.Duration) time.Duration) {
	d := &s.status.Delivery
	d.WebhookID = webhookID(s.ir)
	d.Attempts++
	d.LastAttemptTime = s.now.DeepCopy()
	d.LastStatusCode = int32(o.StatusCode)
	d.NextAttemptTime = nil
	if o.Delivered() {
		d.State = inferencev1alpha1.DeliveryDelivered
		d.DeliveredTime = s.now.DeepCopy()
		d.LastError = ""
		s.setCondition(inferencev1alpha1.ConditionDelivered, metav1.ConditionTrue, inferencev1alpha1.ReasonDelivered,
			fmt.Sprintf("the receiver answered %d", o.StatusCode))
		s.record(corev1.EventTypeNormal, inferencev1alpha1.ReasonDelivered, fmt.Sprintf("Callback delivered on attempt %d", d.Attempts))
		return
	}

	d.LastError = truncate(o.Describe(), maxLastErrorBytes)
	switch wait, retry := callback.Next(schedule, d.Attempts, o.RetryAfter, jitter); {
	case o.Gone():
		s.deliveryFailed(inferencev1alpha1.ReasonGone, "the receiver answered 410 Gone; no more attempts")
	case o.Denied():
		s.deliveryFailed(inferencev1alpha1.ReasonCallbackDenied, d.LastError)
	case !retry:
		s.deliveryFailed(inferencev1alpha1.ReasonRetriesExhausted,
			fmt.Sprintf("all %d attempts failed; the last: %s", d.Attempts, d.LastError))
	default:
		// Status times are stored in whole seconds; rounding up keeps a
		// restarted or re-reconciled manager from sending before the wait is over.
		next := metav1.NewTime(s.now.Add(wait + time.Second - 1).Truncate(time.Second))
		d.NextAttemptTime = &next
		reason := inferencev1alpha1.ReasonRetrying
		var unusable *signingSecretError
		if errors.As(o.Err, &unusable) {
			reason = inferencev1alpha1.ReasonSigningSecretUnreadable
		}
		message := fmt.Sprintf("attempt %d failed (%s); next attempt at %s", d.Attempts, d.LastError, next.UTC().Format(time.RFC3339))
		s.setCondition(inferencev1alpha1.ConditionDelivered, metav1.ConditionFalse, reason, truncate(message, maxErrorBytes))
		s.record(corev1.EventTypeWarning, reason, message)
	}
}

func (s *requestState) deliveryFailed(reason, message string) {
	s.status.Delivery.State = inferencev1alpha1.DeliveryFailed
	s.setCondition(inferencev1alpha1.ConditionDelivered, metav1.ConditionFalse, reason, truncate(message, maxErrorBytes))
	s.record(corev1.EventTypeWarning, reason, message)
}
