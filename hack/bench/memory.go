package main

import (
	"cmp"
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
	"github.com/kinfer/kinfer/pkg/worker"
)

// heldNamespace holds the memory run's requests.
const heldNamespace = "bench-held"

// benchMemory starts the manager over 0, 10 000 and 50 000 finished requests
// (each with its Job and pod, as they stay until their TTL) and reads its
// heap after a forced GC and the CPU it spent loading them.
func benchMemory(ctx context.Context, o *options, r *report) error {
	say("starting an API server for the memory runs")
	cl, err := startCluster(ctx, o, "memory", true, "")
	if err != nil {
		return err
	}
	defer cl.stop()
	ns := heldNamespace
	if err := cl.namespace(ctx, ns); err != nil {
		return err
	}
	if err := cl.model(ctx, ns); err != nil {
		return err
	}

	held := 0
	var base, baseLive float64
	var copier *etcdCopier
	for _, want := range o.held {
		if want > held {
			say("memory: holding finished requests %d to %d", held, want)
			if copier == nil {
				if copier, err = newHeldCopier(ctx, cl, ns); err != nil {
					return err
				}
				held = 1
			}
			if err := copier.copies(ctx, held, want); err != nil {
				return err
			}
			held = want
			if err := waitServed(ctx, cl, ns, held, "InferenceRequestList", "JobList", "PodList"); err != nil {
				return err
			}
			say("memory: %d finished requests held; starting the manager over them", held)
		}
		runs, err := managerRuns(ctx, cl, held, o)
		if err != nil {
			return err
		}
		m := runs[len(runs)/2]
		r.charts.heap = append(r.charts.heap, heapPoint{held: held, inUse: m.inUse, lo: runs[0].inUse, hi: runs[len(runs)-1].inUse})
		r.add("6. memory and CPU", fmt.Sprintf("manager heap in use after GC, %d finished requests held", held),
			fmt.Sprintf("%.1f MiB%s, of which live objects %.1f MiB (CPU to load them: %.1f s)",
				m.inUse, runs.spread(func(s heapRun) float64 { return s.inUse }), m.live, m.cpu.Seconds()))
		if held == 0 {
			base, baseLive = m.inUse, m.live
		} else if base > 0 {
			per10k := func(s heapRun) float64 { return (s.inUse - base) / float64(held) * 10000 }
			r.check("6. memory and CPU", fmt.Sprintf("heap per 10 000 held requests (from %d)", held),
				fmt.Sprintf("%.1f MiB%s; live objects %.1f MiB", per10k(m), runs.spread(per10k), (m.live-baseLive)/float64(held)*10000),
				"≤ 60 MiB", per10k(m) <= 60)
		}
	}
	return nil
}

// heapRun is one manager start: heap in use and live objects after GC, in
// MiB, and the CPU it spent until then.
type heapRun struct {
	inUse, live float64
	cpu         time.Duration
}

// heapRuns are the starts over one held size, sorted by heap in use.
type heapRuns []heapRun

// spread is " (runs a–b)" over the runs' values of f, or nothing for one run.
func (runs heapRuns) spread(f func(heapRun) float64) string {
	if len(runs) < 2 {
		return ""
	}
	lo, hi := f(runs[0]), f(runs[0])
	for _, r := range runs[1:] {
		lo, hi = min(lo, f(r)), max(hi, f(r))
	}
	return fmt.Sprintf(" (%d runs: %.1f–%.1f)", len(runs), lo, hi)
}

// managerRuns starts the manager o.memoryRuns times over held requests. The
// heap a manager keeps varies by a few MiB between starts over the same
// objects (how the decoded lists and the kept objects share memory spans
// depends on when the garbage collector runs), so one start is not a figure.
func managerRuns(ctx context.Context, cl *cluster, held int, o *options) (heapRuns, error) {
	var runs heapRuns
	for i := range o.memoryRuns {
		profile := ""
		if o.profiles != "" {
			profile = filepath.Join(o.profiles, fmt.Sprintf("heap-%d-%d.pb.gz", held, i+1))
		}
		heap, cpu, err := managerOver(ctx, cl, held, fmt.Sprintf("probe-%06d-%d", held, i+1), profile)
		if err != nil {
			return nil, err
		}
		runs = append(runs, heapRun{inUse: float64(heap.inUse) / (1 << 20), live: float64(heap.live) / (1 << 20), cpu: cpu})
	}
	slices.SortFunc(runs, func(a, b heapRun) int { return cmp.Compare(a.inUse, b.inUse) })
	return runs, nil
}

// managerOver starts the manager, waits until it has reconciled every held
// request and its queue is empty, and returns its heap and CPU time.
func managerOver(ctx context.Context, cl *cluster, held int, probe, profile string) (heapStats, time.Duration, error) {
	if err := cl.startManager(); err != nil {
		return heapStats{}, 0, err
	}
	defer cl.stopManager()
	settled := func() bool {
		done, err1 := cl.managerMetric("controller_runtime_reconcile_total", `controller="inferencerequest"`)
		depth, err2 := cl.managerMetric("workqueue_depth", `name="inferencerequest"`)
		return err1 == nil && err2 == nil && done >= float64(held) && depth == 0
	}
	if err := waitFor(ctx, "the manager to reconcile every held request", 10*time.Minute, settled); err != nil {
		return heapStats{}, 0, err
	}
	// A manager that has run a request since it started has its pod
	// informer running too, holding every kinfer pod: run one.
	if err := probeRequest(ctx, cl, probe); err != nil {
		return heapStats{}, 0, err
	}
	if err := waitFor(ctx, "the manager's queue to empty", time.Minute, settled); err != nil {
		return heapStats{}, 0, err
	}
	time.Sleep(2 * time.Second)
	cpu, err := cl.managerCPU()
	if err != nil {
		return heapStats{}, 0, err
	}
	heap, err := cl.managerHeap()
	if err == nil && profile != "" {
		err = cl.saveHeapProfile(profile)
	}
	return heap, cpu, err
}

