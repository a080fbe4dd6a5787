package queue

import (
	"context"
	"sync"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
)

// Index is, for every model, its requests waiting to start, in the order
// they start, and the Jobs it runs. It is kept from the cache's events on
// requests and Jobs (SetRequest, DeleteRequest, SetJob, DeleteJob), and from
// the Jobs this manager creates (Started), so that no decision lists or
// copies anything: each costs O(log n) in the length of the model's queue.
type Index struct {
	clock clock.PassiveClock
	// synced report whether the handlers feeding the index have been given
	// all the cache held when they were added.
	synced []toolscache.InformerSynced

	mu     sync.Mutex
	models map[types.NamespacedName]*modelQueue
	// places holds where each waiting request stands, to find it again when
	// it changes or goes.
	places map[types.NamespacedName]Place
	// held are requests handed to a pool's pod: out of the waiting while
	// their lease lasts, with the place they go back to when it ends.
	held map[types.NamespacedName]Place
	// onWaiting are told of each model that gains a waiting
	// request, outside the lock: a pool's pods may be waiting for work.
	onWaiting []func(model types.NamespacedName)
}

// modelQueue is one model's part of the index.
type modelQueue struct {
	waiting order
	// jobs are the model's Jobs the cache holds, and whether each is running
	// (not over, not being deleted).
	jobs map[string]bool
	// running counts the true entries of jobs.
	running int
	// created holds Jobs this manager created that the cache has not shown
	// yet: they run, as far as any decision is concerned.
	created map[string]time.Time
}

// NewIndex returns an empty index; clk times how long a created Job may stay
// unseen before the cache is trusted over the creation.
func NewIndex(clk clock.PassiveClock) *Index {
	return &Index{clock: clk, models: map[types.NamespacedName]*modelQueue{}, places: map[types.NamespacedName]Place{},
		held: map[types.NamespacedName]Place{}}
}

// AddSynced adds a check that a handler feeding the index has caught up with
// its cache, for WaitSynced.
func (x *Index) AddSynced(synced toolscache.InformerSynced) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.synced = append(x.synced, synced)
}

// WaitSynced waits until every handler feeding the index has caught up with
// its cache, and reports whether it did before ctx ended.
func (x *Index) WaitSynced(ctx context.Context) bool {
	x.mu.Lock()
	synced := x.synced
	x.mu.Unlock()
	for _, s := range synced {
		if !s() {
			return toolscache.WaitForCacheSync(ctx.Done(), synced...)
		}
	}
	return true
}

// PlaceOf is where ir stands among its model's waiting requests: by
// priority, then age, then name.
func PlaceOf(ir *inferencev1alpha1.InferenceRequest) Place {
	return Place{Priority: ir.Spec.Priority, Created: ir.CreationTimestamp.Time, Name: ir.Name}
}

// modelOf is the key of ir's model.
func modelOf(ir *inferencev1alpha1.InferenceRequest) types.NamespacedName {
	return types.NamespacedName{Namespace: ir.Namespace, Name: ir.Spec.Model}
}

func (x *Index) model(key types.NamespacedName) *modelQueue {
	m, ok := x.models[key]
	if !ok {
		m = &modelQueue{jobs: map[string]bool{}, created: map[string]time.Time{}}
		x.models[key] = m
	}
	return m
}

// OnWaiting adds f to those told of each model that gains a waiting
// request. It is called without the index's lock held, and must not block.
func (x *Index) OnWaiting(f func(model types.NamespacedName)) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.onWaiting = append(x.onWaiting, f)
}

// waits reports whether ir waits to start: it has not ended, is not being
// deleted or canceled, and has no Job. A request of a pool is Running
// without a Job while a pod works on it; the index holds it then (Hold), and
// a manager that restarts finds it waiting again, its lease lost.
func (m *modelQueue) waits(ir *inferencev1alpha1.InferenceRequest) bool {
	if !ir.DeletionTimestamp.IsZero() || ir.Status.JobName != "" || ir.Spec.Cancel {
		return false
	}
	if _, ok := m.jobs[ir.Name]; ok {
		return false
	}
	if _, ok := m.created[ir.Name]; ok {
		return false
	}
	return !ir.CurrentPhase().Complete()
}

