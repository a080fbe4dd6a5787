package e2e

import (
	"crypto/tls"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/localstack"
	"github.com/kinfer/kinfer/internal/testutil"
)

const (
	systemNamespace = "kinfer-system"
	managerAccount  = "kinfer-controller-manager"
)

// kubectl runs kubectl with the administrator's kubeconfig, or another one.
func kubectl(kubeconfig string, args ...string) (string, error) {
	cmd := exec.Command("kubectl", append([]string{"--kubeconfig", kubeconfig}, args...)...)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// token returns a token for a new ServiceAccount in namespace.
func token(namespace, name string) string {
	GinkgoHelper()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace}}
	Expect(k8sClient.Create(ctx, sa)).To(Succeed())
	tr, err := clientset.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)}},
		metav1.CreateOptions{})
	Expect(err).NotTo(HaveOccurred())
	return tr.Status.Token
}

// managerKubeconfig writes a kubeconfig that acts as the manager's
// ServiceAccount (through impersonation) and returns its path.
func managerKubeconfig() string {
	GinkgoHelper()
	path := filepath.Join(binDir, "manager-sa.kubeconfig")
	Expect(stack.WriteKubeconfig(path, "system:serviceaccount:"+systemNamespace+":"+managerAccount,
		"system:serviceaccounts", "system:serviceaccounts:"+systemNamespace, "system:authenticated")).To(Succeed())
	return path
}

// deployedManager is the manager run on this machine as an installed
// Deployment would run it.
type deployedManager struct {
	*localstack.Process
	// Args are the arguments it runs with: the Deployment's, listening on
	// free loopback ports, and extra.
	Args []string
}

// startDeployedManager stops the suite's manager until the spec ends and
// runs the manager as its ServiceAccount with the arguments of the
// Deployment (the local cluster runs no images), its listeners moved to free
// loopback ports, and extra after them. It returns the manager, its shim's
// and its metrics' addresses.
func startDeployedManager(deployment *appsv1.Deployment, extra ...string) (*deployedManager, string, string) {
	GinkgoHelper()
	manager.Stop(defaultGrace)
	DeferCleanup(startSuiteManager)
	shimAt, metrics, work := freeAddr(), freeAddr(), freeAddr()
	deployed := deployment.Spec.Template.Spec.Containers[0].Args
	args := make([]string, 0, len(deployed)+len(extra)+1)
	for _, arg := range deployed {
		switch {
		case strings.HasPrefix(arg, "--shim-bind-address="):
			arg = "--shim-bind-address=" + shimAt
		case strings.HasPrefix(arg, "--metrics-bind-address="):
			arg = "--metrics-bind-address=" + metrics
		case strings.HasPrefix(arg, "--health-probe-bind-address="):
			arg = "--health-probe-bind-address=" + freeAddr()
		case strings.HasPrefix(arg, "--work-bind-address="):
			arg = "--work-bind-address=" + work
		case strings.HasPrefix(arg, "--work-url="):
			// The local node's pods run on this machine, not behind
			// the cluster's Service.
			arg = "--work-url=http://" + work
		}
		args = append(args, arg)
	}
	// Outside a Pod the manager cannot read its namespace from the
	// ServiceAccount mount.
	args = append(args, "--leader-election-namespace="+deployment.Namespace)
	args = append(args, extra...)
	p := startManager("manager-as-serviceaccount", managerKubeconfig(), shimAt, args...)
	DeferCleanup(func() { p.Stop(defaultGrace) })
	return &deployedManager{Process: p, Args: args}, shimAt, metrics
}

