// Package localstack runs a whole Kubernetes cluster for kinfer on one
// machine, without Docker: etcd and kube-apiserver (through envtest),
// kube-controller-manager (the real Job controller, garbage collector and
// TTL controller), kube-scheduler and the local node, which runs pods as host
// processes. make run starts it with the manager and the sample models; the
// end-to-end suite starts it and runs managers on it as it needs.
//
// It is development and test tooling: in a cluster the kubelet and the
// cluster's own control plane do these jobs.
package localstack

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/kinfer/kinfer/internal/manifests"
)

// NodeName is the name the local node registers under.
const NodeName = "local-node"

// SampleImages maps the images of the sample models in config/samples to the
// example workers built from examples/workers.
var SampleImages = map[string]string{
	"ghcr.io/kinfer/worker-sleep:v0.1.0":     "sleep",
	"ghcr.io/kinfer/worker-echo:v0.1.0":      "echo",
	"ghcr.io/kinfer/worker-sentiment:v0.1.0": "sentiment",
}

// SamplePythonImages maps the images of the sample models whose workers are
// Python programs to those programs, relative to the repository: the local
// node runs them with python3, as the image's entrypoint would.
var SamplePythonImages = map[string]string{
	"ghcr.io/kinfer/worker-python:v0.1.0": "examples/python/worker.py",
}

// SampleModels are the files in config/samples that define the sample models.
var SampleModels = []string{
	"inference_v1alpha1_inferencemodel.yaml",
	"inference_v1alpha1_inferencemodel_echo.yaml",
	"inference_v1alpha1_inferencemodel_sentiment.yaml",
	"inference_v1alpha1_inferencemodel_python.yaml",
}

// ImageMap is the local node's image map: for each sample image, the command
// that plays its entrypoint, a Go worker from bin/workers or a Python worker
// from the repository root. Pods run in folders of their own, so the paths
// are made absolute.
func ImageMap(root, bin string) map[string][]string {
	images := make(map[string][]string, len(SampleImages)+len(SamplePythonImages))
	for image, worker := range SampleImages {
		images[image] = []string{filepath.Join(bin, "workers", worker)}
	}
	for image, program := range SamplePythonImages {
		path, err := filepath.Abs(filepath.Join(root, filepath.FromSlash(program)))
		if err != nil {
			path = filepath.Join(root, filepath.FromSlash(program))
		}
		images[image] = []string{"python3", path}
	}
	return images
}

// Options say where everything is.
type Options struct {
	// Root is the kinfer repository: CRDs come from config/crd/bases.
	Root string
	// Assets holds etcd, kube-apiserver, kube-controller-manager and kube-scheduler.
	Assets string
	// Bin holds localnode and workers/<name> for every worker in SampleImages
	// (unless APIServerOnly).
	Bin string
	// State receives the kubeconfig, the components' logs and the pods'
	// folders. It is emptied first.
	State string
	// Log reports progress; nil keeps quiet.
	Log func(format string, args ...any)
	// APIServerOnly starts etcd and kube-apiserver alone: no controllers,
	// no scheduler, no node.
	APIServerOnly bool
	// AuditPolicy, when set, is the API server's audit policy file; the
	// audit log is written to STATE/audit.log.
	AuditPolicy string
}

// Stack is a running local cluster.
type Stack struct {
	opts Options
	env  *envtest.Environment
	// Config is an administrator's (system:masters) REST config.
	Config *rest.Config
	// Kubeconfig is the path of the administrator's kubeconfig.
	Kubeconfig string

	procs []*Process
}

// Start brings the cluster up: API server, controllers, scheduler and a Ready
// local node. On error, whatever started is stopped again.
func Start(ctx context.Context, opts Options) (*Stack, error) {
	if opts.Log == nil {
		opts.Log = func(string, ...any) {}
	}
	s := &Stack{opts: opts}
	steps := []func(context.Context) error{s.prepare, s.startAPIServer, s.startControllers, s.startNode}
	if opts.APIServerOnly {
		steps = steps[:2]
	}
	for _, step := range steps {
		if err := step(ctx); err != nil {
			s.Stop()
			return nil, err
		}
	}
	return s, nil
}

func (s *Stack) prepare(context.Context) error {
	for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		if _, err := os.Stat(filepath.Join(s.opts.Assets, b)); err != nil {
			return fmt.Errorf("%s is missing from %q (hack/control-plane.sh builds it)", b, s.opts.Assets)
		}
	}
	if err := os.RemoveAll(s.opts.State); err != nil {
		return err
	}
	return os.MkdirAll(s.opts.State, 0o755)
}

