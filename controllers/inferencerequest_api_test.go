package controllers

import (
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
)

// These specs hold the InferenceRequest schema to its contract: each rule
// accepts what it should and refuses what it should, with its own message.
var _ = Describe("InferenceRequest API", func() {
	var ns string

	BeforeEach(func() {
		ns = newNamespace()
	})

	request := func(mutate func(*testutil.InferenceRequestWrapper)) *inferencev1alpha1.InferenceRequest {
		w := testutil.MakeInferenceRequest("req-"+rand.String(8), ns)
		mutate(w)
		return w.Obj()
	}

	It("defaults model to default and keeps a request without id or callback", func() {
		ir := request(func(*testutil.InferenceRequestWrapper) {})
		Expect(k8sClient.Create(ctx, ir)).To(Succeed())

		var got inferencev1alpha1.InferenceRequest
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(ir), &got)).To(Succeed())
		Expect(got.Spec.Model).To(Equal(inferencev1alpha1.DefaultModelName))
		Expect(got.Spec.ID).To(BeEmpty())
		Expect(got.Spec.CallbackURL).To(BeEmpty())
	})

	DescribeTable("accepts",
		func(mutate func(*testutil.InferenceRequestWrapper)) {
			Expect(k8sClient.Create(ctx, request(mutate))).To(Succeed())
		},
		Entry("a one-character id", func(w *testutil.InferenceRequestWrapper) { w.ID("x") }),
		Entry("a 253-character id", func(w *testutil.InferenceRequestWrapper) { w.ID(strings.Repeat("a", 253)) }),
		Entry("an id of any characters", func(w *testutil.InferenceRequestWrapper) { w.ID("Order #42 / ünïcode ✓") }),
		Entry("an http callback", func(w *testutil.InferenceRequestWrapper) {
			w.Callback("http://client.ml.svc:8001/v1/results")
		}),
		Entry("an https callback with a query", func(w *testutil.InferenceRequestWrapper) {
			w.Callback("https://hooks.example.com/kinfer?tenant=7")
		}),
		Entry("an IP callback", func(w *testutil.InferenceRequestWrapper) { w.Callback("http://10.0.0.7:8001/r") }),
		Entry("a model name with dots and dashes", func(w *testutil.InferenceRequestWrapper) { w.Model("sentiment-v1.4") }),
		Entry("a 63-character model name", func(w *testutil.InferenceRequestWrapper) { w.Model(strings.Repeat("m", 63)) }),
	)

	DescribeTable("refuses",
		func(mutate func(*testutil.InferenceRequestWrapper), field, message string) {
			Expect(k8sClient.Create(ctx, request(mutate))).To(testutil.BeInvalid(field, message))
		},
		Entry("a 254-character id",
			func(w *testutil.InferenceRequestWrapper) { w.ID(strings.Repeat("a", 254)) },
			"spec.id", "may not be more than 253 bytes"),
		Entry("an ftp callback",
			func(w *testutil.InferenceRequestWrapper) { w.Callback("ftp://files.example.com/results") },
			"spec.callbackURL", "must be an absolute http or https URL with a host"),
		Entry("a relative callback",
			func(w *testutil.InferenceRequestWrapper) { w.Callback("/v1/results") },
			"spec.callbackURL", "must be an absolute http or https URL with a host"),
		Entry("a callback without a host",
			func(w *testutil.InferenceRequestWrapper) { w.Callback("http:///v1/results") },
			"spec.callbackURL", "must be an absolute http or https URL with a host"),
		Entry("a callback that is not a URL",
			func(w *testutil.InferenceRequestWrapper) { w.Callback("client.ml.svc:8001 results") },
			"spec.callbackURL", "must be an absolute http or https URL with a host"),
		Entry("a model name that is not a DNS label",
			func(w *testutil.InferenceRequestWrapper) { w.Model("Sentiment_V1") },
			"spec.model", "should match"),
		Entry("a 64-character model name",
			func(w *testutil.InferenceRequestWrapper) { w.Model(strings.Repeat("m", 64)) },
			"spec.model", "may not be more than 63 bytes"),
		Entry("a name too long for its Job",
			func(w *testutil.InferenceRequestWrapper) { w.Name = strings.Repeat("r", 64) },
			"<nil>", "metadata.name must be at most 63 characters"),
	)

	It("refuses an empty id sent explicitly", func() {
		// The typed client drops an empty id (omitempty), so send it raw.
		ir := testutil.Unstructured(inferencev1alpha1.GroupVersion.WithKind("InferenceRequest"), "req-empty-id", ns,
			map[string]any{"id": ""})
		Expect(k8sClient.Create(ctx, ir)).To(testutil.BeInvalid("spec.id", "at least 1 chars long"))
	})

	It("keeps any JSON value as input", func() {
		for i, input := range []any{
			map[string]any{"text": "great movie", "n": 3.5, "tags": []any{"a", nil, true}},
			"just a string",
			42.0,
			[]any{1.0, "two"},
		} {
			ir := request(func(w *testutil.InferenceRequestWrapper) { w.Input(input) })
			Expect(k8sClient.Create(ctx, ir)).To(Succeed(), "input %d", i)

			var got inferencev1alpha1.InferenceRequest
			Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(ir), &got)).To(Succeed())
			Expect(got.Spec.Input).NotTo(BeNil())
			Expect(got.Spec.Input.Raw).To(MatchJSON(ir.Spec.Input.Raw), "input %d", i)
		}
	})

	It("refuses any change to the spec", func() {
		ir := request(func(w *testutil.InferenceRequestWrapper) {
			w.ID("1234").Callback("http://client.ml.svc:8001/v1/results").Input(map[string]any{"text": "a"})
		})
		Expect(k8sClient.Create(ctx, ir)).To(Succeed())

		for name, change := range map[string]func(*inferencev1alpha1.InferenceRequest){
			"id":          func(r *inferencev1alpha1.InferenceRequest) { r.Spec.ID = "5678" },
			"callbackURL": func(r *inferencev1alpha1.InferenceRequest) { r.Spec.CallbackURL = "http://other.example/" },
			"model":       func(r *inferencev1alpha1.InferenceRequest) { r.Spec.Model = "other" },
			"input":       func(r *inferencev1alpha1.InferenceRequest) { r.Spec.Input = testutil.JSON(map[string]any{"text": "b"}) },
		} {
			Expect(updateRequest(ir.DeepCopy(), false, change)).To(testutil.BeInvalid("spec", "spec is immutable"), "changing %s", name)
		}
	})

	It("lets metadata and status change while the spec stays", func() {
		ir := request(func(w *testutil.InferenceRequestWrapper) { w.ID("1234") })
		Expect(k8sClient.Create(ctx, ir)).To(Succeed())

		Expect(updateRequest(ir, false, func(r *inferencev1alpha1.InferenceRequest) {
			r.Labels = map[string]string{"team": "ml"}
		})).To(Succeed())

		now := metav1.Now()
		ended := inferencev1alpha1.InferenceRequestStatus{
			Phase:          inferencev1alpha1.PhaseSucceeded,
			JobName:        ir.Name,
			CompletionTime: &now,
			Result:         testutil.JSON("OK"),
			Delivery: inferencev1alpha1.DeliveryStatus{
				State:     inferencev1alpha1.DeliveryDelivered,
				WebhookID: "msg_1",
				Attempts:  1,
			},
			Conditions: []metav1.Condition{{
				Type: inferencev1alpha1.ConditionComplete, Status: metav1.ConditionTrue,
				Reason: inferencev1alpha1.ReasonSucceeded, LastTransitionTime: now,
			}},
		}
		Expect(updateRequest(ir, true, func(r *inferencev1alpha1.InferenceRequest) { r.Status = ended })).To(Succeed())

		var got inferencev1alpha1.InferenceRequest
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(ir), &got)).To(Succeed())
		Expect(got.Status.Phase).To(Equal(inferencev1alpha1.PhaseSucceeded))
		Expect(got.Status.Result.Raw).To(MatchJSON(`"OK"`))
		Expect(got.Status.Delivery.Attempts).To(Equal(int32(1)))
	})

	It("refuses a phase or delivery state outside the contract", func() {
		ir := request(func(*testutil.InferenceRequestWrapper) {})
		Expect(k8sClient.Create(ctx, ir)).To(Succeed())

		Expect(updateRequest(ir, true, func(r *inferencev1alpha1.InferenceRequest) {
			r.Status.Phase = "Done"
		})).To(testutil.BeInvalid("status.phase", "Unsupported value"))

		Expect(updateRequest(ir, true, func(r *inferencev1alpha1.InferenceRequest) {
			r.Status.Phase = inferencev1alpha1.PhaseRunning
			r.Status.Delivery.State = "Sent"
		})).To(testutil.BeInvalid("status.delivery.state", "Unsupported value"))
	})

	It("refuses two conditions of the same type", func() {
		ir := request(func(*testutil.InferenceRequestWrapper) {})
		Expect(k8sClient.Create(ctx, ir)).To(Succeed())

		condition := metav1.Condition{
			Type: inferencev1alpha1.ConditionComplete, Status: metav1.ConditionFalse,
			Reason: inferencev1alpha1.ReasonQueued, LastTransitionTime: metav1.Now(),
		}
		Expect(updateRequest(ir, true, func(r *inferencev1alpha1.InferenceRequest) {
			r.Status.Conditions = []metav1.Condition{condition, condition}
		})).To(testutil.BeInvalid("status.conditions[1]", "Duplicate value"))
	})
})
