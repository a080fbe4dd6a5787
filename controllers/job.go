package controllers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/jobstate"
	"github.com/kinfer/kinfer/pkg/worker"
)

// kueueQueueLabel hands a Job to Kueue, which starts it suspended and admits it.
const kueueQueueLabel = "kueue.x-k8s.io/queue-name"

// run brings the request's Job into being and reads its outcome once it ends.
func (r *InferenceRequestReconciler) run(ctx context.Context, s *requestState) error {
	if s.status.Phase.Complete() {
		// A pod that reports for a request already ended is told so.
		r.pool.Discard(client.ObjectKeyFromObject(s.ir))
		return nil
	}
	if s.ir.Spec.Cancel {
		return r.cancel(ctx, s)
	}
	model, err := r.model(ctx, s.ir)
	if err != nil {
		return err
	}
	s.limits = limitsOf(s.ir, model)
	if model == nil {
		if s.status.JobName == "" && s.waitedTooLong() {
			return nil
		}
		s.inProgress(inferencev1alpha1.PhasePending, inferencev1alpha1.ReasonModelNotFound,
			fmt.Sprintf("InferenceModel %s does not exist in namespace %s%s", s.ir.Spec.Model, s.ir.Namespace,
				s.limits.waitNote(s.ir)), corev1.EventTypeWarning)
		return nil
	}
	if most := ptr.Deref(model.Spec.MaxPriority, 0); s.status.JobName == "" && s.ir.Spec.Priority > most {
		s.fail(inferencev1alpha1.ReasonPriorityNotAllowed, fmt.Sprintf(
			"spec.priority %d is above the maxPriority of model %s (%d)", s.ir.Spec.Priority, model.Name, most))
		return nil
	}
	input, err := inputJSON(s.ir)
	if err != nil || len(input) > inferencev1alpha1.MaxInputBytes {
		s.fail(inferencev1alpha1.ReasonInvalidInput, inputProblem(input, err))
		return nil
	}
	if model.Spec.Workers != nil && s.status.JobName == "" {
		return r.runInPool(ctx, s, model)
	}
	err = r.runJob(ctx, s, model, input)
	if errors.Is(err, errJobConflict) {
		s.fail(inferencev1alpha1.ReasonJobConflict, fmt.Sprintf(
			"a Job named %s exists in namespace %s that this request does not own; delete it and create the request again",
			s.ir.Name, s.ir.Namespace))
		return nil
	}
	return err
}

// runJob starts the request's Job, or reads the outcome of the one it has.
func (r *InferenceRequestReconciler) runJob(
	ctx context.Context, s *requestState, model *inferencev1alpha1.InferenceModel, input string,
) error {
	job, err := r.job(ctx, s)
	if err != nil {
		return err
	}
	if job == nil {
		return r.startJob(ctx, s, model, input)
	}
	return r.readOutcome(ctx, s, job)
}

func inputProblem(input string, err error) string {
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("input is %d bytes of JSON; at most %d are accepted", len(input), inferencev1alpha1.MaxInputBytes)
}

// model returns the request's model, or nil when it does not exist; the model
// watch wakes the request once it does.
func (r *InferenceRequestReconciler) model(
	ctx context.Context, ir *inferencev1alpha1.InferenceRequest,
) (*inferencev1alpha1.InferenceModel, error) {
	model := &inferencev1alpha1.InferenceModel{}
	err := r.Get(ctx, types.NamespacedName{Namespace: ir.Namespace, Name: ir.Spec.Model}, model)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	return model, err
}

// errJobConflict says that a Job with the request's name exists and belongs
// to something else: the request cannot run, and retrying will not change it.
var errJobConflict = errors.New("a Job with the request's name belongs to something else")

// job returns the request's Job, or nil when there is none. A Job the status
// names but the cache lacks is looked up in the API server before it is taken
// for deleted: the cache may simply not have seen it yet.
func (r *InferenceRequestReconciler) job(ctx context.Context, s *requestState) (*batchv1.Job, error) {
	job := &batchv1.Job{}
	key := client.ObjectKeyFromObject(s.ir)
	err := r.Get(ctx, key, job)
	if apierrors.IsNotFound(err) && s.status.JobName != "" {
		err = r.APIReader.Get(ctx, key, job)
	}
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if !metav1.IsControlledBy(job, s.ir) {
		return nil, errJobConflict
	}
	return job, nil
}

