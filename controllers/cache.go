package controllers

import (
	"slices"
	"strings"
	"sync"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// CacheOptions keeps the manager's cache to what kinfer reads: Jobs and pods
// only when they carry kinfer's request label (never every pod in the
// cluster), no object's managedFields, of each Job only the fields the
// controller looks at, and of each pod only enough metadata to find it. A
// request holds its Job and pod until its TTL, so they are most of what a
// manager with many finished requests keeps.
func CacheOptions() cache.Options {
	ours, err := labels.NewRequirement(LabelRequest, selection.Exists, nil)
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
			&batchv1.Job{}: {Label: kinferOnly, Transform: slimJob},
		},
	}
}

// cachedMeta is the part of an object's metadata the controller reads.
func cachedMeta(m *metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name:              m.Name,
		Namespace:         m.Namespace,
		UID:               m.UID,
		ResourceVersion:   m.ResourceVersion,
		Generation:        m.Generation,
		CreationTimestamp: m.CreationTimestamp,
		DeletionTimestamp: m.DeletionTimestamp,
		Labels:            m.Labels,
		OwnerReferences:   m.OwnerReferences,
	}
}

// slimJob keeps of a Job what decides its request's fate: its status, whether
// it is suspended, its deadline, and the name of the container whose
// termination message is the result. The pod template, a copy of the
// model's, is the bulk of a Job and is left out. Cached Jobs are only read,
// never written back.
func slimJob(obj any) (any, error) {
	job, ok := obj.(*batchv1.Job)
	if !ok {
		return obj, nil // a deletion tombstone: passed on as it is
	}
	return &batchv1.Job{
		TypeMeta:   job.TypeMeta,
		ObjectMeta: cachedMeta(&job.ObjectMeta),
		Spec: batchv1.JobSpec{
			Suspend:               job.Spec.Suspend,
			ActiveDeadlineSeconds: job.Spec.ActiveDeadlineSeconds,
			BackoffLimit:          job.Spec.BackoffLimit,
			Template:              corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: containerNames(job.Spec.Template.Spec.Containers)}},
		},
		Status: job.Status,
	}, nil
}

// namedContainers holds one slice of name-only containers per list of names:
// the Jobs of a model all name the same containers, and a Container is
// 400 bytes even when empty. Sharing is safe because the cache hands out
// deep copies, never the stored objects.
var namedContainers sync.Map // names joined by "/" → []corev1.Container

func containerNames(containers []corev1.Container) []corev1.Container {
	names := make([]string, 0, len(containers))
	for _, c := range containers {
		names = append(names, c.Name)
	}
	key := strings.Join(names, "/")
	if shared, ok := namedContainers.Load(key); ok {
		return shared.([]corev1.Container)
	}
	named := make([]corev1.Container, 0, len(names))
	for _, name := range names {
		named = append(named, corev1.Container{Name: name})
	}
	shared, _ := namedContainers.LoadOrStore(key, named)
	return shared.([]corev1.Container)
}

// podMetadata is how the manager's cache holds pods: their metadata only. A
// finished Job's pods are read whole from the API server, once per request,
// so the cache never holds a pod's spec or status.
func podMetadata() *metav1.PartialObjectMetadata {
	m := &metav1.PartialObjectMetadata{}
	m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Pod"))
	return m
}

// jobPods knows, from the cache's pod metadata, the names of the pods each Job
// controls (they share its namespace). It stands in for a field index, which
// would keep two sets and two index keys per pod: one map entry per Job is
// far less on a manager holding a day's pods.
type jobPods struct {
	mu    sync.RWMutex
	byJob map[types.UID][]string
}

func newJobPods() *jobPods { return &jobPods{byJob: map[types.UID][]string{}} }

// names returns the names of the pods the Job with uid controls; nil-safe.
func (p *jobPods) names(uid types.UID) []string {
	if p == nil {
		return nil
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	return slices.Clone(p.byJob[uid])
}

func (p *jobPods) add(obj any) {
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

func (p *jobPods) remove(obj any) {
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

// handler keeps p up to date from an informer of pod metadata.
func (p *jobPods) handler() toolscache.ResourceEventHandler {
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
// cache as metadata only (podMetadata); anything else passes through with
// its managedFields dropped.
func slimPod(obj any) (any, error) {
	pod, ok := obj.(*metav1.PartialObjectMetadata)
	if !ok {
		return stripManagedFields(obj)
	}
	return &metav1.PartialObjectMetadata{
		TypeMeta: pod.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name:              pod.Name,
			Namespace:         pod.Namespace,
			ResourceVersion:   pod.ResourceVersion,
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
			return []metav1.OwnerReference{{Kind: ref.Kind, Name: ref.Name, UID: ref.UID, Controller: ref.Controller}}
		}
	}
	return nil
}