// probeRequest runs one request through the manager, without a callback,
// completing its Job as the Job controller would.
func probeRequest(ctx context.Context, cl *cluster, name string) error {
	ir := testutil.MakeInferenceRequest(name, heldNamespace).Obj()
	if err := cl.c.Create(ctx, ir); err != nil {
		return err
	}
	job := &batchv1.Job{}
	if err := waitFor(ctx, "the probe request's Job", time.Minute, func() bool {
		return cl.c.Get(ctx, client.ObjectKeyFromObject(ir), job) == nil
	}); err != nil {
		return err
	}
	if err := testutil.CompleteJob(ctx, cl.c, job, `"OK"`); err != nil {
		return err
	}
	return waitFor(ctx, "the probe request to succeed", time.Minute, func() bool {
		return cl.c.Get(ctx, client.ObjectKeyFromObject(ir), ir) == nil && ir.Status.Phase == inferencev1alpha1.PhaseSucceeded
	})
}

// heldRequest stores held request 0 as it stands after a successful
// delivery: the request with its status, its Job and its pod. It returns
// their UIDs.
func heldRequest(ctx context.Context, cl *cluster, ns string) ([]types.UID, error) {
	name := heldName(0)
	ir := testutil.MakeInferenceRequest(name, ns).Callback("http://127.0.0.1:1/fast").Obj()
	if err := cl.c.Create(ctx, ir); err != nil {
		return nil, err
	}
	now := metav1.Now()
	ir.Status = inferencev1alpha1.InferenceRequestStatus{
		Phase: inferencev1alpha1.PhaseSucceeded, ObservedGeneration: 1, JobName: name,
		StartTime: &now, CompletionTime: &now, Result: testutil.JSON("OK"),
		Delivery: inferencev1alpha1.DeliveryStatus{State: inferencev1alpha1.DeliveryDelivered, WebhookID: "msg_" + string(ir.UID),
			Attempts: 1, LastAttemptTime: &now, LastStatusCode: 200, DeliveredTime: &now},
		Conditions: []metav1.Condition{
			{Type: inferencev1alpha1.ConditionComplete, Status: metav1.ConditionTrue, Reason: inferencev1alpha1.ReasonSucceeded,
				Message: "job " + name + " succeeded", LastTransitionTime: now, ObservedGeneration: 1},
			{Type: inferencev1alpha1.ConditionDelivered, Status: metav1.ConditionTrue, Reason: inferencev1alpha1.ReasonDelivered,
				Message: "delivered on attempt 1", LastTransitionTime: now, ObservedGeneration: 1},
		},
	}
	if err := cl.c.Status().Update(ctx, ir); err != nil {
		return nil, err
	}
	labels := map[string]string{inferencev1alpha1.LabelRequest: name}
	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels, OwnerReferences: []metav1.OwnerReference{{
			APIVersion: inferencev1alpha1.GroupVersion.String(), Kind: "InferenceRequest", Name: name, UID: ir.UID,
			Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}}},
		Spec: batchv1.JobSpec{BackoffLimit: ptr.To[int32](2), Template: corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: labels},
			Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever, Containers: []corev1.Container{{
				Name: containerName, Image: sleepImage, Args: []string{noDelay},
				Env: []corev1.EnvVar{{Name: worker.EnvRequestID, Value: name}, {Name: worker.EnvModel, Value: "default"}},
			}}},
		}},
	}
	if err := cl.c.Create(ctx, job); err != nil {
		return nil, err
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name + "-x", Namespace: ns, Labels: labels, OwnerReferences: []metav1.OwnerReference{{
			APIVersion: "batch/v1", Kind: "Job", Name: name, UID: job.UID, Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}}},
		Spec: job.Spec.Template.Spec,
	}
	if err := cl.c.Create(ctx, pod); err != nil {
		return nil, err
	}
	return []types.UID{ir.UID, job.UID, pod.UID}, nil
}

// waitServed waits until the API server serves at least n objects of each
// list kind in ns: a list without a resourceVersion is consistent with etcd.
func waitServed(ctx context.Context, cl *cluster, ns string, n int, listKinds ...string) error {
	count := func(kind string) (int, error) {
		list := &metav1.PartialObjectMetadataList{}
		list.SetGroupVersionKind(schemaFor(kind))
		if err := cl.c.List(ctx, list, client.InNamespace(ns), client.Limit(1)); err != nil {
			return 0, err
		}
		return len(list.Items) + int(ptr.Deref(list.RemainingItemCount, 0)), nil
	}
	var lastErr error
	err := waitFor(ctx, fmt.Sprintf("the API server to serve %d of each of %v", n, listKinds), 5*time.Minute, func() bool {
		for _, kind := range listKinds {
			got, err := count(kind)
			if lastErr = err; err != nil || got < n {
				return false
			}
		}
		return true
	})
	if err != nil && lastErr != nil {
		return fmt.Errorf("%w (last: %v)", err, lastErr)
	}
	return err
}

func schemaFor(listKind string) schema.GroupVersionKind {
	switch listKind {
	case "JobList":
		return batchv1.SchemeGroupVersion.WithKind(listKind)
	case "PodList":
		return corev1.SchemeGroupVersion.WithKind(listKind)
	}
	return inferencev1alpha1.GroupVersion.WithKind(listKind)
}
