package main

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/shim"
	"github.com/kinfer/kinfer/internal/testutil"
)

const (
	// queueLimit is the maxConcurrency of the queue runs' model.
	queueLimit     = 4
	queueNamespace = "bench-queue"
	queueSection   = "8. queue"
	// burstClients submit the burst in parallel.
	burstClients = 32
)

// benchQueue measures what a deep queue costs the manager. For each depth, a
// model with maxConcurrency 4 has that many requests queued behind the ones
// timed, and the manager starts them one slot at a time: its CPU per started
// request and the time from a slot freeing to the next Job's creation are
// compared with the first depth's (none queued, unless --queued says
// otherwise). Then a burst of requests arrives through the shim at once, and
// starts must keep following the slots freeing while it lands and after.
func benchQueue(ctx context.Context, o *options, r *report) error {
	// The depths run in order and then in reverse, and each depth's two runs
	// are pooled, so that none gains from running earlier or later on a
	// shared machine.
	var depths []int
	for _, depth := range o.queued {
		if !slices.Contains(depths, depth) {
			depths = append(depths, depth)
		}
	}
	pooled := map[int]depthRun{}
	for _, depth := range append(slices.Clone(depths), reversed(depths)...) {
		run, err := queueDepth(ctx, o, depth)
		if err != nil {
			return err
		}
		if earlier, ok := pooled[depth]; ok {
			run = earlier.pool(run)
		}
		pooled[depth] = run
	}
	base := pooled[depths[0]]
	base.report(r, nil)
	for _, depth := range depths[1:] {
		pooled[depth].report(r, &base)
	}
	if err := queueBurst(ctx, o, r, &base); err != nil {
		return err
	}
	r.note("Queue runs (section 8) use kube-apiserver and etcd alone, a fresh pair for each run, with the harness " +
		"completing each Job as soon as it appears, as in the operator-only runs: no pods run, so the time from a slot " +
		"freeing to the next Job is the manager's and the API server's alone. Times are when the harness's watch on " +
		"Jobs delivered each event; the k-th slot freed is taken by the (k+4)-th Job seen.")
	return nil
}

// depthRun is what one queue depth measured.
type depthRun struct {
	depth, started int
	// cpuPerStart is the manager's CPU over the timed starts, per start.
	cpuPerStart time.Duration
	// refills are, for each timed start, how long the slot it took stood
	// free: from the slot freeing to the Job's creation.
	refills []time.Duration
	// startsPerSecond is the rate of the timed starts.
	startsPerSecond float64
	// rebuildCPU is the manager's CPU from its start until it had
	// reconciled every request; rebuildWrites the writes to requests
	// meanwhile (none, when the copies' status is what the manager would
	// write).
	rebuildCPU    time.Duration
	rebuildWrites float64
	// each is, for pooled runs, each run's CPU per start and p50, in the
	// order they ran.
	each []string
}

// pool merges two runs at the same depth into one over all their starts.
func (d depthRun) pool(e depthRun) depthRun {
	summary := func(x depthRun) string {
		return fmt.Sprintf("%.2f ms, %s", ms(x.cpuPerStart), percentile(x.refills, 0.5).Round(time.Millisecond))
	}
	took := func(x depthRun) float64 { return float64(x.started) / x.startsPerSecond }
	each := d.each
	if len(each) == 0 {
		each = []string{summary(d)}
	}
	return depthRun{
		depth:           d.depth,
		started:         d.started + e.started,
		cpuPerStart:     (d.cpuPerStart*time.Duration(d.started) + e.cpuPerStart*time.Duration(e.started)) / time.Duration(d.started+e.started),
		refills:         append(slices.Clone(d.refills), e.refills...),
		startsPerSecond: float64(d.started+e.started) / (took(d) + took(e)),
		rebuildCPU:      max(d.rebuildCPU, e.rebuildCPU),
		rebuildWrites:   max(d.rebuildWrites, e.rebuildWrites),
		each:            append(slices.Clone(each), summary(e)),
	}
}

func reversed(xs []int) []int {
	out := slices.Clone(xs)
	slices.Reverse(out)
	return out
}

