// Package e2e runs kinfer on the local cluster of internal/localstack: the
// real kube-apiserver, Job controller, garbage collector and scheduler, and
// the local node running the example workers as processes. Where the
// controller suites complete Jobs by hand, here workers really run, fail, time
// out and get killed, and the manager is a separate process that can be
// SIGKILLed.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/rand"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/localstack"
	"github.com/kinfer/kinfer/internal/shim"
	"github.com/kinfer/kinfer/internal/testutil"
)

const (
	sleepImage = "ghcr.io/kinfer/worker-sleep:v0.1.0"
	echoImage  = "ghcr.io/kinfer/worker-echo:v0.1.0"
)

var (
	root      = filepath.Join("..", "..")
	stack     *localstack.Stack
	k8sClient client.Client // direct, uncached
	clientset *kubernetes.Clientset
	ctx       context.Context
	cancel    context.CancelFunc

	binDir string
	// The suite's manager: the shim on shimAddr checking bearer tokens as in
	// a cluster, callbacks to loopback allowed. clientToken may submit,
	// read, delete, cancel and redeliver requests in every namespace.
	manager     *localstack.Process
	shimAddr    string
	clientToken string
	// workAddr is the suite manager's work API, which pool pods (host
	// processes on the local node) reach on loopback.
	workAddr string
)

func TestE2E(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "End-to-end Suite")
}

var _ = BeforeSuite(func() {
	ctx, cancel = context.WithCancel(context.Background())
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	Expect(assets).NotTo(BeEmpty(), "KUBEBUILDER_ASSETS must name the control plane binaries: run make test-e2e")

	binDir = GinkgoT().TempDir()
	By("building the manager, the local node and the example workers")
	build(filepath.Join(binDir, "manager"), ".")
	build(filepath.Join(binDir, "localnode"), "./hack/localnode")
	for _, w := range []string{"sleep", "echo", "sentiment"} {
		build(filepath.Join(binDir, "workers", w), "./examples/workers/"+w)
	}

	By("starting the local cluster")
	var err error
	absRoot, err := filepath.Abs(root)
	Expect(err).NotTo(HaveOccurred())
	stack, err = localstack.Start(ctx, localstack.Options{
		Root: absRoot, Assets: assets, Bin: binDir, State: filepath.Join(binDir, "state"),
		Log: func(format string, args ...any) { GinkgoWriter.Printf(format+"\n", args...) },
	})
	Expect(err).NotTo(HaveOccurred())

	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(inferencev1alpha1.AddToScheme(scheme))
	k8sClient, err = client.New(stack.Config, client.Options{Scheme: scheme})
	Expect(err).NotTo(HaveOccurred())
	clientset, err = kubernetes.NewForConfig(stack.Config)
	Expect(err).NotTo(HaveOccurred())

	shimAddr, workAddr = freeAddr(), freeAddr()
	clientToken = suiteClientToken()
	startSuiteManager()
})

var _ = AfterSuite(func() {
	if stack != nil {
		stack.Stop()
	}
	cancel()
})

// After a failure, the components' logs tell what happened.
var _ = ReportAfterEach(func(report SpecReport) {
	if !report.Failed() || stack == nil {
		return
	}
	for _, name := range []string{"manager", "localnode", "kube-controller-manager"} {
		raw, err := os.ReadFile(filepath.Join(binDir, "state", name+".log"))
		if err == nil {
			lines := strings.Split(string(raw), "\n")
			GinkgoWriter.Printf("--- last lines of %s.log ---\n%s\n", name,
				strings.Join(lines[max(0, len(lines)-60):], "\n"))
		}
	}
})

func build(out, pkg string) {
	GinkgoHelper()
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = root
	output, err := cmd.CombinedOutput()
	Expect(err).NotTo(HaveOccurred(), "go build %s: %s", pkg, output)
}

func freeAddr() string {
	GinkgoHelper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	Expect(err).NotTo(HaveOccurred())
	defer func() { _ = l.Close() }()
	return l.Addr().String()
}

// startManager runs the manager binary as its own process with args, and
// waits until its shim answers.
func startManager(name, kubeconfig, shimAt string, args ...string) *localstack.Process {
	GinkgoHelper()
	p, err := stack.Start(name, append([]string{filepath.Join(binDir, "manager")}, args...), "KUBECONFIG="+kubeconfig)
	Expect(err).NotTo(HaveOccurred())
	Eventually(func() error {
		if err := p.Exited(); err != nil {
			return StopTrying(name + " exited: " + err.Error())
		}
		resp, err := http.Get("http://" + shimAt + "/readyz")
		if err != nil {
			return err
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz answered %d", resp.StatusCode)
		}
		return nil
	}, "60s", "200ms").Should(Succeed())
	return p
}

