// localnode is a development harness: a Kubernetes node, built on the
// virtual-kubelet library, that runs each pod bound to it as host processes.
// It lets the local stack (make run) and the end-to-end suite run real Jobs
// through the real Job controller and scheduler without a container runtime.
// In a cluster, the kubelet does this job.
//
//	localnode --kubeconfig K --images images.json --dir /tmp/pods
//
// images.json maps an image to the command that plays its entrypoint:
//
//	{"ghcr.io/kinfer/worker-sleep:v0.1.0": ["/abs/path/bin/workers/sleep"]}
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/workqueue"
)

func main() {
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of the cluster to join")
	name := flag.String("name", "local-node", "the node's name")
	imagesPath := flag.String("images", "", "JSON file mapping images to local commands")
	dir := flag.String("dir", "", "folder for pods' result files and logs (default: a new temporary folder)")
	flag.Parse()

	if err := run(*kubeconfig, *name, *imagesPath, *dir); err != nil {
		fmt.Fprintln(os.Stderr, "localnode:", err)
		os.Exit(1)
	}
}

func run(kubeconfig, name, imagesPath, dir string) error {
	images := map[string][]string{}
	if imagesPath != "" {
		raw, err := os.ReadFile(imagesPath)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(raw, &images); err != nil {
			return fmt.Errorf("%s: %w", imagesPath, err)
		}
	}
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "localnode-"); err != nil {
			return err
		}
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	// client-go's default of 5 writes a second would make the node, which
	// writes each pod's status a few times, the slowest part of the cluster.
	cfg.QPS, cfg.Burst = 500, 1000
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}

	provider := newProcessProvider(images, dir)
	n, err := nodeutil.NewNode(name, func(pc nodeutil.ProviderConfig) (nodeutil.Provider, node.NodeProvider, error) {
		capacity := corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("16"),
			corev1.ResourceMemory: resource.MustParse("64Gi"),
			corev1.ResourcePods:   resource.MustParse("500"),
		}
		pc.Node.Status.Capacity, pc.Node.Status.Allocatable = capacity, capacity
		pc.Node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: localIP}}
		pc.Node.Status.NodeInfo = corev1.NodeSystemInfo{OperatingSystem: "linux", Architecture: "amd64", KubeletVersion: "localnode"}
		pc.Node.Labels["kubernetes.io/os"] = "linux"
		return provider, nil, nil
	}, nodeutil.WithClient(client), func(c *nodeutil.NodeConfig) error {
		c.HTTPListenAddr = localIP + ":0"
		c.NumWorkers = 8
		return nil
	}, nodeutil.WithPodControllerConfigOverrides(withoutQueueRateLimit))
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		if err := n.Run(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "localnode:", err)
			stop()
		}
	}()
	if err := n.WaitReady(ctx, time.Minute); err != nil {
		return err
	}
	fmt.Printf("localnode: node %s is ready; pods run under %s\n", name, dir)
	<-ctx.Done()
	provider.StopAll(5 * time.Second)
	<-n.Done()
	return nil
}

// withoutQueueRateLimit leaves the pod controller's queues only their
// per-pod backoff. By default they also share a bucket of 10 pods a second
// (burst 100), which made this node start no more than about 10 pods a
// second however many Jobs were waiting: a kubelet has no such limit.
func withoutQueueRateLimit(c *node.PodControllerConfig) error {
	perPod := func() workqueue.TypedRateLimiter[any] {
		return workqueue.NewTypedItemExponentialFailureRateLimiter[any](5*time.Millisecond, 1000*time.Second)
	}
	c.SyncPodsFromKubernetesRateLimiter = perPod()
	c.DeletePodsFromKubernetesRateLimiter = perPod()
	c.SyncPodStatusFromProviderRateLimiter = perPod()
	return nil
}
