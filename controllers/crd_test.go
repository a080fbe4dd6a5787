package controllers

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
)

// What kubectl shows of kinfer's kinds comes from the API server: the columns of
// kubectl get from its Table answers, kubectl explain from its OpenAPI v3 document.
var _ = Describe("CRDs as kubectl sees them", func() {
	It("shows ID, Model, Phase, Delivery, Attempts and Age for kubectl get ir, and Reason and Message with -o wide", func() {
		ns := newNamespace()
		ir := testutil.MakeInferenceRequest("req-1234", ns).ID("1234").Callback("http://client.example/r").Obj()
		Expect(k8sClient.Create(ctx, ir)).To(Succeed())
		// An ended request, which the controller leaves alone until it expires.
		Expect(updateRequest(ir, true, func(r *inferencev1alpha1.InferenceRequest) {
			r.Status.Phase = inferencev1alpha1.PhaseSucceeded
			r.Status.Delivery = inferencev1alpha1.DeliveryStatus{State: inferencev1alpha1.DeliveryDelivered, Attempts: 2}
			r.Status.Conditions = []metav1.Condition{{Type: inferencev1alpha1.ConditionComplete, Status: metav1.ConditionTrue,
				Reason: inferencev1alpha1.ReasonSucceeded, Message: "the worker wrote a result", LastTransitionTime: metav1.Now()}}
		})).To(Succeed())

		// JSON numbers decode as float64. kubectl get shows the columns of
		// priority 0; -o wide shows them all.
		table := getTable(fmt.Sprintf("/apis/inference.kinfer.dev/v1alpha1/namespaces/%s/inferencerequests", ns))
		columns, wide := make([]string, 0, len(table.ColumnDefinitions)), []string{}
		for _, c := range table.ColumnDefinitions {
			if c.Priority == 0 {
				columns = append(columns, c.Name)
			} else {
				wide = append(wide, c.Name)
			}
		}
		Expect(columns).To(Equal([]string{"Name", "ID", "Model", "Phase", "Delivery", "Attempts", "Age"}))
		Expect(wide).To(Equal([]string{"Reason", "Message"}))
		Expect(table.Rows).To(HaveLen(1))
		Expect(table.Rows[0].Cells[:6]).To(Equal([]any{"req-1234", "1234", "default", "Succeeded", "Delivered", 2.0}))
		Expect(table.Rows[0].Cells[7:]).To(Equal([]any{inferencev1alpha1.ReasonSucceeded, "the worker wrote a result"}))
	})

	It("shows each model's mode, ready pool pods, queue and image for kubectl get im", func() {
		ns := newNamespace()
		Expect(k8sClient.Create(ctx, testutil.MakeInferenceModel("jobs", ns, workerImage).MaxConcurrency(1).Obj())).To(Succeed())
		Expect(k8sClient.Create(ctx, testutil.MakeInferenceModel("pool", ns, workerImage).Workers(3).Obj())).To(Succeed())
		for _, name := range []string{"a", "b"} {
			Expect(k8sClient.Create(ctx, testutil.MakeInferenceRequest(name, ns).Model("jobs").Obj())).To(Succeed())
		}

		// JSON numbers decode as float64.
		rows := func(g Gomega) map[string]map[string]any {
			table := getTable(fmt.Sprintf("/apis/inference.kinfer.dev/v1alpha1/namespaces/%s/inferencemodels", ns))
			out := map[string]map[string]any{}
			for _, row := range table.Rows {
				cells := map[string]any{}
				for i, c := range table.ColumnDefinitions {
					if c.Priority == 0 && c.Name != "Age" {
						cells[c.Name] = row.Cells[i]
					}
				}
				out[row.Cells[0].(string)] = cells
			}
			return out
		}
		Eventually(rows, "15s").Should(Equal(map[string]map[string]any{
			"jobs": {"Name": "jobs", "Mode": "Job", "Workers": nil, "Queued": 1.0, "Running": 1.0, "Image": workerImage},
			"pool": {"Name": "pool", "Mode": "Pool", "Workers": "0/3", "Queued": 0.0, "Running": 0.0, "Image": workerImage},
		}))
	})

	It("finds both kinds by short name and in the kinfer category", func() {
		resources, err := discovery.NewDiscoveryClientForConfigOrDie(cfg).ServerResourcesForGroupVersion(inferencev1alpha1.GroupVersion.String())
		Expect(err).NotTo(HaveOccurred())
		byName := map[string]metav1.APIResource{}
		for _, r := range resources.APIResources {
			byName[r.Name] = r
		}
		Expect(byName).To(HaveKey("inferencerequests"))
		Expect(byName).To(HaveKey("inferencemodels"))
		Expect(byName).To(HaveKey("inferencerequests/status"))
		Expect(byName).To(HaveKey("inferencemodels/status"))
		Expect(byName["inferencerequests"].ShortNames).To(ConsistOf("ir"))
		Expect(byName["inferencemodels"].ShortNames).To(ConsistOf("im"))
		Expect(byName["inferencerequests"].Categories).To(ConsistOf("kinfer"))
		Expect(byName["inferencemodels"].Categories).To(ConsistOf("kinfer"))
		Expect(byName["inferencerequests"].Namespaced).To(BeTrue())
		Expect(byName["inferencemodels"].Namespaced).To(BeTrue())
	})

	It("documents fields for kubectl explain", func() {
		// kubectl explain inferencerequest.spec.callbackURL reads this document.
		Eventually(func(g Gomega) {
			schemas := openAPISchemas(g)
			g.Expect(description(schemas, "dev.kinfer.inference.v1alpha1.InferenceRequest", "spec", "callbackURL")).
				To(HavePrefix("callbackURL is where the result is POSTed"))
			g.Expect(description(schemas, "dev.kinfer.inference.v1alpha1.InferenceRequest", "status", "delivery", "webhookID")).
				To(HavePrefix("webhookID is sent as the webhook-id header"))
			g.Expect(description(schemas, "dev.kinfer.inference.v1alpha1.InferenceModel", "spec", "callback", "retrySchedule")).
				To(HavePrefix("retrySchedule lists the waits between delivery attempts"))
		}).Should(Succeed())
	})
})

