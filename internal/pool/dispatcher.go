// Package pool hands the requests of pool models to the pods that serve
// them: leases taken from the queue's index in its order, renewed while a
// pod works, handed out again when they run out, and the outcomes pods
// report, kept until the controller has stored them. The request objects are
// the queue; nothing here outlives the manager, and a manager that restarts
// hands out again what its predecessor had leased.
package pool

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/queue"
)

// ErrGone says a lease is no longer its request's: the request was canceled,
// ended, or handed to another pod. The pod drops the work.
var ErrGone = errors.New("the lease is gone")

// errNotStarted: the request's status does not show its Job yet.
var errNotStarted = errors.New("the request is not shown as started yet")

// Lease is one request handed to one pod.
type Lease struct {
	ID      string
	Request types.NamespacedName
	Model   types.NamespacedName
	Pod     string
	Given   time.Time
	Expires time.Time
	// Deadline is when the request has run as long as its timeout allows.
	Deadline time.Time
	length   time.Duration
}

// Item is what a pod is handed: a request and its lease.
type Item struct {
	Lease          string          `json:"lease"`
	ID             string          `json:"id"`
	Name           string          `json:"name"`
	Input          json.RawMessage `json:"input"`
	LeaseSeconds   int32           `json:"lease_seconds"`
	TimeoutSeconds int64           `json:"timeout_seconds,omitempty"`
}

// Outcome is how a pooled request ended, as its pod reported it (or as
// the dispatcher decided, when its retries ran out).
type Outcome struct {
	// Result is the worker's result, when it succeeded.
	Result json.RawMessage
	// Reason and Message say why it failed, when it did.
	Reason, Message string
	// Pod is the pod that reported it.
	Pod string

	stored chan struct{}
	// discarded is set, before stored is closed, when the request had
	// ended by the time the outcome came to be stored.
	discarded bool
}

// Failed reports whether the outcome is a failure.
func (o *Outcome) Failed() bool { return o.Reason != "" }

// Dispatcher hands out the requests of pool models. Make one with New; its
// methods may be called from any goroutine.
type Dispatcher struct {
	index  *queue.Index
	reader client.Reader
	clock  clock.WithDelayedExecution
	wake   func(types.NamespacedName)

	mu       sync.Mutex
	leases   map[string]*Lease
	byReq    map[types.NamespacedName]*Lease
	outcomes map[types.NamespacedName]*Outcome
	// handouts counts how often each request was handed out again after a
	// lease ended without an outcome, for the model's maxRetries.
	handouts map[types.NamespacedName]int32
	// signals are closed to tell pods waiting for a model's work that some
	// may be there.
	signals map[types.NamespacedName]chan struct{}
	// pods holds, for each model, the pods that asked for work lately and
	// when each last had some.
	pods map[types.NamespacedName]map[string]*podSeen
}

type podSeen struct {
	asked, worked time.Time
}

// New returns a Dispatcher taking work from index, reading requests through
// reader (the manager's cache), and calling wake with a request whose status
// should change: handed out, back in line, or ended.
func New(index *queue.Index, reader client.Reader, clk clock.WithDelayedExecution, wake func(types.NamespacedName)) *Dispatcher {
	d := &Dispatcher{
		index: index, reader: reader, clock: clk, wake: wake,
		leases:   map[string]*Lease{},
		byReq:    map[types.NamespacedName]*Lease{},
		outcomes: map[types.NamespacedName]*Outcome{},
		handouts: map[types.NamespacedName]int32{},
		signals:  map[types.NamespacedName]chan struct{}{},
		pods:     map[types.NamespacedName]map[string]*podSeen{},
	}
	index.OnWaiting(d.signal)
	return d
}

// QuietWrite is how long a request of a pool goes without a status write
// after it is created, and after it is handed out: a request taken and
// finished sooner is written once, ended, with no Queued or Running write
// before.
const QuietWrite = time.Second

// signal tells pods waiting for model's work to look again.
func (d *Dispatcher) signal(model types.NamespacedName) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if ch, ok := d.signals[model]; ok {
		close(ch)
		delete(d.signals, model)
	}
}

func (d *Dispatcher) waitFor(model types.NamespacedName) <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	ch, ok := d.signals[model]
	if !ok {
		ch = make(chan struct{})
		d.signals[model] = ch
	}
	return ch
}

