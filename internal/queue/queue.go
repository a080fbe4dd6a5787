// Package queue holds requests back while their model runs as many Jobs as
// its maxConcurrency allows, and lets the oldest go first when one ends.
package queue

import (
	"context"
	"slices"
	"sync"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/jobstate"
)

// ModelIndex is the field index over InferenceRequests by spec.model that
// the queue lists a model's requests with; IndexByModel adds it to a cache.
const ModelIndex = "spec.model"

// IndexByModel adds ModelIndex to indexer.
func IndexByModel(ctx context.Context, indexer client.FieldIndexer) error {
	return indexer.IndexField(ctx, &inferencev1alpha1.InferenceRequest{}, ModelIndex,
		func(o client.Object) []string { return []string{o.(*inferencev1alpha1.InferenceRequest).Spec.Model} })
}

// unseenJobGrace is how long a Job this manager created counts against its
// model's maxConcurrency before the cache shows it; after that the cache is
// trusted.
const unseenJobGrace = time.Minute

// Gate starts requests' Jobs, holding models with a maxConcurrency to it: at
// most that many running Jobs, and the oldest queued requests first.
// Decisions for one model are made one at a time, and Jobs created but not yet
// in the cache count as running, so two requests reconciled at once cannot
// both take the model's last free place.
type Gate struct {
	reader client.Reader
	clock  clock.PassiveClock

	mu     sync.Mutex
	models map[types.NamespacedName]*model
}

type model struct {
	mu sync.Mutex
	// created holds Jobs created by this manager that the cache has not shown yet.
	created map[string]time.Time
}

// New returns a Gate that reads Jobs and requests from reader (the manager's
// cache, with ModelIndex).
func New(reader client.Reader, clk clock.PassiveClock) *Gate {
	return &Gate{reader: reader, clock: clk, models: map[types.NamespacedName]*model{}}
}

// Start calls create, which creates ir's Job (named after ir), when m has room
// for it, and reports whether it did.
func (g *Gate) Start(
	ctx context.Context, ir *inferencev1alpha1.InferenceRequest, m *inferencev1alpha1.InferenceModel, create func() error,
) (bool, error) {
	if m.Spec.MaxConcurrency == nil {
		return true, create()
	}
	state := g.model(client.ObjectKeyFromObject(m))
	state.mu.Lock()
	defer state.mu.Unlock()

	var jobs batchv1.JobList
	if err := g.reader.List(ctx, &jobs, client.InNamespace(m.Namespace),
		client.MatchingLabels{inferencev1alpha1.LabelModel: m.Name}); err != nil {
		return false, err
	}
	hasJob := make(map[string]bool, len(jobs.Items)+len(state.created))
	running := 0
	for i := range jobs.Items {
		hasJob[jobs.Items[i].Name] = true
		if Running(&jobs.Items[i]) {
			running++
		}
	}
	for name, at := range state.created {
		if hasJob[name] || g.clock.Since(at) > unseenJobGrace {
			delete(state.created, name)
			continue
		}
		hasJob[name] = true
		running++
	}

	free := int(*m.Spec.MaxConcurrency) - running
	if free <= 0 {
		return false, nil
	}
	ahead, err := g.queuedAhead(ctx, ir, hasJob)
	if err != nil || ahead >= free {
		return false, err
	}
	if err := create(); err != nil {
		return false, err
	}
	state.created[ir.Name] = g.clock.Now()
	return true, nil
}

func (g *Gate) model(key types.NamespacedName) *model {
	g.mu.Lock()
	defer g.mu.Unlock()
	m, ok := g.models[key]
	if !ok {
		m = &model{created: map[string]time.Time{}}
		g.models[key] = m
	}
	return m
}

// Running reports whether a Job counts against its model's maxConcurrency:
// it is not over and is not being deleted.
func Running(job *batchv1.Job) bool {
	return jobstate.Final(job) == nil && job.DeletionTimestamp.IsZero()
}

// queuedAhead counts the requests for ir's model that have no Job yet, have
// not ended, and came before ir: they go first.
func (g *Gate) queuedAhead(ctx context.Context, ir *inferencev1alpha1.InferenceRequest, hasJob map[string]bool) (int, error) {
	var list inferencev1alpha1.InferenceRequestList
	if err := g.reader.List(ctx, &list, client.InNamespace(ir.Namespace), client.MatchingFields{ModelIndex: ir.Spec.Model}); err != nil {
		return 0, err
	}
	ahead := slices.DeleteFunc(list.Items, func(o inferencev1alpha1.InferenceRequest) bool {
		return hasJob[o.Name] || o.Status.Phase.Complete() || !o.DeletionTimestamp.IsZero() || !Before(&o, ir)
	})
	return len(ahead), nil
}

// Unstarted lists the requests of a model that have not started (Pending or
// Queued), oldest first, at most limit of them when limit is positive: only
// the oldest can start when a running Job ends, so waking the rest would be
// wasted work.
func Unstarted(ctx context.Context, reader client.Reader, namespace, model string, limit int) ([]types.NamespacedName, error) {
	var list inferencev1alpha1.InferenceRequestList
	if err := reader.List(ctx, &list, client.InNamespace(namespace), client.MatchingFields{ModelIndex: model}); err != nil {
		return nil, err
	}
	unstarted := slices.DeleteFunc(list.Items, func(ir inferencev1alpha1.InferenceRequest) bool {
		phase := ir.CurrentPhase()
		return phase != inferencev1alpha1.PhasePending && phase != inferencev1alpha1.PhaseQueued
	})
	slices.SortFunc(unstarted, func(a, b inferencev1alpha1.InferenceRequest) int {
		if Before(&a, &b) {
			return -1
		}
		return 1
	})
	if limit > 0 && len(unstarted) > limit {
		unstarted = unstarted[:limit]
	}
	out := make([]types.NamespacedName, 0, len(unstarted))
	for i := range unstarted {
		out = append(out, client.ObjectKeyFromObject(&unstarted[i]))
	}
	return out, nil
}

// Before orders requests by creation, then name, so the order is total.
func Before(a, b *inferencev1alpha1.InferenceRequest) bool {
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return a.CreationTimestamp.Before(&b.CreationTimestamp)
	}
	return a.Name < b.Name
}
