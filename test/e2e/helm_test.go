package e2e

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
)

// helmBinary returns the helm that make test-e2e built and names in $HELM
// or, without it, the one make would build from hack/tools/go.mod, building
// it when it is missing as make does.
func helmBinary() string {
	GinkgoHelper()
	if path := os.Getenv("HELM"); path != "" {
		Expect(path).To(BeAnExistingFile(), "HELM names a helm binary that does not exist: run make test-e2e")
		return path
	}
	mod, err := os.ReadFile(filepath.Join(root, "hack", "tools", "go.mod"))
	Expect(err).NotTo(HaveOccurred())
	version := ""
	for _, line := range strings.Split(string(mod), "\n") {
		if fields := strings.Fields(line); len(fields) >= 2 && fields[0] == "helm.sh/helm/v4" {
			version = fields[1]
		}
	}
	Expect(version).NotTo(BeEmpty(), "hack/tools/go.mod should require helm.sh/helm/v4")
	path, err := filepath.Abs(filepath.Join(root, "bin", "helm-"+version))
	Expect(err).NotTo(HaveOccurred())
	if _, err := os.Stat(path); err == nil {
		return path
	}
	By("building helm " + version + " from source, as make does")
	cmd := exec.Command("go", "build", "-o", path, "helm.sh/helm/v4/cmd/helm")
	cmd.Dir = filepath.Join(root, "hack", "tools")
	cmd.Env = append(os.Environ(), "GOWORK=off")
	out, err := cmd.CombinedOutput()
	Expect(err).NotTo(HaveOccurred(), "building helm: %s", out)
	return path
}