// Take hands pod up to n of model's waiting requests, in the queue's order,
// waiting up to wait for some to come. exit is true when the pod should
// stop: it has had no work for the pool's idleSeconds and the pool has more
// pods than its min.
func (d *Dispatcher) Take(
	ctx context.Context, model *inferencev1alpha1.InferenceModel, pod string, n int, wait time.Duration,
) (items []Item, exit bool, err error) {
	key := types.NamespacedName{Namespace: model.Namespace, Name: model.Name}
	d.seen(key, pod)
	timer := d.clock.NewTimer(wait)
	defer timer.Stop()
	for {
		ready := d.waitFor(key)
		items, err = d.handOut(ctx, model, pod, n)
		if err != nil || len(items) > 0 {
			return items, false, err
		}
		select {
		case <-ready:
		case <-timer.C():
			return nil, d.shouldExit(key, pod, model.Spec.Workers), nil
		case <-ctx.Done():
			return nil, false, nil
		}
	}
}

func (d *Dispatcher) seen(model types.NamespacedName, pod string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	pods, ok := d.pods[model]
	if !ok {
		pods = map[string]*podSeen{}
		d.pods[model] = pods
	}
	now := d.clock.Now()
	if p, ok := pods[pod]; ok {
		p.asked = now
		return
	}
	pods[pod] = &podSeen{asked: now, worked: now}
}

// podForgotten is how long a pod that stopped asking for work still counts
// as one of its pool's.
const podForgotten = time.Minute