// The manifests are what a platform team installs; this proves they apply
// with server-side validation and that the manager needs no permission
// beyond config/rbac: it runs as its ServiceAccount, through impersonation,
// with the arguments the Deployment gives it.
var _ = Describe("The deployment in config/default", func() {
	It("applies to a cluster, and the manager serves a full request with exactly its RBAC", func() {
		By("applying config/default with kubectl apply --server-side -k")
		out, err := kubectl(stack.Kubeconfig, "apply", "--server-side", "--force-conflicts", "-k", "config/default")
		Expect(err).NotTo(HaveOccurred(), out)
		deployment := &appsv1.Deployment{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: systemNamespace, Name: "kinfer-controller-manager"},
			deployment)).To(Succeed())
		Expect(deployment.Spec.Template.Spec.ServiceAccountName).To(Equal(managerAccount))
		for _, service := range []string{"kinfer-shim", "kinfer-work"} {
			Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: systemNamespace, Name: service},
				&corev1.Service{})).To(Succeed(), service)
		}

		By("checking that the ServiceAccount's RBAC is narrow")
		asManager := managerKubeconfig()
		for _, check := range []struct {
			args []string
			want string
		}{
			{[]string{"create", "jobs.batch", "-n", "default"}, "yes"},
			// kubectl reads "resource/x" as an object named x: a subresource is a flag.
			{[]string{"patch", "inferencerequests.inference.kinfer.dev", "--subresource=status", "-n", "default"}, "yes"},
			{[]string{"create", "pods", "-n", "default"}, "no"},
			{[]string{"list", "secrets", "-n", "default"}, "no"},
			{[]string{"update", "inferencemodels.inference.kinfer.dev", "-n", "default"}, "no"},
			// The model's status: its mode, queue and ready pool pods.
			{[]string{"patch", "inferencemodels.inference.kinfer.dev", "--subresource=status", "-n", "default"}, "yes"},
			{[]string{"delete", "inferencerequests.inference.kinfer.dev", "-n", "default"}, "yes"},
			{[]string{"update", "inferencerequests.inference.kinfer.dev", "-n", "default"}, "no"},
			{[]string{"update", "inferencerequests.inference.kinfer.dev", "--subresource=status", "-n", "default"}, "no"},
			// The shim's cancel and redeliver, and the controller's cancel.
			{[]string{"patch", "inferencerequests.inference.kinfer.dev", "-n", "default"}, "yes"},
			{[]string{"delete", "jobs.batch", "-n", "default"}, "yes"},
			{[]string{"update", "jobs.batch", "-n", "default"}, "no"},
			{[]string{"create", "leases.coordination.k8s.io", "-n", "default"}, "no"},
		} {
			out, _ := kubectl(asManager, append([]string{"auth", "can-i"}, check.args...)...)
			Expect(strings.TrimSpace(out)).To(Equal(check.want), "can the manager %v?", check.args)
		}

		By("running the manager as its ServiceAccount with the Deployment's arguments")
		// The receiver here is on loopback.
		saManager, saShim, metrics := startDeployedManager(deployment, "--callback-allow-cidrs=127.0.0.0/8")
		Expect(saManager.Args).To(ContainElements("--leader-elect", "--shim-auth=kubernetes"))

		By("serving a request submitted through the shim with a client's token")
		ns := newNamespace()
		Expect(k8sClient.Create(ctx, sleepModel(ns, "--delay=1s").Obj())).To(Succeed())
		clientToken := token(ns, "submitter")
		Expect(k8sClient.Create(ctx, &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "submitter", Namespace: ns},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "kinfer-inferencerequest-editor-role"},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "submitter", Namespace: ns}},
		})).To(Succeed())
		receiver := testutil.NewReceiver()
		defer receiver.Close()
		body, err := json.Marshal(map[string]any{"id": "deployed", "callback_url": receiver.URL})
		Expect(err).NotTo(HaveOccurred())
		Eventually(func() int {
			code, _ := post("http://"+saShim+"/v1/namespaces/"+ns+"/inferences", clientToken, body)
			return code
		}, "20s", "500ms").Should(Equal(http.StatusAccepted), "the RoleBinding should let the submitter in")

		Eventually(func() map[string][]map[string]any { return callbacks(receiver) }, "60s", "200ms").
			Should(HaveKeyWithValue("deployed", ConsistOf(HaveKeyWithValue("result", "OK"))))
		Expect(delivered(ns, "deployed").Status.Phase).To(Equal(inferencev1alpha1.PhaseSucceeded))

		By("holding the leader election Lease in its namespace")
		lease := &coordinationv1.Lease{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: systemNamespace, Name: "manager.inference.kinfer.dev"},
			lease)).To(Succeed())
		Expect(lease.Spec.HolderIdentity).To(HaveValue(Not(BeEmpty())))

		By("serving metrics to a caller bound to the metrics reader role")
		reader := token(ns, "prometheus")
		Expect(k8sClient.Create(ctx, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "e2e-metrics-" + ns},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "kinfer-metrics-reader"},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "prometheus", Namespace: ns}},
		})).To(Succeed())
		insecure := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // the manager's self-signed certificate
		Eventually(func() (int, error) {
			req, err := http.NewRequest(http.MethodGet, "https://"+metrics+"/metrics", nil)
			if err != nil {
				return 0, err
			}
			req.Header.Set("Authorization", "Bearer "+reader)
			resp, err := insecure.Do(req)
			if err != nil {
				return 0, err
			}
			_ = resp.Body.Close()
			return resp.StatusCode, nil
		}, "20s", "500ms").Should(Equal(http.StatusOK))

		By("having been refused nothing by the API server")
		log, err := os.ReadFile(saManager.LogPath)
		Expect(err).NotTo(HaveOccurred())
		Expect(string(log)).NotTo(ContainSubstring("forbidden"))
	})
})