func (d depthRun) report(r *report, base *depthRun) {
	runs := ""
	if len(d.each) > 0 {
		runs = "; by run: " + strings.Join(d.each, "; ")
	}
	r.add(queueSection, fmt.Sprintf("%d queued behind maxConcurrency %d: manager CPU per started request; "+
		"slot freed → next Job created p50 / p95", d.depth, queueLimit),
		fmt.Sprintf("%.2f ms; %s / %s (%d starts at %.0f/s%s; the manager's first reconcile of every request: "+
			"%.1f s CPU, %.0f writes)", ms(d.cpuPerStart), percentile(d.refills, 0.5).Round(time.Millisecond),
			percentile(d.refills, 0.95).Round(time.Millisecond), d.started, d.startsPerSecond, runs, d.rebuildCPU.Seconds(),
			d.rebuildWrites))
	if base == nil {
		return
	}
	cpu := ms(d.cpuPerStart) / max(ms(base.cpuPerStart), 0.01)
	r.check(queueSection, fmt.Sprintf("manager CPU per started request, %d queued ÷ %d queued", d.depth, base.depth),
		fmt.Sprintf("%.2f (%.2f ms ÷ %.2f ms)", cpu, ms(d.cpuPerStart), ms(base.cpuPerStart)), "≤ 2", cpu <= 2)
	p50, baseP50 := percentile(d.refills, 0.5), percentile(base.refills, 0.5)
	p95, baseP95 := percentile(d.refills, 0.95), percentile(base.refills, 0.95)
	ratio := float64(p50) / float64(max(baseP50, time.Millisecond))
	r.check(queueSection, fmt.Sprintf("slot freed → next Job created p50, %d queued ÷ %d queued", d.depth, base.depth),
		fmt.Sprintf("%.2f (%s ÷ %s; p95 %.2f: %s ÷ %s)", ratio, p50.Round(time.Millisecond), baseP50.Round(time.Millisecond),
			float64(p95)/float64(max(baseP95, time.Millisecond)), p95.Round(time.Millisecond), baseP95.Round(time.Millisecond)),
		"≤ 2", ratio <= 2)
}

// queueDepth stores depth+o.queueStarts waiting requests for a model whose
// maxConcurrency is taken, starts the manager over them, and, once it has
// reconciled them all, lets the slots free one Job at a time until
// o.queueStarts requests have started. The waiting requests are copies of
// one the manager queued, written into etcd; they share its creation time,
// so they start in the order of their names and the first o.queueStarts are
// the ones timed, with depth more queued behind them throughout.
func queueDepth(ctx context.Context, o *options, depth int) (depthRun, error) {
	n := o.queueStarts
	run := depthRun{depth: depth, started: n}
	say("queue: %d requests waiting behind maxConcurrency %d: the first %d started and timed, %d queued behind them",
		depth+n, queueLimit, n, depth)
	cl, err := startCluster(ctx, o, fmt.Sprintf("queue-%d", depth), true, "")
	if err != nil {
		return run, err
	}
	defer cl.stop()
	rcv, err := newReceiver(newTimeline(), func(id string) string { return id }, 0)
	if err != nil {
		return run, err
	}
	defer rcv.close()
	if err := storeQueue(ctx, cl, depth+n, rcv.url+"/fast"); err != nil {
		return run, err
	}
	defer cl.stopManager()
	if run.rebuildCPU, run.rebuildWrites, err = rebuild(ctx, cl, depth+n+queueLimit); err != nil {
		return run, err
	}
	run.cpuPerStart, run.startsPerSecond, run.refills, err = timeStarts(ctx, cl, n)
	return run, err
}

// storeQueue creates the model, has queueLimit requests run and request 0
// queued behind them, and copies it until waiting requests are stored.
func storeQueue(ctx context.Context, cl *cluster, waiting int, callbackURL string) error {
	if err := queueModel(ctx, cl); err != nil {
		return err
	}
	copier, err := queuedTemplate(ctx, cl, callbackURL)
	if err != nil {
		return err
	}
	if err := copier.copies(ctx, 1, waiting); err != nil {
		return err
	}
	return waitServed(ctx, cl, queueNamespace, waiting+queueLimit, "InferenceRequestList")
}

