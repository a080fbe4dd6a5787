// The manager runs kinfer's controllers; see README.md.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	// Client auth plugins (OIDC, GCP, Azure, ...) for running out of cluster.
	_ "k8s.io/client-go/plugin/pkg/client/auth"

	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/controllers"
	"github.com/kinfer/kinfer/internal/callback"
	"github.com/kinfer/kinfer/internal/shim"
	"github.com/kinfer/kinfer/internal/slimcache"
	"github.com/kinfer/kinfer/internal/workapi"
)

var (
	scheme   = runtime.NewScheme()
	setupLog = ctrl.Log.WithName("setup")
)

func init() {
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(inferencev1alpha1.AddToScheme(scheme))
}

func main() {
	var (
		metricsAddr             string
		probeAddr               string
		pprofAddr               string
		enableLeaderElection    bool
		leaderElectionNamespace string
		secureMetrics           bool
		enableHTTP2             bool
		enableController        bool
		maxConcurrentDeliveries int
		maxDeliveriesPerHost    int
		callbackAllowCIDRs      string
		callbackRequireHTTPS    bool
		shimAddr                string
		workAddr                string
		workURL                 string
		shimNamespace           string
		shimAuth                string
		shimAuthCacheTTL        time.Duration
		shimTokenReviewsPerSec  float64
		shimTokenAudiences      string
		shimTLSCertFile         string
		shimTLSKeyFile          string
	)
	flag.StringVar(&metricsAddr, "metrics-bind-address", "0", "Address the metrics endpoint binds to, "+
		"e.g. :8443 for HTTPS or :8080 for HTTP; 0 disables it.")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "Address the /healthz and /readyz probes bind to.")
	flag.StringVar(&pprofAddr, "pprof-bind-address", "0", "Address net/http/pprof serves /debug/pprof/ on, "+
		"e.g. 127.0.0.1:6060; 0 disables it. It has no authentication: bind it to loopback.")
	flag.BoolVar(&enableLeaderElection, "leader-elect", false,
		"Elect a leader so that only one manager replica reconciles at a time.")
	flag.StringVar(&leaderElectionNamespace, "leader-election-namespace", "",
		"Namespace of the leader election Lease (default: the manager's own namespace when it runs in a Pod).")
	flag.BoolVar(&secureMetrics, "metrics-secure", true,
		"Serve metrics over HTTPS, to callers whose token may GET /metrics.")
	flag.BoolVar(&enableHTTP2, "enable-http2", false,
		"Allow HTTP/2 on the metrics server; off by default against HTTP/2 stream "+
			"cancellation and rapid reset attacks.")
	flag.BoolVar(&enableController, "enable-controller", true,
		"Run the InferenceRequest controller. Turn off to run only the HTTP shim in this process.")
	flag.IntVar(&maxConcurrentDeliveries, "max-concurrent-deliveries", 64,
		"How many requests are reconciled at once, and so how many callbacks can be in flight.")
	flag.IntVar(&maxDeliveriesPerHost, "max-deliveries-per-host", 0,
		"How many callbacks can be in flight to one host (host and port), so that a slow receiver "+
			"never holds every worker; 0 means half of --max-concurrent-deliveries.")
	flag.StringVar(&callbackAllowCIDRs, "callback-allow-cidrs", "",
		"Comma-separated CIDRs that callbacks may reach although they are not public addresses, "+
			"e.g. 10.0.0.0/8 for receivers inside the cluster or 127.0.0.0/8 on a development machine.")
	flag.BoolVar(&callbackRequireHTTPS, "callback-require-https", false,
		"Refuse callbacks to plain http URLs; their deliveries fail at once.")
	flag.StringVar(&workAddr, "work-bind-address", "",
		"address of the work API, where the pods of pool models take their requests, e.g. :8090; empty turns it off")
	flag.StringVar(&workURL, "work-url", "",
		"the work API's URL as pool pods reach it, e.g. http://kinfer-work.kinfer-system.svc:8090; without it no pool is started")
	flag.StringVar(&shimAddr, "shim-bind-address", ":8000",
		"Address the HTTP shim (POST /v1/inferences) listens on; empty turns the shim off.")
	flag.StringVar(&shimNamespace, "shim-namespace", "default",
		"Namespace for requests submitted to /v1/inferences without /v1/namespaces/{ns}/.")
	flag.StringVar(&shimAuth, "shim-auth", "kubernetes",
		"How the shim checks callers: kubernetes (bearer token checked with TokenReview, the call with "+
			"SubjectAccessReview) or none (anyone who can reach the port; for local use only).")
	flag.DurationVar(&shimAuthCacheTTL, "shim-auth-cache-ttl", 10*time.Second,
		"How long the shim remembers a token's user and a user's permission.")
	flag.Float64Var(&shimTokenReviewsPerSec, "shim-token-reviews-per-second", 50,
		"At most this many TokenReviews per second (bursts of one second's worth) for bearer tokens the shim "+
			"has not cached; calls past it are answered 429 with Retry-After.")
	flag.StringVar(&shimTokenAudiences, "shim-token-audiences", "",
		"Comma-separated audiences the shim's bearer tokens must be issued for (kubectl create token --audience), "+
			"e.g. kinfer; empty accepts tokens for the API server's own audiences.")
	flag.StringVar(&shimTLSCertFile, "shim-tls-cert-file", "",
		"PEM certificate (chain) for the shim; with --shim-tls-key-file the shim serves HTTPS only.")
	flag.StringVar(&shimTLSKeyFile, "shim-tls-key-file", "",
		"PEM private key for --shim-tls-cert-file.")
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()

	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))

	var tlsOpts []func(*tls.Config)
	if !enableHTTP2 {
		tlsOpts = append(tlsOpts, func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} })
	}
	metricsOptions := metricsserver.Options{
		BindAddress:   metricsAddr,
		SecureServing: secureMetrics,
		TLSOpts:       tlsOpts,
	}
	if secureMetrics {
		metricsOptions.FilterProvider = filters.WithAuthenticationAndAuthorization
	}

	if maxConcurrentDeliveries < 1 {
		setupLog.Error(fmt.Errorf("got %d", maxConcurrentDeliveries), "--max-concurrent-deliveries must be at least 1")
		os.Exit(1)
	}
	if maxDeliveriesPerHost < 0 || maxDeliveriesPerHost > maxConcurrentDeliveries {
		setupLog.Error(fmt.Errorf("got %d with --max-concurrent-deliveries=%d", maxDeliveriesPerHost, maxConcurrentDeliveries),
			"--max-deliveries-per-host must be between 0 (half of --max-concurrent-deliveries) and --max-concurrent-deliveries")
		os.Exit(1)
	}
	policy, err := callback.NewPolicy(splitList(callbackAllowCIDRs), callbackRequireHTTPS)
	if err != nil {
		setupLog.Error(err, "Invalid --callback-allow-cidrs")
		os.Exit(1)
	}

	mgr, err := ctrl.NewManager(ctrl.GetConfigOrDie(), ctrl.Options{
		Scheme:                        scheme,
		Cache:                         slimcache.Options(),
		Metrics:                       metricsOptions,
		HealthProbeBindAddress:        probeAddr,
		PprofBindAddress:              pprofAddr,
		LeaderElection:                enableLeaderElection,
		LeaderElectionID:              "manager.inference.kinfer.dev",
		LeaderElectionNamespace:       leaderElectionNamespace,
		LeaderElectionReleaseOnCancel: true,
	})
	if err != nil {
		setupLog.Error(err, "Unable to create manager")
		os.Exit(1)
	}

	// The shim tells where a waiting request stands from the controller's
	// queue when the controller runs in this process.
	var queue shim.Queue
	if enableController {
		reconciler, err := addController(mgr, workAddr, controllers.Options{
			Sender:                  callback.NewSender(policy),
			MaxConcurrentDeliveries: maxConcurrentDeliveries,
			MaxDeliveriesPerHost:    maxDeliveriesPerHost,
			Metrics:                 metrics.Registry,
			WorkURL:                 strings.TrimSuffix(workURL, "/"),
		})
		if err != nil {
			setupLog.Error(err, "Unable to create controller", "controller", "InferenceRequest")
			os.Exit(1)
		}
		queue = reconciler.Queue()
	}

	if shimAddr != "" {
		err := addShim(mgr, shimConfig{
			addr: shimAddr, namespace: shimNamespace, auth: shimAuth, authCacheTTL: shimAuthCacheTTL,
			tokenReviewsPerSecond: shimTokenReviewsPerSec, tokenAudiences: splitList(shimTokenAudiences),
			tlsCertFile: shimTLSCertFile, tlsKeyFile: shimTLSKeyFile,
			denied: policy.Check, requireHTTPS: callbackRequireHTTPS, queue: queue,
		})
		if err != nil {
			setupLog.Error(err, "Unable to set up the HTTP shim")
			os.Exit(1)
		}
	}

	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		setupLog.Error(err, "Unable to set up health check")
		os.Exit(1)
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		setupLog.Error(err, "Unable to set up ready check")
		os.Exit(1)
	}

	setupLog.Info("Starting manager", "controller", enableController, "maxConcurrentDeliveries", maxConcurrentDeliveries,
		"callbackAllowCIDRs", callbackAllowCIDRs, "callbackRequireHTTPS", callbackRequireHTTPS,
		"shim", shimAddr, "shimNamespace", shimNamespace, "shimAuth", shimAuth)
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		setupLog.Error(err, "Manager stopped with an error")
		os.Exit(1)
	}
}

