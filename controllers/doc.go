// Package controllers holds kinfer's reconcilers: InferenceRequests are run as
// Jobs built from their InferenceModel, and their results delivered to callbacks.
//
// The files follow a request's life, and are best read in this order:
//
//   - inferencerequest_controller.go: the reconciler, what it is built from,
//     Reconcile, and the watches that wake a request;
//   - status.go: requestState, the status one reconcile computes, and the
//     end of each reconcile: the one status write, its Events, the requeue;
//   - job.go: receive the request, build its Job and create it when the
//     model has room;
//   - outcome.go: read the ended Job's result or failure from its pods;
//   - delivery.go: send the callback, record the attempt, schedule the next;
//   - expiry.go: delete the request once its TTL has passed.
//
// What is not a decision about a request lives in packages of its own under
// internal/: hostlimit, queue, slimcache, jobstate, ownwrites, expiry and
// requestmetrics.
//
// The ClusterRole in config/rbac/role.yaml is generated from the markers below
// and on the reconcilers; it is the manager's whole authority in a cluster.
//
// +kubebuilder:rbac:groups=inference.kinfer.dev,resources=inferencerequests,verbs=get;list;watch;delete
// +kubebuilder:rbac:groups=inference.kinfer.dev,resources=inferencerequests/status,verbs=patch
// +kubebuilder:rbac:groups=inference.kinfer.dev,resources=inferencemodels,verbs=get;list;watch
// +kubebuilder:rbac:groups=inference.kinfer.dev,resources=inferencemodels/status,verbs=patch
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
package controllers
