package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"
	"k8s.io/utils/ptr"

	"github.com/kinfer/kinfer/pkg/worker"
)

// Kubernetes keeps at most this much of a termination message, and takes at
// most this much, or fallbackLines lines, from the log for FallbackToLogsOnError.
const (
	maxMessageBytes  = 4096
	fallbackBytes    = 2048
	fallbackLines    = 80
	defaultGraceTime = 30 * time.Second
)

// localIP is the address of every pod and of the node: processes share the host's network.
const localIP = "127.0.0.1"

// processProvider runs each container of a pod bound to this node as a host
// process: the container's image names a local program (see images), its
// args (and command, when set) are passed on, its literal env is its
// environment, and KINFER_RESULT_PATH points at a file of its own, read back as
// the termination message when it exits. A running container's status
// names its process as containerID local://<pid>, the process group that
// stopping the container signals. It is a development harness: no
// isolation, no resources, no images.
type processProvider struct {
	images map[string][]string // image -> the argv prefix that plays its entrypoint
	dir    string              // per-pod folders for result files and logs

	mu     sync.Mutex
	pods   map[string]*podRun
	notify func(*corev1.Pod)
}

// process is a container's running program; exited is closed once it has
// ended and its end is recorded.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

type podRun struct {
	pod      *corev1.Pod
	procs    map[string]*process
	left     int
	deleting bool
}

func newProcessProvider(images map[string][]string, dir string) *processProvider {
	return &processProvider{images: images, dir: dir, pods: map[string]*podRun{}, notify: func(*corev1.Pod) {}}
}

func podKey(namespace, name string) string { return namespace + "/" + name }

// NotifyPods registers the callback that reports pod status changes.
func (p *processProvider) NotifyPods(_ context.Context, notify func(*corev1.Pod)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.notify = notify
}

// CreatePod starts the pod's containers and reports it Running, or Failed at
// once when a container cannot start. A pod with an image the node does not
// know stays Pending, as on a kubelet that cannot pull it.
func (p *processProvider) CreatePod(_ context.Context, pod *corev1.Pod) error {
	key := podKey(pod.Namespace, pod.Name)
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.pods[key]; ok {
		return nil
	}
	run := &podRun{pod: pod.DeepCopy(), procs: map[string]*process{}}
	p.pods[key] = run
	now := metav1.Now()
	if p.cannotPull(key, run, now) {
		return nil
	}
	run.pod.Status = corev1.PodStatus{
		Phase: corev1.PodRunning, HostIP: localIP, PodIP: localIP, StartTime: &now,
		PodIPs:  []corev1.PodIP{{IP: localIP}},
		HostIPs: []corev1.HostIP{{IP: localIP}},
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		},
	}
	folder := filepath.Join(p.dir, pod.Namespace+"_"+pod.Name+"_"+string(pod.UID))
	if err := os.MkdirAll(folder, 0o755); err != nil {
		return err
	}
	for _, c := range pod.Spec.Containers {
		status := corev1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: c.Image}
		cmd, err := p.command(c, folder)
		if err == nil {
			err = cmd.Start()
		}
		if err != nil {
			status.State.Terminated = &corev1.ContainerStateTerminated{
				ExitCode: 128, Reason: "StartError", Message: err.Error(), StartedAt: now, FinishedAt: now,
			}
			run.pod.Status.ContainerStatuses = append(run.pod.Status.ContainerStatuses, status)
			continue
		}
		status.Started = ptr.To(true)
		status.Ready = true
		status.ContainerID = containerID(cmd)
		status.State.Running = &corev1.ContainerStateRunning{StartedAt: now}
		run.pod.Status.ContainerStatuses = append(run.pod.Status.ContainerStatuses, status)
		proc := &process{cmd: cmd, exited: make(chan struct{})}
		run.procs[c.Name] = proc
		run.left++
		go p.wait(key, c, proc, folder)
	}
	if run.left == 0 {
		finishPod(run.pod)
	}
	p.notify(run.pod.DeepCopy())
	return nil
}

// imagePullBackOff is how long an image the node does not know shows as
// ErrImagePull before it shows as ImagePullBackOff, as a kubelet's first
// failed pull does before it backs off.
const imagePullBackOff = time.Second

