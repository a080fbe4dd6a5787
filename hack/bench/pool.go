package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/shim"
	"github.com/kinfer/kinfer/internal/testutil"
)

const (
	poolSection = "9. pool"
	echoImage   = "ghcr.io/kinfer/worker-echo:v0.1.0"
	// poolMax is the pool model's workers.max; its other workers settings
	// are the defaults.
	poolMax           = 4
	poolNamespace     = "bench-pool"
	poolJobsNamespace = "bench-pool-jobs"
	poolRawNamespace  = "bench-pool-raw"
	// poolWarmUp requests bring the pool up before anything is timed.
	poolWarmUp = 8 * poolMax
	// sustainedP99 is the p99, submit → callback, past which a rate is not
	// sustained.
	sustainedP99 = time.Second
	// settle is how long the last status writes and Events take to land
	// before writes are counted.
	settle = 3 * time.Second
)

// poolFigures is what the pool section measured, in one run on one local
// cluster.
type poolFigures struct {
	rawCreates, jobRequests, poolRequests, latencyRequests int
	// rawRate is ConfigMap creates/s; jobRate and poolRate are requests/s,
	// first submit → last callback, without and with workers.
	rawRate, jobRate, poolRate float64
	// jobLatencies and poolLatencies are each request's submit → callback
	// in those two throughput runs.
	jobLatencies, poolLatencies []time.Duration
	// rawCPU, jobCPU, poolCPU and latencyCPU are the CPU each program used
	// in those runs and in the latency run; idleCPU with the pool warm and
	// no requests.
	rawCPU, jobCPU, poolCPU, latencyCPU, idleCPU cpuUse
	// reconciles and latencyReconciles are the manager's reconciles of
	// requests per pooled request in the throughput and latency runs.
	reconciles, latencyReconciles float64
	// coldStart is the warm-up's first submit → first callback; poolUp its
	// first submit → every pod of the pool seen ready.
	coldStart, poolUp time.Duration

	// The writes in the pool's namespace from the end of the warm-up to
	// the end of the latency run, over poolRequests+latencyRequests: the
	// manager's sorted as splitManagerWrites does, the Job and pod writes
	// of anyone, and everyone else's.
	operator, events, jobPod, others map[string]int
	// models are the manager's writes of the model's status: per model,
	// not per request.
	models      map[string]int
	shimCreates int

	latencyRate     float64
	latencyDuration time.Duration
	// latency is submit → callback of each request of the latency run.
	latency []time.Duration
	steps   []rateStep
}

// benchPool measures a pool next to one Job per request, on the local
// cluster with the echo worker, through the shim with callbacks to a local
// receiver: throughput, against the API server's own create rate, writes
// per request, latency at a steady rate, the manager's CPU, and the highest
// rate a warm pool sustains.
func benchPool(ctx context.Context, o *options, r *report) error {
	policy, err := writeAuditPolicy(o)
	if err != nil {
		return err
	}
	say("pool: starting the local cluster")
	cl, err := startCluster(ctx, o, "pool", false, policy)
	if err != nil {
		return err
	}
	defer cl.stop()
	work := freeAddr()
	if err := cl.startManager("--work-bind-address="+work, "--work-url=http://"+work); err != nil {
		return err
	}
	f := &poolFigures{latencyRate: o.poolLatencyRate, latencyDuration: o.poolLatencyDuration}
	for _, step := range []func(context.Context, *options, *cluster, *poolFigures) error{
		poolRawCreates, poolOneJobEach, poolWarm, poolMeasure, poolSustained,
	} {
		if err := step(ctx, o, cl, f); err != nil {
			return err
		}
	}
	f.report(r, o)
	return nil
}

func poolRawCreates(ctx context.Context, o *options, cl *cluster, f *poolFigures) error {
	n := o.poolRequests
	say("pool: %d ConfigMaps, for the API server's raw create rate", n)
	if err := cl.namespace(ctx, poolRawNamespace); err != nil {
		return err
	}
	start := time.Now()
	var err error
	f.rawCPU, err = measureCPU(func() error { return createConfigMaps(ctx, cl, poolRawNamespace, n, o.clients) })
	f.rawCreates, f.rawRate = n, float64(n)/time.Since(start).Seconds()
	return err
}

