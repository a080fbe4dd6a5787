// localstack is what make run starts: kinfer's whole local stack on one
// machine without Docker (see internal/localstack), with the CRDs, the sample
// models and the manager, its HTTP shim on :8000. Ctrl-C stops it all.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/kinfer/kinfer/internal/localstack"
)

func main() {
	root := flag.String("root", ".", "the kinfer repository")
	assets := flag.String("assets", os.Getenv("KUBEBUILDER_ASSETS"),
		"folder with etcd, kube-apiserver, kube-controller-manager and kube-scheduler")
	bin := flag.String("bin", "", "folder with manager, localnode and workers/ (default: ROOT/bin)")
	state := flag.String("state", "", "folder for the kubeconfig, logs and pods (default: ROOT/bin/local)")
	shim := flag.String("shim-bind-address", ":8000", "where the shim listens")
	probes := flag.String("health-probe-bind-address", "127.0.0.1:8081", "where the manager's probes listen")
	flag.Parse()

	ctrllog.SetLogger(logr.Discard()) // envtest's own logging; progress is printed by say
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *root, *assets, *bin, *state, *shim, *probes); err != nil {
		say("error: %v", err)
		os.Exit(1)
	}
}

func say(format string, args ...any) {
	fmt.Printf("localstack: "+format+"\n", args...)
}

func run(ctx context.Context, root, assets, bin, state, shimAddr, probeAddr string) error {
	root, err := filepath.Abs(root)
	if err != nil {
		return err
	}
	if bin == "" {
		bin = filepath.Join(root, "bin")
	}
	if state == "" {
		state = filepath.Join(bin, "local")
	}
	s, err := localstack.Start(ctx, localstack.Options{Root: root, Assets: assets, Bin: bin, State: state, Log: say})
	if err != nil {
		return err
	}
	defer func() {
		say("stopping")
		s.Stop()
		say("stopped")
	}()

	say("installing the sample models in namespace default")
	for _, f := range localstack.SampleModels {
		if err := s.Apply(ctx, filepath.Join(root, "config", "samples", f), "default"); err != nil {
			return err
		}
	}
	say("starting the manager with the shim on %s", shimAddr)
	if _, err := s.Start("manager", []string{filepath.Join(bin, "manager"),
		"--shim-bind-address=" + shimAddr, "--shim-auth=none", "--shim-namespace=default",
		"--callback-allow-cidrs=127.0.0.0/8,::1/128", "--metrics-bind-address=0",
		"--health-probe-bind-address=" + probeAddr, "--leader-elect=false"},
		"KUBECONFIG="+s.Kubeconfig); err != nil {
		return err
	}
	printUsage(state, s.Kubeconfig, shimAddr)

	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
		if err := s.Exited(); err != nil {
			return err
		}
	}
}

func printUsage(state, kubeconfig, shimAddr string) {
	fmt.Printf(`
kinfer is running. Logs are in %[1]s.

  export KUBECONFIG=%[2]s
  kubectl get inferencerequests,inferencemodels,jobs,pods

  make demo        # in another terminal: submit {"id": "1234", ...} and print the callback
  curl -s -XPOST localhost%[3]s/v1/inferences -H 'Content-Type: application/json' \
       -d '{"id": "1234", "callback_url": "http://localhost:8001/v1/results"}'

Press Ctrl-C to stop everything.
`, state, kubeconfig, strings.TrimPrefix(shimAddr, "0.0.0.0"))
}
