package controllers

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
	"github.com/kinfer/kinfer/internal/workapi"
)

// writeKey names a mutating call as the API server's apiserver_request_total
// counts it; refused is set for calls answered with an error (a conflict, say),
// which changed nothing.
type writeKey struct {
	verb, resource, subresource string
	refused                     bool
}

func (k writeKey) String() string {
	s := k.verb + " " + k.resource
	if k.subresource != "" {
		s += "/" + k.subresource
	}
	if k.refused {
		s += " (refused)"
	}
	return s
}

// apiWrites reads the API server's own count of mutating requests.
func apiWrites() map[writeKey]float64 {
	GinkgoHelper()
	raw, err := kubernetes.NewForConfigOrDie(cfg).RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	Expect(err).NotTo(HaveOccurred())
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(string(raw)))
	Expect(err).NotTo(HaveOccurred())
	out := map[writeKey]float64{}
	for _, m := range families["apiserver_request_total"].GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		switch labels["verb"] {
		case "POST", "PUT", "PATCH", "DELETE", "APPLY":
			refused := !strings.HasPrefix(labels["code"], "2")
			out[writeKey{labels["verb"], labels["resource"], labels["subresource"], refused}] += m.GetCounter().GetValue()
		}
	}
	return out
}

func totalWrites(writes map[writeKey]float64) float64 {
	var total float64
	for _, n := range writes {
		total += n
	}
	return total
}

// writes is what one request cost the API server, by writer.
type writes struct {
	// delta is every write between two counts.
	delta map[writeKey]float64
	// operator counts the operator's writes to its resources and Jobs,
	// events its Events, refused the calls answered with an error.
	operator, events, refused float64
	lines                     []string
}

// countWrites sorts the writes between before and after, taking off what
// the test itself made (harness). Writes to other resources are the
// harness's (pods) or the API server's own (leases), never the operator's,
// whose only other writes are Events and its models' status.
func countWrites(before, after, harness map[writeKey]float64) writes {
	w := writes{delta: map[writeKey]float64{}}
	for k, v := range after {
		if d := v - before[k]; d > 0 {
			w.delta[k] = d
		}
	}
	for k, d := range w.delta {
		own := d - harness[k]
		switch {
		case own <= 0 || (k.resource != "jobs" && k.resource != "inferencerequests" && k.resource != "events"):
			continue
		case k.refused:
			w.refused += own
		case k.resource == "events":
			w.events += own
		default:
			w.operator += own
		}
		w.lines = append(w.lines, fmt.Sprintf("%s: %v", k, own))
	}
	sort.Strings(w.lines)
	return w
}

// quietWrites waits until no write has reached the API server for a second:
// other specs' requests may still be settling.
func quietWrites() map[writeKey]float64 {
	GinkgoHelper()
	Eventually(func(g Gomega) {
		quiet := totalWrites(apiWrites())
		g.Consistently(func() float64 { return totalWrites(apiWrites()) }, "1s", "100ms").Should(Equal(quiet))
	}, "60s").Should(Succeed())
	return apiWrites()
}