func poolOneJobEach(ctx context.Context, o *options, cl *cluster, f *poolFigures) error {
	n := o.poolJobRequests
	say("pool: %d requests for the echo model without workers (one Job each)", n)
	tl, rcv, err := echoModel(ctx, cl, poolJobsNamespace, 0)
	if err != nil {
		return err
	}
	defer rcv.close()
	f.jobCPU, err = measureCPU(func() (err error) {
		f.jobRate, err = submitAll(ctx, cl, poolJobsNamespace, "job", n, o.clients, rcv, tl)
		return err
	})
	f.jobRequests, f.jobLatencies = n, tl.between("submit", "callback", nil)
	return err
}

// poolWarm brings the pool up with a few requests and waits until all its
// pods are ready.
func poolWarm(ctx context.Context, o *options, cl *cluster, f *poolFigures) error {
	say("pool: warming a pool of %d pods with %d requests", poolMax, poolWarmUp)
	tl, rcv, err := echoModel(ctx, cl, poolNamespace, poolMax)
	if err != nil {
		return err
	}
	defer rcv.close()
	start := time.Now()
	if _, err := submitAll(ctx, cl, poolNamespace, "warm", poolWarmUp, o.clients, rcv, tl); err != nil {
		return err
	}
	f.coldStart = tl.times("callback")[0].Sub(start)
	if err := waitFor(ctx, "the pool's pods to be ready", 2*time.Minute, func() bool {
		return readyPoolPods(ctx, cl, poolNamespace) >= poolMax
	}); err != nil {
		return err
	}
	f.poolUp = time.Since(start)
	time.Sleep(settle)
	// What the warm pool costs with no work: its pods' long polls, the
	// pool's resizing and the leases' expiry.
	f.idleCPU, err = measureCPU(func() error {
		time.Sleep(o.poolStepDuration)
		return nil
	})
	return err
}

// poolMeasure times the warm pool's throughput and its latency at a steady
// rate, and counts the writes both made.
func poolMeasure(ctx context.Context, o *options, cl *cluster, f *poolFigures) error {
	from, err := auditSize(cl)
	if err != nil {
		return err
	}
	n := o.poolRequests
	say("pool: %d requests for the pool, %d clients", n, o.clients)
	tl := newTimeline()
	rcv, err := newReceiver(tl, shim.ObjectName, 0)
	if err != nil {
		return err
	}
	defer rcv.close()
	if o.profiles != "" {
		wait := profileCPU(ctx, cl, o.profiles, "pool", o.poolProfileSeconds)
		defer wait()
	}
	const reconciles = "controller_runtime_reconcile_total"
	reconciles0, err := cl.managerMetric(reconciles, `controller="inferencerequest"`)
	if err != nil {
		return err
	}
	f.poolCPU, err = measureCPU(func() (err error) {
		f.poolRate, err = submitAll(ctx, cl, poolNamespace, "pool", n, o.clients, rcv, tl)
		return err
	})
	if err != nil {
		return err
	}
	f.poolRequests, f.poolLatencies = n, tl.between("submit", "callback", nil)
	reconciles1, err := cl.managerMetric(reconciles, `controller="inferencerequest"`)
	if err != nil {
		return err
	}
	f.reconciles = (reconciles1 - reconciles0) / float64(n)

	m := max(int(f.latencyRate*f.latencyDuration.Seconds()), 1)
	say("pool: %d requests at %.0f/s", m, f.latencyRate)
	if o.profiles != "" {
		wait := profileCPU(ctx, cl, o.profiles, "pool-latency", min(o.poolProfileSeconds, int(f.latencyDuration.Seconds())))
		defer wait()
	}
	var step rateStep
	f.latencyCPU, err = measureCPU(func() (err error) {
		step, err = poolStep(ctx, cl, "lat", f.latencyRate, m)
		return err
	})
	if err != nil {
		return err
	}
	reconciles2, err := cl.managerMetric(reconciles, `controller="inferencerequest"`)
	if err != nil {
		return err
	}
	f.latencyReconciles = (reconciles2 - reconciles1) / float64(m)
	if !step.met(time.Hour) {
		return fmt.Errorf("the latency run did not deliver every request: %s", step)
	}
	f.latency, f.latencyRequests = step.latencies, m

	time.Sleep(settle)
	to, err := auditSize(cl)
	if err != nil {
		return err
	}
	manager, others, err := countWritesIn(cl.stack.AuditLog(), poolNamespace, from, to)
	if err != nil {
		return err
	}
	f.operator, f.events, f.models, f.shimCreates = splitManagerWrites(manager)
	f.jobPod, f.others = jobAndPodWrites(manager, others)
	return nil
}

