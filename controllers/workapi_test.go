package controllers

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
	"github.com/kinfer/kinfer/internal/workapi"
)

// These specs play a pool's pods against the work API, as docs/workers.md
// tells pods to call it.
var _ = Describe("The work API", func() {
	var (
		ns     string
		server *httptest.Server
	)

	BeforeEach(func() {
		ns = newNamespace()
		server = httptest.NewServer(workAPI)
		DeferCleanup(server.Close)
	})

	pool := func(name string, mutate func(*inferencev1alpha1.WorkersSpec)) *inferencev1alpha1.InferenceModel {
		GinkgoHelper()
		w := testutil.MakeInferenceModel(name, ns, workerImage).Workers(2)
		if mutate != nil {
			mutate(w.Spec.Workers)
		}
		m := w.Obj()
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
		return m
	}
	// token waits for the model's work credential, which the manager makes
	// once it sees a request for the model.
	token := func(model string) string {
		GinkgoHelper()
		secret := &corev1.Secret{}
		Eventually(func() error {
			return k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: workapi.SecretName(model)}, secret)
		}).Should(Succeed())
		Expect(secret.OwnerReferences).To(ContainElement(HaveField("Name", model)), "the Secret goes with its model")
		return string(secret.Data[workapi.TokenKey])
	}
	type answer struct {
		code int
		body map[string]any
	}
	call := func(model, path, tok, pod string, body []byte) answer {
		GinkgoHelper()
		req, err := http.NewRequest(http.MethodPost,
			fmt.Sprintf("%s/v1/namespaces/%s/models/%s/%s", server.URL, ns, model, path), bytes.NewReader(body))
		Expect(err).NotTo(HaveOccurred())
		req.Header.Set("Content-Type", "application/json")
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		req.Header.Set("Kinfer-Pod", pod)
		resp, err := http.DefaultClient.Do(req)
		Expect(err).NotTo(HaveOccurred())
		defer func() { _ = resp.Body.Close() }()
		raw, err := io.ReadAll(resp.Body)
		Expect(err).NotTo(HaveOccurred())
		out := map[string]any{}
		Expect(json.Unmarshal(raw, &out)).To(Succeed(), string(raw))
		return answer{resp.StatusCode, out}
	}
	take := func(model, tok, pod string, n, wait int) []map[string]any {
		GinkgoHelper()
		a := call(model, "take", tok, pod, fmt.Appendf(nil, `{"max": %d, "wait_seconds": %d}`, n, wait))
		Expect(a.code).To(Equal(http.StatusOK), "%v", a.body)
		raw := a.body["items"].([]any)
		items := make([]map[string]any, 0, len(raw))
		for _, item := range raw {
			items = append(items, item.(map[string]any))
		}
		return items
	}
	names := func(items []map[string]any) []string {
		out := make([]string, 0, len(items))
		for _, item := range items {
			out = append(out, item["name"].(string))
		}
		return out
	}
	get := func(name string) func(Gomega) *inferencev1alpha1.InferenceRequest {
		return func(g Gomega) *inferencev1alpha1.InferenceRequest {
			ir := &inferencev1alpha1.InferenceRequest{}
			g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, ir)).To(Succeed())
			return ir
		}
	}
	submit := func(names ...string) {
		GinkgoHelper()
		for _, name := range names {
			Expect(k8sClient.Create(ctx, testutil.MakeInferenceRequest(name, ns).ID("id-"+name).
				Input(map[string]any{"text": name}).Obj())).To(Succeed())
		}
		for _, name := range names {
			Eventually(func(g Gomega) string {
				return string(get(name)(g).Status.Phase)
			}).Should(Equal(string(inferencev1alpha1.PhaseQueued)))
		}
	}

	It("hands out requests oldest first, batchSize at a time, and ends each with what its pod reports", func() {
		pool("default", func(w *inferencev1alpha1.WorkersSpec) { w.BatchSize = 2 })
		submit("a", "b", "c")
		tok := token("default")
		Expect(get("a")(Default).Status.Conditions).To(testutil.HaveCondition(inferencev1alpha1.ConditionComplete,
			inferencev1alpha1.ReasonWaitingForWorker))

		items := take("default", tok, "pod-1", 5, 1)
		Expect(names(items)).To(Equal([]string{"a", "b"}), "at most batchSize, oldest first")
		Expect(items[0]).To(SatisfyAll(HaveKeyWithValue("id", "id-a"), HaveKeyWithValue("input", map[string]any{"text": "a"}),
			HaveKeyWithValue("lease_seconds", BeEquivalentTo(30)), HaveKeyWithValue("timeout_seconds", BeEquivalentTo(900))))
		Eventually(func(g Gomega) *inferencev1alpha1.InferenceRequest { return get("b")(g) }, "5s").Should(SatisfyAll(
			HaveField("Status.Phase", inferencev1alpha1.PhaseRunning), HaveField("Status.Worker", "pod-1")))

		Expect(call("default", "leases/"+items[0]["lease"].(string)+"/result", tok, "pod-1", []byte(`{"label":"positive"}`)).code).
			To(Equal(http.StatusOK))
		a := get("a")(Default)
		Expect(a.Status.Phase).To(Equal(inferencev1alpha1.PhaseSucceeded), "the answer comes once the result is stored")
		Expect(a.Status.Result.Raw).To(MatchJSON(`{"label":"positive"}`))
		Expect(a.Status.Worker).To(Equal("pod-1"))

		Expect(call("default", "leases/"+items[1]["lease"].(string)+"/error", tok, "pod-1",
			[]byte(`{"message": "text is empty", "bad_input": true}`)).code).To(Equal(http.StatusOK))
		b := get("b")(Default)
		Expect(b.Status.Phase).To(Equal(inferencev1alpha1.PhaseFailed))
		Expect(b.Status.Conditions).To(testutil.HaveCondition(inferencev1alpha1.ConditionComplete, inferencev1alpha1.ReasonInvalidInput))
		Expect(b.Status.Error).To(Equal("text is empty"))

		Expect(names(take("default", tok, "pod-2", 2, 1))).To(Equal([]string{"c"}))
		Expect(take("default", tok, "pod-2", 2, 1)).To(BeEmpty(), "nothing waits: the long poll ends empty")

		var jobs batchv1.JobList
		Expect(k8sClient.List(ctx, &jobs, client.InNamespace(ns), client.HasLabels{inferencev1alpha1.LabelRequest})).To(Succeed())
		Expect(jobs.Items).To(BeEmpty(), "a pool makes no Job per request")
	})

	It("answers a pod of another model, a forged credential and none with 401, and tells nothing", func() {
		pool("default", nil)
		pool("other", nil)
		submit("a")
		Expect(k8sClient.Create(ctx, testutil.MakeInferenceRequest("o", ns).Model("other").Obj())).To(Succeed())
		tok, other := token("default"), token("other")
		Expect(tok).NotTo(Equal(other))

		for name, credential := range map[string]string{"none": "", "forged": strings.Repeat("x", len(tok)), "another model's": other} {
			a := call("default", "take", credential, "pod-x", []byte(`{"wait_seconds": 0}`))
			Expect(a.code).To(Equal(http.StatusUnauthorized), "%s credential", name)
			Expect(a.body).NotTo(HaveKey("items"))
		}
		Expect(call("missing", "take", tok, "pod-x", nil).code).To(Equal(http.StatusUnauthorized),
			"a model that does not exist is not told apart from a wrong credential")
		Expect(names(take("default", tok, "pod-1", 1, 0))).To(Equal([]string{"a"}))
	})

	It("hands a request out again when its lease runs out, and fails it once maxRetries are used", func() {
		m := testutil.MakeInferenceModel("default", ns, workerImage).Workers(1).MaxRetries(1).Obj()
		m.Spec.Workers.LeaseSeconds = 2
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
		submit("a")
		tok := token("default")

		first := take("default", tok, "pod-1", 1, 1)
		Expect(names(first)).To(Equal([]string{"a"}))
		By("renewing: the lease outlives its length")
		for range 4 {
			Expect(call("default", "leases/"+first[0]["lease"].(string)+"/renew", tok, "pod-1", nil).code).To(Equal(http.StatusOK))
			time.Sleep(700 * time.Millisecond)
		}
		Expect(take("default", tok, "pod-2", 1, 0)).To(BeEmpty(), "a renewed lease keeps its request")

		By("stopping the renewals: the request goes to another pod")
		second := take("default", tok, "pod-2", 1, 6)
		Expect(names(second)).To(Equal([]string{"a"}))
		Expect(call("default", "leases/"+first[0]["lease"].(string)+"/renew", tok, "pod-1", nil).code).To(Equal(http.StatusGone))

		By("letting the second lease run out too: maxRetries 1 is used up")
		Eventually(func(g Gomega) *inferencev1alpha1.InferenceRequest { return get("a")(g) }, "10s").Should(
			HaveField("Status.Phase", inferencev1alpha1.PhaseFailed))
		Expect(get("a")(Default).Status.Conditions).To(testutil.HaveCondition(inferencev1alpha1.ConditionComplete,
			inferencev1alpha1.ReasonBackoffLimitExceeded))
	})

	It("takes a result of 64 KiB and refuses one byte more, saying why", func() {
		pool("default", nil)
		submit("a")
		tok := token("default")
		lease := take("default", tok, "pod-1", 1, 1)[0]["lease"].(string)

		quoted := func(n int) []byte { return []byte(`"` + strings.Repeat("x", n-2) + `"`) }
		tooLarge := call("default", "leases/"+lease+"/result", tok, "pod-1", quoted(workapi.MaxResultBytes+1))
		Expect(tooLarge.code).To(Equal(http.StatusRequestEntityTooLarge))
		Expect(tooLarge.body["error"]).To(ContainSubstring("over 65536 bytes"))
		Expect(call("default", "leases/"+lease+"/result", tok, "pod-1", quoted(workapi.MaxResultBytes)).code).To(Equal(http.StatusOK))
		Expect(get("a")(Default).Status.Result.Raw).To(HaveLen(workapi.MaxResultBytes))
	})

	It("revokes a canceled request's lease: its pod learns at its next renew", func() {
		pool("default", nil)
		submit("a")
		tok := token("default")
		lease := take("default", tok, "pod-1", 1, 1)[0]["lease"].(string)
		Expect(updateRequest(get("a")(Default), false, func(r *inferencev1alpha1.InferenceRequest) { r.Spec.Cancel = true })).
			To(Succeed())
		Eventually(func(g Gomega) *inferencev1alpha1.InferenceRequest { return get("a")(g) }).Should(
			HaveField("Status.Phase", inferencev1alpha1.PhaseCanceled))
		Expect(call("default", "leases/"+lease+"/renew", tok, "pod-1", nil).code).To(Equal(http.StatusGone))
		Expect(call("default", "leases/"+lease+"/result", tok, "pod-1", []byte(`"late"`)).code).To(Equal(http.StatusGone))
		Expect(get("a")(Default).Status.Result).To(BeNil())
	})
})

