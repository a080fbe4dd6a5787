package controllers

import (
	"strings"
	"sync"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// CacheOptions keeps the manager's cache to what kinfer reads: Jobs and pods
// only when they carry kinfer's request label (never every pod in the
// cluster), no object's managedFields, and of each Job and pod only the
// fields the controller looks at. A request holds its Job and pod until its
// TTL, so they are most of what a manager with many finished requests keeps.
func CacheOptions() cache.Options {
	ours, err := labels.NewRequirement(LabelRequest, selection.Exists, nil)
	if err != nil {
		panic(err) // a constant label key; cannot fail
	}
	kinferOnly := labels.NewSelector().Add(*ours)
	return cache.Options{
		DefaultTransform: cache.TransformStripManagedFields(),
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

// slimPod keeps of a pod its phase, message and containers' states: where
// the result and failure messages are. Its spec is left out.
func slimPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	statuses := make([]corev1.ContainerStatus, 0, len(pod.Status.ContainerStatuses))
	for _, s := range pod.Status.ContainerStatuses {
		statuses = append(statuses, corev1.ContainerStatus{Name: s.Name, State: s.State, LastTerminationState: s.LastTerminationState})
	}
	return &corev1.Pod{
		TypeMeta:   pod.TypeMeta,
		ObjectMeta: cachedMeta(&pod.ObjectMeta),
		Status: corev1.PodStatus{
			Phase:             pod.Status.Phase,
			Reason:            pod.Status.Reason,
			Message:           pod.Status.Message,
			ContainerStatuses: statuses,
		},
	}, nil
}