// startJob creates the request's Job when its model has room for it, and
// queues the request when not.
func (r *InferenceRequestReconciler) startJob(
	ctx context.Context, s *requestState, model *inferencev1alpha1.InferenceModel, input string,
) error {
	if s.status.JobName != "" {
		s.fail(inferencev1alpha1.ReasonJobDeleted, fmt.Sprintf("job %s was deleted before it finished", s.status.JobName))
		return nil
	}
	if s.waitedTooLong() {
		return nil
	}
	if r.WorkURL != "" {
		// The pod may send a large result through the work API.
		if err := r.ensureWorkCredential(ctx, model); err != nil {
			return err
		}
	}
	job := buildJob(s.ir, model, input, r.WorkURL)
	if err := controllerutil.SetControllerReference(s.ir, job, r.Scheme); err != nil {
		return err
	}
	started, err := r.gate.Start(ctx, s.ir, model, func() error { return r.createJob(ctx, s.ir, job) })
	if err != nil {
		return err
	}
	if !started {
		s.inProgress(inferencev1alpha1.PhaseQueued, inferencev1alpha1.ReasonQueued,
			fmt.Sprintf("model %s runs at most %d requests at once%s", model.Name, *model.Spec.MaxConcurrency,
				s.limits.waitNote(s.ir)), corev1.EventTypeNormal)
		return nil
	}
	ctrl.LoggerFrom(ctx).V(1).Info("Created Job", "job", job.Name)
	return r.readOutcome(ctx, s, job)
}

// cancel ends a request whose spec.cancel is set: a waiting one at once, a
// running one once its Job is deleted (its pods go with it). A Job that
// finished before the cancel was seen has its outcome read instead: the work
// is done. The callback is sent in a reconcile of its own, after the end is
// stored, so that a slow receiver never holds up the cancel.
func (r *InferenceRequestReconciler) cancel(ctx context.Context, s *requestState) error {
	job, err := r.job(ctx, s)
	if err != nil && !errors.Is(err, errJobConflict) {
		return err
	}
	message := "canceled through spec.cancel before it started"
	if lease, ok := r.pool.LeaseOf(client.ObjectKeyFromObject(s.ir)); ok {
		r.pool.Revoke(lease.Request)
		message = fmt.Sprintf("canceled through spec.cancel; the lease of pod %s was revoked", lease.Pod)
	}
	if job != nil {
		if jobstate.Final(job) != nil {
			return r.readOutcome(ctx, s, job)
		}
		err := r.Delete(ctx, job, client.PropagationPolicy(metav1.DeletePropagationBackground),
			client.Preconditions{UID: &job.UID})
		if client.IgnoreNotFound(err) != nil {
			return err
		}
		message = fmt.Sprintf("canceled through spec.cancel; job %s was deleted", job.Name)
	}
	s.end(inferencev1alpha1.PhaseCanceled, inferencev1alpha1.ReasonCanceled, message)
	s.deliverLater = true
	return nil
}

// createJob creates job. One that already exists and belongs to ir is the
// same Job, built by the same pure function, so AlreadyExists is success;
// one that belongs to something else is errJobConflict. The cache holds only
// kinfer's Jobs, so the API server is asked whose it is.
func (r *InferenceRequestReconciler) createJob(ctx context.Context, ir *inferencev1alpha1.InferenceRequest, job *batchv1.Job) error {
	err := r.Create(ctx, job)
	if !apierrors.IsAlreadyExists(err) {
		return err
	}
	existing := &batchv1.Job{}
	if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(job), existing); err != nil {
		return err
	}
	if !metav1.IsControlledBy(existing, ir) {
		return errJobConflict
	}
	return nil
}

// requestID is the id the client knows the request by: spec.id, or the name
// when a kubectl user left the id out.
func requestID(ir *inferencev1alpha1.InferenceRequest) string {
	if ir.Spec.ID != "" {
		return ir.Spec.ID
	}
	return ir.Name
}

// inputJSON is the request's input as compact JSON, "null" when there is none.
func inputJSON(ir *inferencev1alpha1.InferenceRequest) (string, error) {
	if ir.Spec.Input == nil || len(ir.Spec.Input.Raw) == 0 {
		return "null", nil
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, ir.Spec.Input.Raw); err != nil {
		return "", fmt.Errorf("input is not JSON: %w", err)
	}
	return compact.String(), nil
}

