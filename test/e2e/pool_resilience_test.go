package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
)

const sentimentImage = "ghcr.io/kinfer/worker-sentiment:v0.1.0"

// loadedModel starts the line the sentiment worker writes each time it
// loads its model.
const loadedModel = "loaded model "

var _ = Describe("A pool under failures and changes", func() {
	It("serves 200 sentiment requests with their labels, loading the model once per pod", func() {
		const requests = 200
		ns := newNamespace()
		Expect(k8sClient.Create(ctx, testutil.MakeInferenceModel("sentiment", ns, sentimentImage).Workers(2).Obj())).To(Succeed())
		receiver := testutil.NewReceiver()
		defer receiver.Close()

		texts := map[string]string{"positive": "a great movie, I loved it", "negative": "a boring, predictable mess"}
		label := func(i int) string { return []string{"positive", "negative"}[i%2] }
		ids := make([]string, requests)
		for i := range requests {
			ids[i] = fmt.Sprintf("s%03d", i)
			code, answer := submit(ns, map[string]any{"id": ids[i], "callback_url": receiver.URL, "model": "sentiment",
				"input": map[string]any{"text": texts[label(i)]}})
			Expect(code).To(Equal(http.StatusAccepted), "%v", answer)
		}
		Eventually(func() []string { return missing(receiver, ids) }, "180s", "500ms").Should(BeEmpty())
		got := callbacks(receiver)
		Expect(got).To(HaveLen(requests))
		for i, id := range ids {
			Expect(got[id]).To(HaveLen(1), "callbacks for %s", id)
			Expect(got[id][0]).To(HaveKeyWithValue("status", "succeeded"), id)
			Expect(got[id][0]).To(HaveKeyWithValue("result", HaveKeyWithValue("label", label(i))), id)
		}

		By("reading each pod's log on the local node")
		workers := map[string]bool{}
		for _, id := range ids {
			workers[request(ns, id)(Default).Status.Worker] = true
		}
		Expect(workers).NotTo(HaveKey(""), "every request names the pod that ran it")
		Eventually(func(g Gomega) {
			loads := modelLoads(g, ns)
			for pod := range workers {
				g.Expect(loads).To(HaveKey(pod), "pod %s ran requests but has no log", pod)
			}
			for pod, n := range loads {
				g.Expect(n).To(Equal(1), "pod %s loaded its model %d times", pod, n)
			}
			g.Expect(len(loads)).To(BeNumerically("<", requests/10), "pods that loaded the model: not a pool")
		}, "30s", "500ms").Should(Succeed())
		GinkgoWriter.Printf("%d requests served by %d pods, each loading its model once\n", requests, len(workers))
	})

	It("hands the work of a SIGKILLed pod out again after its lease runs out, and delivers every request", func() {
		const requests = 10
		ns := newNamespace()
		model := podAnswerPool(ns, "5s", "").MaxRetries(3).Obj()
		model.Spec.Workers.LeaseSeconds = 4
		Expect(k8sClient.Create(ctx, model)).To(Succeed())
		receiver := testutil.NewReceiver()
		defer receiver.Close()
		ids := submitAll(ns, "k", requests, receiver.URL)

		By("killing the process of a pod that holds a lease")
		var held *inferencev1alpha1.InferenceRequest
		Eventually(func(g Gomega) {
			held = runningOn(g, ns)
			g.Expect(held).NotTo(BeNil(), "no request is running on a pod yet")
		}, "60s", "100ms").Should(Succeed())
		victim := held.Status.Worker
		pid := containerPid(ns, victim)
		Expect(syscall.Kill(-pid, syscall.SIGKILL)).To(Succeed())
		GinkgoWriter.Printf("killed pod %s (pid %d) while it ran %s\n", victim, pid, held.Spec.ID)
		Eventually(func(g Gomega) corev1.PodPhase {
			pod := &corev1.Pod{}
			g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: victim}, pod)).To(Succeed())
			return pod.Status.Phase
		}, "30s", "200ms").Should(Equal(corev1.PodFailed), "the killed pod's process did not end")

		results := consistentCallbacks(ns, receiver, ids, "120s")
		Expect(results[held.Spec.ID]).NotTo(Equal(victim), "the request the killed pod held was never handed out again")
		again := request(ns, held.Spec.ID)(Default)
		Expect(again.Status.Worker).NotTo(BeElementOf("", victim), "another pod ran the request the killed pod held")
		for id, result := range results {
			Expect(result).To(HavePrefix("default-pool-"), "request %s: the answer names the pod that ran it", id)
		}
	})

	It("delivers all 50 pooled requests in flight when the manager is SIGKILLed and restarted", func() {
		const requests = 50
		ns := newNamespace()
		Expect(k8sClient.Create(ctx, podAnswerPool(ns, "2s", "").Obj())).To(Succeed())
		receiver := testutil.NewReceiver()
		defer receiver.Close()
		ids := submitAll(ns, "m", requests, receiver.URL)

		By("killing the manager with SIGKILL while pool pods hold leases")
		Eventually(func(g Gomega) {
			g.Expect(runningOn(g, ns)).NotTo(BeNil(), "no request is running on a pod yet")
		}, "60s", "100ms").Should(Succeed())
		manager.Kill()
		inFlight := len(missing(receiver, ids))
		Expect(inFlight).To(BeNumerically(">", 0), "every request was delivered before the kill: nothing was in flight")
		GinkgoWriter.Printf("manager killed with %d of %d requests not yet delivered\n", inFlight, requests)

		By("restarting it")
		startSuiteManager()
		results := consistentCallbacks(ns, receiver, ids, "180s")
		for id, result := range results {
			Expect(result).To(HavePrefix("default-pool-"), "request %s: the answer names the pod that ran it", id)
		}
	})

	It("loses no request when its model is edited mid-stream, and rolls the pool to a Job of the new spec", func() {
		const requests, editAfter = 60, 20
		ns := newNamespace()
		model := podAnswerPool(ns, "300ms", "v1-").Obj()
		Expect(k8sClient.Create(ctx, model)).To(Succeed())
		before := model.Generation
		receiver := testutil.NewReceiver()
		defer receiver.Close()

		ids := make([]string, requests)
		stream := func(from, to int) {
			GinkgoHelper()
			for i := from; i < to; i++ {
				ids[i] = fmt.Sprintf("e%02d", i)
				code, answer := submit(ns, map[string]any{"id": ids[i], "callback_url": receiver.URL})
				Expect(code).To(Equal(http.StatusAccepted), "%v", answer)
				time.Sleep(100 * time.Millisecond) // a steady stream, not a burst
			}
		}
		stream(0, editAfter)

		By("editing the template's args once the pool delivers, with requests waiting and more to come")
		Eventually(func() int { return len(callbacks(receiver)) }, "60s", "100ms").Should(BeNumerically(">=", 1))
		patch := client.MergeFrom(model.DeepCopy())
		model.Spec.Template.Spec.Containers[0].Args = podAnswerArgs("300ms", "v2-")
		Expect(k8sClient.Patch(ctx, model, patch)).To(Succeed())
		Expect(model.Generation).To(BeNumerically(">", before))
		inFlight := len(missing(receiver, ids[:editAfter]))
		Expect(inFlight).To(BeNumerically(">", 0), "every request was delivered before the edit: it was not mid-stream")
		GinkgoWriter.Printf("model edited with %d of %d requests not yet delivered\n", inFlight, editAfter)
		stream(editAfter, requests)

		results := consistentCallbacks(ns, receiver, ids, "120s")
		oldPods, newPods := fmt.Sprintf("default-pool-%d-", before), fmt.Sprintf("default-pool-%d-", model.Generation)
		answered := map[string]int{}
		for id, result := range results {
			switch {
			case strings.HasPrefix(result, "v1-"+oldPods):
				answered["v1"]++
			case strings.HasPrefix(result, "v2-"+newPods):
				answered["v2"]++
			default:
				Fail(fmt.Sprintf("request %s was answered %q: neither the old template on the old Job's pods nor the new one on the new Job's", id, result))
			}
		}
		Expect(answered).To(HaveKeyWithValue("v1", BeNumerically(">=", 1)), "the first requests ran on the old template")
		Expect(answered).To(HaveKeyWithValue("v2", BeNumerically(">=", 1)), "no request ran on the new template")

		By("checking the old generation's Jobs are scaled to zero or gone")
		Eventually(func(g Gomega) {
			var jobs batchv1.JobList
			g.Expect(k8sClient.List(ctx, &jobs, client.InNamespace(ns), client.MatchingLabels{inferencev1alpha1.LabelPool: "default"})).To(Succeed())
			generations := map[string]int32{}
			for _, job := range jobs.Items {
				generations[job.Labels[inferencev1alpha1.LabelPoolGeneration]] += ptr.Deref(job.Spec.Parallelism, 1)
			}
			g.Expect(generations).To(HaveKey(fmt.Sprint(model.Generation)), "no Job of the new generation")
			for generation, pods := range generations {
				if generation != fmt.Sprint(model.Generation) {
					g.Expect(pods).To(BeZero(), "a Job of generation %s still asks for pods", generation)
				}
			}
		}, "60s", "500ms").Should(Succeed())
	})
})