var _ = Describe("The Python worker SDK against the work API", func() {
	It("serves a pool's requests until it is let go, and reports bad input", func() {
		python, err := exec.LookPath("python3")
		Expect(err).NotTo(HaveOccurred(), "python3 is needed to run examples/python")
		ns := newNamespace()
		server := httptest.NewServer(workAPI)
		defer server.Close()
		m := testutil.MakeInferenceModel("default", ns, workerImage).Workers(1).Obj()
		m.Spec.Workers.IdleSeconds = 1
		m.Spec.Workers.BatchSize = 2
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
		inputs := map[string]any{"one": map[string]any{"text": "great movie"}, "two": map[string]any{"text": "a b c"},
			"bad": map[string]any{"words": 3}}
		for name, input := range inputs {
			Expect(k8sClient.Create(ctx, testutil.MakeInferenceRequest(name, ns).Input(input).Obj())).To(Succeed())
		}
		secret := &corev1.Secret{}
		Eventually(func() error {
			return k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: workapi.SecretName("default")}, secret)
		}).Should(Succeed())

		cmd := exec.Command(python, filepath.Join("..", "examples", "python", "worker.py"))
		cmd.Env = append(os.Environ(),
			"KINFER_MODEL=default", "KINFER_POD_NAME=python-pod", "KINFER_BATCH_SIZE=2",
			"KINFER_WORK_URL="+server.URL+"/v1/namespaces/"+ns+"/models/default",
			"KINFER_WORK_TOKEN="+string(secret.Data[workapi.TokenKey]))
		out := &testutil.Output{}
		cmd.Stdout, cmd.Stderr = out, out
		Expect(cmd.Start()).To(Succeed())
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		// Once the queue is empty and a second has passed, the pod above
		// min (0) is told to go, and exits 0.
		Eventually(exited, "60s").Should(Receive(BeNil()), out.String())

		got := func(name string) *inferencev1alpha1.InferenceRequest {
			ir := &inferencev1alpha1.InferenceRequest{}
			Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, ir)).To(Succeed())
			return ir
		}
		Expect(got("one").Status.Result.Raw).To(MatchJSON(`{"words": 2, "characters": 11}`))
		Expect(got("two").Status.Result.Raw).To(MatchJSON(`{"words": 3, "characters": 5}`))
		Expect(got("one").Status.Worker).To(Equal("python-pod"))
		Expect(got("bad").Status.Conditions).To(testutil.HaveCondition(inferencev1alpha1.ConditionComplete,
			inferencev1alpha1.ReasonInvalidInput))
		Expect(got("bad").Status.Error).To(ContainSubstring(`input must be {"text": "..."}`))
	})
})