func (s *Stack) startAPIServer(ctx context.Context) error {
	s.opts.Log("starting etcd and kube-apiserver")
	s.env = &envtest.Environment{
		BinaryAssetsDirectory: s.opts.Assets,
		CRDDirectoryPaths:     []string{filepath.Join(s.opts.Root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	if s.opts.AuditPolicy != "" {
		s.env.ControlPlane.GetAPIServer().Configure().
			Set("audit-policy-file", s.opts.AuditPolicy).
			Set("audit-log-path", s.AuditLog())
	}
	if _, err := s.env.Start(); err != nil {
		s.env = nil
		return fmt.Errorf("starting the API server: %w", err)
	}
	admin, err := s.env.ControlPlane.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return err
	}
	s.Config = admin.Config()
	kubeconfig, err := admin.KubeConfig()
	if err != nil {
		return err
	}
	s.Kubeconfig = filepath.Join(s.opts.State, "kubeconfig")
	if err := os.WriteFile(s.Kubeconfig, kubeconfig, 0o600); err != nil {
		return err
	}
	// The admission policy that holds requests to their model's limits.
	return s.Apply(ctx, filepath.Join(s.opts.Root, "config", "policy", "requests.yaml"), "")
}

func (s *Stack) startControllers(context.Context) error {
	s.opts.Log("starting kube-controller-manager and kube-scheduler")
	kubeFlags := []string{"--kubeconfig=" + s.Kubeconfig, "--authentication-kubeconfig=" + s.Kubeconfig,
		"--authorization-kubeconfig=" + s.Kubeconfig, "--leader-elect=false", "--secure-port=0"}
	// No service-account signing key: the token controller stays off, and
	// Jobs and Pods are created without tokens.
	controllers := "job-controller,garbage-collector-controller,ttl-after-finished-controller," +
		"node-lifecycle-controller,namespace-controller"
	kcm := append([]string{filepath.Join(s.opts.Assets, "kube-controller-manager")}, kubeFlags...)
	// The default client limits (20 requests a second) suit a shared
	// production API server, not a one-machine cluster whose Job controller
	// should keep up with its clients; kinfer is measured next to it.
	kcm = append(kcm, "--use-service-account-credentials=false", "--controllers="+controllers,
		"--kube-api-qps=500", "--kube-api-burst=1000", "--concurrent-job-syncs=16")
	if _, err := s.Start("kube-controller-manager", kcm); err != nil {
		return err
	}
	_, err := s.Start("kube-scheduler", append([]string{filepath.Join(s.opts.Assets, "kube-scheduler")}, kubeFlags...))
	return err
}

func (s *Stack) startNode(ctx context.Context) error {
	imageMap := ImageMap(s.opts.Root, s.opts.Bin)
	imagesFile := filepath.Join(s.opts.State, "images.json")
	raw, err := json.MarshalIndent(imageMap, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(imagesFile, raw, 0o644); err != nil {
		return err
	}
	s.opts.Log("starting the local node")
	if _, err := s.Start("localnode", []string{filepath.Join(s.opts.Bin, "localnode"), "--kubeconfig=" + s.Kubeconfig,
		"--name=" + NodeName, "--images=" + imagesFile, "--dir=" + filepath.Join(s.opts.State, "pods")}); err != nil {
		return err
	}
	return s.waitNodeReady(ctx)
}

// waitNodeReady waits until the node is Ready and the node lifecycle
// controller has lifted its not-ready taint, so pods schedule on it.
func (s *Stack) waitNodeReady(ctx context.Context) error {
	cs, err := kubernetes.NewForConfig(s.Config)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		node, err := cs.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
		if err == nil && nodeReady(node) && !hasTaint(node, "node.kubernetes.io/not-ready") {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s did not become Ready and schedulable: %w", NodeName, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func hasTaint(n *corev1.Node, key string) bool {
	for _, t := range n.Spec.Taints {
		if t.Key == key {
			return true
		}
	}
	return false
}

// AuditLog is where the API server writes its audit log, with an AuditPolicy.
func (s *Stack) AuditLog() string { return filepath.Join(s.opts.State, "audit.log") }

// EtcdURL is the client URL of the stack's etcd.
func (s *Stack) EtcdURL() string { return s.env.ControlPlane.Etcd.URL.String() }

// Start runs a process whose output goes to STATE/<name>.log; it is stopped
// with the stack.
func (s *Stack) Start(name string, argv []string, extraEnv ...string) (*Process, error) {
	p, err := startProcess(name, argv, filepath.Join(s.opts.State, name+".log"), extraEnv)
	if err != nil {
		return nil, err
	}
	s.procs = append(s.procs, p)
	return p, nil
}

// WriteKubeconfig writes a kubeconfig for the administrator that, when user
// is not empty, impersonates user with groups.
func (s *Stack) WriteKubeconfig(path, user string, groups ...string) error {
	cfg, err := clientcmd.LoadFromFile(s.Kubeconfig)
	if err != nil {
		return err
	}
	for _, auth := range cfg.AuthInfos {
		auth.Impersonate = user
		auth.ImpersonateGroups = groups
	}
	return clientcmd.WriteToFile(*cfg, path)
}

// Apply creates every object in a YAML file, in namespace when it is set.
func (s *Stack) Apply(ctx context.Context, path, namespace string) error {
	c, err := client.New(s.Config, client.Options{})
	if err != nil {
		return err
	}
	return manifests.Apply(ctx, c, path, namespace)
}

// Exited reports the first process of the stack that ended on its own.
func (s *Stack) Exited() error {
	for _, p := range s.procs {
		if err := p.Exited(); err != nil && !p.stopped {
			return fmt.Errorf("%s stopped: %w (see %s)", p.Name, err, p.LogPath)
		}
	}
	return nil
}

// Stop ends every process, last started first, then the API server and etcd.
func (s *Stack) Stop() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		s.procs[i].Stop(10 * time.Second)
	}
	s.procs = nil
	if s.env != nil {
		if err := s.env.Stop(); err != nil {
			s.opts.Log("stopping the API server: %v", err)
		}
		s.env = nil
	}
}