// podAnswerPool is a namespace's default model as a pool of at most two pods
// of the sleep worker, which waits delay and answers prefix followed by the
// name of its pod: two runs of one request on two pods answer differently.
func podAnswerPool(namespace, delay, prefix string) *testutil.InferenceModelWrapper {
	return sleepModel(namespace, podAnswerArgs(delay, prefix)...).Workers(2)
}

func podAnswerArgs(delay, prefix string) []string {
	return []string{"--delay=" + delay, "--answer=" + prefix + "$(KINFER_POD_NAME)"}
}

// submitAll submits requests to namespace's default model, ids prefix00 on,
// several at a time, and returns the ids.
func submitAll(namespace, prefix string, requests int, callbackURL string) []string {
	GinkgoHelper()
	ids := make([]string, requests)
	var wg sync.WaitGroup
	for i := range requests {
		ids[i] = fmt.Sprintf("%s%02d", prefix, i)
		wg.Go(func() {
			defer GinkgoRecover()
			code, answer := submit(namespace, map[string]any{"id": ids[i], "callback_url": callbackURL})
			Expect(code).To(Equal(http.StatusAccepted), "%v", answer)
		})
	}
	wg.Wait()
	return ids
}

// missing lists the ids the receiver has no callback for.
func missing(r *testutil.Receiver, ids []string) []string {
	got := callbacks(r)
	var out []string
	for _, id := range ids {
		if len(got[id]) == 0 {
			out = append(out, id)
		}
	}
	return out
}

