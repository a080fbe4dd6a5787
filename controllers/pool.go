package controllers

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/pool"
	"github.com/kinfer/kinfer/internal/workapi"
)

// runInPool moves a request of a pool model along: it waits until a pod of
// the pool takes it from the work API, runs while the pod holds its lease,
// and ends with the outcome the pod reported. No Job or pod is made per
// request. Its Queued and Running writes wait a moment (pool.QuietWrite)
// after its creation and its hand-out, so a request that is done sooner is
// written once, ended.
func (r *InferenceRequestReconciler) runInPool(
	ctx context.Context, s *requestState, model *inferencev1alpha1.InferenceModel,
) error {
	if err := r.ensureWorkCredential(ctx, model); err != nil {
		return err
	}
	key := client.ObjectKeyFromObject(s.ir)
	if o, ok := r.pool.OutcomeOf(key); ok {
		s.status.Worker = o.Pod
		if s.status.StartTime == nil {
			s.status.StartTime = s.now.DeepCopy()
		}
		if o.Failed() {
			s.fail(o.Reason, o.Message)
		} else {
			s.succeed(o.Result)
		}
		s.outcomeFromPool = true
		return nil
	}
	if lease, ok := r.pool.LeaseOf(key); ok {
		if s.status.Phase != inferencev1alpha1.PhaseRunning && s.quiet(lease.Given.Add(quietWrite())) {
			return nil
		}
		s.status.Worker = lease.Pod
		if s.status.StartTime == nil {
			s.status.StartTime = s.now.DeepCopy()
		}
		s.inProgress(inferencev1alpha1.PhaseRunning, inferencev1alpha1.ReasonWorkerRunning,
			fmt.Sprintf("pod %s of model %s's pool took it%s", lease.Pod, model.Name, s.limits.runNote(lease.Given)), "")
		return nil
	}
	if s.waitedTooLong() {
		return nil
	}
	if s.ir.Status.Phase == "" && s.quiet(s.ir.CreationTimestamp.Add(quietWrite())) {
		return nil
	}
	// No Event: waiting for a pool's pod is the normal course, status
	// shows it, and under a backlog an Event per request would be a write
	// per request.
	s.inProgress(inferencev1alpha1.PhaseQueued, inferencev1alpha1.ReasonWaitingForWorker,
		fmt.Sprintf("waits for a pod of model %s's pool to take it%s", model.Name, s.limits.waitNote(s.ir)), "")
	return nil
}

// quietWriteOverride, when set, stands in for pool.QuietWrite: a spec that
// counts writes lengthens it, so that a slow machine's pauses do not decide
// whether a request served at once is written once.
var quietWriteOverride atomic.Int64

// quietWrite is how long a pooled request's Queued and Running writes wait.
func quietWrite() time.Duration {
	if d := quietWriteOverride.Load(); d > 0 {
		return time.Duration(d)
	}
	return pool.QuietWrite
}

// workCredentials remembers the models whose work Secret exists, so that it
// is looked for once per model and manager.
type workCredentials struct {
	mu    sync.Mutex
	ready map[types.UID]bool
}

func (r *InferenceRequestReconciler) ensureWorkCredential(ctx context.Context, model *inferencev1alpha1.InferenceModel) error {
	r.workSecrets.mu.Lock()
	done := r.workSecrets.ready[model.UID]
	r.workSecrets.mu.Unlock()
	if done {
		return nil
	}
	if err := r.credentials.Ensure(ctx, model); err != nil {
		return err
	}
	r.workSecrets.mu.Lock()
	defer r.workSecrets.mu.Unlock()
	if r.workSecrets.ready == nil {
		r.workSecrets.ready = map[types.UID]bool{}
	}
	r.workSecrets.ready[model.UID] = true
	return nil
}

// WorkAPI is the work API's handler, for main to serve on its own listener.
func (r *InferenceRequestReconciler) WorkAPI() *workapi.Handler {
	return workapi.NewHandler(workapi.Handler{Models: r.Client, Credentials: r.credentials, Dispatcher: r.pool})
}