// poolSustained steps the rate up, with a warm pool, until the p99 from
// submit to callback passes sustainedP99, then narrows the gap.
func poolSustained(ctx context.Context, o *options, cl *cluster, f *poolFigures) error {
	search := rateSearch{first: o.poolLatencyRate, factor: o.poolRateFactor, max: o.poolMaxRate, refine: o.poolRefine}
	for i := 1; ; i++ {
		rate, ok := search.next(f.steps, sustainedP99)
		if !ok {
			return nil
		}
		n := max(int(rate*o.poolStepDuration.Seconds()), 1)
		say("pool: rate step %d: %d requests at %.0f/s", i, n, rate)
		step, err := poolStep(ctx, cl, fmt.Sprintf("step%02d", i), rate, n)
		if err != nil {
			return err
		}
		say("pool: rate step %d: %s", i, step)
		f.steps = append(f.steps, step)
		if !step.drained {
			return nil // a backlog is left: a later step would measure it
		}
		time.Sleep(time.Second)
	}
}

// poolStep submits n requests to the pool at rate per second and waits for
// their callbacks.
func poolStep(ctx context.Context, cl *cluster, prefix string, rate float64, n int) (rateStep, error) {
	tl := newTimeline()
	rcv, err := newReceiver(tl, shim.ObjectName, 0)
	if err != nil {
		return rateStep{}, err
	}
	defer rcv.close()
	submitErr := steady(n, rate, func(i int) error {
		return submit(ctx, cl, poolNamespace, fmt.Sprintf("%s-%05d", prefix, i), rcv.url+"/fast", tl)
	})
	s := rateStep{rate: rate, sent: n, stored: tl.count("stored")}
	if submitErr != nil {
		s.err = submitErr.Error()
	}
	if submits := tl.times("submit"); len(submits) > 1 {
		s.offered = float64(len(submits)-1) / submits[len(submits)-1].Sub(submits[0]).Seconds()
	}
	wait := max(2*time.Minute, time.Duration(3*float64(n)/rate)*time.Second)
	s.drained = waitFor(ctx, "callbacks", wait, func() bool { return tl.count("callback") >= s.stored }) == nil
	if err := ctx.Err(); err != nil {
		return s, err
	}
	s.latencies = tl.between("submit", "callback", nil)
	return s, nil
}

// rateStep is one step of the rate search: how many requests were sent at
// what rate, how many the shim took and how many were called back, and
// their latency from submit to callback.
type rateStep struct {
	rate, offered float64
	sent, stored  int
	drained       bool
	err           string
	latencies     []time.Duration
}

// met reports whether every request of the step was taken and called back,
// with a p99 within limit.
func (s rateStep) met(limit time.Duration) bool {
	return s.err == "" && s.sent > 0 && s.stored == s.sent && len(s.latencies) == s.stored &&
		percentile(s.latencies, 0.99) <= limit
}

func (s rateStep) String() string {
	out := fmt.Sprintf("%.0f/s p50 / p99 %s", s.rate, pp(s.latencies))
	if s.offered > 0 && s.offered < 0.95*s.rate {
		out += fmt.Sprintf(" (submitted at %.0f/s)", s.offered)
	}
	if len(s.latencies) < s.sent {
		out += fmt.Sprintf(", %d of %d called back", len(s.latencies), s.sent)
	}
	if s.err != "" {
		out += ", a submit failed: " + s.err
	}
	return out
}

// rateSearch steps a rate up from first, by factor each step, up to max,
// until a step misses; then it halves the gap between the highest rate met
// and the lowest missed, refine times.
type rateSearch struct {
	first, factor, max float64
	refine             int
}

// next is the rate of the step after steps, or false when the search is
// over.
func (rs rateSearch) next(steps []rateStep, limit time.Duration) (float64, bool) {
	if len(steps) == 0 {
		return rs.first, rs.first > 0
	}
	best, missed := sustained(steps, limit)
	if missed == 0 {
		if best >= rs.max || rs.factor <= 1 {
			return 0, false
		}
		return min(math.Round(best*rs.factor), rs.max), true
	}
	firstMiss := slices.IndexFunc(steps, func(s rateStep) bool { return !s.met(limit) })
	mid := math.Round((best + missed) / 2)
	if best == 0 || len(steps)-firstMiss-1 >= rs.refine || mid <= best || mid >= missed {
		return 0, false
	}
	return mid, true
}

