// Package slimcache keeps the manager's cache to what kinfer reads of Jobs
// and pods, and finds a Job's pods from the cached pod metadata.
package slimcache

import (
	"slices"
	"strings"
	"sync"
	"unique"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/jobstate"
)

// Options keeps the manager's cache to what kinfer reads: Jobs and pods
// only when they carry kinfer's model label (never every pod in the
// cluster), no object's managedFields, of each Job only the fields the
// controller looks at, and of each pod only enough metadata to find it. A
// request holds its Job and pod until its TTL, so they are most of what a
// manager with many finished requests keeps.
func Options() cache.Options {
	ours, err := labels.NewRequirement(inferencev1alpha1.LabelModel, selection.Exists, nil)
	if err != nil {
		panic(err) // a constant label key; cannot fail
	}
	kinferOnly := labels.NewSelector().Add(*ours)
	return cache.Options{
		// Every kind the controller reads has its informer from the start; a
		// read of any other kind fails instead of quietly starting an
		// informer (a typed pod read would cache every kinfer pod whole).
		ReaderFailOnMissingInformer: true,
		DefaultTransform:            stripManagedFields,
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}:  {Label: kinferOnly, Transform: slimPod},
			&batchv1.Job{}: {Label: kinferOnly, Transform: JobTransform()},
		},
	}
}

// cachedLabels are the labels the controller selects Jobs by; a model's own
// template labels, copied onto every Job, are left out.
var cachedLabels = []string{
	inferencev1alpha1.LabelRequest, inferencev1alpha1.LabelModel, inferencev1alpha1.LabelPool, inferencev1alpha1.LabelPoolGeneration,
}

// cachedMeta is the part of an object's metadata the controller reads, in
// memory of its own (see own).
func cachedMeta(m *metav1.ObjectMeta) metav1.ObjectMeta {
	kept := make(map[string]string, len(cachedLabels))
	for _, k := range cachedLabels {
		if v, ok := m.Labels[k]; ok {
			kept[k] = own(v)
		}
	}
	refs := make([]metav1.OwnerReference, 0, len(m.OwnerReferences))
	for _, ref := range m.OwnerReferences {
		refs = append(refs, ownRef(ref))
	}
	return metav1.ObjectMeta{
		Name:              own(m.Name),
		Namespace:         shared(m.Namespace),
		UID:               types.UID(own(string(m.UID))),
		ResourceVersion:   own(m.ResourceVersion),
		Generation:        m.Generation,
		CreationTimestamp: m.CreationTimestamp,
		DeletionTimestamp: m.DeletionTimestamp,
		Labels:            kept,
		OwnerReferences:   refs,
	}
}

// own copies a string a cached object keeps out of the decoded object it came
// from. A decoded Job is a hundred or so small allocations, nearly all dropped
// by the transform; a kept name or UID left among them would keep their memory
// spans in use after the rest is collected. Measured on 10 000 held requests
// (docs/benchmarks.md), the copies cut the manager's heap by several MiB.
func own(s string) string { return strings.Clone(s) }

// shared is own for strings that repeat across objects (namespaces, kinds,
// condition types and reasons): one copy serves them all.
func shared(s string) string { return unique.Make(s).Value() }

func ownRef(ref metav1.OwnerReference) metav1.OwnerReference {
	return metav1.OwnerReference{
		APIVersion:         shared(ref.APIVersion),
		Kind:               shared(ref.Kind),
		Name:               own(ref.Name),
		UID:                types.UID(own(string(ref.UID))),
		Controller:         ownBool(ref.Controller),
		BlockOwnerDeletion: ownBool(ref.BlockOwnerDeletion),
	}
}

var yes, no = true, false

// ownBool points at one of two shared booleans; cached objects are never
// written (the cache hands out deep copies).
func ownBool(b *bool) *bool {
	switch {
	case b == nil:
		return nil
	case *b:
		return &yes
	default:
		return &no
	}
}

// jobSlimmer slims Jobs for one cache. It holds one slice of name-only
// containers per list of names: the Jobs of a model all name the same
// containers, and a Container is 400 bytes even when empty. Sharing is safe
// because the cache hands out deep copies, never the stored objects.
type jobSlimmer struct {
	containers sync.Map // names joined by "/" → []corev1.Container
}

// JobTransform is the transform Options gives the cache for Jobs; each call
// returns one with shared containers of its own.
func JobTransform() toolscache.TransformFunc { return (&jobSlimmer{}).slim }

