package controllers

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/jobstate"
	"github.com/kinfer/kinfer/internal/workapi"
	"github.com/kinfer/kinfer/pkg/worker"
)

// +kubebuilder:rbac:groups=batch,resources=jobs,verbs=patch

// PoolReconciler runs the pool of each model with workers: one Job owned by
// the model, the "Job with a work queue" of Kubernetes, whose pods take the
// model's requests from the work API. It sizes the Job from the model's
// queue, min <= pods <= max, pods ~ (waiting + leased) / batchSize. A pool
// grows by raising its Job's parallelism and shrinks as idle pods are let
// go (the work API tells them). A Job one of whose pods has exited cannot
// grow again (Kubernetes takes a success as the queue being done), so
// growing past it starts the next Job; a model edit does the same, and the
// old Job's pods finish their work as it is scaled to zero. It also keeps
// every model's status: its mode, queue and ready pods.
type PoolReconciler struct {
	client.Client
	Scheme   *runtime.Scheme
	Recorder events.EventRecorder
	// WorkURL is the work API's URL as pods reach it (--work-url).
	WorkURL string
	// Demand is how many requests of a model wait, and how many are leased.
	Demand func(model types.NamespacedName) (waiting, leased int)
	// Running is how many requests of a model run in Jobs of their own.
	Running func(model types.NamespacedName) int
}

// poolResync is how often a pool is sized again without any event: new
// requests reach the queue's index, not this controller.
const poolResync = 2 * time.Second

// Reconcile sizes one model's pool.
func (r *PoolReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	model := &inferencev1alpha1.InferenceModel{}
	if err := r.Get(ctx, req.NamespacedName, model); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	var list batchv1.JobList
	if err := r.List(ctx, &list, client.InNamespace(model.Namespace),
		client.MatchingLabels{inferencev1alpha1.LabelPool: model.Name}); err != nil {
		return ctrl.Result{}, err
	}
	current, err := r.settle(ctx, model, list.Items)
	if err != nil {
		return ctrl.Result{}, err
	}
	busy, err := r.updateStatus(ctx, model, list.Items)
	switch {
	case err != nil:
		return ctrl.Result{}, err
	case model.Spec.Workers != nil:
		return ctrl.Result{RequeueAfter: poolResync}, r.size(ctx, model, current)
	case busy:
		return ctrl.Result{RequeueAfter: statusResync}, nil
	}
	return ctrl.Result{}, nil
}

// settle clears away the pool Jobs that are done, scales to zero those made
// from an older spec or outgrown, and returns the one that serves the
// model now, if any.
func (r *PoolReconciler) settle(
	ctx context.Context, model *inferencev1alpha1.InferenceModel, jobs []batchv1.Job,
) (*batchv1.Job, error) {
	generation := strconv.FormatInt(model.Generation, 10)
	var current *batchv1.Job
	for i := range jobs {
		job := &jobs[i]
		switch {
		case jobstate.Final(job) != nil:
			// Done: its pods have all exited. The next Job takes over.
			if err := r.Delete(ctx, job, client.PropagationPolicy(metav1.DeletePropagationBackground)); client.IgnoreNotFound(err) != nil {
				return nil, err
			}
		case ptr.Deref(job.Spec.Parallelism, 1) == 0 && job.Status.Active == 0 && job.CreationTimestamp.Add(poolResync).Before(time.Now()):
			// Scaled to zero and empty: gone for good.
			if err := r.Delete(ctx, job, client.PropagationPolicy(metav1.DeletePropagationBackground)); client.IgnoreNotFound(err) != nil {
				return nil, err
			}
		case model.Spec.Workers == nil || job.Labels[inferencev1alpha1.LabelPoolGeneration] != generation ||
			(current != nil && poolJobNumber(job) < poolJobNumber(current)):
			// Made from an older spec, or outgrown: its pods finish their
			// work and go.
			if err := r.scale(ctx, job, 0); err != nil {
				return nil, err
			}
		default:
			if current != nil {
				if err := r.scale(ctx, current, 0); err != nil {
					return nil, err
				}
			}
			current = job
		}
	}
	return current, nil
}

// size grows the pool to what its queue asks for. It never shrinks a Job
// with pods at work: idle pods are let go by the work API.
func (r *PoolReconciler) size(ctx context.Context, model *inferencev1alpha1.InferenceModel, current *batchv1.Job) error {
	w := model.Spec.Workers
	waiting, leased := r.Demand(types.NamespacedName{Namespace: model.Namespace, Name: model.Name})
	batch := max(int(w.BatchSize), 1)
	want := int32(min(max((waiting+leased+batch-1)/batch, int(w.Min)), int(w.Max)))
	switch {
	case current == nil && want == 0:
		return nil
	case current == nil:
		return r.start(ctx, model, 0, want)
	case current.Status.Succeeded > 0:
		// It cannot grow; a new Job serves what it does not.
		if extra := want - current.Status.Active; extra > 0 {
			return r.start(ctx, model, poolJobNumber(current)+1, extra)
		}
		return nil
	case ptr.Deref(current.Spec.Parallelism, 1) < want:
		return r.scale(ctx, current, want)
	}
	return nil
}