// sustained is the lowest rate of the steps that missed (0 when none did)
// and the highest rate met below it (0 when none was).
func sustained(steps []rateStep, limit time.Duration) (best, missed float64) {
	for _, s := range steps {
		if !s.met(limit) && (missed == 0 || s.rate < missed) {
			missed = s.rate
		}
	}
	for _, s := range steps {
		if s.met(limit) && (missed == 0 || s.rate < missed) && s.rate > best {
			best = s.rate
		}
	}
	return best, missed
}

// echoModel makes a namespace whose default model runs the echo worker, a
// pool of at most workers pods when workers > 0, and a receiver for its
// callbacks.
func echoModel(ctx context.Context, cl *cluster, namespace string, workers int32) (*timeline, *receiver, error) {
	if err := cl.namespace(ctx, namespace); err != nil {
		return nil, nil, err
	}
	m := testutil.MakeInferenceModel("default", namespace, echoImage)
	if workers > 0 {
		m = m.Workers(workers)
	}
	if err := cl.c.Create(ctx, m.Obj()); err != nil {
		return nil, nil, err
	}
	tl := newTimeline()
	rcv, err := newReceiver(tl, shim.ObjectName, 0)
	return tl, rcv, err
}

// readyPoolPods is how many pods of the pools in namespace are ready.
func readyPoolPods(ctx context.Context, cl *cluster, namespace string) int {
	jobs := &batchv1.JobList{}
	if err := cl.c.List(ctx, jobs, client.InNamespace(namespace), client.HasLabels{inferencev1alpha1.LabelPool}); err != nil {
		return 0
	}
	ready := 0
	for _, job := range jobs.Items {
		if job.Status.Ready != nil {
			ready += int(*job.Status.Ready)
		}
	}
	return ready
}

// auditSize is the audit log's size: where the writes from now on start.
func auditSize(cl *cluster) (int64, error) {
	info, err := os.Stat(cl.stack.AuditLog())
	if err != nil {
		return 0, err
	}
	return info.Size(), nil
}

// jobAndPodWrites picks, out of the manager's writes and everyone else's
// (as countWrites names them), those to Jobs and pods, by who made them;
// it returns them and the rest of everyone else's.
func jobAndPodWrites(manager, others map[string]int) (jobPod, rest map[string]int) {
	jobPod, rest = map[string]int{}, map[string]int{}
	for call, n := range manager {
		if jobOrPod(call) {
			jobPod["manager: "+call] += n
		}
	}
	for call, n := range others {
		if jobOrPod(call) {
			jobPod[call] += n
		} else {
			rest[call] += n
		}
	}
	return jobPod, rest
}

// jobOrPod reports whether a write, "[program: ]verb resource[/sub]…",
// is to a Job or a pod.
func jobOrPod(call string) bool {
	if _, after, ok := strings.Cut(call, ": "); ok {
		call = after
	}
	fields := strings.Fields(call)
	if len(fields) < 2 {
		return false
	}
	resource, _, _ := strings.Cut(fields[1], "/")
	return resource == "jobs" || resource == "pods"
}