// slim keeps of a Job what decides its request's fate: its final
// condition and count of failed pods, whether it is suspended, its deadline,
// and the name of the container whose termination message is the result. The
// pod template, a copy of the model's, is the bulk of a Job and is left out.
// Cached Jobs are only read, never written back.
func (j *jobSlimmer) slim(obj any) (any, error) {
	job, ok := obj.(*batchv1.Job)
	if !ok {
		return obj, nil // a deletion tombstone: passed on as it is
	}
	slim := &batchv1.Job{
		TypeMeta:   job.TypeMeta,
		ObjectMeta: cachedMeta(&job.ObjectMeta),
		Spec: batchv1.JobSpec{
			Suspend:               job.Spec.Suspend,
			ActiveDeadlineSeconds: job.Spec.ActiveDeadlineSeconds,
			BackoffLimit:          job.Spec.BackoffLimit,
			Template:              corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: j.containerNames(job.Spec.Template.Spec.Containers)}},
		},
		Status: batchv1.JobStatus{Conditions: finalConditions(job.Status.Conditions), Failed: job.Status.Failed},
	}
	if _, pool := job.Labels[inferencev1alpha1.LabelPool]; pool {
		// A pool's Job is sized by the manager: it reads how many pods it
		// asked for, how many run or are ready, and how many have succeeded.
		if job.Spec.Parallelism != nil {
			slim.Spec.Parallelism = ptr.To(*job.Spec.Parallelism)
		}
		slim.Status.Active, slim.Status.Succeeded, slim.Status.Ready = job.Status.Active, job.Status.Succeeded, job.Status.Ready
	}
	return slim, nil
}

// finalConditions keeps the conditions that end a Job (jobstate.IsFinal).
func finalConditions(conditions []batchv1.JobCondition) []batchv1.JobCondition {
	var kept []batchv1.JobCondition
	for i := range conditions {
		if c := &conditions[i]; jobstate.IsFinal(c) {
			kept = append(kept, batchv1.JobCondition{
				Type: batchv1.JobConditionType(shared(string(c.Type))), Status: corev1.ConditionStatus(shared(string(c.Status))),
				Reason: shared(c.Reason), Message: own(c.Message),
			})
		}
	}
	return kept
}

func (j *jobSlimmer) containerNames(containers []corev1.Container) []corev1.Container {
	names := make([]string, 0, len(containers))
	for _, c := range containers {
		names = append(names, c.Name)
	}
	key := strings.Join(names, "/")
	if shared, ok := j.containers.Load(key); ok {
		return shared.([]corev1.Container)
	}
	named := make([]corev1.Container, 0, len(names))
	for _, name := range names {
		named = append(named, corev1.Container{Name: name})
	}
	shared, _ := j.containers.LoadOrStore(key, named)
	return shared.([]corev1.Container)
}

// PodMetadata is how the manager's cache holds pods: their metadata only. A
// finished Job's pods are read whole from the API server, once per request,
// so the cache never holds a pod's spec or status.
func PodMetadata() *metav1.PartialObjectMetadata {
	m := &metav1.PartialObjectMetadata{}
	m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Pod"))
	return m
}

// JobPods knows, from the cache's pod metadata, the names of the pods each Job
// controls (they share its namespace). It stands in for a field index, which
// would keep two sets and two index keys per pod: one map entry per Job is
// far less on a manager holding a day's pods.
type JobPods struct {
	mu    sync.RWMutex
	byJob map[types.UID][]string
}

// NewJobPods returns an empty JobPods; Handler keeps it up to date.
func NewJobPods() *JobPods { return &JobPods{byJob: map[types.UID][]string{}} }

// Names returns the names of the pods the Job with uid controls.
func (p *JobPods) Names(uid types.UID) []string {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return slices.Clone(p.byJob[uid])
}

func (p *JobPods) add(obj any) {
	pod, job, ok := controlledPod(obj)
	if !ok {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !slices.Contains(p.byJob[job], pod) {
		p.byJob[job] = append(p.byJob[job], pod)
	}
}

func (p *JobPods) remove(obj any) {
	if tombstone, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
		obj = tombstone.Obj
	}
	pod, job, ok := controlledPod(obj)
	if !ok {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if left := slices.DeleteFunc(p.byJob[job], func(name string) bool { return name == pod }); len(left) > 0 {
		p.byJob[job] = left
	} else {
		delete(p.byJob, job)
	}
}

// Handler keeps p up to date from an informer of pod metadata.
func (p *JobPods) Handler() toolscache.ResourceEventHandler {
	return toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { p.add(obj) },
		UpdateFunc: func(_, obj any) { p.add(obj) },
		DeleteFunc: p.remove,
	}
}