// consistentCallbacks waits until every id has a callback, then checks each
// request succeeded, that no request was delivered with two different bodies
// (a second delivery may only repeat the first), that the result delivered
// is the one the request stores, and that no callback came for another id.
// It returns each request's result, a string.
func consistentCallbacks(namespace string, r *testutil.Receiver, ids []string, within string) map[string]string {
	GinkgoHelper()
	Eventually(func() []string { return missing(r, ids) }, within, "500ms").Should(BeEmpty(), "requests without a callback")
	got := callbacks(r)
	Expect(got).To(HaveLen(len(ids)), "callbacks for requests never submitted")
	results := map[string]string{}
	for _, id := range ids {
		bodies := got[id]
		for _, body := range bodies[1:] {
			Expect(body).To(Equal(bodies[0]), "request %s was delivered twice with different bodies", id)
		}
		Expect(bodies[0]).To(HaveKeyWithValue("status", "succeeded"), id)
		result, ok := bodies[0]["result"].(string)
		Expect(ok).To(BeTrue(), "request %s: result %v is not a string", id, bodies[0]["result"])
		stored := request(namespace, id)(Default).Status.Result
		Expect(stored).NotTo(BeNil(), id)
		Expect(string(stored.Raw)).To(MatchJSON(mustJSON(result)), "request %s stores another result than it delivered", id)
		results[id] = result
	}
	return results
}

func mustJSON(v any) string {
	GinkgoHelper()
	raw, err := json.Marshal(v)
	Expect(err).NotTo(HaveOccurred())
	return string(raw)
}

// runningOn returns a request of namespace that a pool pod is running, or nil.
func runningOn(g Gomega, namespace string) *inferencev1alpha1.InferenceRequest {
	var list inferencev1alpha1.InferenceRequestList
	g.Expect(k8sClient.List(ctx, &list, client.InNamespace(namespace))).To(Succeed())
	for i := range list.Items {
		if ir := &list.Items[i]; ir.Status.Phase == inferencev1alpha1.PhaseRunning && ir.Status.Worker != "" {
			return ir
		}
	}
	return nil
}

// containerPid is the process of the pod's container on the local node,
// which names it in the container's ID while it runs.
func containerPid(namespace, name string) int {
	GinkgoHelper()
	pod := &corev1.Pod{}
	Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, pod)).To(Succeed())
	Expect(pod.Status.ContainerStatuses).To(HaveLen(1))
	var pid int
	_, err := fmt.Sscanf(pod.Status.ContainerStatuses[0].ContainerID, "local://%d", &pid)
	Expect(err).NotTo(HaveOccurred(), "container ID %q", pod.Status.ContainerStatuses[0].ContainerID)
	return pid
}

// modelLoads counts, for each pod of namespace that ran on the local node,
// the model loads its container logged. The node keeps each pod's output in
// STATE/pods/<namespace>_<pod>_<uid>/<container>.log, also after the pod is gone.
func modelLoads(g Gomega, namespace string) map[string]int {
	folders, err := filepath.Glob(filepath.Join(binDir, "state", "pods", namespace+"_*"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(folders).NotTo(BeEmpty(), "no pod of %s ran on the local node", namespace)
	loads := map[string]int{}
	for _, folder := range folders {
		pod := strings.Split(filepath.Base(folder), "_")[1]
		raw, err := os.ReadFile(filepath.Join(folder, "inference.log"))
		g.Expect(err).NotTo(HaveOccurred())
		n := 0
		for _, line := range strings.Split(string(raw), "\n") {
			if strings.HasPrefix(line, loadedModel) {
				n++
			}
		}
		loads[pod] = n
	}
	return loads
}
