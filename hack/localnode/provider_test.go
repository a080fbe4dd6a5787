package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func buildSleepWorker(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "sleep")
	if out, err := exec.Command("go", "build", "-o", bin, "../../examples/workers/sleep").CombinedOutput(); err != nil {
		t.Fatalf("building the sleep worker: %v\n%s", err, out)
	}
	return bin
}

// watch registers a notifier and returns a function that waits for the pod
// to reach a terminal phase.
func watch(t *testing.T, p *processProvider) func() *corev1.Pod {
	t.Helper()
	updates := make(chan *corev1.Pod, 16)
	p.NotifyPods(context.Background(), func(pod *corev1.Pod) { updates <- pod })
	return func() *corev1.Pod {
		t.Helper()
		timeout := time.After(20 * time.Second)
		for {
			select {
			case pod := <-updates:
				if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
					return pod
				}
			case <-timeout:
				t.Fatal("the pod never finished")
			}
		}
	}
}

func pod(name string, containers ...corev1.Container) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ml", UID: "uid-" + "1"},
		Spec:       corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever, Containers: containers},
	}
}

func terminated(t *testing.T, p *corev1.Pod) *corev1.ContainerStateTerminated {
	t.Helper()
	if len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].State.Terminated == nil {
		t.Fatalf("container statuses %+v", p.Status.ContainerStatuses)
	}
	return p.Status.ContainerStatuses[0].State.Terminated
}

