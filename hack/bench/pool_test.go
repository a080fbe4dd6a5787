package main

import (
	"maps"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// stepAt is a step at rate whose every request was called back after d.
func stepAt(rate float64, d time.Duration) rateStep {
	return rateStep{rate: rate, sent: 10, stored: 10, drained: true, latencies: slicesOf(d, 10)}
}

func slicesOf(d time.Duration, n int) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = d
	}
	return out
}

// The search raises the rate by its factor while steps are met, up to its
// maximum; after a miss it halves the gap refine times, and it stops when
// the first step misses or the gap is closed.
func TestRateSearchStepsUpThenNarrowsTheGap(t *testing.T) {
	const limit = time.Second
	met, missed := 100*time.Millisecond, 2*time.Second
	rs := rateSearch{first: 25, factor: 2, max: 300, refine: 2}
	tests := []struct {
		name   string
		steps  []rateStep
		want   float64
		wantOK bool
	}{
		{name: "first step", want: 25, wantOK: true},
		{name: "met: up by the factor", steps: []rateStep{stepAt(25, met)}, want: 50, wantOK: true},
		{name: "met near the maximum: the maximum", steps: []rateStep{stepAt(25, met), stepAt(200, met)}, want: 300, wantOK: true},
		{name: "the maximum met: done", steps: []rateStep{stepAt(300, met)}},
		{name: "a miss: halfway between", steps: []rateStep{stepAt(25, met), stepAt(50, met), stepAt(100, missed)}, want: 75, wantOK: true},
		{
			name:  "a refinement met: halfway above it",
			steps: []rateStep{stepAt(50, met), stepAt(100, missed), stepAt(75, met)}, want: 88, wantOK: true,
		},
		{
			name:  "a refinement missed: halfway below it",
			steps: []rateStep{stepAt(50, met), stepAt(100, missed), stepAt(75, missed)}, want: 63, wantOK: true,
		},
		{name: "refinements used up", steps: []rateStep{stepAt(50, met), stepAt(100, missed), stepAt(75, met), stepAt(88, met)}},
		{name: "the first step missed", steps: []rateStep{stepAt(25, missed)}},
		{name: "the gap closed", steps: []rateStep{stepAt(50, met), stepAt(51, missed)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := rs.next(tc.steps, limit)
			if got != tc.want || ok != tc.wantOK {
				t.Errorf("next = %v, %v; want %v, %v", got, ok, tc.want, tc.wantOK)
			}
		})
	}
}

// The rate sustained is the highest met below the lowest missed: a step
// met above a miss (noise on a shared machine) does not raise it, and a
// step with requests lost, refused or not called back is a miss whatever
// its p99.
func TestSustainedIsTheHighestRateMetBelowTheLowestMissed(t *testing.T) {
	const limit = time.Second
	fast := 10 * time.Millisecond
	lost := stepAt(80, fast)
	lost.latencies = lost.latencies[:9]
	refused := stepAt(80, fast)
	refused.stored, refused.err = 9, "the shim answered 503"
	tests := []struct {
		name             string
		steps            []rateStep
		best, lowestMiss float64
	}{
		{name: "none", steps: nil},
		{name: "all met", steps: []rateStep{stepAt(25, fast), stepAt(50, fast)}, best: 50},
		{name: "a p99 past the limit", steps: []rateStep{stepAt(25, fast), stepAt(50, 2*time.Second)}, best: 25, lowestMiss: 50},
		{name: "met above a miss", steps: []rateStep{stepAt(40, fast), stepAt(60, 2*time.Second), stepAt(70, fast)}, best: 40, lowestMiss: 60},
		{name: "a callback missing", steps: []rateStep{stepAt(40, fast), lost}, best: 40, lowestMiss: 80},
		{name: "a submit refused", steps: []rateStep{stepAt(40, fast), refused}, best: 40, lowestMiss: 80},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			best, lowestMiss := sustained(tc.steps, limit)
			if best != tc.best || lowestMiss != tc.lowestMiss {
				t.Errorf("sustained = %v, %v; want %v, %v", best, lowestMiss, tc.best, tc.lowestMiss)
			}
		})
	}
}

