package controllers

import (
	"fmt"
	"time"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
)

// limits are the bounds one request runs under: its model's, or its own
// where it asks for less. A request can never get more than its model
// allows: the admission policy refuses it at create, and should the model
// be edited later, the shorter limit still wins here.
type limits struct {
	// queueTimeout is how long the request may wait to start; 0 is no limit.
	queueTimeout time.Duration
	// runTimeout is how long it may run once started, in seconds; nil
	// leaves it to the model's default.
	runTimeout *int64
}

func limitsOf(ir *inferencev1alpha1.InferenceRequest, model *inferencev1alpha1.InferenceModel) limits {
	var l limits
	if model != nil {
		l.runTimeout = ir.RunTimeoutSeconds(model)
	}
	if queue := ir.QueueTimeoutSeconds(model); queue != nil {
		l.queueTimeout = time.Duration(*queue) * time.Second
	}
	return l
}

// startDeadline is when a request that has not started ends as QueueTimeout;
// ok is false when nothing bounds its wait.
func (l limits) startDeadline(ir *inferencev1alpha1.InferenceRequest) (deadline time.Time, ok bool) {
	if l.queueTimeout <= 0 {
		return time.Time{}, false
	}
	return ir.CreationTimestamp.Add(l.queueTimeout), true
}

// waitNote tells, for a condition's message, how long a waiting request may
// still wait. It names the deadline rather than the time left, so the
// message stays the same from one reconcile to the next and costs no write.
func (l limits) waitNote(ir *inferencev1alpha1.InferenceRequest) string {
	deadline, ok := l.startDeadline(ir)
	if !ok {
		return ""
	}
	return fmt.Sprintf("; it must start by %s (queueTimeoutSeconds %d) or it fails with reason %s",
		deadline.UTC().Format(time.RFC3339), int64(l.queueTimeout.Seconds()), inferencev1alpha1.ReasonQueueTimeout)
}

// runNote tells, for a condition's message, how long a running request may
// still run, counted from when its Job was created.
func (l limits) runNote(started time.Time) string {
	if l.runTimeout == nil || started.IsZero() {
		return ""
	}
	deadline := started.Add(time.Duration(*l.runTimeout) * time.Second)
	return fmt.Sprintf("; it may run until about %s (timeoutSeconds %d)", deadline.UTC().Format(time.RFC3339), *l.runTimeout)
}