func total(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// windowRequests is how many pooled requests the writes were counted over.
func (f *poolFigures) windowRequests() int { return f.poolRequests + f.latencyRequests }

// writesPerRequest is the operator's and the shim's writes per pooled
// request, Events aside.
func (f *poolFigures) writesPerRequest() float64 {
	return float64(total(f.operator)+f.shimCreates) / float64(max(f.windowRequests(), 1))
}

func (f *poolFigures) report(r *report, o *options) {
	clients := fmt.Sprintf(", %d clients", o.clients)
	r.charts.latencies = append(r.charts.latencies,
		latencySeries{"one Job per request" + clients, f.jobLatencies},
		latencySeries{fmt.Sprintf("pool, workers max %d%s", poolMax, clients), f.poolLatencies},
		latencySeries{fmt.Sprintf("warm pool at %.0f/s", f.latencyRate), f.latency})
	r.charts.throughput = append(r.charts.throughput,
		bar{"9: one Job each", f.jobRate}, bar{fmt.Sprintf("9: pool, max %d", poolMax), f.poolRate},
		bar{"9: API ceiling, pool", f.rawRate / max(f.writesPerRequest(), 1)})
	n := max(f.windowRequests(), 1)
	perRequest := func(m map[string]int) float64 { return float64(total(m)) / float64(n) }
	r.check(poolSection,
		fmt.Sprintf("requests/s, first submit → last callback, through the shim: workers {max: %d} ÷ one Job per request", poolMax),
		fmt.Sprintf("%.2f (%.1f/s ÷ %.1f/s; %d and %d requests, %d clients)", f.speedup(), f.poolRate, f.jobRate, f.poolRequests,
			f.jobRequests, o.clients), fmt.Sprintf("≥ %d", poolSpeedup), f.speedup() >= poolSpeedup)
	wpr := f.writesPerRequest()
	r.check(poolSection, "pool's requests/s ÷ (raw creates/s ÷ writes per pooled request)",
		fmt.Sprintf("%.2f (%.1f/s ÷ (%.0f/s ÷ %.2f); %d ConfigMaps)", f.ceilingShare(), f.poolRate, f.rawRate, wpr, f.rawCreates),
		fmt.Sprintf("≥ %.1f", poolCeilingShare), f.ceilingShare() >= poolCeilingShare)
	r.check(poolSection, "writes per pooled request: operator + shim (Events aside)",
		fmt.Sprintf("%.2f = operator %.2f (%s) + shim %.2f", wpr, perRequest(f.operator), breakdown(f.operator, n),
			float64(f.shimCreates)/float64(n)), fmt.Sprintf("≤ %d", poolWrites), wpr <= poolWrites+1e-4)
	jobPod := "none"
	if total(f.jobPod) > 0 {
		jobPod = fmt.Sprintf("%.3f (%s)", perRequest(f.jobPod), breakdown(f.jobPod, n))
	}
	r.check(poolSection, "Job and pod writes per pooled request once the pool is up (anyone's)", jobPod, "0", total(f.jobPod) == 0)
	at := fmt.Sprintf(" at %.0f/s for %s, warm pool", f.latencyRate, f.latencyDuration)
	p50, p99 := percentile(f.latency, 0.5), percentile(f.latency, 0.99)
	r.check(poolSection, "submit → callback p50"+at, p50.Round(time.Millisecond).String(),
		fmt.Sprintf("≤ %d ms", poolP50.Milliseconds()), p50 <= poolP50)
	r.check(poolSection, "submit → callback p99"+at, p99.Round(time.Millisecond).String(),
		fmt.Sprintf("≤ %d ms", poolP99.Milliseconds()), p99 <= poolP99)
	r.check(poolSection, "manager CPU per pooled request (throughput run)",
		fmt.Sprintf("%.2f ms (reconciles of a request each: %.1f; in the latency run %.1f)", f.managerCPU(), f.reconciles,
			f.latencyReconciles),
		fmt.Sprintf("≤ %.0f ms", poolManagerCPU), f.managerCPU() <= poolManagerCPU)
	r.add(poolSection, fmt.Sprintf("highest rate a warm pool sustains with p99 submit → callback ≤ %s", sustainedP99),
		f.sustainedText(o))
	r.add(poolSection, "CPU per request, one Job each → pooled, by program (harness: clients, receiver)",
		compareCPU(scaleCPU(f.jobCPU, float64(f.poolRequests)/float64(max(f.jobRequests, 1))), f.poolCPU, f.poolRequests))
	r.add(poolSection, "CPU per raw create → per pooled request, by program",
		compareCPU(scaleCPU(f.rawCPU, float64(f.poolRequests)/float64(max(f.rawCreates, 1))), f.poolCPU, f.poolRequests))
	r.add(poolSection, "operator's Events; everyone else's writes (per pooled request)",
		fmt.Sprintf("%.2f (%s); %.2f (%s)", perRequest(f.events), breakdown(f.events, n), perRequest(f.others), breakdown(f.others, n)))
	r.add(poolSection, "the model's status, for kubectl get im (per model, at most one every few seconds)",
		fmt.Sprintf("%d writes over the %d requests", total(f.models), n))
	r.add(poolSection, "cold pool: first submit → first callback; → every pod ready",
		fmt.Sprintf("%s; %s (%d requests)", f.coldStart.Round(time.Millisecond), f.poolUp.Round(time.Millisecond), poolWarmUp))
	r.note("Pool runs (section 9) are one run on the local cluster (real Job controller, scheduler and local node) with the "+
		"echo worker, which answers at once, all through the shim with callbacks to a local receiver: %d ConfigMaps of a "+
		"request's size for the API server's raw create rate; %d requests for a model without workers (one Job each); then "+
		"the same model with workers {max: %d} (other settings default, batchSize 1), brought up with %d requests until its "+
		"pods were ready, and timed warm: %d requests from %d clients, %d at %.0f/s, then rate steps of %s. Writes per "+
		"pooled request, Job and pod writes included, are read from the API server's audit log over the throughput and "+
		"latency runs. %s", f.rawCreates, f.jobRequests, poolMax, poolWarmUp, f.poolRequests, o.clients, f.latencyRequests,
		f.latencyRate, o.poolStepDuration, f.bounds())
}

// The section's targets.
const (
	poolSpeedup      = 5
	poolCeilingShare = 0.5
	poolWrites       = 3
	poolP50          = 50 * time.Millisecond
	poolP99          = 250 * time.Millisecond
	poolManagerCPU   = 3.0 // ms per pooled request
)

func (f *poolFigures) speedup() float64 { return f.poolRate / f.jobRate }

func (f *poolFigures) ceilingShare() float64 { return f.poolRate / (f.rawRate / f.writesPerRequest()) }

func (f *poolFigures) managerCPU() float64 { return programCPU(f.poolCPU, "manager", f.poolRequests) }

// met reports whether every target of the section was met.
func (f *poolFigures) met() bool {
	return f.speedup() >= poolSpeedup && f.ceilingShare() >= poolCeilingShare && f.writesPerRequest() <= poolWrites+1e-4 &&
		total(f.jobPod) == 0 && percentile(f.latency, 0.5) <= poolP50 && percentile(f.latency, 0.99) <= poolP99 &&
		f.managerCPU() <= poolManagerCPU
}

// sustainedText is the search's outcome and each step's figures.
func (f *poolFigures) sustainedText(o *options) string {
	best, missed := sustained(f.steps, sustainedP99)
	steps := make([]string, 0, len(f.steps))
	for _, s := range f.steps {
		steps = append(steps, s.String())
	}
	var head string
	switch {
	case len(f.steps) == 0:
		return "not measured"
	case missed == 0:
		head = fmt.Sprintf("≥ %.0f/s (every step up to --pool-max-rate met)", best)
	case best == 0:
		head = fmt.Sprintf("< %.0f/s (the first step missed)", missed)
	default:
		head = fmt.Sprintf("%.0f/s (%.0f/s missed)", best, missed)
	}
	return fmt.Sprintf("%s; steps of %s: %s", head, o.poolStepDuration, strings.Join(steps, "; "))
}

// bounds says, from what was measured, what held the pool back where a
// target was missed: the machine's cores, shared by every program, or, with
// cores to spare, the path each request takes.
func (f *poolFigures) bounds() string {
	if f.met() {
		return ""
	}
	apiRaw, apiPool := programCPU(f.rawCPU, "kube-apiserver", f.rawCreates), programCPU(f.poolCPU, "kube-apiserver", f.poolRequests)
	var parts []string
	if f.poolCPU.busy < 0.9 {
		parts = append(parts, fmt.Sprintf("the cores were %s during the pool's throughput run, so they had room: its "+
			"rate is bounded by the time each request spends on its way, with %d pods each holding one request at a time "+
			"from its take until its result is stored", busy(f.poolCPU), poolMax))
	} else {
		parts = append(parts, fmt.Sprintf("the cores were %s during the pool's throughput run: its rate is bounded "+
			"by the CPU a pooled request costs all programs together, %.1f ms (the API server %.1f, the manager %.1f, etcd %.1f)",
			busy(f.poolCPU), allCPU(f.poolCPU, f.poolRequests), apiPool, f.managerCPU(),
			programCPU(f.poolCPU, "etcd", f.poolRequests)))
	}
	if f.speedup() < poolSpeedup {
		parts = append(parts, fmt.Sprintf("with one Job each, a request cost %.1f ms, %.1f times as much, with the cores "+
			"%s", allCPU(f.jobCPU, f.jobRequests), allCPU(f.jobCPU, f.jobRequests)/max(allCPU(f.poolCPU, f.poolRequests), 0.01),
			busy(f.jobCPU)))
	}
	if f.ceilingShare() < poolCeilingShare {
		parts = append(parts, fmt.Sprintf("the API server spent %.1f ms per pooled request against %.2f ms per raw create: a "+
			"pooled request cost it as much as %.0f raw creates, not the %.2f writes the ceiling counts; its Events (%.2f "+
			"per request) and the audit log this section keeps to count writes add to what each write costs",
			apiPool, apiRaw, apiPool/max(apiRaw, 0.001), f.writesPerRequest(),
			float64(total(f.events))/float64(max(f.windowRequests(), 1))))
	}
	if p50, p99 := percentile(f.latency, 0.5), percentile(f.latency, 0.99); p50 > poolP50 || p99 > poolP99 {
		parts = append(parts, fmt.Sprintf("during the latency run at %.0f/s the cores were %s",
			f.latencyRate, busy(f.latencyCPU)))
	}
	if f.managerCPU() > poolManagerCPU {
		parts = append(parts, fmt.Sprintf("the manager used %.2f ms per pooled request in the throughput run, with a backlog, "+
			"and %.2f ms at %.0f/s; with the pool warm and no requests it used %.1f ms a second", f.managerCPU(),
			programCPU(f.latencyCPU, "manager", f.latencyRequests), f.latencyRate,
			ms(f.idleCPU.byProgram["manager"])/max(f.idleCPU.wall.Seconds(), 0.001)))
	}
	return "Where a target was missed: " + strings.Join(parts, "; ") + "."
}

// busy is how busy the cores were in u, and how much of that this run's
// programs were: on a shared machine the rest is someone else's.
func busy(u cpuUse) string {
	capacity := u.wall.Seconds() * float64(runtime.NumCPU())
	if capacity <= 0 {
		return fmt.Sprintf("%.0f%% busy", 100*u.busy)
	}
	return fmt.Sprintf("%.0f%% busy (this run's programs %.0f%%)", 100*u.busy, 100*allCPU(u, 1)/1000/capacity)
}

// programCPU is a program's CPU in u per item, in ms, over n items.
func programCPU(u cpuUse, program string, n int) float64 {
	return ms(u.byProgram[program]) / float64(max(n, 1))
}

// allCPU is every program's CPU in u per item, in ms, over n items.
func allCPU(u cpuUse, n int) float64 {
	var sum time.Duration
	for _, d := range u.byProgram {
		sum += d
	}
	return ms(sum) / float64(max(n, 1))
}

// scaleCPU is u with every program's time multiplied by k, to set two runs
// of different sizes side by side.
func scaleCPU(u cpuUse, k float64) cpuUse {
	out := cpuUse{wall: u.wall, busy: u.busy, byProgram: map[string]time.Duration{}}
	for name, d := range u.byProgram {
		out.byProgram[name] = time.Duration(float64(d) * k)
	}
	return out
}

// profileCPU starts taking CPU profiles of the API server and the manager
// over the next seconds, saved in folder as PREFIX-*.cpu.pb.gz (read them
// with go tool pprof); wait waits until both are saved. A profile that
// cannot be taken is reported, not fatal: it is evidence, not a figure.
func profileCPU(ctx context.Context, cl *cluster, folder, prefix string, seconds int) (wait func()) {
	take := func(name string, get func() ([]byte, error)) {
		raw, err := get()
		if err == nil {
			err = os.MkdirAll(folder, 0o755)
		}
		if err == nil {
			err = os.WriteFile(filepath.Join(folder, prefix+"-"+name+".cpu.pb.gz"), raw, 0o644)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: a CPU profile of the %s: %v\n", name, err)
		}
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		take("apiserver", func() ([]byte, error) {
			return cl.cs.CoreV1().RESTClient().Get().AbsPath("/debug/pprof/profile").
				Param("seconds", strconv.Itoa(seconds)).DoRaw(ctx)
		})
	})
	wg.Go(func() {
		take("manager", func() ([]byte, error) {
			resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", cl.pprof, seconds))
			if err != nil {
				return nil, err
			}
			defer func() { _ = resp.Body.Close() }()
			return io.ReadAll(resp.Body)
		})
	})
	return wg.Wait
}
