package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/localstack"
	"github.com/kinfer/kinfer/internal/testutil"
)

const (
	sleepImage    = "ghcr.io/kinfer/worker-sleep:v0.1.0"
	noDelay       = "--delay=0s" // the sleep worker answers at once
	containerName = "inference"
	managerUser   = "kinfer-manager"
)

// cluster is a local cluster (or a bare API server) with the manager running
// as a process of its own, so its CPU and heap are its own.
type cluster struct {
	stack *localstack.Stack
	c     client.Client
	cs    kubernetes.Interface
	bin   string

	manager                  *localstack.Process
	shimAddr, metrics, pprof string
	// shimToken is a bearer token that may submit in every namespace: the
	// shim checks tokens as it does in a cluster.
	shimToken         string
	managerKubeconfig string
	flags             []string // extra manager flags for every start
}

func startCluster(ctx context.Context, o *options, name string, apiServerOnly bool, auditPolicy string) (*cluster, error) {
	stack, err := localstack.Start(ctx, localstack.Options{
		Root: o.root, Assets: o.assets, Bin: o.bin, State: filepath.Join(o.bin, "bench", name),
		APIServerOnly: apiServerOnly, AuditPolicy: auditPolicy,
	})
	if err != nil {
		return nil, err
	}
	cfg := rest.CopyConfig(stack.Config)
	cfg.QPS, cfg.Burst = -1, 0 // the API server's own limits apply, not client-go's
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(inferencev1alpha1.AddToScheme(scheme))
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		stack.Stop()
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		stack.Stop()
		return nil, err
	}
	cl := &cluster{stack: stack, c: c, cs: cs, bin: o.bin, flags: o.managerFlags}
	// The manager acts as a user of its own, so the audit log tells its
	// writes from everyone else's.
	cl.managerKubeconfig = filepath.Join(o.bin, "bench", name, "manager.kubeconfig")
	if err := stack.WriteKubeconfig(cl.managerKubeconfig, managerUser, "system:masters"); err != nil {
		stack.Stop()
		return nil, err
	}
	if cl.shimToken, err = clientToken(ctx, c, cs); err != nil {
		stack.Stop()
		return nil, err
	}
	return cl, nil
}

// clientToken is a token for a ServiceAccount allowed to create, get, delete
// and patch (cancel, redeliver) InferenceRequests in every namespace.
func clientToken(ctx context.Context, c client.Client, cs kubernetes.Interface) (string, error) {
	const namespace, name, role = "bench-clients", "client", "bench-inference-client"
	for _, obj := range []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace}},
		&rbacv1.ClusterRole{
			ObjectMeta: metav1.ObjectMeta{Name: role},
			Rules: []rbacv1.PolicyRule{{APIGroups: []string{inferencev1alpha1.GroupVersion.Group},
				Resources: []string{"inferencerequests"}, Verbs: []string{"create", "get", "delete", "patch"}}},
		},
		&rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: role},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: namespace, Name: name}},
		},
	} {
		if err := c.Create(ctx, obj); err != nil {
			return "", err
		}
	}
	tr, err := cs.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](24 * 3600)},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("a token for the bench's client: %w", err)
	}
	return tr.Status.Token, nil
}

func (cl *cluster) stop() {
	cl.stack.Stop()
}

// startManager runs bin/manager with the shim, loopback callbacks,
// plain-HTTP metrics and pprof, and waits until its shim answers.
func (cl *cluster) startManager(extra ...string) error {
	cl.shimAddr, cl.metrics, cl.pprof = freeAddr(), freeAddr(), freeAddr()
	args := append([]string{filepath.Join(cl.bin, "manager"),
		"--shim-bind-address=" + cl.shimAddr, "--shim-auth=kubernetes", "--callback-allow-cidrs=127.0.0.0/8",
		"--metrics-bind-address=" + cl.metrics, "--metrics-secure=false", "--pprof-bind-address=" + cl.pprof,
		"--health-probe-bind-address=" + freeAddr(), "--leader-elect=false"}, append(cl.flags, extra...)...)
	p, err := cl.stack.Start("manager", args, "KUBECONFIG="+cl.managerKubeconfig)
	if err != nil {
		return err
	}
	cl.manager = p
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if err := p.Exited(); err != nil {
			return fmt.Errorf("manager exited: %w (see %s)", err, p.LogPath)
		}
		if resp, err := http.Get("http://" + cl.shimAddr + "/readyz"); err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("the manager's shim did not answer within a minute (see %s)", p.LogPath)
}