func startSuiteManager() {
	GinkgoHelper()
	manager = startManager("manager", stack.Kubeconfig, shimAddr,
		"--shim-bind-address="+shimAddr, "--shim-auth=kubernetes",
		"--callback-allow-cidrs=127.0.0.0/8", "--metrics-bind-address=0",
		"--health-probe-bind-address="+freeAddr(), "--leader-elect=false",
		"--work-bind-address="+workAddr, "--work-url=http://"+workAddr)
}

// suiteClientToken is a token for a ServiceAccount that may submit, read,
// delete, cancel and redeliver requests in every namespace, as a client of
// the shim would.
func suiteClientToken() string {
	GinkgoHelper()
	const namespace, name = "e2e-clients", "client"
	Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}})).To(Succeed())
	Expect(k8sClient.Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "e2e-inference-client"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{inferencev1alpha1.GroupVersion.Group},
			Resources: []string{"inferencerequests"}, Verbs: []string{"create", "get", "delete", "patch"}}},
	})).To(Succeed())
	Expect(k8sClient.Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "e2e-inference-client"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "e2e-inference-client"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: namespace, Name: name}},
	})).To(Succeed())
	return token(namespace, name)
}

// newNamespace creates a namespace for one spec.
func newNamespace() string {
	GinkgoHelper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "e2e-" + rand.String(6)}}
	Expect(k8sClient.Create(ctx, ns)).To(Succeed())
	DeferCleanup(func() { _ = k8sClient.Delete(context.Background(), ns) })
	return ns.Name
}

// sleepModel is a namespace's default model, running the sleep worker with args.
func sleepModel(namespace string, args ...string) *testutil.InferenceModelWrapper {
	return testutil.MakeInferenceModel("default", namespace, sleepImage).
		Containers(corev1.Container{Name: "inference", Image: sleepImage, Args: args})
}

// shellModel is a namespace's default model whose container runs a shell
// script instead of a worker, for failures no example worker makes.
func shellModel(namespace, script string) *testutil.InferenceModelWrapper {
	return testutil.MakeInferenceModel("default", namespace, sleepImage).
		Containers(corev1.Container{Name: "inference", Image: sleepImage, Command: []string{"/bin/sh", "-c", script}})
}

// submit POSTs body to the suite's shim in namespace and returns the status
// and the decoded answer.
func submit(namespace string, body map[string]any) (int, map[string]any) {
	GinkgoHelper()
	raw, err := json.Marshal(body)
	Expect(err).NotTo(HaveOccurred())
	return post("http://"+shimAddr+"/v1/namespaces/"+namespace+"/inferences", clientToken, raw)
}

func post(url, token string, body []byte) (int, map[string]any) {
	GinkgoHelper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	Expect(err).NotTo(HaveOccurred())
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	Expect(err).NotTo(HaveOccurred())
	defer func() { _ = resp.Body.Close() }()
	answer := map[string]any{}
	Expect(json.NewDecoder(resp.Body).Decode(&answer)).To(Succeed())
	return resp.StatusCode, answer
}

// request reads the request the shim stored for id.
func request(namespace, id string) func(Gomega) *inferencev1alpha1.InferenceRequest {
	return func(g Gomega) *inferencev1alpha1.InferenceRequest {
		ir := &inferencev1alpha1.InferenceRequest{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: namespace, Name: shim.ObjectName(id)}, ir)).To(Succeed())
		return ir
	}
}

// delivered waits until the request records its callback as delivered: the
// controller sends the callback first and then writes the outcome and the
// delivery together, so the receiver can hear of a result a moment before
// the request shows it.
func delivered(namespace, id string) *inferencev1alpha1.InferenceRequest {
	GinkgoHelper()
	var ir *inferencev1alpha1.InferenceRequest
	Eventually(func(g Gomega) {
		ir = request(namespace, id)(g)
		g.Expect(ir.Status.Delivery.State).To(Equal(inferencev1alpha1.DeliveryDelivered))
	}, "20s", "100ms").Should(Succeed())
	return ir
}

// callbacks decodes the bodies a receiver got, by id.
func callbacks(r *testutil.Receiver) map[string][]map[string]any {
	out := map[string][]map[string]any{}
	for _, call := range r.Calls() {
		body := map[string]any{}
		if json.Unmarshal(call.Body, &body) == nil {
			id, _ := body["id"].(string)
			out[id] = append(out[id], body)
		}
	}
	return out
}

func completeReason(ir *inferencev1alpha1.InferenceRequest) string {
	for _, c := range ir.Status.Conditions {
		if c.Type == inferencev1alpha1.ConditionComplete {
			return c.Reason
		}
	}
	return ""
}

// defaultGrace is how long a stopped manager may take to shut down cleanly.
const defaultGrace = 10 * time.Second
