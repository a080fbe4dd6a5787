package controllers

import (
	"fmt"
	"sort"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	batchv1 "k8s.io/api/batch/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
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

var _ = Describe("API writes per request", func() {
	It("makes at most 3 writes of its own on the happy path, Events aside", func() {
		ns := newNamespace()
		Expect(k8sClient.Create(ctx, testutil.MakeInferenceModel("default", ns, workerImage).Obj())).To(Succeed())
		receiver := testutil.NewReceiver()
		defer receiver.Close()
		deliveredBefore := callbackAttempts("delivered")

		// Other specs' requests may still be settling; count from a quiet moment.
		Eventually(func(g Gomega) {
			quiet := totalWrites(apiWrites())
			g.Consistently(func() float64 { return totalWrites(apiWrites()) }, "1s", "100ms").Should(Equal(quiet))
		}, "60s").Should(Succeed())
		before := apiWrites()
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

		delta := map[writeKey]float64{}
		for k, v := range after {
			if d := v - before[k]; d > 0 {
				delta[k] = d
			}
		}
		// What the test itself wrote to the operator's resources, standing in
		// for the client and the Job controller. Writes to other resources are
		// the harness's (pods) or the API server's own (leases), never the
		// operator's, whose only other writes are Events.
		harness := map[writeKey]float64{
			{verb: "POST", resource: "inferencerequests"}:          1,
			{verb: "PUT", resource: "jobs", subresource: "status"}: 1,
		}
		var operator, events, refused float64
		lines := make([]string, 0, len(delta))
		for k, d := range delta {
			own := d - harness[k]
			switch {
			case own <= 0 || (k.resource != "jobs" && k.resource != "inferencerequests" && k.resource != "events"):
				continue
			case k.refused:
				refused += own
			case k.resource == "events":
				events += own
			default:
				operator += own
			}
			lines = append(lines, fmt.Sprintf("%s: %v", k, own))
		}
		sort.Strings(lines)
		AddReportEntry("operator writes per happy-path request", fmt.Sprintf("%v (+1 create by the client = %v); "+
			"events %v; refused %v; by call: %s", operator, operator+1, events, refused, strings.Join(lines, ", ")))
		GinkgoWriter.Printf("operator writes: %v, events: %v: %s\n", operator, events, strings.Join(lines, ", "))

		Expect(operator).To(BeNumerically("<=", 3), strings.Join(lines, ", "))
		Expect(events).To(BeEquivalentTo(1), "one Event on the happy path: "+strings.Join(lines, ", "))
		Expect(delta[writeKey{verb: "POST", resource: "jobs"}]).To(BeEquivalentTo(1))
		Expect(callbackAttempts("delivered") - deliveredBefore).To(BeEquivalentTo(1))
		Expect(receiver.Calls()[0].Header.Get("webhook-id")).NotTo(BeEmpty())
	})
})
