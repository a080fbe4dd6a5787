// Package controllers holds kinfer's reconcilers: InferenceRequests are run as
// Jobs built from their InferenceModel, and their results delivered to callbacks.
//
// The ClusterRole in config/rbac/role.yaml is generated from the markers below
// and on the reconcilers; it is the manager's whole authority in a cluster.
//
// +kubebuilder:rbac:groups=inference.kinfer.dev,resources=inferencerequests,verbs=get;list;watch;delete
// +kubebuilder:rbac:groups=inference.kinfer.dev,resources=inferencerequests/status,verbs=patch
// +kubebuilder:rbac:groups=inference.kinfer.dev,resources=inferencemodels,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
package controllers