// unknownImage is the image of the first container whose program the image
// map cannot give (a container with its own command needs none), or "".
func (p *processProvider) unknownImage(pod *corev1.Pod) string {
	for _, c := range pod.Spec.Containers {
		if _, ok := p.images[c.Image]; !ok && len(c.Command) == 0 {
			return c.Image
		}
	}
	return ""
}

// cannotPull reports whether the pod has an image the node does not know.
// Such a pod stays Pending, its containers waiting, none started: the one
// with the unknown image in ErrImagePull, then ImagePullBackOff, the rest
// in ContainerCreating. It runs until it is deleted (the Job's deadline, a
// cancel), as a kubelet keeps trying to pull.
func (p *processProvider) cannotPull(key string, run *podRun, now metav1.Time) bool {
	image := p.unknownImage(run.pod)
	if image == "" {
		return false
	}
	run.pod.Status = corev1.PodStatus{
		Phase: corev1.PodPending, HostIP: localIP, StartTime: &now,
		HostIPs: []corev1.HostIP{{IP: localIP}},
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionFalse, Reason: "ContainersNotReady", LastTransitionTime: now},
			{Type: corev1.PodReady, Status: corev1.ConditionFalse, Reason: "ContainersNotReady", LastTransitionTime: now},
		},
	}
	for _, c := range run.pod.Spec.Containers {
		waiting := &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}
		if c.Image == image {
			waiting = &corev1.ContainerStateWaiting{Reason: "ErrImagePull",
				Message: fmt.Sprintf("image %q is not in the local node's image map", image)}
		}
		run.pod.Status.ContainerStatuses = append(run.pod.Status.ContainerStatuses,
			corev1.ContainerStatus{Name: c.Name, Image: c.Image, State: corev1.ContainerState{Waiting: waiting}})
	}
	p.notify(run.pod.DeepCopy())
	time.AfterFunc(imagePullBackOff, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.pods[key] != run || run.deleting {
			return
		}
		for i := range run.pod.Status.ContainerStatuses {
			if w := run.pod.Status.ContainerStatuses[i].State.Waiting; w != nil && w.Reason == "ErrImagePull" {
				w.Reason, w.Message = "ImagePullBackOff", fmt.Sprintf("Back-off pulling image %q", image)
			}
		}
		p.notify(run.pod.DeepCopy())
	})
	return true
}

// containerID names a container by its process, which is its process
// group's leader.
func containerID(cmd *exec.Cmd) string {
	return fmt.Sprintf("local://%d", cmd.Process.Pid)
}