// rebuild starts the manager and waits until it has reconciled all the
// requests stored; it returns the manager's CPU until then and the writes to
// requests meanwhile.
func rebuild(ctx context.Context, cl *cluster, all int) (time.Duration, float64, error) {
	const requestWrites = `resource="inferencerequests"`
	writes0, err := cl.apiServerWrites(ctx, requestWrites)
	if err != nil {
		return 0, 0, err
	}
	if err := cl.startManager(); err != nil {
		return 0, 0, err
	}
	if err := waitFor(ctx, "the manager to reconcile every request", 10*time.Minute, func() bool {
		done, err1 := cl.managerMetric("controller_runtime_reconcile_total", `controller="inferencerequest"`)
		waiting, err2 := cl.managerMetric("workqueue_depth", `name="inferencerequest"`)
		return err1 == nil && err2 == nil && done >= float64(all) && waiting == 0
	}); err != nil {
		return 0, 0, err
	}
	time.Sleep(time.Second) // the last reconciles end
	cpu, err := cl.managerCPU()
	if err != nil {
		return 0, 0, err
	}
	writes1, err := cl.apiServerWrites(ctx, requestWrites)
	return cpu, writes1 - writes0, err
}

// timeStarts completes the running Jobs, and each Job after them as soon as
// it appears, until n more have started; it returns the manager's CPU per
// start, the starts per second, and how long each slot freed stayed free.
func timeStarts(ctx context.Context, cl *cluster, n int) (time.Duration, float64, []time.Duration, error) {
	slots, stopSlots, err := watchSlots(ctx, cl, queueNamespace)
	if err != nil {
		return 0, 0, nil, err
	}
	defer stopSlots()
	if err := waitFor(ctx, "the running Jobs to be seen", time.Minute, func() bool { return slots.started() >= queueLimit }); err != nil {
		return 0, 0, nil, err
	}
	cpu0, err := cl.managerCPU()
	if err != nil {
		return 0, 0, nil, err
	}
	start := time.Now()
	stopCompleter, err := completer(ctx, cl, queueNamespace, newTimeline(), queueLimit)
	if err != nil {
		return 0, 0, nil, err
	}
	defer stopCompleter()
	if err := waitFor(ctx, fmt.Sprintf("%d Jobs to start", n), 10*time.Minute, func() bool {
		return slots.started() >= n+queueLimit
	}); err != nil {
		return 0, 0, nil, fmt.Errorf("%w (%d started)", err, slots.started()-queueLimit)
	}
	cpu1, err := cl.managerCPU()
	if err != nil {
		return 0, 0, nil, err
	}
	starts, frees := slots.snapshot()
	starts, frees = starts[:n+queueLimit], frees[:min(n, len(frees))]
	var took []time.Duration
	for _, refill := range refills(starts, frees, time.Now()) {
		took = append(took, refill.took)
	}
	return (cpu1 - cpu0) / time.Duration(n), float64(n) / starts[len(starts)-1].Sub(start).Seconds(), took, nil
}

// queueModel creates the default model with a maxConcurrency of queueLimit
// in the queue runs' namespace, running the sleep worker.
func queueModel(ctx context.Context, cl *cluster) error {
	if err := cl.namespace(ctx, queueNamespace); err != nil {
		return err
	}
	m := testutil.MakeInferenceModel("default", queueNamespace, sleepImage).MaxConcurrency(queueLimit).Obj()
	return cl.c.Create(ctx, m)
}

func queuedName(i int) string { return fmt.Sprintf("queued-%06d", i) }

// queuedTemplate has the manager run queueLimit requests, whose Jobs stay
// running until the completer starts, and queue request 0 behind them, so
// that it is stored with the very status the manager gives a waiting
// request (a copy whose status differed would cost a write at the next
// start). It stops the manager and returns a copier of that request.
func queuedTemplate(ctx context.Context, cl *cluster, callbackURL string) (*etcdCopier, error) {
	if err := cl.startManager(); err != nil {
		return nil, err
	}
	defer cl.stopManager()
	for i := range queueLimit {
		ir := testutil.MakeInferenceRequest(fmt.Sprintf("running-%d", i), queueNamespace).Callback(callbackURL).Obj()
		if err := cl.c.Create(ctx, ir); err != nil {
			return nil, err
		}
	}
	if err := waitFor(ctx, "the first Jobs", time.Minute, func() bool {
		jobs := &batchv1.JobList{}
		return cl.c.List(ctx, jobs, client.InNamespace(queueNamespace)) == nil && len(jobs.Items) == queueLimit
	}); err != nil {
		return nil, err
	}
	ir := testutil.MakeInferenceRequest(queuedName(0), queueNamespace).Callback(callbackURL).Obj()
	if err := cl.c.Create(ctx, ir); err != nil {
		return nil, err
	}
	if err := waitFor(ctx, "the request to be queued", time.Minute, func() bool {
		return cl.c.Get(ctx, client.ObjectKeyFromObject(ir), ir) == nil && ir.Status.Phase == inferencev1alpha1.PhaseQueued
	}); err != nil {
		return nil, err
	}
	return readTemplate(ctx, cl, queueNamespace, queuedName, []types.UID{ir.UID}, "the request alone")
}

