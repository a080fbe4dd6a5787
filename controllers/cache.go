package controllers

import (
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// CacheOptions keeps the manager's cache to what kinfer reads: Jobs and pods
// only when they carry kinfer's request label (never every pod in the cluster),
// and no object's managedFields, which are often the larger half of it.
func CacheOptions() cache.Options {
	ours, err := labels.NewRequirement(LabelRequest, selection.Exists, nil)
	if err != nil {
		panic(err) // a constant label key; cannot fail
	}
	kinferOnly := labels.NewSelector().Add(*ours)
	return cache.Options{
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}:  {Label: kinferOnly},
			&batchv1.Job{}: {Label: kinferOnly},
		},
	}
}
