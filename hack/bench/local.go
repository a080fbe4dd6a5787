package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kinfer/kinfer/internal/shim"
)

// auditPolicy records every write's metadata, so writes can be told apart by
// who made them.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  verbs: ["create", "update", "patch", "delete", "deletecollection"]
- level: None
`

// writesPerRequest is the operator's and the shim's writes per request
// measured on the local cluster, used by later sections.
var writesPerRequest float64

// benchLocalCluster runs requests on the local cluster (real Job controller,
// scheduler and local node; the worker answers at once) next to bare Jobs
// with the same pod template, and counts the API writes behind each request.
func benchLocalCluster(ctx context.Context, o *options, r *report) error {
	n := o.localRequests
	policy, err := writeAuditPolicy(o)
	if err != nil {
		return err
	}
	say("starting the local cluster")
	cl, err := startCluster(ctx, o, "local", false, policy)
	if err != nil {
		return err
	}
	defer cl.stop()
	if err := cl.startManager(); err != nil {
		return err
	}

	var jobRate, reqRate float64
	var jobs, requests *timeline
	jobsCPU, err := measureCPU(func() (err error) { jobRate, jobs, err = bareJobRate(ctx, o, cl); return err })
	if err != nil {
		return err
	}
	requestsCPU, err := measureCPU(func() (err error) { reqRate, requests, err = requestRate(ctx, o, cl); return err })
	if err != nil {
		return err
	}
	time.Sleep(3 * time.Second) // the last status writes and Events land before writes are counted
	ratio := reqRate / jobRate
	r.charts.throughput = append(r.charts.throughput, bar{"2: bare Jobs", jobRate}, bar{"2: one Job each", reqRate})
	r.check("2. throughput vs bare Jobs", "requests/s (submit → callback) ÷ Jobs/s (create → complete), local cluster",
		fmt.Sprintf("%.2f (%.1f/s ÷ %.1f/s)", ratio, reqRate, jobRate), "≥ 0.9", ratio >= 0.9)
	r.add("2. throughput vs bare Jobs", "CPU per bare Job → per request, by program (harness: clients and receiver)",
		compareCPU(jobsCPU, requestsCPU, n))
	r.add("2. throughput vs bare Jobs", "where the time went, p50 / p99",
		fmt.Sprintf("bare Job: created → seen %s, seen → complete %s; request: submit → stored %s, stored → Job seen %s, "+
			"Job seen → complete %s, complete → callback %s",
			pp(jobs.between("submit", "jobSeen", nil)), pp(jobs.between("jobSeen", "jobDone", nil)),
			pp(requests.between("submit", "stored", nil)), pp(requests.between("stored", "jobSeen", nil)),
			pp(requests.between("jobSeen", "jobDone", nil)), pp(requests.between("jobDone", "callback", nil))))

	ops, others, err := countWrites(cl.stack.AuditLog(), "bench-operator")
	if err != nil {
		return err
	}
	_, bareOthers, err := countWrites(cl.stack.AuditLog(), "bench-jobs")
	if err != nil {
		return err
	}
	perRequest := func(m map[string]int) float64 {
		total := 0
		for _, v := range m {
			total += v
		}
		return float64(total) / float64(n)
	}
	operator, events, models, shimWrites := splitManagerWrites(ops)
	writesPerRequest = perRequest(operator) + float64(shimWrites)/float64(n)
	r.check("1. writes per request", "operator + shim (happy path, Events aside)",
		fmt.Sprintf("%.2f = operator %.2f (%s) + shim %.2f", writesPerRequest, perRequest(operator), breakdown(operator, n),
			float64(shimWrites)/float64(n)), "≤ 4", writesPerRequest <= 4.0001)
	r.add("1. writes per request", "operator's Events", fmt.Sprintf("%.2f (%s)", perRequest(events), breakdown(events, n)))
	r.add("1. writes per request", "the model's status, for kubectl get im (per model, at most one every few seconds)",
		fmt.Sprintf("%d writes over the %d requests", total(models), n))
	r.add("1. writes per request", "everyone else (per request)", fmt.Sprintf("%.2f (%s)", perRequest(others), breakdown(others, n)))
	r.add("1. writes per request", "everyone else (per bare Job)", fmt.Sprintf("%.2f (%s)", perRequest(bareOthers), breakdown(bareOthers, n)))
	return nil
}

// writeAuditPolicy writes the audit policy into the bench's folder and
// returns its path.
func writeAuditPolicy(o *options) (string, error) {
	policy := filepath.Join(o.bin, "bench", "audit-policy.yaml")
	if err := os.MkdirAll(filepath.Dir(policy), 0o755); err != nil {
		return "", err
	}
	return policy, os.WriteFile(policy, []byte(auditPolicy), 0o644)
}

// splitManagerWrites sorts the manager's writes into the operator's per
// request (Events aside), its Events, its writes of models' status (a
// model's, at most one every few seconds while its queue moves, not one per
// request), and the shim's creates of requests.
func splitManagerWrites(manager map[string]int) (operator, events, models map[string]int, shimCreates int) {
	operator, events, models = map[string]int{}, map[string]int{}, map[string]int{}
	for call, count := range manager {
		switch {
		case call == "create inferencerequests":
			shimCreates += count
		case strings.HasSuffix(call, " events"):
			events[call] += count
		case strings.HasSuffix(call, " inferencemodels/status"):
			models[call] += count
		default:
			operator[call] += count
		}
	}
	return operator, events, models, shimCreates
}

func finished(job *batchv1.Job) bool {
	for _, c := range job.Status.Conditions {
		if (c.Type == batchv1.JobComplete || c.Type == batchv1.JobFailed) && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

func bareJob(namespace, name string) *batchv1.Job {
	return &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: batchv1.JobSpec{
			BackoffLimit: ptr.To[int32](0),
			Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
				RestartPolicy: corev1.RestartPolicyNever,
				Containers:    []corev1.Container{{Name: containerName, Image: sleepImage, Args: []string{noDelay}}},
			}},
		},
	}
}

type auditEvent struct {
	Stage     string `json:"stage"`
	Verb      string `json:"verb"`
	UserAgent string `json:"userAgent"`
	User      struct {
		Username string `json:"username"`
	} `json:"user"`
	ImpersonatedUser *struct {
		Username string `json:"username"`
	} `json:"impersonatedUser"`
	ObjectRef *struct {
		Resource    string `json:"resource"`
		Subresource string `json:"subresource"`
		Namespace   string `json:"namespace"`
	} `json:"objectRef"`
	ResponseStatus *struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
}

// countWrites reads the audit log and counts the writes in namespace, as
// "verb resource[/subresource]" ("… refused CODE" when the API server refused
// it): the manager's, and everyone else's with the program that made them.
func countWrites(path, namespace string) (manager, others map[string]int, err error) {
	return countWritesIn(path, namespace, 0, -1)
}

// countWritesIn is countWrites over the part of the audit log from byte
// offset from to byte offset to (to the end when to is negative): the
// writes between two moments the log's size was taken.
func countWritesIn(path, namespace string, from, to int64) (manager, others map[string]int, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer func() { _ = f.Close() }()
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return nil, nil, err
	}
	var in io.Reader = f
	if to >= 0 {
		in = io.LimitReader(f, to-from)
	}
	manager, others = map[string]int{}, map[string]int{}
	scanner := bufio.NewScanner(in)
	scanner.Buffer(make([]byte, 1<<20), 1<<20)
	for scanner.Scan() {
		var e auditEvent
		if json.Unmarshal(scanner.Bytes(), &e) != nil || e.Stage != "ResponseComplete" || e.ObjectRef == nil ||
			e.ObjectRef.Namespace != namespace {
			continue
		}
		call := e.Verb + " " + e.ObjectRef.Resource
		if e.ObjectRef.Subresource != "" {
			call += "/" + e.ObjectRef.Subresource
		}
		if e.ResponseStatus != nil && e.ResponseStatus.Code >= 300 {
			// Refused writes still cost the API server; they are counted
			// apart so that they show.
			call += fmt.Sprintf(" refused %d", e.ResponseStatus.Code)
		}
		if e.ImpersonatedUser != nil && e.ImpersonatedUser.Username == managerUser {
			manager[call]++
			continue
		}
		program, _, _ := strings.Cut(e.UserAgent, "/")
		if program == "bench" {
			continue // the namespace and the model, made once
		}
		others[program+": "+call]++
	}
	return manager, others, scanner.Err()
}

func breakdown(m map[string]int, n int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %.2f", k, float64(m[k])/float64(n)))
	}
	return strings.Join(parts, ", ")
}

// timeJobs marks on tl when each Job in namespace is first seen and when it
// is seen finished, until stop is called.
func timeJobs(ctx context.Context, cl *cluster, namespace string, tl *timeline) (stop func(), err error) {
	return onJobs(ctx, cl, namespace, func(job *batchv1.Job) {
		tl.mark(job.Name, "jobSeen", time.Now())
		if finished(job) {
			tl.mark(job.Name, "jobDone", time.Now())
		}
	})
}

// bareJobRate creates bare Jobs with the model's pod template, in parallel
// by as many clients, and returns how many completed per second.
func bareJobRate(ctx context.Context, o *options, cl *cluster) (float64, *timeline, error) {
	n := o.localRequests
	// Bare Jobs first: the same pod template as the model's, created in
	// parallel by the same number of clients, counted when complete.
	say("local cluster: %d bare Jobs", n)
	if err := cl.namespace(ctx, "bench-jobs"); err != nil {
		return 0, nil, err
	}
	jobsDone := newTimeline()
	stop, err := timeJobs(ctx, cl, "bench-jobs", jobsDone)
	if err != nil {
		return 0, nil, err
	}
	defer stop()
	start := time.Now()
	err = parallel(n, o.clients, func(i int) error {
		name := fmt.Sprintf("job-%05d", i)
		jobsDone.mark(name, "submit", time.Now())
		return cl.c.Create(ctx, bareJob("bench-jobs", name))
	})
	if err != nil {
		return 0, nil, err
	}
	if err := waitFor(ctx, "bare Jobs to complete", 10*time.Minute, func() bool { return jobsDone.count("jobDone") == n }); err != nil {
		return 0, nil, fmt.Errorf("%w (%d of %d seen complete)", err, jobsDone.count("jobDone"), n)
	}
	return float64(n) / jobsDone.last("jobDone").Sub(start).Seconds(), jobsDone, nil

}

// requestRate submits requests through the shim and returns how many were
// called back per second.
func requestRate(ctx context.Context, o *options, cl *cluster) (float64, *timeline, error) {
	n := o.localRequests
	say("local cluster: %d requests through the shim", n)
	if err := cl.namespace(ctx, "bench-operator"); err != nil {
		return 0, nil, err
	}
	if err := cl.model(ctx, "bench-operator"); err != nil {
		return 0, nil, err
	}
	tl := newTimeline()
	rcv, err := newReceiver(tl, shim.ObjectName, 0)
	if err != nil {
		return 0, nil, err
	}
	defer rcv.close()
	stop, err := timeJobs(ctx, cl, "bench-operator", tl)
	if err != nil {
		return 0, nil, err
	}
	defer stop()
	rate, err := submitAll(ctx, cl, "bench-operator", "local", n, o.clients, rcv, tl)
	return rate, tl, err

}