var _ = Describe("The work API across a manager restart", func() {
	AfterEach(func() {
		stopManager()
		startManager()
	})

	It("hands out again what the old manager had leased, and takes a late result for a request still open", func() {
		ns := newNamespace()
		Expect(k8sClient.Create(ctx, testutil.MakeInferenceModel("default", ns, workerImage).Workers(2).Obj())).To(Succeed())
		for _, name := range []string{"a", "b"} {
			Expect(k8sClient.Create(ctx, testutil.MakeInferenceRequest(name, ns).Obj())).To(Succeed())
		}
		secret := &corev1.Secret{}
		Eventually(func() error {
			return k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: workapi.SecretName("default")}, secret)
		}).Should(Succeed())
		tok := string(secret.Data[workapi.TokenKey])
		post := func(path, body string) (int, map[string]any) {
			GinkgoHelper()
			server := httptest.NewServer(workAPI)
			defer server.Close()
			req, err := http.NewRequest(http.MethodPost, server.URL+"/v1/namespaces/"+ns+"/models/default/"+path, strings.NewReader(body))
			Expect(err).NotTo(HaveOccurred())
			req.Header.Set("Authorization", "Bearer "+tok)
			req.Header.Set("Kinfer-Pod", "pod-1")
			resp, err := http.DefaultClient.Do(req)
			Expect(err).NotTo(HaveOccurred())
			defer func() { _ = resp.Body.Close() }()
			out := map[string]any{}
			Expect(json.NewDecoder(resp.Body).Decode(&out)).To(Succeed())
			return resp.StatusCode, out
		}
		leases := func(body map[string]any) map[string]string {
			out := map[string]string{}
			for _, item := range body["items"].([]any) {
				out[item.(map[string]any)["name"].(string)] = item.(map[string]any)["lease"].(string)
			}
			return out
		}
		// takeBoth takes until both requests are held: a take answers as
		// soon as any work is there. A manager just started may answer 503
		// until it has read its models; the SDKs try again, and so does this.
		takeBoth := func() map[string]string {
			GinkgoHelper()
			held := map[string]string{}
			for try := 0; len(held) < 2 && try < 10; try++ {
				code, body := post("take", `{"max": 2, "wait_seconds": 5}`)
				if code == http.StatusServiceUnavailable {
					time.Sleep(200 * time.Millisecond)
					continue
				}
				Expect(code).To(Equal(http.StatusOK))
				maps.Copy(held, leases(body))
			}
			Expect(held).To(HaveLen(2))
			return held
		}
		old := takeBoth()
		Eventually(func(g Gomega) inferencev1alpha1.RequestPhase {
			ir := &inferencev1alpha1.InferenceRequest{}
			g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "a"}, ir)).To(Succeed())
			return ir.Status.Phase
		}, "5s").Should(Equal(inferencev1alpha1.PhaseRunning))

		stopManager()
		startManager()

		By("the new manager handing both out again: the old leases died with the old manager")
		again := takeBoth()
		Expect(again["a"]).NotTo(Equal(old["a"]))

		By("a late result under a's old lease: a is still open, so it counts")
		code, _ := post("leases/"+old["a"]+"/result", `"from the old lease"`)
		Expect(code).To(Equal(http.StatusOK))
		code, _ = post("leases/"+again["a"]+"/result", `"from the new lease"`)
		Expect(code).To(Equal(http.StatusGone), "a has ended: the second result is not taken")
		code, _ = post("leases/"+again["b"]+"/result", `"b"`)
		Expect(code).To(Equal(http.StatusOK))

		for name, want := range map[string]string{"a": `"from the old lease"`, "b": `"b"`} {
			ir := &inferencev1alpha1.InferenceRequest{}
			Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, ir)).To(Succeed())
			Expect(ir.Status.Phase).To(Equal(inferencev1alpha1.PhaseSucceeded), name)
			Expect(ir.Status.Result.Raw).To(MatchJSON(want), name)
		}
	})
})