// SetRequest records ir as the cache now holds it.
func (x *Index) SetRequest(ir *inferencev1alpha1.InferenceRequest) {
	key := types.NamespacedName{Namespace: ir.Namespace, Name: ir.Name}
	x.mu.Lock()
	added := x.setRequestLocked(key, ir)
	notify := x.onWaiting
	x.mu.Unlock()
	if added {
		for _, f := range notify {
			f(modelOf(ir))
		}
	}
}

// setRequestLocked records ir and reports whether it joined the waiting.
func (x *Index) setRequestLocked(key types.NamespacedName, ir *inferencev1alpha1.InferenceRequest) bool {
	m := x.model(modelOf(ir))
	old, queued := x.places[key]
	waits := m.waits(ir)
	if _, held := x.held[key]; held {
		if !waits {
			delete(x.held, key)
		}
		return false
	}
	// A request's place never changes: what it is made of (priority,
	// creation time, name) cannot.
	switch {
	case waits && !queued:
		place := PlaceOf(ir)
		m.waiting.Add(place)
		x.places[key] = place
		return true
	case !waits && queued:
		m.waiting.Remove(old)
		delete(x.places, key)
	}
	return false
}

// Hold takes a waiting request of model out of the waiting while a pool's
// pod works on it, and reports whether it was waiting.
func (x *Index) Hold(model, key types.NamespacedName) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	place, ok := x.places[key]
	if !ok {
		return false
	}
	x.model(model).waiting.Remove(place)
	delete(x.places, key)
	x.held[key] = place
	return true
}

// Release puts a held request of model back among the waiting, in its
// place, when its lease ended without an outcome.
func (x *Index) Release(model, key types.NamespacedName) {
	x.mu.Lock()
	place, ok := x.held[key]
	if ok {
		delete(x.held, key)
		x.model(model).waiting.Add(place)
		x.places[key] = place
	}
	notify := x.onWaiting
	x.mu.Unlock()
	if ok {
		for _, f := range notify {
			f(model)
		}
	}
}

// Forget drops a held request whose outcome is in: it waits no more.
func (x *Index) Forget(key types.NamespacedName) {
	x.mu.Lock()
	defer x.mu.Unlock()
	delete(x.held, key)
}

// DeleteRequest forgets ir.
func (x *Index) DeleteRequest(ir *inferencev1alpha1.InferenceRequest) {
	key := types.NamespacedName{Namespace: ir.Namespace, Name: ir.Name}
	x.mu.Lock()
	defer x.mu.Unlock()
	delete(x.held, key)
	if place, ok := x.places[key]; ok {
		x.model(modelOf(ir)).waiting.Remove(place)
		delete(x.places, key)
	}
}

// jobModel is the key of the model a Job runs, from kinfer's label; ok is
// false for Jobs kinfer did not make.
func jobModel(job *batchv1.Job) (types.NamespacedName, bool) {
	name := job.Labels[inferencev1alpha1.LabelModel]
	return types.NamespacedName{Namespace: job.Namespace, Name: name}, name != "" && job.Labels[inferencev1alpha1.LabelRequest] != ""
}

// SetJob records job as the cache now holds it, and reports whether it ran
// before (created by this manager and not yet seen counts). A Job of a
// request takes the request out of the waiting, whatever its status says: a
// restarted manager may find a Job whose request's status was never written.
func (x *Index) SetJob(job *batchv1.Job) (ranBefore bool) {
	return x.onJobEvent(job, false)
}

// DeleteJob forgets job, and reports whether it ran.
func (x *Index) DeleteJob(job *batchv1.Job) (ran bool) {
	return x.onJobEvent(job, true)
}