// addController builds the InferenceRequest controller and adds it to mgr.
// addController runs the InferenceRequest controller in the manager, with
// the work API pool pods take requests from on workAddr (none when empty).
func addController(mgr ctrl.Manager, workAddr string, opts controllers.Options) (*controllers.InferenceRequestReconciler, error) {
	reconciler, err := controllers.NewInferenceRequestReconciler(mgr, opts)
	if err != nil {
		return nil, err
	}
	if workAddr != "" {
		if err := mgr.Add(&workapi.Server{Addr: workAddr, Handler: reconciler.WorkAPI(), Elected: mgr.Elected()}); err != nil {
			return nil, err
		}
	}
	return reconciler, reconciler.SetupWithManager(mgr)
}

// shimConfig is what the flags say of the HTTP shim.
type shimConfig struct {
	addr, namespace, auth   string
	authCacheTTL            time.Duration
	tokenReviewsPerSecond   float64
	tokenAudiences          []string
	tlsCertFile, tlsKeyFile string
	denied                  func(netip.Addr) error
	requireHTTPS            bool
	queue                   shim.Queue
}

// addShim runs the HTTP shim in the manager. It talks to the API server
// directly, not through the cache, so every answer reflects what is stored.
func addShim(mgr ctrl.Manager, c shimConfig) error {
	if (c.tlsCertFile == "") != (c.tlsKeyFile == "") {
		return errors.New("--shim-tls-cert-file and --shim-tls-key-file go together: set both or neither")
	}
	direct, err := client.New(mgr.GetConfig(), client.Options{Scheme: mgr.GetScheme(), Mapper: mgr.GetRESTMapper()})
	if err != nil {
		return err
	}
	// Models are read from the manager's cache, whose model informer is
	// started here so that every replica has one, not only the leader whose
	// controller watches models; the shim confirms with the API server
	// before it refuses a submission on what the cache says.
	if _, err := mgr.GetCache().GetInformer(context.Background(), &inferencev1alpha1.InferenceModel{}); err != nil {
		return err
	}
	opts := shim.Options{Client: direct, Namespace: c.namespace, Denied: c.denied, RequireHTTPS: c.requireHTTPS,
		RetryAfter: 5 * time.Second, Queue: c.queue, Models: mgr.GetClient()}
	switch c.auth {
	case "kubernetes":
		if !(c.tokenReviewsPerSecond > 0) {
			return fmt.Errorf("--shim-token-reviews-per-second must be above 0, got %v", c.tokenReviewsPerSecond)
		}
		opts.Authorizer = shim.NewKubernetesAuth(shim.AuthOptions{Client: direct, TTL: c.authCacheTTL,
			Audiences: c.tokenAudiences, ReviewsPerSecond: c.tokenReviewsPerSecond})
	case "none":
		setupLog.Info("WARNING: the HTTP shim checks no credentials (--shim-auth=none): anyone who can reach " +
			c.addr + " can create, read, cancel, redeliver and delete inference requests in namespace " + c.namespace +
			". Use it on a development machine only.")
	default:
		return fmt.Errorf("--shim-auth must be kubernetes or none, got %q", c.auth)
	}
	shimMetrics := shim.NewMetrics()
	if err := shimMetrics.Register(metrics.Registry); err != nil {
		return err
	}
	return mgr.Add(&shim.Server{Addr: c.addr, Handler: shim.NewHandler(opts), Log: ctrl.Log.WithName("shim"),
		Metrics: shimMetrics, CertFile: c.tlsCertFile, KeyFile: c.tlsKeyFile})
}

// splitList reads a comma-separated flag value, ignoring blanks.
func splitList(value string) []string {
	var out []string
	for _, item := range strings.Split(value, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