// shouldExit decides whether an idle pod should stop, and forgets it if so.
func (d *Dispatcher) shouldExit(model types.NamespacedName, pod string, w *inferencev1alpha1.WorkersSpec) bool {
	if w == nil {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.clock.Now()
	pods := d.pods[model]
	for name, p := range pods {
		if now.Sub(p.asked) > podForgotten {
			delete(pods, name)
		}
	}
	p, ok := pods[pod]
	if !ok || len(pods) <= int(w.Min) || now.Sub(p.worked) < time.Duration(w.IdleSeconds)*time.Second {
		return false
	}
	delete(pods, pod)
	return true
}

// handOut leases up to n waiting requests of model to pod.
func (d *Dispatcher) handOut(
	ctx context.Context, model *inferencev1alpha1.InferenceModel, pod string, n int,
) ([]Item, error) {
	key := types.NamespacedName{Namespace: model.Namespace, Name: model.Name}
	var items []Item
	// Requests the cache shows ended or gone are skipped; look a little
	// further than n so that they do not leave the pod empty-handed.
	for _, next := range d.index.Next(key, n+4) {
		if len(items) == n {
			break
		}
		if !d.index.Hold(key, next) {
			continue
		}
		ir := &inferencev1alpha1.InferenceRequest{}
		if err := d.reader.Get(ctx, next, ir); err != nil {
			d.index.Release(key, next)
			if client.IgnoreNotFound(err) != nil {
				return items, err
			}
			continue
		}
		if ir.Spec.Cancel || ir.CurrentPhase().Complete() || !ir.DeletionTimestamp.IsZero() {
			d.index.Forget(next)
			continue
		}
		item, err := d.lease(model, ir, pod)
		if err != nil {
			d.index.Release(key, next)
			return items, err
		}
		items = append(items, item)
	}
	if len(items) > 0 {
		d.mu.Lock()
		if p, ok := d.pods[key][pod]; ok {
			p.worked = d.clock.Now()
		}
		d.mu.Unlock()
	}
	return items, nil
}

func (d *Dispatcher) lease(model *inferencev1alpha1.InferenceModel, ir *inferencev1alpha1.InferenceRequest, pod string) (Item, error) {
	secret := make([]byte, 12)
	if _, err := rand.Read(secret); err != nil {
		return Item{}, err
	}
	key := client.ObjectKeyFromObject(ir)
	length := time.Duration(model.Spec.Workers.LeaseSeconds) * time.Second
	if length <= 0 {
		length = 30 * time.Second
	}
	timeout := ir.RunTimeoutSeconds(model)
	now := d.clock.Now()
	l := &Lease{
		ID:      ir.Name + "." + hex.EncodeToString(secret),
		Request: key, Model: types.NamespacedName{Namespace: model.Namespace, Name: model.Name},
		Pod: pod, Given: now, Expires: now.Add(length), length: length,
	}
	if timeout != nil {
		l.Deadline = now.Add(time.Duration(*timeout) * time.Second)
	}
	input := json.RawMessage("null")
	if ir.Spec.Input != nil && len(ir.Spec.Input.Raw) > 0 {
		input = ir.Spec.Input.Raw
	}
	d.mu.Lock()
	d.leases[l.ID] = l
	d.byReq[key] = l
	d.mu.Unlock()
	d.clock.AfterFunc(QuietWrite, func() {
		// Still out under this lease: its Running status is due.
		d.mu.Lock()
		current := d.byReq[key] == l
		d.mu.Unlock()
		if current {
			d.wake(key)
		}
	})
	id := ir.Spec.ID
	if id == "" {
		id = ir.Name
	}
	return Item{Lease: l.ID, ID: id, Name: ir.Name, Input: input, LeaseSeconds: int32(length / time.Second),
		TimeoutSeconds: ptr.Deref(timeout, 0)}, nil
}

// Renew extends a lease of model by its length.
func (d *Dispatcher) Renew(model types.NamespacedName, id string) (time.Duration, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	l, ok := d.leases[id]
	if !ok || l.Model != model {
		return 0, ErrGone
	}
	l.Expires = d.clock.Now().Add(l.length)
	return l.length, nil
}

// Report records the outcome a pod reports for a lease of model, and waits
// until the controller has stored it. A lease this manager does not know
// (it was given by a manager that has since stopped) still counts when its
// request is open: its result is as good as any.
func (d *Dispatcher) Report(ctx context.Context, model types.NamespacedName, id string, o *Outcome) error {
	name, _, ok := strings.Cut(id, ".")
	if !ok || name == "" {
		return ErrGone
	}
	key := types.NamespacedName{Namespace: model.Namespace, Name: name}
	if err := d.stillOpen(ctx, model, key, id); err != nil {
		return err
	}
	return d.submit(ctx, key, o)
}

// ReportFromJob records the result that the pod of a request's own Job
// reports through the work API (a result too large for its termination
// message), and waits until the controller has stored it. The request must
// be model's, open, and running in a Job.
func (d *Dispatcher) ReportFromJob(ctx context.Context, model, key types.NamespacedName, o *Outcome) error {
	ir, err := d.openRequest(ctx, model, key)
	if err != nil {
		return err
	}
	if ir.Status.JobName == "" {
		// Its pod runs, so the Job is there; the cache has yet to show it.
		return errNotStarted
	}
	return d.submit(ctx, key, o)
}

// submit keeps a reported outcome for the controller, wakes the request,
// and waits until the outcome is stored.
func (d *Dispatcher) submit(ctx context.Context, key types.NamespacedName, o *Outcome) error {
	o.stored = make(chan struct{})
	d.mu.Lock()
	if _, pending := d.outcomes[key]; pending {
		// Another pod's outcome came first; it is the one stored.
		d.mu.Unlock()
		return ErrGone
	}
	if current, ok := d.byReq[key]; ok {
		delete(d.leases, current.ID)
		delete(d.byReq, key)
	}
	d.outcomes[key] = o
	d.mu.Unlock()
	d.index.Forget(key)
	d.wake(key)
	select {
	case <-o.stored:
		if o.discarded {
			return ErrGone
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("the outcome is not stored yet: %w", ctx.Err())
	}
}

// stillOpen says whether an outcome under lease id may count: the lease is
// this manager's, or it is not known here (a manager that stopped gave it)
// and its request is still open.
func (d *Dispatcher) stillOpen(ctx context.Context, model, key types.NamespacedName, id string) error {
	d.mu.Lock()
	l, known := d.leases[id]
	d.mu.Unlock()
	if known {
		if l.Model != model {
			return ErrGone
		}
		return nil
	}
	_, err := d.openRequest(ctx, model, key)
	return err
}

// openRequest reads the request key, and answers ErrGone unless it is
// model's and open: not canceled, not ended, not deleted.
func (d *Dispatcher) openRequest(ctx context.Context, model, key types.NamespacedName) (*inferencev1alpha1.InferenceRequest, error) {
	ir := &inferencev1alpha1.InferenceRequest{}
	if err := d.reader.Get(ctx, key, ir); err != nil {
		if client.IgnoreNotFound(err) == nil {
			return nil, ErrGone
		}
		return nil, err
	}
	if ir.Spec.Model != model.Name || ir.Spec.Cancel || ir.CurrentPhase().Complete() {
		return nil, ErrGone
	}
	return ir, nil
}

// Retry puts a request whose pod reported a failure that may pass back in
// line, or ends it once the model's maxRetries are used up.
func (d *Dispatcher) Retry(ctx context.Context, model *inferencev1alpha1.InferenceModel, id, pod, message string) error {
	d.mu.Lock()
	l, ok := d.leases[id]
	d.mu.Unlock()
	if !ok || l.Model.Name != model.Name || l.Model.Namespace != model.Namespace {
		return ErrGone
	}
	if d.again(l, model.Spec.MaxRetries) {
		return nil
	}
	return d.Report(ctx, l.Model, id, &Outcome{Reason: inferencev1alpha1.ReasonBackoffLimitExceeded,
		Message: fmt.Sprintf("failed %d times: %s", ptr.Deref(model.Spec.MaxRetries, 0)+1, message), Pod: pod})
}

// again ends lease l without an outcome and puts its request back in line,
// unless it has been handed out again maxRetries times already.
func (d *Dispatcher) again(l *Lease, maxRetries *int32) bool {
	d.mu.Lock()
	if d.leases[l.ID] != l {
		d.mu.Unlock()
		return true
	}
	if d.handouts[l.Request] >= ptr.Deref(maxRetries, 0) {
		d.mu.Unlock()
		return false
	}
	d.handouts[l.Request]++
	delete(d.leases, l.ID)
	delete(d.byReq, l.Request)
	d.mu.Unlock()
	d.index.Release(l.Model, l.Request)
	d.wake(l.Request)
	return true
}

// Expire ends the leases that ran out: not renewed in time, or past their
// request's run time. models gives each lease's model, for its maxRetries;
// a lease whose model is gone is dropped and its request put back in line.
func (d *Dispatcher) Expire(models func(types.NamespacedName) *inferencev1alpha1.InferenceModel) {
	now := d.clock.Now()
	d.mu.Lock()
	var due []*Lease
	for _, l := range d.leases {
		if !now.Before(l.Expires) || (!l.Deadline.IsZero() && !now.Before(l.Deadline)) {
			due = append(due, l)
		}
	}
	d.mu.Unlock()
	for _, l := range due {
		model := models(l.Model)
		switch {
		case model == nil:
			d.Revoke(l.Request)
			d.index.Release(l.Model, l.Request)
		case !l.Deadline.IsZero() && !now.Before(l.Deadline):
			d.record(l, &Outcome{Reason: inferencev1alpha1.ReasonDeadlineExceeded, Pod: l.Pod,
				Message: fmt.Sprintf("ran longer than its timeoutSeconds (%d)", int64(l.Deadline.Sub(l.Given).Seconds()))})
		case !d.again(l, model.Spec.MaxRetries):
			d.record(l, &Outcome{Reason: inferencev1alpha1.ReasonBackoffLimitExceeded, Pod: l.Pod,
				Message: fmt.Sprintf("handed out %d times; the last lease, held by pod %s, ran out without being renewed",
					ptr.Deref(model.Spec.MaxRetries, 0)+1, l.Pod)})
		}
	}
}

// record sets an outcome the dispatcher decided, without waiting for it to
// be stored.
func (d *Dispatcher) record(l *Lease, o *Outcome) {
	o.stored = make(chan struct{})
	d.mu.Lock()
	if d.leases[l.ID] != l {
		d.mu.Unlock()
		return
	}
	delete(d.leases, l.ID)
	delete(d.byReq, l.Request)
	d.outcomes[l.Request] = o
	d.mu.Unlock()
	d.index.Forget(l.Request)
	d.wake(l.Request)
}

// LeaseOf returns the lease a request is handed out under, if any.
func (d *Dispatcher) LeaseOf(key types.NamespacedName) (Lease, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	l, ok := d.byReq[key]
	if !ok {
		return Lease{}, false
	}
	return *l, true
}

// OutcomeOf returns the outcome waiting to be stored for a request, if any.
func (d *Dispatcher) OutcomeOf(key types.NamespacedName) (*Outcome, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	o, ok := d.outcomes[key]
	return o, ok
}

// Stored says the request's outcome is in its stored status: the pod that
// reported it gets its answer.
func (d *Dispatcher) Stored(key types.NamespacedName) {
	d.mu.Lock()
	o, ok := d.outcomes[key]
	delete(d.outcomes, key)
	delete(d.handouts, key)
	d.mu.Unlock()
	if ok {
		close(o.stored)
	}
}

// Discard drops an outcome waiting for a request that has ended some other
// way meanwhile; its pod is told the lease is gone.
func (d *Dispatcher) Discard(key types.NamespacedName) {
	d.mu.Lock()
	o, ok := d.outcomes[key]
	delete(d.outcomes, key)
	d.mu.Unlock()
	if ok {
		o.discarded = true
		close(o.stored)
	}
}

// Revoke ends a request's lease, if it has one: it was canceled, timed out
// or deleted. Its pod learns at its next renew.
func (d *Dispatcher) Revoke(key types.NamespacedName) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if l, ok := d.byReq[key]; ok {
		delete(d.leases, l.ID)
		delete(d.byReq, key)
	}
	delete(d.handouts, key)
}

// ExpireEvery runs Expire every period until ctx ends.
func (d *Dispatcher) ExpireEvery(
	ctx context.Context, period time.Duration, models func(types.NamespacedName) *inferencev1alpha1.InferenceModel,
) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.clock.After(period):
			d.Expire(models)
		}
	}
}

// Leased is how many of model's requests are handed out.
func (d *Dispatcher) Leased(model types.NamespacedName) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, l := range d.leases {
		if l.Model == model {
			n++
		}
	}
	return n
}
