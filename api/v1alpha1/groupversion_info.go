// Package v1alpha1 holds the kinfer API: InferenceModel, which a platform admin
// writes to say how a model runs, and InferenceRequest, one asynchronous inference.
//
// +kubebuilder:object:generate=true
// +groupName=inference.kinfer.dev
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the API group and version of every kinfer kind.
	GroupVersion = schema.GroupVersion{Group: "inference.kinfer.dev", Version: "v1alpha1"}

	// SchemeBuilder registers the kinfer kinds with a runtime.Scheme. It depends
	// on apimachinery only, so clients can import the API without controller-runtime.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the kinfer kinds to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(scheme *runtime.Scheme) error {
	scheme.AddKnownTypes(GroupVersion,
		&InferenceRequest{}, &InferenceRequestList{},
		&InferenceModel{}, &InferenceModelList{},
	)
	metav1.AddToGroupVersion(scheme, GroupVersion)
	return nil
}
