package controllers

import (
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
)

// policyField is the field an admission policy's refusal names: none, the
// message says which.
const policyField = ""

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

	It("refuses any change to the spec but cancel", func() {
		ir := request(func(w *testutil.InferenceRequestWrapper) {
			w.ID("1234").Callback("http://client.ml.svc:8001/v1/results").Input(map[string]any{"text": "a"}).Timeout(60)
		})
		Expect(k8sClient.Create(ctx, ir)).To(Succeed())

		for name, change := range map[string]func(*inferencev1alpha1.InferenceRequest){
			"id":          func(r *inferencev1alpha1.InferenceRequest) { r.Spec.ID = "5678" },
			"callbackURL": func(r *inferencev1alpha1.InferenceRequest) { r.Spec.CallbackURL = "http://other.example/" },
			"model":       func(r *inferencev1alpha1.InferenceRequest) { r.Spec.Model = "other" },
			"priority":    func(r *inferencev1alpha1.InferenceRequest) { r.Spec.Priority = 1 },
			"queueTimeoutSeconds": func(r *inferencev1alpha1.InferenceRequest) {
				r.Spec.QueueTimeoutSeconds = ptr.To[int64](5)
			},
			"timeoutSeconds": func(r *inferencev1alpha1.InferenceRequest) { r.Spec.TimeoutSeconds = nil },
		} {
			Expect(updateRequest(ir.DeepCopy(), false, change)).To(
				testutil.BeInvalid("spec", "spec."+name+" cannot be changed: only spec.cancel may change"), "changing %s", name)
		}

		// Input is kept by the admission policy.
		for name, change := range map[string]func(*inferencev1alpha1.InferenceRequest){
			"changed": func(r *inferencev1alpha1.InferenceRequest) { r.Spec.Input = testutil.JSON(map[string]any{"text": "b"}) },
			"removed": func(r *inferencev1alpha1.InferenceRequest) { r.Spec.Input = nil },
		} {
			Expect(updateRequest(ir.DeepCopy(), false, change)).To(
				testutil.BeInvalid(policyField, "spec.input cannot be changed: only spec.cancel may change"), "input %s", name)
		}

		Expect(updateRequest(ir, false, func(r *inferencev1alpha1.InferenceRequest) { r.Spec.Cancel = true })).To(Succeed())
		Expect(updateRequest(ir, false, func(r *inferencev1alpha1.InferenceRequest) { r.Spec.Cancel = false })).To(
			testutil.BeInvalid("spec", "spec.cancel cannot be taken back once true"))
	})

	DescribeTable("refuses limits above the model's",
		func(mutate func(*testutil.InferenceRequestWrapper), field, message string) {
			model := testutil.MakeInferenceModel("limited", ns, "worker").Timeout(120).QueueTimeout(300).MaxPriority(5).Obj()
			Expect(k8sClient.Create(ctx, model)).To(Succeed())
			within := request(func(w *testutil.InferenceRequestWrapper) {
				w.Model("limited").Timeout(120).QueueTimeout(300).Priority(5)
			})
			// The admission policy learns of a new model through its own watch.
			Eventually(func() error { return k8sClient.Create(ctx, request(mutate)) }).Should(testutil.BeInvalid(field, message))
			Expect(k8sClient.Create(ctx, within)).To(Succeed(), "limits equal to the model's are allowed")
			Expect(k8sClient.Create(ctx, request(func(w *testutil.InferenceRequestWrapper) {
				mutate(w)
				w.Model("unknown")
			}))).To(Succeed(), "a request for a model that does not exist yet waits for it, whatever it asks")
		},
		Entry("a longer run time",
			func(w *testutil.InferenceRequestWrapper) { w.Model("limited").Timeout(121) },
			policyField, "spec.timeoutSeconds 121 is longer than the timeoutSeconds of model limited (120)"),
		Entry("a longer wait",
			func(w *testutil.InferenceRequestWrapper) { w.Model("limited").QueueTimeout(301) },
			policyField, "spec.queueTimeoutSeconds 301 is longer than the queueTimeoutSeconds of model limited (300)"),
		Entry("a higher priority",
			func(w *testutil.InferenceRequestWrapper) { w.Model("limited").Priority(6) },
			policyField, "spec.priority 6 is above the maxPriority of model limited (5)"),
	)

	It("refuses any priority for a model that sets no maxPriority", func() {
		Expect(k8sClient.Create(ctx, testutil.MakeInferenceModel("plain", ns, "worker").Obj())).To(Succeed())
		Eventually(func() error {
			return k8sClient.Create(ctx, request(func(w *testutil.InferenceRequestWrapper) { w.Model("plain").Priority(1) }))
		}).Should(testutil.BeInvalid(policyField, "spec.priority 1 is above the maxPriority of model plain (0)"))
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