// crdMetadata reads a CRD's metadata; the suite's client has no scheme for
// CRDs, and needs none for metadata.
func crdMetadata(name string) *metav1.PartialObjectMetadata {
	GinkgoHelper()
	crd := &metav1.PartialObjectMetadata{}
	crd.SetGroupVersionKind(schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinition"})
	Expect(k8sClient.Get(ctx, client.ObjectKey{Name: name}, crd)).To(Succeed(), name)
	return crd
}

// The chart is the other way to install what config/default installs; make
// chart checks that its defaults render config/default. This proves that a
// release installs into a cluster, that the manager serves a request with
// the RBAC and arguments the chart gives it, and that uninstalling keeps the
// CRDs and so every request.
var _ = Describe("The Helm chart in charts/kinfer", func() {
	It("lints, installs, serves a request as its Deployment runs the manager, and uninstalls keeping the CRDs and requests", func() {
		helmPath := helmBinary()
		helmHome := GinkgoT().TempDir()
		helm := func(args ...string) (string, error) {
			cmd := exec.Command(helmPath, append([]string{"--kubeconfig", stack.Kubeconfig}, args...)...)
			cmd.Dir = root
			// Helm's cache, configuration and data stay out of $HOME.
			cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+filepath.Join(helmHome, "cache"),
				"HELM_CONFIG_HOME="+filepath.Join(helmHome, "config"), "HELM_DATA_HOME="+filepath.Join(helmHome, "data"))
			out, err := cmd.CombinedOutput()
			return string(out), err
		}

		By("linting the chart")
		out, err := helm("lint", "--strict", "charts/kinfer")
		Expect(err).NotTo(HaveOccurred(), out)

		By("installing a release with loopback callbacks allowed")
		// The local cluster was started with the CRDs of config/crd/bases
		// (and the deployment spec may have applied config/default): the
		// release takes those objects and their fields over, as from a
		// kustomize install.
		out, err = helm("install", "kinfer", "charts/kinfer", "--namespace", systemNamespace, "--create-namespace",
			"--take-ownership", "--force-conflicts", "--set", "callback.allowCIDRs={127.0.0.0/8}")
		Expect(err).NotTo(HaveOccurred(), out)
		released := false
		DeferCleanup(func() {
			if !released {
				_, _ = helm("uninstall", "kinfer", "--namespace", systemNamespace)
			}
		})
		out, err = helm("status", "kinfer", "--namespace", systemNamespace)
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(out).To(ContainSubstring("STATUS: deployed"))

		deployment := &appsv1.Deployment{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: systemNamespace, Name: "kinfer-controller-manager"},
			deployment)).To(Succeed())
		Expect(deployment.Labels).To(HaveKeyWithValue("app.kubernetes.io/managed-by", "Helm"))
		Expect(deployment.Spec.Template.Spec.ServiceAccountName).To(Equal(managerAccount))
		for _, service := range []string{"kinfer-shim", "kinfer-work", "kinfer-controller-manager-metrics-service"} {
			Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: systemNamespace, Name: service},
				&corev1.Service{})).To(Succeed(), service)
		}
		crds := []string{"inferencerequests.inference.kinfer.dev", "inferencemodels.inference.kinfer.dev"}
		for _, name := range crds {
			crd := crdMetadata(name)
			Expect(crd.Annotations).To(HaveKeyWithValue("helm.sh/resource-policy", "keep"), name)
			Expect(crd.Annotations).To(HaveKeyWithValue("meta.helm.sh/release-name", "kinfer"), name)
		}

		By("running the manager as its ServiceAccount with the chart's Deployment arguments")
		Expect(deployment.Spec.Template.Spec.Containers[0].Args).To(ContainElements("--leader-elect",
			"--shim-auth=kubernetes", "--callback-allow-cidrs=127.0.0.0/8",
			"--work-url=http://kinfer-work."+systemNamespace+".svc:8090"))
		saManager, saShim, _ := startDeployedManager(deployment)

		By("serving a request submitted through the shim with a client's token")
		ns := newNamespace()
		Expect(k8sClient.Create(ctx, sleepModel(ns, "--delay=1s").Obj())).To(Succeed())
		submitter := token(ns, "submitter")
		Expect(k8sClient.Create(ctx, &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "submitter", Namespace: ns},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "kinfer-inferencerequest-editor-role"},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "submitter", Namespace: ns}},
		})).To(Succeed())
		receiver := testutil.NewReceiver()
		defer receiver.Close()
		Eventually(func() int {
			code, _ := post("http://"+saShim+"/v1/namespaces/"+ns+"/inferences", submitter,
				[]byte(`{"id": "helm", "callback_url": "`+receiver.URL+`"}`))
			return code
		}, "20s", "500ms").Should(Equal(http.StatusAccepted), "the chart's editor role should let the submitter in")
		Eventually(func() map[string][]map[string]any { return callbacks(receiver) }, "60s", "200ms").
			Should(HaveKeyWithValue("helm", ConsistOf(HaveKeyWithValue("result", "OK"))))
		Expect(delivered(ns, "helm").Status.Phase).To(Equal(inferencev1alpha1.PhaseSucceeded))
		log, err := os.ReadFile(saManager.LogPath)
		Expect(err).NotTo(HaveOccurred())
		Expect(string(log)).NotTo(ContainSubstring("forbidden"))

		By("uninstalling the release")
		// The manager goes first, as its Deployment would with the release.
		saManager.Stop(defaultGrace)
		out, err = helm("uninstall", "kinfer", "--namespace", systemNamespace)
		Expect(err).NotTo(HaveOccurred(), out)
		released = true
		Eventually(func() error {
			return k8sClient.Get(ctx, client.ObjectKey{Namespace: systemNamespace, Name: "kinfer-controller-manager"},
				&appsv1.Deployment{})
		}, "20s", "200ms").Should(Satisfy(apierrors.IsNotFound), "the Deployment should be gone")
		Eventually(func() error {
			return k8sClient.Get(ctx, client.ObjectKey{Name: "kinfer-manager-role"}, &rbacv1.ClusterRole{})
		}, "20s", "200ms").Should(Satisfy(apierrors.IsNotFound), "the manager's ClusterRole should be gone")

		By("keeping the CRDs and the requests")
		for _, name := range crds {
			Expect(crdMetadata(name).DeletionTimestamp).To(BeNil(), name)
		}
		Consistently(func(g Gomega) {
			g.Expect(request(ns, "helm")(g).Status.Phase).To(Equal(inferencev1alpha1.PhaseSucceeded))
		}, "3s", "500ms").Should(Succeed())
	})
})