// Writes to Jobs and pods are picked out of everyone's, whoever made them
// and whatever the subresource; the rest of everyone else's stay apart.
func TestJobAndPodWritesPicksThemOutOfEveryonesWrites(t *testing.T) {
	manager := map[string]int{"patch inferencerequests/status": 5, "patch jobs": 1, "create events": 3}
	others := map[string]int{
		"kube-controller-manager: update jobs/status":      2,
		"kube-scheduler: create pods/binding":              1,
		"localnode: patch pods/status refused 409":         1,
		"kube-controller-manager: create events":           4,
		"kube-controller-manager: update podtemplates/foo": 1,
	}
	jobPod, rest := jobAndPodWrites(manager, others)
	wantJobPod := map[string]int{
		"manager: patch jobs": 1, "kube-controller-manager: update jobs/status": 2,
		"kube-scheduler: create pods/binding": 1, "localnode: patch pods/status refused 409": 1,
	}
	if diff := cmp.Diff(wantJobPod, jobPod); diff != "" {
		t.Errorf("Job and pod writes (-want +got):\n%s", diff)
	}
	wantRest := map[string]int{"kube-controller-manager: create events": 4, "kube-controller-manager: update podtemplates/foo": 1}
	if diff := cmp.Diff(wantRest, rest); diff != "" {
		t.Errorf("the rest of everyone else's writes (-want +got):\n%s", diff)
	}
}

// Each target of the section is one row whose verdict follows the figure
// measured against it.
func TestPoolReportHoldsEachFigureToItsTarget(t *testing.T) {
	o := &options{clients: 16, poolStepDuration: 10 * time.Second}
	base := func() *poolFigures {
		return &poolFigures{
			rawCreates: 1000, jobRequests: 100, poolRequests: 900, latencyRequests: 100,
			rawRate: 900, jobRate: 10, poolRate: 200,
			rawCPU:      cpuUse{byProgram: map[string]time.Duration{"kube-apiserver": time.Second}},
			jobCPU:      cpuUse{byProgram: map[string]time.Duration{"manager": time.Second}},
			poolCPU:     cpuUse{byProgram: map[string]time.Duration{"manager": 1800 * time.Millisecond}, busy: 0.5},
			operator:    map[string]int{"patch inferencerequests/status": 2000},
			events:      map[string]int{},
			jobPod:      map[string]int{},
			others:      map[string]int{},
			shimCreates: 1000, latencyRate: 25, latencyDuration: 4 * time.Second,
			latency: slicesOf(20*time.Millisecond, 100),
			steps:   []rateStep{stepAt(25, 20*time.Millisecond), stepAt(50, 2*time.Second)},
		}
	}
	verdicts := func(f *poolFigures) map[string]string {
		r := &report{}
		f.report(r, o)
		out := map[string]string{}
		for _, x := range r.rows {
			if x.verdict != "" {
				out[x.target] = x.verdict
			}
		}
		return out
	}
	allMet := map[string]string{"≥ 5": "met", "≥ 0.5": "met", "≤ 3": "met", "0": "met", "≤ 50 ms": "met", "≤ 250 ms": "met", "≤ 3 ms": "met"}
	tests := []struct {
		name   string
		change func(*poolFigures)
		want   map[string]string
	}{
		{name: "every target met", change: func(*poolFigures) {}, want: allMet},
		{name: "pool under 5× one Job each", change: func(f *poolFigures) { f.jobRate = 50 }, want: missing(allMet, "≥ 5")},
		{
			// 900/s ÷ 4 writes = 225/s, and 100/s is under half of it;
			// and 4 writes a request are over 3.
			name: "under half the ceiling, with 4 writes a request",
			change: func(f *poolFigures) {
				f.operator["patch inferencerequests/status"] = 3000
				f.poolRate = 100
			},
			want: missing(allMet, "≥ 0.5", "≤ 3"),
		},
		{name: "a pod written", change: func(f *poolFigures) { f.jobPod["localnode: patch pods/status"] = 1 }, want: missing(allMet, "0")},
		{
			name:   "slow latency",
			change: func(f *poolFigures) { f.latency = slicesOf(300*time.Millisecond, 100) },
			want:   missing(allMet, "≤ 50 ms", "≤ 250 ms"),
		},
		{
			name:   "manager CPU over 3 ms",
			change: func(f *poolFigures) { f.poolCPU.byProgram["manager"] = 3600 * time.Millisecond },
			want:   missing(allMet, "≤ 3 ms"),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := base()
			tc.change(f)
			if diff := cmp.Diff(tc.want, verdicts(f)); diff != "" {
				t.Errorf("verdicts by target (-want +got):\n%s", diff)
			}
		})
	}
}

