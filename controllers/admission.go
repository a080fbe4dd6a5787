package controllers

import (
	"context"
	"slices"
	"sync"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
)

// unseenJobGrace is how long a Job this manager created counts against its
// model's slots before the cache shows it; after that the cache is trusted.
const unseenJobGrace = time.Minute

// admission creates Jobs, holding models with a maxConcurrency to it: at most
// that many unfinished Jobs, and the oldest waiting requests first. Decisions
// for one model are made one at a time, and Jobs created but not yet in the
// cache count as running, so two requests reconciled at once cannot both take
// the last slot.
type admission struct {
	mu     sync.Mutex
	models map[types.NamespacedName]*modelSlots
}

type modelSlots struct {
	mu sync.Mutex
	// created holds Jobs created by this manager that the cache has not shown yet.
	created map[string]time.Time
}

// create creates job for ir when model has room for it, and reports whether it did.
func (a *admission) create(
	ctx context.Context, c client.Client, ir *inferencev1alpha1.InferenceRequest,
	model *inferencev1alpha1.InferenceModel, job *batchv1.Job,
) (bool, error) {
	if model.Spec.MaxConcurrency == nil {
		return true, createJob(ctx, c, job)
	}
	slots := a.slots(client.ObjectKeyFromObject(model))
	slots.mu.Lock()
	defer slots.mu.Unlock()

	var jobs batchv1.JobList
	if err := c.List(ctx, &jobs, client.InNamespace(model.Namespace), client.MatchingLabels{LabelModel: model.Name}); err != nil {
		return false, err
	}
	hasJob := make(map[string]bool, len(jobs.Items)+len(slots.created))
	unfinished := 0
	for i := range jobs.Items {
		hasJob[jobs.Items[i].Name] = true
		if holdsSlot(&jobs.Items[i]) {
			unfinished++
		}
	}
	for name, at := range slots.created {
		if hasJob[name] || time.Since(at) > unseenJobGrace {
			delete(slots.created, name)
			continue
		}
		hasJob[name] = true
		unfinished++
	}

	free := int(*model.Spec.MaxConcurrency) - unfinished
	if free <= 0 {
		return false, nil
	}
	ahead, err := waitingAhead(ctx, c, ir, hasJob)
	if err != nil || ahead >= free {
		return false, err
	}
	if err := createJob(ctx, c, job); err != nil {
		return false, err
	}
	slots.created[job.Name] = time.Now()
	return true, nil
}

func (a *admission) slots(model types.NamespacedName) *modelSlots {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.models == nil {
		a.models = map[types.NamespacedName]*modelSlots{}
	}
	s, ok := a.models[model]
	if !ok {
		s = &modelSlots{created: map[string]time.Time{}}
		a.models[model] = s
	}
	return s
}

// holdsSlot reports whether a Job counts against its model's maxConcurrency:
// it has not finished and is not being deleted.
func holdsSlot(job *batchv1.Job) bool {
	return jobCondition(job) == nil && job.DeletionTimestamp.IsZero()
}

// waitingAhead counts the requests for ir's model that have no Job yet, have
// not ended, and came before ir: they get the free slots first.
func waitingAhead(ctx context.Context, c client.Client, ir *inferencev1alpha1.InferenceRequest, hasJob map[string]bool) (int, error) {
	var list inferencev1alpha1.InferenceRequestList
	if err := c.List(ctx, &list, client.InNamespace(ir.Namespace), client.MatchingFields{modelIndex: ir.Spec.Model}); err != nil {
		return 0, err
	}
	ahead := slices.DeleteFunc(list.Items, func(o inferencev1alpha1.InferenceRequest) bool {
		done := o.Status.Phase == inferencev1alpha1.PhaseSucceeded || o.Status.Phase == inferencev1alpha1.PhaseFailed
		return hasJob[o.Name] || done || !o.DeletionTimestamp.IsZero() || !before(&o, ir)
	})
	return len(ahead), nil
}

// before orders requests by creation, then name, so the order is total.
func before(a, b *inferencev1alpha1.InferenceRequest) bool {
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return a.CreationTimestamp.Before(&b.CreationTimestamp)
	}
	return a.Name < b.Name
}

// createJob creates job; one that already exists is the same Job, built by the
// same pure function, so AlreadyExists is success.
func createJob(ctx context.Context, c client.Client, job *batchv1.Job) error {
	if err := c.Create(ctx, job); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}