var _ = Describe("API writes per request", func() {
	It("makes at most 3 writes of its own on the happy path, Events aside", func() {
		ns := newNamespace()
		Expect(k8sClient.Create(ctx, testutil.MakeInferenceModel("default", ns, workerImage).Obj())).To(Succeed())
		receiver := testutil.NewReceiver()
		defer receiver.Close()
		deliveredBefore := callbackAttempts("delivered")

		before := quietWrites()
		ir := testutil.MakeInferenceRequest("req-writes", ns).ID("1234").Callback(receiver.URL).Obj()
		Expect(k8sClient.Create(ctx, ir)).To(Succeed()) // the shim's one write
		job := &batchv1.Job{}
		Eventually(func() error { return k8sClient.Get(ctx, client.ObjectKeyFromObject(ir), job) }).Should(Succeed())
		Eventually(func(g Gomega) inferencev1alpha1.RequestPhase {
			got := &inferencev1alpha1.InferenceRequest{}
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(ir), got)).To(Succeed())
			return got.Status.Phase
		}).Should(Equal(inferencev1alpha1.PhaseRunning))
		Expect(testutil.CompleteJob(ctx, k8sClient, job, `"OK"`)).To(Succeed()) // the Job controller's and kubelet's writes
		Eventually(func(g Gomega) inferencev1alpha1.DeliveryState {
			got := &inferencev1alpha1.InferenceRequest{}
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(ir), got)).To(Succeed())
			return got.Status.Delivery.State
		}).Should(Equal(inferencev1alpha1.DeliveryDelivered))
		Consistently(receiver.Calls, "1s").Should(HaveLen(1))
		after := apiWrites()

		// What the test itself wrote to the operator's resources, standing in
		// for the client and the Job controller.
		w := countWrites(before, after, map[writeKey]float64{
			{verb: "POST", resource: "inferencerequests"}:          1,
			{verb: "PUT", resource: "jobs", subresource: "status"}: 1,
		})
		operator, events, lines := w.operator, w.events, w.lines
		AddReportEntry("operator writes per happy-path request", fmt.Sprintf("%v (+1 create by the client = %v); "+
			"events %v; refused %v; by call: %s", operator, operator+1, events, w.refused, strings.Join(lines, ", ")))
		GinkgoWriter.Printf("operator writes: %v, events: %v: %s\n", operator, events, strings.Join(lines, ", "))

		Expect(operator).To(BeNumerically("<=", 3), strings.Join(lines, ", "))
		Expect(events).To(BeEquivalentTo(1), "one Event on the happy path: "+strings.Join(lines, ", "))
		Expect(w.delta[writeKey{verb: "POST", resource: "jobs"}]).To(BeEquivalentTo(1))
		Expect(callbackAttempts("delivered") - deliveredBefore).To(BeEquivalentTo(1))
		Expect(receiver.Calls()[0].Header.Get("webhook-id")).NotTo(BeEmpty())
	})

	It("costs the client's create and one status write for a request a warm pool serves at once, and no Job or pod write", func() {
		ns := newNamespace()
		model := testutil.MakeInferenceModel("default", ns, workerImage).Workers(1).Obj()
		model.Spec.Workers.Min = 1 // the pool stays up between requests
		Expect(k8sClient.Create(ctx, model)).To(Succeed())
		receiver := testutil.NewReceiver()
		defer receiver.Close()
		server := httptest.NewServer(workAPI)
		defer server.Close()
		base := fmt.Sprintf("%s/v1/namespaces/%s/models/default", server.URL, ns)
		post := func(path, token string, body string) map[string]any {
			GinkgoHelper()
			req, err := http.NewRequest(http.MethodPost, base+path, strings.NewReader(body))
			Expect(err).NotTo(HaveOccurred())
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := http.DefaultClient.Do(req)
			Expect(err).NotTo(HaveOccurred())
			defer func() { _ = resp.Body.Close() }()
			Expect(resp.StatusCode).To(Equal(http.StatusOK))
			out := map[string]any{}
			Expect(json.NewDecoder(resp.Body).Decode(&out)).To(Succeed())
			return out
		}
		// serve plays a warm pool pod: it takes the request as soon as it
		// waits and answers at once.
		serve := func(name, token string) {
			GinkgoHelper()
			items := post("/take", token, `{"max": 1, "wait_seconds": 10}`)["items"].([]any)
			Expect(items).To(HaveLen(1))
			item := items[0].(map[string]any)
			Expect(item["name"]).To(Equal(name))
			post("/leases/"+item["lease"].(string)+"/result", token, `"OK"`)
		}
		delivered := func(name string) func(Gomega) inferencev1alpha1.DeliveryState {
			return func(g Gomega) inferencev1alpha1.DeliveryState {
				got := &inferencev1alpha1.InferenceRequest{}
				g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, got)).To(Succeed())
				return got.Status.Delivery.State
			}
		}

		By("warming the pool up: its Job and the model's credential exist")
		Expect(k8sClient.Create(ctx, testutil.MakeInferenceRequest("warm-up", ns).Callback(receiver.URL).Obj())).To(Succeed())
		secret := &corev1.Secret{}
		Eventually(func() error {
			return k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: workapi.SecretName("default")}, secret)
		}).Should(Succeed())
		token := string(secret.Data[workapi.TokenKey])
		serve("warm-up", token)
		Eventually(delivered("warm-up")).Should(Equal(inferencev1alpha1.DeliveryDelivered))
		Eventually(func(g Gomega) []batchv1.Job {
			var jobs batchv1.JobList
			g.Expect(k8sClient.List(ctx, &jobs, client.InNamespace(ns))).To(Succeed())
			return jobs.Items
		}, "10s").Should(HaveLen(1))

		// A request served at once is written once; "at once" is within the
		// quiet second, which a loaded machine's pauses could stretch past,
		// so the spec gives it ten.
		quietWriteOverride.Store(int64(10 * time.Second))
		DeferCleanup(func() { quietWriteOverride.Store(0) })
		before := quietWrites()
		served := make(chan struct{})
		go func() {
			defer GinkgoRecover()
			defer close(served)
			serve("req-writes", token)
		}()
		Expect(k8sClient.Create(ctx, testutil.MakeInferenceRequest("req-writes", ns).Callback(receiver.URL).Obj())).To(Succeed())
		Eventually(served, "15s").Should(BeClosed())
		Eventually(delivered("req-writes")).Should(Equal(inferencev1alpha1.DeliveryDelivered))
		Consistently(receiver.Calls, "2s").Should(HaveLen(2))
		w := countWrites(before, apiWrites(), map[writeKey]float64{{verb: "POST", resource: "inferencerequests"}: 1})
		AddReportEntry("operator writes per pooled request", fmt.Sprintf("%v (+1 create by the client = %v); events %v; by call: %s",
			w.operator, w.operator+1, w.events, strings.Join(w.lines, ", ")))

		Expect(w.operator).To(BeEquivalentTo(1), "one status write: "+strings.Join(w.lines, ", "))
		Expect(w.events).To(BeEquivalentTo(1), "one Event: "+strings.Join(w.lines, ", "))
		for k, d := range w.delta {
			Expect(k.resource).NotTo(BeElementOf("jobs", "pods"), "a %s write (%v) for a pooled request", k, d)
		}
	})
})