func (cl *cluster) stopManager() {
	if cl.manager != nil {
		cl.manager.Stop(10 * time.Second)
		cl.manager = nil
	}
}

// managerCPU is the manager process's user and system CPU time so far.
func (cl *cluster) managerCPU() (time.Duration, error) {
	fields, err := statFields(cl.manager.Pid())
	if err != nil {
		return 0, err
	}
	return time.Duration(sumFields(fields, 11, 12)) * time.Second / ticksPerSecond, nil // utime, stime
}

// managerHeap forces a GC in the manager and returns its heap in use.
func (cl *cluster) managerHeap() (heapStats, error) {
	resp, err := http.Get("http://" + cl.pprof + "/debug/pprof/heap?debug=1&gc=1")
	if err != nil {
		return heapStats{}, err
	}
	defer func() { _ = resp.Body.Close() }()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return heapStats{}, err
	}
	var h heapStats
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "# HeapInuse = "); ok {
			h.inUse, err = strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
		if v, ok := strings.CutPrefix(line, "# HeapAlloc = "); ok {
			h.live, err = strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
		if err != nil {
			return heapStats{}, err
		}
	}
	if h.inUse == 0 || h.live == 0 {
		return heapStats{}, fmt.Errorf("no HeapInuse or HeapAlloc in the manager's heap profile")
	}
	return h, nil
}

// heapStats is the manager's heap after a GC: the spans in use, and the live
// objects in them (the rest is room in partly used spans).
type heapStats struct{ inUse, live uint64 }

// saveHeapProfile writes the manager's heap profile, after a GC, to path
// (read it with go tool pprof).
func (cl *cluster) saveHeapProfile(path string) error {
	resp, err := http.Get("http://" + cl.pprof + "/debug/pprof/heap?gc=1")
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// managerMetric sums a metric family's samples from the manager's metrics,
// over the samples whose labels contain match.
func (cl *cluster) managerMetric(name, match string) (float64, error) {
	resp, err := http.Get("http://" + cl.metrics + "/metrics")
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		if !strings.Contains(line, match) {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err == nil {
			sum += v
		}
	}
	return sum, nil
}

// apiServerWrites is the API server's count of the writes it has served,
// from its own apiserver_request_total, over the series whose labels
// contain match.
func (cl *cluster) apiServerWrites(ctx context.Context, match string) (float64, error) {
	raw, err := cl.cs.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.HasPrefix(line, "apiserver_request_total{") || !strings.Contains(line, match) {
			continue
		}
		for _, verb := range []string{`verb="POST"`, `verb="PUT"`, `verb="PATCH"`, `verb="DELETE"`, `verb="APPLY"`} {
			if strings.Contains(line, verb) {
				if v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64); err == nil {
					sum += v
				}
			}
		}
	}
	return sum, nil
}

func (cl *cluster) namespace(ctx context.Context, name string) error {
	return cl.c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})
}

// model creates the namespace's default model running the sleep worker with
// no delay.
func (cl *cluster) model(ctx context.Context, namespace string) error {
	m := testutil.MakeInferenceModel("default", namespace, sleepImage).
		Containers(corev1.Container{Name: containerName, Image: sleepImage, Args: []string{noDelay}}).Obj()
	return cl.c.Create(ctx, m)
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String()
}

// timeline records when each request passed each point, by request name.
type timeline struct {
	mu     sync.Mutex
	points map[string]map[string]time.Time
}

func newTimeline() *timeline { return &timeline{points: map[string]map[string]time.Time{}} }

// mark records point for name, keeping the first time it was reached.
func (t *timeline) mark(name, point string, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.points[name]
	if p == nil {
		p = map[string]time.Time{}
		t.points[name] = p
	}
	if _, ok := p[point]; !ok {
		p[point] = at
	}
}

// count is how many requests reached point.
func (t *timeline) count(point string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, p := range t.points {
		if _, ok := p[point]; ok {
			n++
		}
	}
	return n
}

// String tells how many requests reached each point, for error messages.
func (t *timeline) String() string {
	points := []string{"submit", "stored", "jobSeen", "jobDone", "callback", "done"}
	parts := make([]string, 0, len(points))
	for _, p := range points {
		if n := t.count(p); n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", p, n))
		}
	}
	return strings.Join(parts, ", ")
}