var _ = Describe("A result over 4 KiB from a request's own Job", func() {
	It("goes through the work API, from the Go and the Python SDK alike, and the request ends with it", func() {
		python, err := exec.LookPath("python3")
		Expect(err).NotTo(HaveOccurred(), "python3 is needed to run examples/python")
		ns := newNamespace()
		server := httptest.NewServer(workAPI)
		defer server.Close()
		Expect(k8sClient.Create(ctx, testutil.MakeInferenceModel("default", ns, workerImage).Obj())).To(Succeed())
		input := map[string]any{"text": strings.Repeat("many words ", 1000)}
		for _, name := range []string{"go", "python"} {
			Expect(k8sClient.Create(ctx, testutil.MakeInferenceRequest(name, ns).Input(input).Obj())).To(Succeed())
		}

		// envtest runs no kubelet: the worker runs here with the environment
		// the Job gives its pod, as the kubelet would resolve it.
		dir := GinkgoT().TempDir()
		podEnv := func(name string) []string {
			GinkgoHelper()
			job := &batchv1.Job{}
			Eventually(func() error { return k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, job) }).
				Should(Succeed())
			secret := &corev1.Secret{}
			Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: workapi.SecretName("default")}, secret)).
				To(Succeed())
			env := append(os.Environ(), "KINFER_RESULT_PATH="+filepath.Join(dir, name+".result"))
			for _, e := range job.Spec.Template.Spec.Containers[0].Env {
				value := strings.ReplaceAll(e.Value, "$$", "$")
				switch {
				case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
					value = string(secret.Data[e.ValueFrom.SecretKeyRef.Key])
				case e.ValueFrom != nil:
					value = name + "-pod"
				case e.Name == "KINFER_WORK_URL":
					value = strings.Replace(value, testWorkURL, server.URL, 1)
				}
				env = append(env, e.Name+"="+value)
			}
			return env
		}
		run := func(cmd *exec.Cmd, name string, extra ...string) {
			GinkgoHelper()
			cmd.Env = append(podEnv(name), extra...)
			out, err := cmd.CombinedOutput()
			Expect(err).NotTo(HaveOccurred(), "%s", out)
		}

		echo := filepath.Join(dir, "echo")
		build := exec.Command("go", "build", "-o", echo, "../examples/workers/echo")
		out, err := build.CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), "%s", out)
		run(exec.Command(echo), "go")
		script := filepath.Join(dir, "echo.py")
		Expect(os.WriteFile(script, []byte("import kinfer_worker\nkinfer_worker.run(lambda req: req.input)\n"), 0o600)).To(Succeed())
		run(exec.Command(python, script), "python", "PYTHONPATH="+filepath.Join("..", "examples", "python"))

		for _, name := range []string{"go", "python"} {
			ir := &inferencev1alpha1.InferenceRequest{}
			Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, ir)).To(Succeed())
			Expect(ir.Status.Phase).To(Equal(inferencev1alpha1.PhaseSucceeded), name)
			Expect(len(ir.Status.Result.Raw)).To(BeNumerically(">", 10000), name)
			want, err := json.Marshal(input)
			Expect(err).NotTo(HaveOccurred())
			Expect(ir.Status.Result.Raw).To(MatchJSON(want), name)
		}
	})
})