func TestRunsAWorkerAndReadsItsResult(t *testing.T) {
	p := newProcessProvider(map[string][]string{"worker-sleep": {buildSleepWorker(t)}}, t.TempDir())
	finished := watch(t, p)
	err := p.CreatePod(context.Background(), pod("ok", corev1.Container{
		Name: "inference", Image: "worker-sleep", Args: []string{"--delay=100ms", "--answer=$(ANSWER)"},
		Env: []corev1.EnvVar{{Name: "KINFER_INPUT", Value: "null"}, {Name: "ANSWER", Value: "OK"}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	got := finished()
	if got.Status.Phase != corev1.PodSucceeded {
		t.Errorf("phase %s, want Succeeded", got.Status.Phase)
	}
	if term := terminated(t, got); term.ExitCode != 0 || term.Message != `"OK"` || term.Reason != "Completed" {
		t.Errorf("terminated %+v, want exit 0 with message \"OK\"", term)
	}
}

func TestFailureFallsBackToLogs(t *testing.T) {
	p := newProcessProvider(nil, t.TempDir())
	finished := watch(t, p)
	err := p.CreatePod(context.Background(), pod("fails", corev1.Container{
		Name: "inference", Image: "any", Command: []string{"sh", "-c", "echo loading; echo 'out of memory' >&2; exit 3"},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}))
	if err != nil {
		t.Fatal(err)
	}
	got := finished()
	term := terminated(t, got)
	if got.Status.Phase != corev1.PodFailed || term.ExitCode != 3 || term.Message != "loading\nout of memory" {
		t.Errorf("phase %s, terminated %+v; want Failed, exit 3 and the log lines as message", got.Status.Phase, term)
	}
}

func TestUnknownImageWaitsAsAFailedPull(t *testing.T) {
	p := newProcessProvider(nil, t.TempDir())
	updates := make(chan *corev1.Pod, 16)
	p.NotifyPods(context.Background(), func(pod *corev1.Pod) { updates <- pod })
	unknown := pod("unknown", corev1.Container{Name: "c", Image: "nowhere:1"})
	if err := p.CreatePod(context.Background(), unknown); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ErrImagePull", "ImagePullBackOff"} {
		select {
		case got := <-updates:
			if got.Status.Phase != corev1.PodPending || len(got.Status.ContainerStatuses) != 1 ||
				got.Status.ContainerStatuses[0].State.Waiting == nil ||
				got.Status.ContainerStatuses[0].State.Waiting.Reason != want ||
				!strings.Contains(got.Status.ContainerStatuses[0].State.Waiting.Message, "nowhere:1") {
				t.Fatalf("phase %s, statuses %+v; want Pending, waiting in %s naming the image",
					got.Status.Phase, got.Status.ContainerStatuses, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no %s reported", want)
		}
	}
	if err := p.DeletePod(context.Background(), unknown); err != nil {
		t.Fatal(err)
	}
	if _, err := p.GetPod(context.Background(), "ml", "unknown"); err == nil {
		t.Error("the deleted pod is still on the node")
	}
}

func TestDeleteStopsTheProcess(t *testing.T) {
	p := newProcessProvider(map[string][]string{"worker-sleep": {buildSleepWorker(t)}}, t.TempDir())
	finished := watch(t, p)
	running := pod("long", corev1.Container{Name: "inference", Image: "worker-sleep", Args: []string{"--delay=1h"}})
	if err := p.CreatePod(context.Background(), running); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	running.DeletionGracePeriodSeconds = new(int64)
	*running.DeletionGracePeriodSeconds = 5
	start := time.Now()
	if err := p.DeletePod(context.Background(), running); err != nil {
		t.Fatal(err)
	}
	got := finished()
	if terminated(t, got).ExitCode == 0 {
		t.Error("a stopped worker reported success")
	}
	if waited := time.Since(start); waited > 4*time.Second {
		t.Errorf("stopping took %v: SIGTERM was not honoured", waited)
	}
	if _, err := p.GetPod(context.Background(), "ml", "long"); err == nil {
		t.Error("a deleted pod is still on the node")
	}
}

func TestExpandsVariablesInArgsAsAKubeletDoes(t *testing.T) {
	env := map[string]string{"POD": "pool-x7k2p", "EMPTY": ""}
	tests := []struct{ in, want string }{
		{"--answer=$(POD)", "--answer=pool-x7k2p"},
		{"$(POD)/$(POD)", "pool-x7k2p/pool-x7k2p"},
		{"$$(POD)", "$(POD)"},
		{"$(MISSING) and $(EMPTY).", "$(MISSING) and ."},
		{"cost: $5, $", "cost: $5, $"},
		{"$(POD", "$(POD"},
	}
	for _, tc := range tests {
		if got := expand(tc.in, env); got != tc.want {
			t.Errorf("expand(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// A running container names its process, so that tests can kill it as a
// crash or an out-of-memory kill would.
func TestRunningContainerNamesItsProcess(t *testing.T) {
	p := newProcessProvider(map[string][]string{"worker-sleep": {buildSleepWorker(t)}}, t.TempDir())
	finished := watch(t, p)
	running := pod("named", corev1.Container{Name: "inference", Image: "worker-sleep", Args: []string{"--delay=1h"}})
	if err := p.CreatePod(context.Background(), running); err != nil {
		t.Fatal(err)
	}
	got, err := p.GetPod(context.Background(), "ml", "named")
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if _, err := fmt.Sscanf(got.Status.ContainerStatuses[0].ContainerID, "local://%d", &pid); err != nil {
		t.Fatalf("containerID %q does not name a process", got.Status.ContainerStatuses[0].ContainerID)
	}
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil {
		t.Fatalf("killing the container's process group %d: %v", pid, err)
	}
	if code := int(terminated(t, finished()).ExitCode); code != 128+int(syscall.SIGKILL) {
		t.Errorf("exit code %d after SIGKILL, want %d", code, 128+int(syscall.SIGKILL))
	}
}

func TestTail(t *testing.T) {
	if got := string(tail([]byte("a\nb\nc\n"), 2, 100)); got != "b\nc" {
		t.Errorf("tail = %q", got)
	}
	if got := string(tail([]byte("abcdef"), 80, 3)); got != "def" {
		t.Errorf("tail = %q", got)
	}
}