// The sustained rate's row names the rate met, the one missed, and each
// step's figures.
func TestPoolReportTellsTheRateSustained(t *testing.T) {
	f := &poolFigures{steps: []rateStep{stepAt(25, 20*time.Millisecond), stepAt(50, 2*time.Second)}}
	got := f.sustainedText(&options{poolStepDuration: 10 * time.Second})
	for _, want := range []string{"25/s (50/s missed)", "25/s p50 / p99 20ms / 20ms", "50/s p50 / p99 2s / 2s"} {
		if !strings.Contains(got, want) {
			t.Errorf("%q does not say %q", got, want)
		}
	}
}

// missing is verdicts with the targets named missed.
func missing(verdicts map[string]string, targets ...string) map[string]string {
	out := maps.Clone(verdicts)
	for _, target := range targets {
		out[target] = "missed"
	}
	return out
}

// The text on what bounds a miss is there only when a target was missed,
// and it follows the measurements: full cores point at the CPU each request
// costs, cores with room at the path a request takes; each target missed
// adds what bears on it.
func TestPoolBoundsFollowTheMeasurements(t *testing.T) {
	figures := func(busy float64, managerCPU time.Duration) *poolFigures {
		return &poolFigures{
			rawCreates: 1000, jobRequests: 100, poolRequests: 1000, latencyRequests: 100,
			rawRate: 900, jobRate: 10, poolRate: 200,
			rawCPU: cpuUse{byProgram: map[string]time.Duration{"kube-apiserver": 500 * time.Millisecond}, busy: busy},
			jobCPU: cpuUse{byProgram: map[string]time.Duration{"kube-apiserver": 3 * time.Second, "manager": time.Second}, busy: busy},
			poolCPU: cpuUse{byProgram: map[string]time.Duration{"kube-apiserver": 10 * time.Second, "manager": managerCPU},
				busy: busy},
			latencyCPU: cpuUse{byProgram: map[string]time.Duration{"manager": 200 * time.Millisecond}},
			idleCPU:    cpuUse{wall: 10 * time.Second, byProgram: map[string]time.Duration{"manager": 500 * time.Millisecond}},
			operator:   map[string]int{"patch inferencerequests/status": 2200}, shimCreates: 1100,
			events: map[string]int{"create events": 2200}, latencyRate: 25,
			latency: slicesOf(20*time.Millisecond, 100),
		}
	}
	if got := figures(1, time.Second).bounds(); got != "" {
		t.Errorf("every target met, yet the bounds say %q", got)
	}
	full := figures(1, 4*time.Second).bounds()
	for _, want := range []string{"100% busy", "14.0 ms (the API server 10.0, the manager 4.0, etcd 0.0)",
		"the manager used 4.00 ms per pooled request", "2.00 ms at 25/s", "no requests it used 50.0 ms a second"} {
		if !strings.Contains(full, want) {
			t.Errorf("with full cores, %q does not say %q", full, want)
		}
	}
	if strings.Contains(full, "raw creates") || strings.Contains(full, "one Job each") {
		t.Errorf("the targets on throughput were met, yet the bounds speak of them: %q", full)
	}
	slow := figures(1, time.Second)
	slow.poolRate, slow.jobRate = 40, 10
	for _, want := range []string{"with one Job each, a request cost 40.0 ms, 3.6 times as much",
		"10.0 ms per pooled request against 0.50 ms per raw create", "as much as 20 raw creates, not the 3.00 writes",
		"Events (2.00"} {
		if got := slow.bounds(); !strings.Contains(got, want) {
			t.Errorf("with throughput missed, %q does not say %q", got, want)
		}
	}
	if got := figures(0.5, 4*time.Second).bounds(); !strings.Contains(got, "50% busy") || !strings.Contains(got, "had room") {
		t.Errorf("with cores to spare, the bounds say %q", got)
	}
}

// How busy the cores were is told with the share of it that this run's
// programs account for; the rest is someone else's on a shared machine.
func TestBusyTellsThisRunsShare(t *testing.T) {
	cores := float64(runtime.NumCPU())
	u := cpuUse{wall: 10 * time.Second, busy: 0.8,
		byProgram: map[string]time.Duration{"kube-apiserver": time.Duration(2 * cores * float64(time.Second)), "manager": 0}}
	if got, want := busy(u), "80% busy (this run's programs 20%)"; got != want {
		t.Errorf("busy = %q, want %q", got, want)
	}
}