// queueBurst submits o.burst requests through the shim at once, for a model
// whose Jobs the harness completes as soon as they appear, and times how
// slots freed are taken while the burst lands and for the first
// o.burstWindow starts after it. It does not wait for the rest to run.
func queueBurst(ctx context.Context, o *options, r *report, base *depthRun) error {
	say("queue: a burst of %d requests through the shim (%d clients), maxConcurrency %d", o.burst, burstClients, queueLimit)
	cl, err := startCluster(ctx, o, "queue-burst", true, "")
	if err != nil {
		return err
	}
	defer cl.stop()
	tl := newTimeline()
	rcv, err := newReceiver(tl, shim.ObjectName, 0)
	if err != nil {
		return err
	}
	defer rcv.close()
	if err := queueModel(ctx, cl); err != nil {
		return err
	}
	if err := cl.startManager(); err != nil {
		return err
	}
	defer cl.stopManager()
	slots, stopSlots, err := watchSlots(ctx, cl, queueNamespace)
	if err != nil {
		return err
	}
	defer stopSlots()
	stopCompleter, err := completer(ctx, cl, queueNamespace, newTimeline(), queueLimit)
	if err != nil {
		return err
	}
	defer stopCompleter()

	b := burstRun{size: o.burst, window: o.burstWindow, start: time.Now()}
	if err := parallel(o.burst, burstClients, func(i int) error {
		return submit(ctx, cl, queueNamespace, fmt.Sprintf("burst-%05d", i), rcv.url+"/fast", tl)
	}); err != nil {
		return err
	}
	b.end = time.Now()
	say("queue: the burst took %s; timing the next %d starts", b.end.Sub(b.start).Round(time.Millisecond), o.burstWindow)
	b.startsBefore = slots.started()
	cpu0, err := cl.managerCPU()
	if err != nil {
		return err
	}
	// A manager that stops starting Jobs is what this measures, not an error.
	b.stalled = waitFor(ctx, "starts after the burst", 5*time.Minute, func() bool {
		return slots.started() >= b.startsBefore+o.burstWindow
	}) != nil
	b.stop = time.Now()
	cpu1, err := cl.managerCPU()
	if err != nil {
		return err
	}
	b.cpu = cpu1 - cpu0
	b.starts, b.frees = slots.snapshot()
	b.stored = tl.times("stored")
	b.report(r, base)
	return nil
}

// burstRun is what the burst recorded: when it began and ended (the last
// submit answered), when the timing after it stopped, the manager's CPU
// meanwhile, and every start, slot freed and request stored, in order.
type burstRun struct {
	size, window, startsBefore int
	start, end, stop           time.Time
	stalled                    bool
	cpu                        time.Duration
	starts, frees, stored      []time.Time
}

