package shim

import (
	"context"
	"path/filepath"
	"testing"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
)

// The shim's handler runs against a real API server, so storage, validation
// and errors are the real ones.
var (
	cfg        *rest.Config
	k8sClient  client.Client
	testEnv    *envtest.Environment
	testScheme = runtime.NewScheme()
	ctx        = context.Background()
)

func TestShim(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Shim Suite")
}

func setupScheme() error {
	if err := clientgoscheme.AddToScheme(testScheme); err != nil {
		return err
	}
	return inferencev1alpha1.AddToScheme(testScheme)
}

var _ = BeforeSuite(func() {
	Expect(setupScheme()).To(Succeed())
	testEnv = &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	var err error
	cfg, err = testEnv.Start()
	Expect(err).NotTo(HaveOccurred(), "starting envtest; make test sets KUBEBUILDER_ASSETS to the control plane it builds")
	k8sClient, err = client.New(cfg, client.Options{Scheme: testScheme})
	Expect(err).NotTo(HaveOccurred())
})

var _ = AfterSuite(func() {
	if testEnv != nil {
		Expect(testEnv.Stop()).To(Succeed())
	}
})

// newNamespace makes a namespace for one spec, with the model that
// submissions naming none run on: the shim refuses requests for models that
// do not exist.
func newNamespace() string {
	GinkgoHelper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "shim-test-"}}
	Expect(k8sClient.Create(ctx, ns)).To(Succeed())
	createModel(model(inferencev1alpha1.DefaultModelName, ns.Name))
	return ns.Name
}

// model starts a model for tests, whose worker never runs: envtest has no
// Job controller.
func model(name, namespace string) *testutil.InferenceModelWrapper {
	return testutil.MakeInferenceModel(name, namespace, "registry.example/worker:1")
}

func createModel(m *testutil.InferenceModelWrapper) {
	GinkgoHelper()
	Expect(k8sClient.Create(ctx, m.Obj())).To(Succeed())
}
