// Package v1alpha1 holds the kinfer API: InferenceModel, which a platform admin
// writes to say how a model runs, and InferenceRequest, one asynchronous inference.
//
// +kubebuilder:object:generate=true
// +groupName=inference.kinfer.dev
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the API group and version of every kinfer kind.
	GroupVersion = schema.GroupVersion{Group: "inference.kinfer.dev", Version: "v1alpha1"}

	// SchemeBuilder registers the kinfer kinds with a runtime.Scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the kinfer kinds to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