func (b burstRun) report(r *report, base *depthRun) {
	windowStarts, windowEnd := len(b.starts)-b.startsBefore, b.stop
	if !b.stalled {
		windowStarts, windowEnd = b.window, b.starts[b.startsBefore+b.window-1]
	}
	// A slot freed counts when requests waited for it: more had been
	// stored than started.
	waited := func(at time.Time) bool { return countUntil(b.stored, at) > countUntil(b.starts, at) }
	var during, after []time.Duration
	for _, refill := range refills(b.starts, b.frees, b.stop) {
		switch {
		case !waited(refill.freed) || refill.freed.After(windowEnd):
		case refill.freed.After(b.end):
			after = append(after, refill.took)
		default:
			during = append(during, refill.took)
		}
	}
	landed, rate := b.end.Sub(b.start), float64(windowStarts)/windowEnd.Sub(b.end).Seconds()
	r.add(queueSection, fmt.Sprintf("burst of %d through the shim, %d clients: submits/s; starts and slots freed while it landed",
		b.size, burstClients),
		fmt.Sprintf("%.0f/s over %s; %d starts, %d slots freed", float64(b.size)/landed.Seconds(), landed.Round(time.Millisecond),
			countUntil(b.starts, b.end), countUntil(b.frees, b.end)))
	cpu := fmt.Sprintf("%.2f ms", ms(b.cpu/time.Duration(max(windowStarts, 1))))
	if windowStarts == 0 {
		cpu = fmt.Sprintf("%.1f s with no start", b.cpu.Seconds())
	}
	r.add(queueSection, fmt.Sprintf("burst: starts and slots freed over the first %d starts after it; manager CPU per start", b.window),
		fmt.Sprintf("%d starts, %d slots freed in %s (%.0f starts/s%s); %s", windowStarts,
			countUntil(b.frees, windowEnd)-countUntil(b.frees, b.end), windowEnd.Sub(b.end).Round(time.Millisecond), rate,
			againstBase(rate, base), cpu))
	longest := slices.Max(append([]time.Duration{0}, append(slices.Clone(during), after...)...))
	r.check(queueSection, "burst: slot freed → next Job created while requests waited, p50 / p95 / longest",
		fmt.Sprintf("while it landed %s (%d); after it %s (%d)", spread(during), len(during), spread(after), len(after)),
		"longest ≤ 1 s", !b.stalled && longest <= time.Second)
}

// againstBase is ", ×R the rate with D queued" for a rate of starts, next to
// the shallowest depth's.
func againstBase(rate float64, base *depthRun) string {
	if base == nil || base.startsPerSecond == 0 {
		return ""
	}
	return fmt.Sprintf(", %.2f× the rate with %d queued", rate/base.startsPerSecond, base.depth)
}

// slotLog records, in the order the harness's watch on Jobs delivers them,
// when each Job was first seen (a start) and first seen finished (a slot
// freed). One watch carries both in the order the API server stored them,
// so a Job the manager created after it saw a slot free comes after that
// freeing here too.
type slotLog struct {
	mu            sync.Mutex
	seen, done    map[string]bool
	starts, frees []time.Time
}

func watchSlots(ctx context.Context, cl *cluster, namespace string) (*slotLog, func(), error) {
	s := &slotLog{seen: map[string]bool{}, done: map[string]bool{}}
	stop, err := onJobs(ctx, cl, namespace, func(job *batchv1.Job) {
		at := time.Now()
		s.mu.Lock()
		defer s.mu.Unlock()
		if !s.seen[job.Name] {
			s.seen[job.Name] = true
			s.starts = append(s.starts, at)
		}
		if finished(job) && !s.done[job.Name] {
			s.done[job.Name] = true
			s.frees = append(s.frees, at)
		}
	})
	return s, stop, err
}

func (s *slotLog) started() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.starts)
}

// snapshot returns the starts and the slots freed so far, each in order.
func (s *slotLog) snapshot() (starts, frees []time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.starts), slices.Clone(s.frees)
}

// refill is a slot freed and how long it stayed free.
type refill struct {
	freed time.Time
	took  time.Duration
}

// refills pairs the k-th slot freed with the (k+queueLimit)-th start: the
// first queueLimit starts take the slots free at first, and each later one
// the slot freed earliest that no start has taken yet. A slot still free at
// stop counts as free until then.
func refills(starts, frees []time.Time, stop time.Time) []refill {
	out := make([]refill, 0, len(frees))
	for k, freed := range frees {
		if k+queueLimit < len(starts) {
			out = append(out, refill{freed: freed, took: starts[k+queueLimit].Sub(freed)})
		} else if freed.Before(stop) {
			out = append(out, refill{freed: freed, took: stop.Sub(freed)})
		}
	}
	return out
}

// countUntil is how many of the sorted times are at or before t.
func countUntil(times []time.Time, t time.Time) int {
	return sort.Search(len(times), func(i int) bool { return times[i].After(t) })
}

func spread(ds []time.Duration) string {
	if len(ds) == 0 {
		return "none"
	}
	return fmt.Sprintf("%s / %s / %s", percentile(ds, 0.5).Round(time.Millisecond), percentile(ds, 0.95).Round(time.Millisecond),
		slices.Max(ds).Round(time.Millisecond))
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
