// bench measures what kinfer costs next to what it is built on: API writes
// per request, throughput against bare Jobs and against the API server's own
// create rate, latency, isolation from slow receivers, the manager's memory
// and CPU, the shim, and pools against one Job per request. Every figure is
// a count or a ratio of two measurements taken in the same run, because
// absolute times on shared machines drift. make bench runs it and writes docs/benchmarks.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
)

type options struct {
	root, assets, bin, out string
	profiles               string
	short                  bool

	localRequests     int
	envtestRequests   int
	latencyRate       float64
	latencyDuration   time.Duration
	isolationRequests int
	isolationRate     float64
	slowDelay         time.Duration
	held              []int
	memoryRuns        int
	shimRequests      int
	queued            []int
	queueStarts       int
	burst             int
	burstWindow       int
	clients           int
	managerFlags      []string

	poolRequests        int
	poolJobRequests     int
	poolLatencyRate     float64
	poolLatencyDuration time.Duration
	poolStepDuration    time.Duration
	poolRateFactor      float64
	poolMaxRate         float64
	poolRefine          int
	poolProfileSeconds  int
}

func main() {
	o := &options{}
	var held, queued string
	flag.StringVar(&o.root, "root", ".", "the kinfer repository")
	flag.StringVar(&o.assets, "assets", os.Getenv("KUBEBUILDER_ASSETS"), "folder with the control plane binaries")
	flag.StringVar(&o.bin, "bin", "", "folder with manager, localnode and workers/ (default: ROOT/bin)")
	flag.StringVar(&o.out, "out", "docs/benchmarks.md", "markdown file the results are written into")
	flag.BoolVar(&o.short, "short", false, "small sizes, to check the harness in a minute or two (figures are not meaningful)")
	flag.IntVar(&o.localRequests, "local-requests", 500, "requests and bare Jobs on the local cluster")
	flag.IntVar(&o.envtestRequests, "envtest-requests", 1000, "requests for the operator-only throughput run")
	flag.Float64Var(&o.latencyRate, "latency-rate", 50, "requests per second in the latency run")
	flag.DurationVar(&o.latencyDuration, "latency-duration", 60*time.Second, "length of the latency run")
	flag.IntVar(&o.isolationRequests, "isolation-requests", 500,
		"requests to each receiver on each side of the isolation runs (half in each of its two runs)")
	flag.Float64Var(&o.isolationRate, "isolation-rate", 10, "requests per second to each receiver in the isolation runs")
	flag.DurationVar(&o.slowDelay, "slow-delay", 2*time.Second, "how long the slow receiver takes per call")
	flag.StringVar(&o.profiles, "profiles", "", "folder to save profiles in: the manager's heap for each held size of the memory run, "+
		"and the API server's and the manager's CPU over the pool's throughput and latency runs")
	flag.StringVar(&held, "held", "0,10000,50000", "finished requests held in the cluster for the memory run")
	flag.IntVar(&o.memoryRuns, "memory-runs", 3, "manager starts over each held size; the median is reported, with the range")
	flag.IntVar(&o.shimRequests, "shim-requests", 3000, "submits per side in the shim runs")
	flag.StringVar(&queued, "queued", "0,1000,10000",
		"requests queued behind the timed ones in the queue runs; each depth is compared with the first")
	flag.IntVar(&o.queueStarts, "queue-starts", 100, "requests started and timed at each queue depth")
	flag.IntVar(&o.burst, "burst", 8000, "requests submitted at once through the shim in the queue run's burst")
	flag.IntVar(&o.burstWindow, "burst-window", 200, "starts timed after the burst has landed")
	flag.IntVar(&o.clients, "clients", 16, "parallel clients in throughput runs")
	flag.IntVar(&o.poolRequests, "pool-requests", 2000,
		"requests in the pool's throughput run, and ConfigMaps for the raw create rate it is held to")
	flag.IntVar(&o.poolJobRequests, "pool-job-requests", 300, "requests for the same model without workers (one Job each)")
	flag.Float64Var(&o.poolLatencyRate, "pool-latency-rate", 25,
		"requests per second in the pool's latency run, and the first step of its rate search")
	flag.DurationVar(&o.poolLatencyDuration, "pool-latency-duration", 40*time.Second, "length of the pool's latency run")
	flag.DurationVar(&o.poolStepDuration, "pool-step-duration", 10*time.Second, "length of each step of the pool's rate search")
	flag.Float64Var(&o.poolRateFactor, "pool-rate-factor", 1.5, "how much each step of the pool's rate search raises the rate")
	flag.Float64Var(&o.poolMaxRate, "pool-max-rate", 1000, "the highest rate the pool's rate search tries")
	flag.IntVar(&o.poolRefine, "pool-refine", 2, "steps that narrow the gap once a rate of the pool's search has missed")
	flag.IntVar(&o.poolProfileSeconds, "pool-profile-seconds", 10,
		"with --profiles, how long the CPU profiles taken from the start of the pool's throughput and latency runs last")
	managerFlags := flag.String("manager-flags", "", "extra flags for the manager, space-separated, e.g. to compare settings")
	sections := flag.String("sections", "local,operator,memory,shim,queue,pool", "the sections to run")
	flag.Parse()

	if o.short {
		o.localRequests, o.envtestRequests, o.isolationRequests, o.shimRequests = 20, 100, 50, 300
		o.latencyDuration, held, o.memoryRuns = 4*time.Second, "0,1000", 1
		queued, o.queueStarts, o.burst, o.burstWindow = "0,200", 40, 200, 50
		o.poolRequests, o.poolJobRequests, o.poolLatencyDuration = 100, 20, 4*time.Second
		o.poolStepDuration, o.poolMaxRate, o.poolRefine = 2*time.Second, 100, 0
	}
	o.managerFlags = strings.Fields(*managerFlags)
	if err := o.complete(held, queued); err != nil {
		fail(err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctrllog.SetLogger(logr.Discard()) // envtest's own logging
	r := &report{}
	all := map[string]func(context.Context, *options, *report) error{
		"local": benchLocalCluster, "operator": benchOperator, "memory": benchMemory, "shim": benchShimInProcess,
		"queue": benchQueue, "pool": benchPool,
	}
	for _, name := range strings.Split(*sections, ",") {
		section, ok := all[strings.TrimSpace(name)]
		if !ok {
			fail(fmt.Errorf("--sections: no section %q", name))
		}
		if err := section(ctx, o, r); err != nil {
			r.print()
			fail(err)
		}
	}
	r.print()
	if err := r.write(o, time.Since(started)); err != nil {
		fail(err)
	}
	fmt.Printf("\nbench: done in %s; written to %s\n", time.Since(started).Round(time.Second), o.out)
}

// complete checks the flags and fills in what they leave to be derived:
// the sizes lists, absolute paths, the bin folder.
func (o *options) complete(held, queued string) error {
	if o.memoryRuns < 1 {
		return fmt.Errorf("--memory-runs must be at least 1")
	}
	var err error
	if o.held, err = sizes(held); err != nil {
		return fmt.Errorf("--held: %w", err)
	}
	if o.queued, err = sizes(queued); err != nil {
		return fmt.Errorf("--queued: %w", err)
	}
	if o.queueStarts < 1 || o.burstWindow < 1 {
		return fmt.Errorf("--queue-starts and --burst-window must be at least 1")
	}
	if o.poolRequests < 1 || o.poolJobRequests < 1 || o.poolLatencyRate <= 0 || o.poolRateFactor <= 1 {
		return fmt.Errorf("--pool-requests and --pool-job-requests must be at least 1, --pool-latency-rate above 0, " +
			"--pool-rate-factor above 1")
	}
	if o.root, err = filepath.Abs(o.root); err != nil {
		return err
	}
	if o.bin == "" {
		o.bin = filepath.Join(o.root, "bin")
	}
	if o.assets == "" {
		return fmt.Errorf("--assets or KUBEBUILDER_ASSETS must name the control plane binaries (make bench sets it)")
	}
	return nil
}

// sizes reads a comma-separated list of counts.
func sizes(list string) ([]int, error) {
	var out []int
	for _, s := range strings.Split(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			return nil, err
		}
		if n < 0 {
			return nil, fmt.Errorf("%d is negative", n)
		}
		out = append(out, n)
	}
	return out, nil
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

// started is when the run began; say prints the time since, so a run's log
// shows where its minutes go.
var started = time.Now()

func say(format string, args ...any) {
	fmt.Printf("bench: [%s] "+format+"\n", append([]any{time.Since(started).Round(time.Second)}, args...)...)
}