// last is the latest time any request reached point.
func (t *timeline) last(point string) time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	var last time.Time
	for _, p := range t.points {
		if at := p[point]; at.After(last) {
			last = at
		}
	}
	return last
}

// times lists, in order, when requests reached point.
func (t *timeline) times(point string) []time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []time.Time
	for _, p := range t.points {
		if at, ok := p[point]; ok {
			out = append(out, at)
		}
	}
	slices.SortFunc(out, time.Time.Compare)
	return out
}

// between lists, over the names for which keep is true, the time from one
// point to the next.
func (t *timeline) between(from, to string, keep func(name string) bool) []time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []time.Duration
	for name, p := range t.points {
		a, okA := p[from]
		b, okB := p[to]
		if okA && okB && (keep == nil || keep(name)) {
			out = append(out, b.Sub(a))
		}
	}
	return out
}

func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

// waitFor polls until done() or the timeout.
func waitFor(ctx context.Context, what string, timeout time.Duration, done func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for !done() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// receiver takes callbacks: /fast answers at once, /slow after slowDelay.
type receiver struct {
	url       string
	slowDelay time.Duration
	server    *http.Server
	tl        *timeline
	nameOf    func(id string) string
}

func newReceiver(tl *timeline, nameOf func(string) string, slowDelay time.Duration) (*receiver, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &receiver{url: "http://" + l.Addr().String(), slowDelay: slowDelay, tl: tl, nameOf: nameOf}
	r.server = &http.Server{Handler: r, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = r.server.Serve(l) }()
	return r, nil
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	at := time.Now()
	var body struct {
		ID string `json:"id"`
	}
	if err := json.NewDecoder(req.Body).Decode(&body); err == nil {
		r.tl.mark(r.nameOf(body.ID), "callback", at)
	}
	if req.URL.Path == "/slow" {
		time.Sleep(r.slowDelay)
	}
	w.WriteHeader(http.StatusOK)
}

func (r *receiver) close() { _ = r.server.Close() }

// completer plays the Job controller and kubelet on a bare API server: it
// finishes every kinfer Job in a namespace as soon as it appears, with a pod
// whose termination message is the result.
func completer(ctx context.Context, cl *cluster, namespace string, tl *timeline, workers int) (stop func(), err error) {
	jobs := make(chan *batchv1.Job, 100000)
	var mu sync.Mutex
	queued := map[string]bool{}
	stopInformer, err := onJobs(ctx, cl, namespace, func(job *batchv1.Job) {
		if finished(job) {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if !queued[job.Name] {
			queued[job.Name] = true
			tl.mark(job.Name, "jobSeen", time.Now())
			jobs <- job
		}
	})
	if err != nil {
		return nil, err
	}
	workersCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				select {
				case <-workersCtx.Done():
					return
				case job := <-jobs:
					for {
						err := testutil.CompleteJob(ctx, cl.c, job, `"OK"`)
						if err == nil || ctx.Err() != nil {
							break
						}
						fmt.Fprintf(os.Stderr, "bench: completing job %s: %v\n", job.Name, err)
						time.Sleep(100 * time.Millisecond)
					}
					tl.mark(job.Name, "jobDone", time.Now())
				}
			}
		})
	}
	return func() { stopInformer(); cancel(); wg.Wait() }, nil
}

// onJobs calls handle with a copy of every Job in namespace when it is seen
// and each time it changes, from an informer: it lists again after a broken
// watch, so no Job is missed.
func onJobs(ctx context.Context, cl *cluster, namespace string, handle func(*batchv1.Job)) (stop func(), err error) {
	factory := informers.NewSharedInformerFactoryWithOptions(cl.cs, 0, informers.WithNamespace(namespace))
	informer := factory.Batch().V1().Jobs().Informer()
	call := func(obj any) {
		if job, ok := obj.(*batchv1.Job); ok {
			handle(job.DeepCopy())
		}
	}
	_, err = informer.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    call,
		UpdateFunc: func(_, obj any) { call(obj) },
	})
	if err != nil {
		return nil, err
	}
	informerCtx, cancel := context.WithCancel(ctx)
	factory.Start(informerCtx.Done())
	return func() { cancel(); factory.Shutdown() }, nil
}