// command builds the process for container c: the image's entrypoint from
// the image map (or the container's command, which replaces it), then args;
// $(NAME) in the command and args is the container's variable NAME, as a
// kubelet expands it.
func (p *processProvider) command(c corev1.Container, folder string) (*exec.Cmd, error) {
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			env[e.Name] = e.Value
		}
	}
	var argv []string
	for _, arg := range c.Command {
		argv = append(argv, expand(arg, env))
	}
	if len(argv) == 0 {
		entrypoint, ok := p.images[c.Image]
		if !ok {
			return nil, fmt.Errorf("image %q is not in the local node's image map", c.Image)
		}
		argv = append(argv, entrypoint...)
	}
	for _, arg := range c.Args {
		argv = append(argv, expand(arg, env))
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = folder
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + folder}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			cmd.Env = append(cmd.Env, e.Name+"="+e.Value)
		}
	}
	cmd.Env = append(cmd.Env, worker.EnvResultPath+"="+filepath.Join(folder, c.Name+".result"))
	logFile, err := os.Create(filepath.Join(folder, c.Name+".log"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	return cmd, nil
}

// expand replaces each $(NAME) in s with NAME's value in env, as the kubelet
// does in a container's command and args: $$ is a literal $, and a reference
// to a name env lacks stays as written.
func expand(s string, env map[string]string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] != '$' || i+1 == len(s):
			b.WriteByte(s[i])
		case s[i+1] == '$':
			b.WriteByte('$')
			i++
		case s[i+1] == '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			ref := s[i : i+3+end]
			if value, ok := env[ref[2:len(ref)-1]]; ok {
				ref = value
			}
			b.WriteString(ref)
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

// wait reports the container terminated once its process exits, and the pod
// finished once all its containers are.
func (p *processProvider) wait(key string, c corev1.Container, proc *process, folder string) {
	// Closed last, once the container's end is in the pod's status, so that
	// DeletePod reports the status this wrote.
	defer close(proc.exited)
	cmd := proc.cmd
	err := cmd.Wait()
	if f, ok := cmd.Stdout.(io.Closer); ok {
		_ = f.Close()
	}
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
		if status, ok := exit.Sys().(syscall.WaitStatus); ok && status.Signaled() {
			code = 128 + int(status.Signal())
		}
	}
	message := terminationMessage(folder, c, code)

	p.mu.Lock()
	defer p.mu.Unlock()
	run, ok := p.pods[key]
	if !ok {
		return
	}
	now := metav1.Now()
	for i := range run.pod.Status.ContainerStatuses {
		s := &run.pod.Status.ContainerStatuses[i]
		if s.Name != c.Name {
			continue
		}
		started := now
		if s.State.Running != nil {
			started = s.State.Running.StartedAt
		}
		reason := "Completed"
		if code != 0 {
			reason = "Error"
		}
		s.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			ExitCode: int32(code), Reason: reason, Message: message, StartedAt: started, FinishedAt: now,
			ContainerID: containerID(cmd),
		}}
		s.Ready, s.Started = false, ptr.To(false)
	}
	delete(run.procs, c.Name)
	run.left--
	if run.left == 0 {
		finishPod(run.pod)
	}
	p.notify(run.pod.DeepCopy())
}

// terminationMessage reads what the container left in its result file, or,
// for FallbackToLogsOnError after a failure with no message, its last log lines.
func terminationMessage(folder string, c corev1.Container, code int) string {
	message, _ := os.ReadFile(filepath.Join(folder, c.Name+".result"))
	if len(message) > maxMessageBytes {
		message = message[:maxMessageBytes]
	}
	if len(message) == 0 && code != 0 && c.TerminationMessagePolicy == corev1.TerminationMessageFallbackToLogsOnError {
		logs, _ := os.ReadFile(filepath.Join(folder, c.Name+".log"))
		message = tail(logs, fallbackLines, fallbackBytes)
	}
	return string(message)
}

func tail(logs []byte, lines, limit int) []byte {
	logs = bytes.TrimRight(logs, "\n")
	start := len(logs)
	for n := 0; n < lines && start > 0; n++ {
		start = bytes.LastIndexByte(logs[:start], '\n')
		if start < 0 {
			start = 0
			break
		}
	}
	out := bytes.TrimLeft(logs[start:], "\n")
	if len(out) > limit {
		out = out[len(out)-limit:]
	}
	return out
}

// finishPod sets the phase from the containers' exit codes: restartPolicy
// Never is all the local node supports, which is what Jobs use.
func finishPod(pod *corev1.Pod) {
	pod.Status.Phase = corev1.PodSucceeded
	for _, s := range pod.Status.ContainerStatuses {
		if s.State.Terminated == nil || s.State.Terminated.ExitCode != 0 {
			pod.Status.Phase = corev1.PodFailed
		}
	}
	now := metav1.Now()
	for i := range pod.Status.Conditions {
		if c := &pod.Status.Conditions[i]; c.Type == corev1.PodReady || c.Type == corev1.ContainersReady {
			c.Status, c.LastTransitionTime = corev1.ConditionFalse, now
		}
	}
}

// UpdatePod changes nothing: a running process cannot be updated.
func (p *processProvider) UpdatePod(context.Context, *corev1.Pod) error { return nil }

