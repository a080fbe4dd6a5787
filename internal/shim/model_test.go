package shim

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
)

var _ = Describe("A submission's model", func() {
	var (
		ns string
		h  *Handler
	)

	BeforeEach(func() {
		ns = newNamespace()
		h = NewHandler(Options{Client: k8sClient, Namespace: ns, RetryAfter: time.Second})
	})

	stored := func() []inferencev1alpha1.InferenceRequest {
		GinkgoHelper()
		var list inferencev1alpha1.InferenceRequestList
		Expect(k8sClient.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
		return list.Items
	}

	It("must exist", func() {
		a := post(h, `{"id": "1", "model": "absent"}`)
		Expect(a.Status).To(Equal(http.StatusUnprocessableEntity))
		Expect(a.Body).To(Equal(map[string]any{"field": "model",
			"error": `model "absent" does not exist in namespace "` + ns + `"`}))
		Expect(stored()).To(BeEmpty())
	})

	It("is looked for in the API server when the cache does not hold it yet", func() {
		createModel(model("just-made", ns))
		// A cache that has not heard of the model, as one a moment behind.
		lagging := newFakeClient()
		h = NewHandler(Options{Client: k8sClient, Models: lagging, Namespace: ns, RetryAfter: time.Second})
		Expect(post(h, `{"id": "1", "model": "just-made"}`).Status).To(Equal(http.StatusAccepted))
		Expect(stored()).To(HaveLen(1))

		a := post(h, `{"id": "2", "model": "absent"}`)
		Expect(a.Status).To(Equal(http.StatusUnprocessableEntity))
		Expect(a.Body).To(HaveKeyWithValue("field", "model"))
	})

	It("judges a submission again from the API server when the cache holds older limits", func() {
		createModel(model("raised", ns).MaxPriority(5))
		before := model("raised", ns).MaxPriority(0).Obj()
		h = NewHandler(Options{Client: k8sClient, Models: newFakeClient(before), Namespace: ns, RetryAfter: time.Second})
		Expect(post(h, `{"id": "1", "model": "raised", "priority": 3}`).Status).To(Equal(http.StatusAccepted))

		a := post(h, `{"id": "2", "model": "raised", "priority": 6}`)
		Expect(a.Status).To(Equal(http.StatusUnprocessableEntity))
		Expect(a.Body).To(HaveKeyWithValue("error", ContainSubstring("maxPriority of model raised (5)")))
	})

	It("bounds the priority and limits a request may ask for, naming the field", func() {
		createModel(model("bounded", ns).MaxPriority(5).Timeout(60).QueueTimeout(30))

		for field, body := range map[string]string{
			"priority":              `{"id": "1", "model": "bounded", "priority": 6}`,
			"timeout_seconds":       `{"id": "1", "model": "bounded", "timeout_seconds": 61}`,
			"queue_timeout_seconds": `{"id": "1", "model": "bounded", "queue_timeout_seconds": 31}`,
		} {
			a := post(h, body)
			Expect(a.Status).To(Equal(http.StatusUnprocessableEntity), field)
			Expect(a.Body).To(HaveKeyWithValue("field", field))
			Expect(a.Body).To(HaveKeyWithValue("error", ContainSubstring("model bounded")))
		}
		a := post(h, `{"id": "0", "priority": 1}`)
		Expect(a.Status).To(Equal(http.StatusUnprocessableEntity), "the default model's maxPriority is 0")
		Expect(a.Body).To(HaveKeyWithValue("field", "priority"))
		Expect(stored()).To(BeEmpty())

		Expect(post(h, `{"id": "1", "model": "bounded", "priority": 5, "timeout_seconds": 60, "queue_timeout_seconds": 30}`).
			Status).To(Equal(http.StatusAccepted))
		ir := stored()[0]
		Expect(ir.Spec.Priority).To(Equal(int32(5)))
		Expect(ir.Spec.TimeoutSeconds).To(HaveValue(Equal(int64(60))))
		Expect(ir.Spec.QueueTimeoutSeconds).To(HaveValue(Equal(int64(30))))

		By("a model without a queue timeout lets a request ask for one of any length")
		Expect(post(h, `{"id": "2", "queue_timeout_seconds": 86400}`).Status).To(Equal(http.StatusAccepted))
	})

	It("refuses a resubmission with another priority or limit, naming it", func() {
		createModel(model("ranked", ns).MaxPriority(10))
		const body = `{"id": "1", "model": "ranked", "priority": 3, "timeout_seconds": 60}`
		Expect(post(h, body).Status).To(Equal(http.StatusAccepted))
		Expect(post(h, `{"timeout_seconds": 60, "id": "1", "priority": 3, "model": "ranked"}`).Status).To(Equal(http.StatusAccepted))

		for field, other := range map[string]string{
			"priority":              `{"id": "1", "model": "ranked", "priority": 4, "timeout_seconds": 60}`,
			"timeout_seconds":       `{"id": "1", "model": "ranked", "priority": 3}`,
			"queue_timeout_seconds": `{"id": "1", "model": "ranked", "priority": 3, "timeout_seconds": 60, "queue_timeout_seconds": 5}`,
		} {
			a := post(h, other)
			Expect(a.Status).To(Equal(http.StatusConflict), field)
			Expect(a.Body).To(HaveKeyWithValue("field", field))
		}
		Expect(stored()).To(HaveLen(1))
	})

	It("shows in GET what the request asked of its model", func() {
		createModel(model("ranked", ns).MaxPriority(10))
		Expect(post(h, `{"id": "1", "model": "ranked", "priority": 7, "queue_timeout_seconds": 20}`).Status).
			To(Equal(http.StatusAccepted))
		a := call(h, http.MethodGet, "/v1/inferences/1", "", "")
		Expect(a.Body).To(SatisfyAll(HaveKeyWithValue("priority", 7.0), HaveKeyWithValue("queue_timeout_seconds", 20.0),
			Not(HaveKey("timeout_seconds"))))

		Expect(post(h, `{"id": "plain"}`).Status).To(Equal(http.StatusAccepted))
		a = call(h, http.MethodGet, "/v1/inferences/plain", "", "")
		Expect(a.Body).NotTo(Or(HaveKey("priority"), HaveKey("queue_timeout_seconds"), HaveKey("timeout_seconds")))
	})
})

// A model the cache holds costs the API server no read.
func TestModelsAreReadFromTheCacheFirst(t *testing.T) {
	direct := 0
	counting := interceptor.NewClient(newFakeClient(defaultModel("ml")), interceptor.Funcs{
		Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
			if _, ok := obj.(*inferencev1alpha1.InferenceModel); ok {
				direct++
			}
			return c.Get(ctx, key, obj, opts...)
		},
	})
	h := NewHandler(Options{Client: counting, Models: newFakeClient(defaultModel("ml")), Namespace: "ml"})
	if rec := serve(h, http.MethodPost, "/v1/inferences", `{"id": "1"}`); rec.Code != http.StatusAccepted {
		t.Fatalf("answered %d %s", rec.Code, rec.Body.String())
	}
	if direct != 0 {
		t.Errorf("the model was read from the API server %d times, though the cache holds it", direct)
	}
}