func (x *Index) onJobEvent(job *batchv1.Job, deleted bool) (ranBefore bool) {
	key, ok := jobModel(job)
	if !ok {
		return false
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	m := x.model(key)
	ranBefore = m.forgetJob(job.Name)
	if deleted {
		return ranBefore
	}
	running := Running(job)
	m.jobs[job.Name] = running
	if running {
		m.running++
	}
	request := types.NamespacedName{Namespace: job.Namespace, Name: job.Labels[inferencev1alpha1.LabelRequest]}
	if place, ok := x.places[request]; ok {
		m.waiting.Remove(place)
		delete(x.places, request)
	}
	return ranBefore
}

// forgetJob takes the Job name out of the model's Jobs, and reports whether
// it ran as far as the index knew (created by this manager and not yet seen
// counts).
func (m *modelQueue) forgetJob(name string) (ran bool) {
	_, created := m.created[name]
	running, seen := m.jobs[name]
	if running {
		m.running--
	}
	delete(m.jobs, name)
	delete(m.created, name)
	return running || (!seen && created)
}

// Started records that this manager created ir's Job: it runs from now on,
// though the cache has not shown it yet.
func (x *Index) Started(ir *inferencev1alpha1.InferenceRequest) {
	key := types.NamespacedName{Namespace: ir.Namespace, Name: ir.Name}
	x.mu.Lock()
	defer x.mu.Unlock()
	m := x.model(modelOf(ir))
	if _, seen := m.jobs[ir.Name]; !seen {
		m.created[ir.Name] = x.clock.Now()
	}
	if place, ok := x.places[key]; ok {
		m.waiting.Remove(place)
		delete(x.places, key)
	}
}

// runningLocked counts the model's running Jobs, and its created ones still
// within unseenJobGrace; the caller holds x.mu.
func (x *Index) runningLocked(m *modelQueue) int {
	for name, at := range m.created {
		if x.clock.Since(at) > unseenJobGrace {
			delete(m.created, name)
		}
	}
	return m.running + len(m.created)
}

// MayStart reports whether ir may start under a limit of running Jobs for
// its model: fewer of them run than limit, and fewer requests stand before
// ir than the places left.
func (x *Index) MayStart(ir *inferencev1alpha1.InferenceRequest, limit int) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	m := x.model(modelOf(ir))
	free := limit - x.runningLocked(m)
	if free <= 0 {
		return false
	}
	ahead, _ := m.waiting.Rank(PlaceOf(ir))
	return ahead < free
}

// Free is how many more Jobs a model may run under limit.
func (x *Index) Free(model types.NamespacedName, limit int) int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return max(0, limit-x.runningLocked(x.model(model)))
}

// Next lists the first n requests waiting for model, in the order they start;
// n <= 0 lists all of them.
func (x *Index) Next(model types.NamespacedName, n int) []types.NamespacedName {
	x.mu.Lock()
	defer x.mu.Unlock()
	m := x.model(model)
	if n <= 0 || n > m.waiting.Len() {
		n = m.waiting.Len()
	}
	out := make([]types.NamespacedName, n)
	for i := range n {
		out[i] = types.NamespacedName{Namespace: model.Namespace, Name: m.waiting.At(i).Name}
	}
	return out
}

// Position is how many requests of ir's model start before ir, and how many
// wait in all; ok is false when ir does not wait.
func (x *Index) Position(ir *inferencev1alpha1.InferenceRequest) (ahead, length int, ok bool) {
	key := types.NamespacedName{Namespace: ir.Namespace, Name: ir.Name}
	x.mu.Lock()
	defer x.mu.Unlock()
	place, waiting := x.places[key]
	if !waiting {
		return 0, 0, false
	}
	m := x.model(modelOf(ir))
	ahead, _ = m.waiting.Rank(place)
	return ahead, m.waiting.Len(), true
}

// Running is how many of model's requests run in Jobs of their own.
func (x *Index) Running(model types.NamespacedName) int {
	x.mu.Lock()
	defer x.mu.Unlock()
	if m, ok := x.models[model]; ok {
		return x.runningLocked(m)
	}
	return 0
}

// Length is how many requests wait for model.
func (x *Index) Length(model types.NamespacedName) int {
	x.mu.Lock()
	defer x.mu.Unlock()
	if m, ok := x.models[model]; ok {
		return m.waiting.Len()
	}
	return 0
}