func (r *PoolReconciler) scale(ctx context.Context, job *batchv1.Job, pods int32) error {
	if ptr.Deref(job.Spec.Parallelism, 1) == pods {
		return nil
	}
	patch := client.RawPatch(types.MergePatchType, fmt.Appendf(nil, `{"spec":{"parallelism":%d}}`, pods))
	return client.IgnoreNotFound(r.Patch(ctx, job, patch))
}

// start creates the pool Job numbered n of model's generation. Its name is
// a function of the two, so a reconcile that runs before the cache shows the
// Job it created a moment ago makes no second one.
func (r *PoolReconciler) start(ctx context.Context, model *inferencev1alpha1.InferenceModel, n int, pods int32) error {
	if r.WorkURL == "" {
		r.Recorder.Eventf(model, nil, corev1.EventTypeWarning, "NoWorkAPI", "StartPool",
			"the manager runs without --work-url, so a pool's pods could not reach it; no pool is started")
		return nil
	}
	job := buildPoolJob(model, r.WorkURL, n, pods)
	if err := controllerutil.SetControllerReference(model, job, r.Scheme); err != nil {
		return err
	}
	if err := r.Create(ctx, job); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	ctrl.LoggerFrom(ctx).V(1).Info("Started a pool Job", "job", job.Name, "pods", pods)
	return nil
}

// buildPoolJob is a Job of model's pool with pods pods, made from the
// model's template: every container learns where the work API is and gets
// the model's work credential from its Secret, never in the Job itself.
func buildPoolJob(model *inferencev1alpha1.InferenceModel, workURL string, n int, pods int32) *batchv1.Job {
	labels := maps.Clone(model.Spec.Template.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	labels[inferencev1alpha1.LabelModel] = model.Name
	labels[inferencev1alpha1.LabelPool] = model.Name
	labels[inferencev1alpha1.LabelPoolGeneration] = strconv.FormatInt(model.Generation, 10)
	template := model.Spec.Template.DeepCopy()
	template.Labels = maps.Clone(labels)
	template.Spec.RestartPolicy = corev1.RestartPolicyNever
	batch := max(model.Spec.Workers.BatchSize, 1)
	env := append([]corev1.EnvVar{
		{Name: worker.EnvModel, Value: literalEnv(model.Name)},
		{Name: worker.EnvBatchSize, Value: strconv.Itoa(int(batch))},
	}, workEnv(model, workURL, false)...)
	ours := func(e corev1.EnvVar) bool {
		return slices.ContainsFunc(env, func(o corev1.EnvVar) bool { return o.Name == e.Name }) ||
			e.Name == worker.EnvRequestID || e.Name == worker.EnvInput
	}
	for i := range template.Spec.Containers {
		c := &template.Spec.Containers[i]
		c.Env = append(slices.DeleteFunc(c.Env, ours), env...)
	}
	return &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{
			Name:        poolJobName(model, n),
			Namespace:   model.Namespace,
			Labels:      labels,
			Annotations: maps.Clone(model.Spec.Template.Annotations),
		},
		Spec: batchv1.JobSpec{
			Parallelism: ptr.To(pods),
			// Pods that crash are replaced; their requests are handed out
			// again under the model's maxRetries, which is the bound that
			// counts. A Job that still fails this often is replaced by the
			// next reconcile.
			BackoffLimit: ptr.To[int32](100),
			Template:     *template,
			PodFailurePolicy: &batchv1.PodFailurePolicy{Rules: []batchv1.PodFailurePolicyRule{{
				Action: batchv1.PodFailurePolicyActionIgnore,
				OnPodConditions: []batchv1.PodFailurePolicyOnPodConditionsPattern{
					{Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue},
				},
			}}},
		},
	}
}

// workEnv is what a pod needs to reach model's part of the work API: its URL,
// the pod's name, and the model's credential from its Secret, never in the
// pod's spec itself. optional lets a pod start while the Secret is missing.
func workEnv(model *inferencev1alpha1.InferenceModel, workURL string, optional bool) []corev1.EnvVar {
	return []corev1.EnvVar{
		{Name: worker.EnvWorkURL, Value: literalEnv(fmt.Sprintf("%s/v1/namespaces/%s/models/%s", workURL, model.Namespace, model.Name))},
		{Name: worker.EnvPodName, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
		{Name: worker.EnvWorkToken, ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: workapi.SecretName(model.Name)}, Key: workapi.TokenKey,
			Optional: ptr.To(optional)}}},
	}
}

// poolJobName names the pool Job numbered n made from model's generation:
// <model>-pool-<generation>-<n>, the model's name cut so that the whole
// fits the 63 characters of a label value.
func poolJobName(model *inferencev1alpha1.InferenceModel, n int) string {
	suffix := fmt.Sprintf("-pool-%d-%d", model.Generation, n)
	return model.Name[:min(len(model.Name), 63-len(suffix))] + suffix
}

// poolJobNumber is the n of a pool Job's name.
func poolJobNumber(job *batchv1.Job) int {
	n, _ := strconv.Atoi(job.Name[strings.LastIndex(job.Name, "-")+1:])
	return n
}