// The admission policy in config/policy refuses what the shim refuses, when
// a model changes between the shim's read and the create; the API server
// names no field, so the shim finds it in the policy's message.
func TestAdmissionPolicyRefusalsNameTheField(t *testing.T) {
	const prefix = "ValidatingAdmissionPolicy 'request-limits' with binding 'request-limits' denied request: "
	tests := []struct {
		name, message string
		want          map[string]string
	}{
		{"priority", prefix + "spec.priority 5 is above the maxPriority of model default (0)",
			map[string]string{"field": "priority", "error": "priority 5 is above the maxPriority of model default (0)"}},
		{"timeout", prefix + "spec.timeoutSeconds 1000 is longer than the timeoutSeconds of model default (900); " +
			"a request may only ask for a shorter limit",
			map[string]string{"field": "timeout_seconds", "error": "timeout_seconds 1000 is longer than the timeoutSeconds " +
				"of model default (900); a request may only ask for a shorter limit"}},
		{"queue timeout", prefix + "spec.queueTimeoutSeconds 60 is longer than the queueTimeoutSeconds of model m (30); " +
			"a request may only ask for a shorter limit",
			map[string]string{"field": "queue_timeout_seconds", "error": "queue_timeout_seconds 60 is longer than the " +
				"queueTimeoutSeconds of model m (30); a request may only ask for a shorter limit"}},
		{"another policy's words pass as they are", prefix + "something else",
			map[string]string{"error": prefix + "something else"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// As the API server answers a policy's refusal: a cause with a message and no field.
			refusal := &apierrors.StatusError{ErrStatus: metav1.Status{
				Status: metav1.StatusFailure, Code: http.StatusUnprocessableEntity, Reason: metav1.StatusReasonInvalid,
				Message: "inferencerequests.inference.kinfer.dev \"req-1\" is forbidden: " + tc.message,
				Details: &metav1.StatusDetails{Causes: []metav1.StatusCause{{Message: tc.message}}},
			}}
			rec := httptest.NewRecorder()
			NewHandler(Options{}).writeFailure(rec, httptest.NewRequest(http.MethodPost, "/v1/inferences", nil), refusal)
			if rec.Code != http.StatusUnprocessableEntity {
				t.Fatalf("answered %d, want 422", rec.Code)
			}
			var got map[string]string
			if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("answer (-want +got):\n%s", diff)
			}
		})
	}
}

func TestWithinLimitsOfAModelWithoutLimits(t *testing.T) {
	// A model read before the API server defaulted it, or one made by a
	// test: no maxPriority means 0, no timeout means no bound.
	m := &inferencev1alpha1.InferenceModel{ObjectMeta: metav1.ObjectMeta{Name: "bare"}}
	tests := []struct {
		name string
		s    Submission
		want *refusal
	}{
		{"nothing asked", Submission{}, nil},
		{"long limits", Submission{TimeoutSeconds: ptr.To[int64](1 << 40), QueueTimeoutSeconds: ptr.To[int64](1 << 40)}, nil},
		{"a priority", Submission{Priority: 1}, &refusal{422, "priority"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, refusalOf(tc.s.withinLimits(m))); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}
