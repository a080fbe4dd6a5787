// Package queue holds requests back while their model runs as many Jobs as
// its maxConcurrency allows, and says which start next when one ends: an
// index of each model's waiting requests, in the order they start, and of
// the Jobs it runs, kept from the cache's events.
package queue

import (
	"context"
	"fmt"
	"sync"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/jobstate"
)

// unseenJobGrace is how long a Job this manager created counts against its
// model's maxConcurrency before the cache shows it; after that the cache is
// trusted.
const unseenJobGrace = time.Minute

// Gate starts requests' Jobs, holding models with a maxConcurrency to it: at
// most that many running Jobs, and the requests first in the index first.
// Decisions for one model are made one at a time, and Jobs created but not
// yet in the cache count as running, so two requests reconciled at once
// cannot both take the model's last free place. A decision reads nothing but
// the index.
type Gate struct {
	index *Index

	mu     sync.Mutex
	models map[types.NamespacedName]*sync.Mutex
}

// NewGate returns a Gate deciding from index.
func NewGate(index *Index) *Gate {
	return &Gate{index: index, models: map[types.NamespacedName]*sync.Mutex{}}
}

// Start calls create, which creates ir's Job (named after ir), when m has room
// for it, and reports whether it did. Until the index holds all the cache
// held when the manager started, it waits: a decision made on part of the
// queue could let a request jump it.
func (g *Gate) Start(
	ctx context.Context, ir *inferencev1alpha1.InferenceRequest, m *inferencev1alpha1.InferenceModel, create func() error,
) (bool, error) {
	if m.Spec.MaxConcurrency == nil {
		if err := create(); err != nil {
			return false, err
		}
		g.index.Started(ir)
		return true, nil
	}
	if !g.index.WaitSynced(ctx) {
		return false, fmt.Errorf("the queue of model %s is not yet built from the cache: %w", m.Name, ctx.Err())
	}
	lock := g.model(types.NamespacedName{Namespace: m.Namespace, Name: m.Name})
	lock.Lock()
	defer lock.Unlock()
	if !g.index.MayStart(ir, int(*m.Spec.MaxConcurrency)) {
		return false, nil
	}
	if err := create(); err != nil {
		return false, err
	}
	g.index.Started(ir)
	return true, nil
}

func (g *Gate) model(key types.NamespacedName) *sync.Mutex {
	g.mu.Lock()
	defer g.mu.Unlock()
	m, ok := g.models[key]
	if !ok {
		m = &sync.Mutex{}
		g.models[key] = m
	}
	return m
}

// Running reports whether a Job counts against its model's maxConcurrency:
// it is not over and is not being deleted.
func Running(job *batchv1.Job) bool {
	return jobstate.Final(job) == nil && job.DeletionTimestamp.IsZero()
}

// RequestHandler keeps index up to date from the cache's events on
// InferenceRequests.
func (x *Index) RequestHandler() toolscache.ResourceEventHandler {
	return toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { x.onRequest(obj, false) },
		UpdateFunc: func(_, obj any) { x.onRequest(obj, false) },
		DeleteFunc: func(obj any) { x.onRequest(obj, true) },
	}
}

func (x *Index) onRequest(obj any, deleted bool) {
	if tombstone, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
		obj, deleted = tombstone.Obj, true
	}
	ir, ok := obj.(*inferencev1alpha1.InferenceRequest)
	switch {
	case !ok:
	case deleted:
		x.DeleteRequest(ir)
	default:
		x.SetRequest(ir)
	}
}

// JobHandler keeps index up to date from the cache's events on Jobs, and
// calls freed with a model whose Job stopped running: requests may start.
func (x *Index) JobHandler(freed func(model types.NamespacedName)) toolscache.ResourceEventHandler {
	return toolscache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { x.onJob(obj, false, freed) },
		UpdateFunc: func(_, obj any) {
			x.onJob(obj, false, freed)
		},
		DeleteFunc: func(obj any) { x.onJob(obj, true, freed) },
	}
}

func (x *Index) onJob(obj any, deleted bool, freed func(types.NamespacedName)) {
	if tombstone, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
		obj, deleted = tombstone.Obj, true
	}
	job, ok := obj.(*batchv1.Job)
	if !ok {
		return
	}
	var wasRunning bool
	if deleted {
		wasRunning = x.DeleteJob(job)
	} else {
		wasRunning = x.SetJob(job)
	}
	if model, ok := jobModel(job); ok && wasRunning && (deleted || !Running(job)) {
		freed(model)
	}
}