// DeletePod stops the pod's processes, SIGTERM first and SIGKILL after the
// grace period, and forgets the pod once they are gone.
func (p *processProvider) DeletePod(_ context.Context, pod *corev1.Pod) error {
	key := podKey(pod.Namespace, pod.Name)
	p.mu.Lock()
	run, ok := p.pods[key]
	if !ok {
		p.mu.Unlock()
		return errdefs.NotFoundf("pod %s is not on this node", key)
	}
	procs := make([]*process, 0, len(run.procs))
	for _, proc := range run.procs {
		procs = append(procs, proc)
	}
	run.deleting = true
	p.mu.Unlock()

	grace := defaultGraceTime
	if pod.DeletionGracePeriodSeconds != nil {
		grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
	}
	stopAll(procs, grace)

	p.mu.Lock()
	defer p.mu.Unlock()
	if run, ok := p.pods[key]; ok {
		finishPod(run.pod)
		p.notify(run.pod.DeepCopy())
		delete(p.pods, key)
	}
	return nil
}

func stopAll(procs []*process, grace time.Duration) {
	for _, proc := range procs {
		_ = syscall.Kill(-proc.cmd.Process.Pid, syscall.SIGTERM)
	}
	deadline := time.After(grace)
	for _, proc := range procs {
		select {
		case <-proc.exited:
		case <-deadline:
		}
		_ = syscall.Kill(-proc.cmd.Process.Pid, syscall.SIGKILL)
	}
}

// StopAll kills every process, for the node's own shutdown.
func (p *processProvider) StopAll(grace time.Duration) {
	p.mu.Lock()
	var procs []*process
	for _, run := range p.pods {
		for _, proc := range run.procs {
			procs = append(procs, proc)
		}
	}
	p.mu.Unlock()
	stopAll(procs, grace)
}

// GetPod returns the pod as this node sees it.
func (p *processProvider) GetPod(_ context.Context, namespace, name string) (*corev1.Pod, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	run, ok := p.pods[podKey(namespace, name)]
	if !ok {
		return nil, errdefs.NotFoundf("pod %s/%s is not on this node", namespace, name)
	}
	return run.pod.DeepCopy(), nil
}

// GetPodStatus returns the pod's status as this node sees it.
func (p *processProvider) GetPodStatus(ctx context.Context, namespace, name string) (*corev1.PodStatus, error) {
	pod, err := p.GetPod(ctx, namespace, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

// GetPods returns every pod on this node.
func (p *processProvider) GetPods(context.Context) ([]*corev1.Pod, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*corev1.Pod, 0, len(p.pods))
	for _, run := range p.pods {
		out = append(out, run.pod.DeepCopy())
	}
	return out, nil
}

// GetContainerLogs returns what the container wrote to stdout and stderr.
func (p *processProvider) GetContainerLogs(
	_ context.Context, namespace, podName, container string, opts api.ContainerLogOpts,
) (io.ReadCloser, error) {
	p.mu.Lock()
	run, ok := p.pods[podKey(namespace, podName)]
	p.mu.Unlock()
	if !ok {
		return nil, errdefs.NotFoundf("pod %s/%s is not on this node", namespace, podName)
	}
	logs, err := os.ReadFile(filepath.Join(p.dir, namespace+"_"+podName+"_"+string(run.pod.UID), container+".log"))
	if err != nil {
		return nil, errdefs.NotFoundf("no logs for container %s: %v", container, err)
	}
	if opts.Tail > 0 {
		logs = tail(logs, opts.Tail, len(logs))
	}
	return io.NopCloser(strings.NewReader(string(logs))), nil
}

func notSupported(what string) error {
	return errdefs.InvalidInputf("%s is not supported by the local node, a development harness", what)
}

// RunInContainer is not supported.
func (p *processProvider) RunInContainer(context.Context, string, string, string, []string, api.AttachIO) error {
	return notSupported("exec")
}

// AttachToContainer is not supported.
func (p *processProvider) AttachToContainer(context.Context, string, string, string, api.AttachIO) error {
	return notSupported("attach")
}

// GetStatsSummary is not supported.
func (p *processProvider) GetStatsSummary(context.Context) (*statsv1alpha1.Summary, error) {
	return nil, notSupported("stats")
}

// GetMetricsResource is not supported.
func (p *processProvider) GetMetricsResource(context.Context) ([]*dto.MetricFamily, error) {
	return nil, notSupported("metrics")
}

// PortForward is not supported.
func (p *processProvider) PortForward(context.Context, string, string, int32, io.ReadWriteCloser) error {
	return notSupported("port-forward")
}