// getTable asks the API server for path the way kubectl get does.
func getTable(path string) *metav1.Table {
	GinkgoHelper()
	httpClient, err := rest.HTTPClientFor(cfg)
	Expect(err).NotTo(HaveOccurred())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(cfg.Host, "/")+path, nil)
	Expect(err).NotTo(HaveOccurred())
	req.Header.Set("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
	resp, err := httpClient.Do(req)
	Expect(err).NotTo(HaveOccurred())
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	Expect(err).NotTo(HaveOccurred())
	Expect(resp.StatusCode).To(Equal(http.StatusOK), string(body))

	var table metav1.Table
	Expect(json.Unmarshal(body, &table)).To(Succeed())
	return &table
}

type openAPISchema struct {
	Description string                   `json:"description"`
	Properties  map[string]openAPISchema `json:"properties"`
	AllOf       []struct {
		Ref string `json:"$ref"`
	} `json:"allOf"`
}

func openAPISchemas(g Gomega) map[string]openAPISchema {
	paths, err := discovery.NewDiscoveryClientForConfigOrDie(cfg).OpenAPIV3().Paths()
	g.Expect(err).NotTo(HaveOccurred())
	gv, ok := paths["apis/"+inferencev1alpha1.GroupVersion.String()]
	g.Expect(ok).To(BeTrue(), "the API server publishes no OpenAPI v3 document for kinfer yet")
	raw, err := gv.Schema("application/json")
	g.Expect(err).NotTo(HaveOccurred())
	var doc struct {
		Components struct {
			Schemas map[string]openAPISchema `json:"schemas"`
		} `json:"components"`
	}
	g.Expect(json.Unmarshal(raw, &doc)).To(Succeed())
	return doc.Components.Schemas
}

// description walks from a top-level schema down a path of property names.
func description(schemas map[string]openAPISchema, kind string, path ...string) string {
	s, ok := schemas[kind]
	if !ok {
		return ""
	}
	for _, name := range path {
		s = s.Properties[name]
	}
	return s.Description
}
