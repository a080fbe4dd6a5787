package testutil

import (
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
)

// FakeClient starts an in-memory client holding objects, for unit tests: it
// knows Kubernetes' own kinds and kinfer's, and gives InferenceRequests a
// status subresource. Call Build, after adding what else the test needs.
func FakeClient(objects ...client.Object) *fake.ClientBuilder {
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(inferencev1alpha1.AddToScheme(scheme))
	return fake.NewClientBuilder().WithScheme(scheme).WithObjects(objects...).
		WithStatusSubresource(&inferencev1alpha1.InferenceRequest{})
}
