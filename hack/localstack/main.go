// localstack is what make run starts: kinfer's whole local stack on one
// machine without Docker (see internal/localstack), with the CRDs, the sample
// models and the manager, its HTTP shim on 127.0.0.1:8000. Ctrl-C stops it all.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/kinfer/kinfer/internal/localstack"
)

// options are localstack's flags.
type options struct {
	root, assets, bin, state, shimAddr, probeAddr, workAddr string
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("localstack", flag.ContinueOnError)
	fs.StringVar(&o.root, "root", ".", "the kinfer repository")
	fs.StringVar(&o.assets, "assets", os.Getenv("KUBEBUILDER_ASSETS"),
		"folder with etcd, kube-apiserver, kube-controller-manager and kube-scheduler")
	fs.StringVar(&o.bin, "bin", "", "folder with manager, localnode and workers/ (default: ROOT/bin)")
	fs.StringVar(&o.state, "state", "", "folder for the kubeconfig, logs and pods (default: ROOT/bin/local)")
	fs.StringVar(&o.shimAddr, "shim-bind-address", "127.0.0.1:8000", "where the shim listens. It checks no "+
		"credentials and the manager may call back to this machine, so keep it on loopback unless the network is yours alone")
	fs.StringVar(&o.probeAddr, "health-probe-bind-address", "127.0.0.1:8081", "where the manager's probes listen")
	fs.StringVar(&o.workAddr, "work-bind-address", "127.0.0.1:8090",
		"where the manager's work API listens; the local node's pods, host processes, reach it there")
	return o, fs.Parse(args)
}

func main() {
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		os.Exit(2)
	}
	ctrllog.SetLogger(logr.Discard()) // envtest's own logging; progress is printed by say
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		say("error: %v", err)
		os.Exit(1)
	}
}

// managerArgs runs the manager for one developer: no credentials checked,
// so only the shim's own namespace, and callbacks to this machine allowed.
func managerArgs(o options) []string {
	return []string{filepath.Join(o.bin, "manager"),
		"--shim-bind-address=" + o.shimAddr, "--shim-auth=none", "--shim-namespace=default",
		"--callback-allow-cidrs=127.0.0.0/8,::1/128", "--metrics-bind-address=0",
		"--health-probe-bind-address=" + o.probeAddr, "--leader-elect=false",
		"--work-bind-address=" + o.workAddr, "--work-url=http://" + o.workAddr}
}

func say(format string, args ...any) {
	fmt.Printf("localstack: "+format+"\n", args...)
}

func run(ctx context.Context, o options) error {
	root, err := filepath.Abs(o.root)
	if err != nil {
		return err
	}
	o.root = root
	if o.bin == "" {
		o.bin = filepath.Join(root, "bin")
	}
	if o.state == "" {
		o.state = filepath.Join(o.bin, "local")
	}
	s, err := localstack.Start(ctx, localstack.Options{Root: root, Assets: o.assets, Bin: o.bin, State: o.state, Log: say})
	if err != nil {
		return err
	}
	defer func() {
		say("stopping")
		s.Stop()
		say("stopped")
	}()

	say("creating a random signing key for the sentiment sample in Secret default/%s", localstack.SigningSecretName)
	if err := s.CreateSigningSecret(ctx, "default", localstack.SigningSecretName); err != nil {
		return err
	}
	say("installing the sample models in namespace default")
	for _, f := range localstack.SampleModels {
		if err := s.Apply(ctx, filepath.Join(root, "config", "samples", f), "default"); err != nil {
			return err
		}
	}
	say("starting the manager with the shim on %s", o.shimAddr)
	if _, err := s.Start("manager", managerArgs(o), "KUBECONFIG="+s.Kubeconfig); err != nil {
		return err
	}
	printUsage(o.state, s.Kubeconfig, o.shimAddr)

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
	host, port, err := net.SplitHostPort(shimAddr)
	if err != nil || host == "" || host == "0.0.0.0" || host == "::" {
		host = "localhost"
	}
	fmt.Printf(`
kinfer is running. Logs are in %[1]s.

  export KUBECONFIG=%[2]s
  kubectl get inferencerequests,inferencemodels,jobs,pods

  make demo        # in another terminal: submit {"id": "1234", ...} and print the callback
  make demo MODEL=sentiment   # 3 requests to the sentiment pool, each timed to its callback
  curl -s -XPOST http://%[3]s/v1/inferences -H 'Content-Type: application/json' \
       -d '{"id": "1234", "callback_url": "http://localhost:8001/v1/results"}'

The sentiment model signs its callbacks with a key made for this run:
  kubectl get secret %[4]s -o jsonpath='{.data.secret}' | base64 -d

Press Ctrl-C to stop everything.
`, state, kubeconfig, net.JoinHostPort(host, port), localstack.SigningSecretName)
}
