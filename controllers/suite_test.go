package controllers

import (
	"context"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/callback"
	"github.com/kinfer/kinfer/internal/manifests"
	"github.com/kinfer/kinfer/internal/queue"
	"github.com/kinfer/kinfer/internal/slimcache"
	"github.com/kinfer/kinfer/internal/testutil"
)

// These suites run against a real kube-apiserver and etcd, built from source
// by hack/control-plane.sh; make test points KUBEBUILDER_ASSETS at them.
var (
	cfg       *rest.Config
	k8sClient client.Client // direct, uncached: assertions see the API server itself
	testEnv   *envtest.Environment
	ctx       context.Context
	cancel    context.CancelFunc
)

func TestControllers(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Controllers Suite")
}

var _ = BeforeSuite(func() {
	logf.SetLogger(zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true)))
	ctx, cancel = context.WithCancel(context.Background())

	testScheme = runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(testScheme))
	utilruntime.Must(inferencev1alpha1.AddToScheme(testScheme))

	testEnv = &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	var err error
	cfg, err = testEnv.Start()
	Expect(err).NotTo(HaveOccurred(), "starting envtest; make test sets KUBEBUILDER_ASSETS to the control plane it builds")
	Expect(cfg).NotTo(BeNil())

	k8sClient, err = client.New(cfg, client.Options{Scheme: testScheme})
	Expect(err).NotTo(HaveOccurred())
	Expect(manifests.Apply(ctx, k8sClient, filepath.Join("..", "config", "policy", "requests.yaml"), "")).To(Succeed())

	startManager()
})

var _ = AfterSuite(func() {
	stopManager()
	if cancel != nil {
		cancel()
	}
	if testEnv != nil {
		Expect(testEnv.Stop()).To(Succeed())
	}
})

// testWorkURL is what pool pods are told of the work API; nothing runs
// pods in envtest, so it is never called.
const testWorkURL = "http://kinfer-work.test:8090"

// testMaxConcurrentDeliveries is main.go's default for --max-concurrent-deliveries.
const testMaxConcurrentDeliveries = 64

// testDeliveriesPerHost is what --max-deliveries-per-host=0 (the default)
// makes of it.
const testDeliveriesPerHost = testMaxConcurrentDeliveries / 2

var (
	testScheme  *runtime.Scheme
	stopManager = func() {}
	// testMetrics holds the running manager's metrics, as /metrics serves them.
	testMetrics *managerMetrics
	// metricsURL is the running manager's metrics endpoint, plain HTTP on
	// loopback.
	metricsURL string
	// reads counts the objects the running manager's reconciler reads, by namespace.
	reads *testutil.CountingClient
	// queueIndex is the running manager's queue.
	queueIndex *queue.Index
	// workAPI serves the running manager's work API.
	workAPI http.Handler
)

// startManager runs the controller as main.go wires it, in the background.
// Callbacks may reach testutil.ReceiverAddr and nothing else that is not public.
// Retry waits are not jittered, so specs can time them.
func startManager() {
	GinkgoHelper()
	metricsAddr := freeLocalAddr()
	metricsURL = "http://" + metricsAddr + "/metrics"
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:  testScheme,
		Cache:   slimcache.Options(),
		Metrics: metricsserver.Options{BindAddress: metricsAddr},
		Controller: config.Controller{
			// Restarting the manager registers the same controller name again.
			SkipNameValidation: ptr.To(true),
		},
	})
	Expect(err).NotTo(HaveOccurred())
	policy, err := callback.NewPolicy([]string{testutil.ReceiverAddr + "/32"}, false)
	Expect(err).NotTo(HaveOccurred())
	// Each manager registers its metrics on controller-runtime's registry,
	// as main does, and takes them away when it stops: a restarted manager's
	// would clash with the last one's.
	testMetrics = &managerMetrics{}
	reads = testutil.NewCountingClient(mgr.GetClient())
	reconciler, err := NewInferenceRequestReconciler(mgr, Options{
		Client:                  reads,
		Sender:                  callback.NewSender(policy),
		MaxConcurrentDeliveries: testMaxConcurrentDeliveries,
		Metrics:                 testMetrics,
		Jitter:                  func(d time.Duration) time.Duration { return d },
		WorkURL:                 testWorkURL,
	})
	Expect(err).NotTo(HaveOccurred())
	Expect(reconciler.SetupWithManager(mgr)).To(Succeed())
	queueIndex = reconciler.Queue()
	workAPI = reconciler.WorkAPI()

	mgrCtx, mgrCancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer GinkgoRecover()
		defer close(done)
		Expect(mgr.Start(mgrCtx)).To(Succeed())
	}()
	stopManager = func() {
		mgrCancel()
		<-done
		testMetrics.unregisterAll()
		stopManager = func() {}
	}
	// Specs that follow a restart start once the new manager has read the
	// cluster and built its queue, not while it is still starting.
	Expect(mgr.GetCache().WaitForCacheSync(mgrCtx)).To(BeTrue())
	Expect(queueIndex.WaitSynced(mgrCtx)).To(BeTrue())
}

// newNamespace gives a spec a namespace of its own, so specs never see each
// other's objects. envtest runs no namespace controller, so namespaces stay.
func newNamespace() string {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "kinfer-test-"}}
	Expect(k8sClient.Create(ctx, ns)).To(Succeed())
	return ns.Name
}

// updateRequest applies mutate to the newest copy of ir and writes it (its
// status when status is true), trying again when the controller wrote in between.
func updateRequest(ir *inferencev1alpha1.InferenceRequest, status bool, mutate func(*inferencev1alpha1.InferenceRequest)) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(ir), ir); err != nil {
			return err
		}
		mutate(ir)
		if status {
			return k8sClient.Status().Update(ctx, ir)
		}
		return k8sClient.Update(ctx, ir)
	})
}

// managerMetrics registers collectors on controller-runtime's metrics.Registry,
// which a manager's metrics endpoint serves, and remembers them so that they
// can be taken away again.
type managerMetrics struct {
	mu         sync.Mutex
	registered []prometheus.Collector
}

var _ prometheus.Registerer = &managerMetrics{}

func (m *managerMetrics) Register(c prometheus.Collector) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := ctrlmetrics.Registry.Register(c); err != nil {
		return err
	}
	m.registered = append(m.registered, c)
	return nil
}

func (m *managerMetrics) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := m.Register(c); err != nil {
			panic(err)
		}
	}
}

func (m *managerMetrics) Unregister(c prometheus.Collector) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range m.registered {
		if m.registered[i] == c {
			m.registered = append(m.registered[:i], m.registered[i+1:]...)
			return ctrlmetrics.Registry.Unregister(c)
		}
	}
	return false
}

func (m *managerMetrics) unregisterAll() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range m.registered {
		ctrlmetrics.Registry.Unregister(c)
	}
	m.registered = nil
}

// Gather reads every metric the manager's endpoint serves: controller-runtime's
// own and those registered here.
func (*managerMetrics) Gather() ([]*dto.MetricFamily, error) {
	return ctrlmetrics.Registry.Gather()
}

// freeLocalAddr is a loopback address with a port nothing listens on now.
func freeLocalAddr() string {
	GinkgoHelper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	Expect(err).NotTo(HaveOccurred())
	defer func() { Expect(l.Close()).To(Succeed()) }()
	return l.Addr().String()
}