// controlledPod is a pod's name and the UID of the Job that controls it.
func controlledPod(obj any) (pod string, job types.UID, ok bool) {
	o, isObject := obj.(client.Object)
	if !isObject {
		return "", "", false
	}
	for _, ref := range o.GetOwnerReferences() {
		if ref.Controller != nil && *ref.Controller && ref.Kind == "Job" {
			return o.GetName(), ref.UID, true
		}
	}
	return "", "", false
}

// slimPod keeps of a pod's metadata what finds it again: its name, when it
// was created, and its controlling owner. The controller reads pods from the
// cache as metadata only (PodMetadata); anything else passes through with
// its managedFields dropped.
func slimPod(obj any) (any, error) {
	pod, ok := obj.(*metav1.PartialObjectMetadata)
	if !ok {
		return stripManagedFields(obj)
	}
	return &metav1.PartialObjectMetadata{
		TypeMeta: pod.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name:              own(pod.Name),
			Namespace:         shared(pod.Namespace),
			ResourceVersion:   own(pod.ResourceVersion),
			CreationTimestamp: pod.CreationTimestamp,
			OwnerReferences:   controllerOnly(pod.OwnerReferences),
		},
	}, nil
}

var stripManagedFields = cache.TransformStripManagedFields()

// controllerOnly keeps the controlling owner reference, with only what
// identifies it.
func controllerOnly(refs []metav1.OwnerReference) []metav1.OwnerReference {
	for _, ref := range refs {
		if ref.Controller != nil && *ref.Controller {
			return []metav1.OwnerReference{{Kind: shared(ref.Kind), Name: own(ref.Name), UID: types.UID(own(string(ref.UID))), Controller: &yes}}
		}
	}
	return nil
}

// PendingPodOptions are the options of a second, small cache: the pods of
// kinfer's own Jobs (those with the request label, so never a pool's) while
// they are Pending, each kept as what says why it has not started (see
// slimPendingPod). A pod leaves it once it runs or ends, so it holds only the
// pods that are starting or stuck, never the many finished pods the main
// cache holds as metadata. The caller sets the scheme, mapper and HTTP
// client, and indexes pods by JobIndex before it starts.
func PendingPodOptions() cache.Options {
	ours, err := labels.NewRequirement(inferencev1alpha1.LabelRequest, selection.Exists, nil)
	if err != nil {
		panic(err) // a constant label key; cannot fail
	}
	return cache.Options{
		ReaderFailOnMissingInformer: true,
		DefaultTransform:            stripManagedFields,
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}: {
				Label:     labels.NewSelector().Add(*ours),
				Field:     fields.OneTermEqualSelector("status.phase", string(corev1.PodPending)),
				Transform: slimPendingPod,
			},
		},
	}
}

// JobIndex indexes the pending pods by the UID of the Job that controls them.
const JobIndex = "kinfer.controllingJob"

// IndexByJob is the index function of JobIndex.
func IndexByJob(obj client.Object) []string {
	if _, job, ok := controlledPod(obj); ok {
		return []string{string(job)}
	}
	return nil
}

// slimPendingPod keeps of a pending pod what tells why it has not started:
// the PodScheduled condition while it is not True, and each container's
// waiting reason and message. The spec and the rest of the status are left
// out.
func slimPendingPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // a deletion tombstone: passed on as it is
	}
	slim := &corev1.Pod{
		TypeMeta: pod.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name:              own(pod.Name),
			Namespace:         shared(pod.Namespace),
			ResourceVersion:   own(pod.ResourceVersion),
			CreationTimestamp: pod.CreationTimestamp,
			Labels:            map[string]string{inferencev1alpha1.LabelRequest: own(pod.Labels[inferencev1alpha1.LabelRequest])},
			OwnerReferences:   controllerOnly(pod.OwnerReferences),
		},
		Status: corev1.PodStatus{
			Phase:                 corev1.PodPhase(shared(string(pod.Status.Phase))),
			InitContainerStatuses: waitingOnly(pod.Status.InitContainerStatuses),
			ContainerStatuses:     waitingOnly(pod.Status.ContainerStatuses),
		},
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status != corev1.ConditionTrue {
			slim.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled,
				Status: corev1.ConditionStatus(shared(string(c.Status))), Reason: shared(c.Reason), Message: own(c.Message)}}
		}
	}
	return slim, nil
}

// waitingOnly keeps the containers that wait, with their name, reason and
// message.
func waitingOnly(statuses []corev1.ContainerStatus) []corev1.ContainerStatus {
	var kept []corev1.ContainerStatus
	for _, s := range statuses {
		if w := s.State.Waiting; w != nil {
			kept = append(kept, corev1.ContainerStatus{Name: own(s.Name), State: corev1.ContainerState{
				Waiting: &corev1.ContainerStateWaiting{Reason: shared(w.Reason), Message: own(w.Message)}}})
		}
	}
	return kept
}