// buildJob is the Job that runs ir on model. It is a pure function of its
// arguments, so a retried reconcile builds the same Job and the API server's
// AlreadyExists stops a second one; the caller sets the controller
// reference. With a work API (workURL), the pod may report a result too
// large for its termination message there.
func buildJob(
	ir *inferencev1alpha1.InferenceRequest, model *inferencev1alpha1.InferenceModel, input, workURL string,
) *batchv1.Job {
	template := model.Spec.Template.DeepCopy()
	template.Labels = withKinferLabels(template.Labels, ir, model)
	template.Spec.RestartPolicy = corev1.RestartPolicyNever

	env := []corev1.EnvVar{
		{Name: worker.EnvRequestID, Value: literalEnv(requestID(ir))},
		{Name: worker.EnvModel, Value: literalEnv(model.Name)},
		{Name: worker.EnvInput, Value: literalEnv(input)},
	}
	if workURL != "" {
		env = append(env, corev1.EnvVar{Name: worker.EnvRequestName, Value: literalEnv(ir.Name)})
		env = append(env, workEnv(model, workURL, true)...)
	}
	ours := func(e corev1.EnvVar) bool {
		return slices.ContainsFunc(env, func(o corev1.EnvVar) bool { return o.Name == e.Name })
	}
	for i := range template.Spec.Containers {
		c := &template.Spec.Containers[i]
		c.Env = append(slices.DeleteFunc(c.Env, ours), env...)
		// A worker that dies before writing its result still leaves its last
		// log lines as the message, which becomes status.error.
		c.TerminationMessagePolicy = corev1.TerminationMessageFallbackToLogsOnError
		if c.TerminationMessagePath != "" && c.TerminationMessagePath != corev1.TerminationMessagePathDefault &&
			!slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == worker.EnvResultPath }) {
			c.Env = append(c.Env, corev1.EnvVar{Name: worker.EnvResultPath, Value: literalEnv(c.TerminationMessagePath)})
		}
	}

	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{
			Name:        ir.Name,
			Namespace:   ir.Namespace,
			Labels:      withKinferLabels(model.Spec.Template.Labels, ir, model),
			Annotations: maps.Clone(model.Spec.Template.Annotations),
		},
		Spec: batchv1.JobSpec{
			ActiveDeadlineSeconds: ir.RunTimeoutSeconds(model),
			BackoffLimit:          model.Spec.MaxRetries,
			Template:              *template,
			PodFailurePolicy: &batchv1.PodFailurePolicy{Rules: []batchv1.PodFailurePolicyRule{
				{
					// A result too large to return, or an input the worker
					// refuses, fails the same way on every retry. (The API
					// server wants the values in ascending order.)
					Action: batchv1.PodFailurePolicyActionFailJob,
					OnExitCodes: &batchv1.PodFailurePolicyOnExitCodesRequirement{
						Operator: batchv1.PodFailurePolicyOnExitCodesOpIn,
						Values:   []int32{worker.ExitResultTooLarge, worker.ExitBadInput},
					},
				},
				{
					// Evictions, preemptions and node drains are not the worker's fault.
					Action: batchv1.PodFailurePolicyActionIgnore,
					OnPodConditions: []batchv1.PodFailurePolicyOnPodConditionsPattern{
						{Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue},
					},
				},
			}},
		},
	}
	if _, queued := template.Labels[kueueQueueLabel]; queued {
		job.Spec.Suspend = ptr.To(true)
	}
	return job
}

// literalEnv escapes value for env[].value, which the kubelet expands: it
// replaces $(NAME) with the variables defined before it in the container
// (secrets among them) and turns $$ into $. A client's input or id would
// otherwise read the model's secrets, or reach the worker changed. With every
// $ doubled, the worker gets value byte for byte.
func literalEnv(value string) string {
	return strings.ReplaceAll(value, "$", "$$")
}

// withKinferLabels returns a copy of labels with the request and model labels
// that the cache and the queue select Jobs and pods by.
func withKinferLabels(
	labels map[string]string, ir *inferencev1alpha1.InferenceRequest, model *inferencev1alpha1.InferenceModel,
) map[string]string {
	out := maps.Clone(labels)
	if out == nil {
		out = make(map[string]string, 2)
	}
	out[inferencev1alpha1.LabelRequest] = ir.Name
	out[inferencev1alpha1.LabelModel] = model.Name
	return out
}
