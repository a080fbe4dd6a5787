package shim

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
)

var _ = Describe("Changing a stored request", func() {
	var (
		ns string
		h  *Handler
	)

	BeforeEach(func() {
		ns = newNamespace()
		h = NewHandler(Options{Client: k8sClient, Namespace: ns, RetryAfter: time.Second})
	})

	storedRequest := func(id string) *inferencev1alpha1.InferenceRequest {
		GinkgoHelper()
		ir := &inferencev1alpha1.InferenceRequest{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: ObjectName(id)}, ir)).To(Succeed())
		return ir
	}
	// end plays the controller: the request ends in phase, its delivery in state.
	end := func(id string, phase inferencev1alpha1.RequestPhase, state inferencev1alpha1.DeliveryState) {
		GinkgoHelper()
		ir := storedRequest(id)
		ir.Status.Phase = phase
		ir.Status.Delivery.State = state
		Expect(k8sClient.Status().Update(ctx, ir)).To(Succeed())
	}
	redeliverValue := func(id string) string {
		GinkgoHelper()
		return storedRequest(id).Annotations[inferencev1alpha1.AnnotationRedeliver]
	}
	const withCallback = `{"id": "1", "callback_url": "https://hooks.example.com/r"}`

	Describe("cancel", func() {
		It("sets spec.cancel on a waiting request, and answers the same while it ends", func() {
			Expect(post(h, withCallback).Status).To(Equal(http.StatusAccepted))
			Expect(storedRequest("1").Spec.Cancel).To(BeFalse())

			a := call(h, http.MethodPost, "/v1/inferences/1/cancel", "", "")
			Expect(a.Status).To(Equal(http.StatusAccepted))
			Expect(a.Body).To(Equal(map[string]any{"message": "Canceling", "id": "1", "name": ObjectName("1")}))
			Expect(storedRequest("1").Spec.Cancel).To(BeTrue())

			// The controller has not ended it yet: asking again changes nothing.
			version := storedRequest("1").ResourceVersion
			a = call(h, http.MethodPost, "/v1/namespaces/"+ns+"/inferences/1/cancel", "application/json", "")
			Expect(a.Status).To(Equal(http.StatusAccepted))
			Expect(storedRequest("1").ResourceVersion).To(Equal(version))
		})

		It("refuses a request that has ended, and an unknown id", func() {
			Expect(post(h, withCallback).Status).To(Equal(http.StatusAccepted))
			end("1", inferencev1alpha1.PhaseSucceeded, inferencev1alpha1.DeliveryDelivered)

			a := call(h, http.MethodPost, "/v1/inferences/1/cancel", "", "")
			Expect(a.Status).To(Equal(http.StatusConflict))
			Expect(a.Body).To(HaveKeyWithValue("error", ContainSubstring("has already ended (phase Succeeded)")))
			Expect(storedRequest("1").Spec.Cancel).To(BeFalse())

			Expect(call(h, http.MethodPost, "/v1/inferences/unknown/cancel", "", "")).To(HaveField("Status", http.StatusNotFound))
		})

		It("reads the request again when another writer changed it first", func() {
			Expect(post(h, withCallback).Status).To(Equal(http.StatusAccepted))
			// The first patch finds the request changed since it was read
			// (the controller ended it): the second read decides.
			direct, err := client.NewWithWatch(cfg, client.Options{Scheme: testScheme})
			Expect(err).NotTo(HaveOccurred())
			racing := interceptor.NewClient(direct, interceptor.Funcs{
				Patch: func(ctx context.Context, c client.WithWatch, obj client.Object, patch client.Patch, opts ...client.PatchOption) error {
					if storedRequest("1").Status.Phase == "" {
						end("1", inferencev1alpha1.PhaseFailed, inferencev1alpha1.DeliveryPending)
					}
					return c.Patch(ctx, obj, patch, opts...)
				},
			})
			h = NewHandler(Options{Client: racing, Namespace: ns, RetryAfter: time.Second})
			a := call(h, http.MethodPost, "/v1/inferences/1/cancel", "", "")
			Expect(a.Status).To(Equal(http.StatusConflict), "%v", a.Body)
			Expect(a.Body).To(HaveKeyWithValue("error", ContainSubstring("has already ended (phase Failed)")))
			Expect(storedRequest("1").Spec.Cancel).To(BeFalse(), "the cancel was written over the ended request")
		})
	})

	Describe("redeliver", func() {
		It("starts a fresh delivery of an ended request, with a new value each time", func() {
			Expect(post(h, withCallback).Status).To(Equal(http.StatusAccepted))
			end("1", inferencev1alpha1.PhaseSucceeded, inferencev1alpha1.DeliveryDelivered)

			a := call(h, http.MethodPost, "/v1/inferences/1/redeliver", "", "")
			Expect(a.Status).To(Equal(http.StatusAccepted))
			Expect(a.Body).To(Equal(map[string]any{"message": "Redelivering", "id": "1", "name": ObjectName("1")}))
			first := redeliverValue("1")
			Expect(first).NotTo(BeEmpty())

			end("1", inferencev1alpha1.PhaseSucceeded, inferencev1alpha1.DeliveryFailed)
			Expect(call(h, http.MethodPost, "/v1/namespaces/"+ns+"/inferences/1/redeliver", "", "").Status).
				To(Equal(http.StatusAccepted))
			Expect(redeliverValue("1")).NotTo(Or(BeEmpty(), Equal(first)))
		})

		It("refuses while a delivery is pending", func() {
			Expect(post(h, withCallback).Status).To(Equal(http.StatusAccepted))
			a := call(h, http.MethodPost, "/v1/inferences/1/redeliver", "", "")
			Expect(a.Status).To(Equal(http.StatusConflict), "not ended")
			Expect(a.Body).To(HaveKeyWithValue("error", HavePrefix("a delivery is pending;")))

			end("1", inferencev1alpha1.PhaseSucceeded, inferencev1alpha1.DeliveryPending)
			a = call(h, http.MethodPost, "/v1/inferences/1/redeliver", "", "")
			Expect(a.Status).To(Equal(http.StatusConflict), "ended, delivery under way")
			Expect(a.Body).To(HaveKeyWithValue("error", HavePrefix("a delivery is pending;")))
			Expect(storedRequest("1").Annotations).NotTo(HaveKey(inferencev1alpha1.AnnotationRedeliver))
		})

		It("refuses a request without a callback_url, and an unknown id", func() {
			Expect(post(h, `{"id": "polled"}`).Status).To(Equal(http.StatusAccepted))
			end("polled", inferencev1alpha1.PhaseSucceeded, inferencev1alpha1.DeliveryNotRequested)
			a := call(h, http.MethodPost, "/v1/inferences/polled/redeliver", "", "")
			Expect(a.Status).To(Equal(http.StatusConflict))
			Expect(a.Body).To(HaveKeyWithValue("error", ContainSubstring("has no callback_url")))
			Expect(storedRequest("polled").Annotations).NotTo(HaveKey(inferencev1alpha1.AnnotationRedeliver))

			Expect(call(h, http.MethodPost, "/v1/inferences/unknown/redeliver", "", "")).To(HaveField("Status", http.StatusNotFound))
		})
	})

	Describe("the same submission again", func() {
		It("redelivers once the request has ended and its delivery is over", func() {
			Expect(post(h, withCallback).Status).To(Equal(http.StatusAccepted))

			By("nothing more while the callback is still to come")
			Expect(post(h, withCallback).Status).To(Equal(http.StatusAccepted))
			end("1", inferencev1alpha1.PhaseSucceeded, inferencev1alpha1.DeliveryPending)
			Expect(post(h, withCallback).Status).To(Equal(http.StatusAccepted))
			Expect(storedRequest("1").Annotations).NotTo(HaveKey(inferencev1alpha1.AnnotationRedeliver))

			By("a redelivery once it was delivered")
			end("1", inferencev1alpha1.PhaseSucceeded, inferencev1alpha1.DeliveryDelivered)
			a := post(h, withCallback)
			Expect(a.Status).To(Equal(http.StatusAccepted))
			Expect(a.Body).To(HaveKeyWithValue("message", "Received"))
			first := redeliverValue("1")
			Expect(first).NotTo(BeEmpty())

			By("no second one before the controller takes the first up")
			Expect(post(h, withCallback).Status).To(Equal(http.StatusAccepted))
			Expect(redeliverValue("1")).To(Equal(first))

			By("another once it has, and delivered again")
			ir := storedRequest("1")
			ir.Status.Delivery.ObservedRedeliver = first
			Expect(k8sClient.Status().Update(ctx, ir)).To(Succeed())
			Expect(post(h, withCallback).Status).To(Equal(http.StatusAccepted))
			Expect(redeliverValue("1")).NotTo(Or(BeEmpty(), Equal(first)))
		})

		It("answers a burst of them 202, asking for one redelivery until the controller takes it up", func() {
			Expect(post(h, withCallback).Status).To(Equal(http.StatusAccepted))
			end("1", inferencev1alpha1.PhaseSucceeded, inferencev1alpha1.DeliveryDelivered)
			var wg sync.WaitGroup
			codes := make([]int, 20)
			for i := range codes {
				wg.Go(func() {
					defer GinkgoRecover()
					codes[i] = post(h, withCallback).Status
				})
			}
			wg.Wait()
			Expect(codes).To(HaveEach(http.StatusAccepted))
			Expect(redeliverValue("1")).NotTo(BeEmpty())
		})

		It("does not redeliver a request that has no callback_url", func() {
			Expect(post(h, `{"id": "polled"}`).Status).To(Equal(http.StatusAccepted))
			end("polled", inferencev1alpha1.PhaseSucceeded, inferencev1alpha1.DeliveryNotRequested)
			Expect(post(h, `{"id": "polled"}`).Status).To(Equal(http.StatusAccepted))
			Expect(storedRequest("polled").Annotations).NotTo(HaveKey(inferencev1alpha1.AnnotationRedeliver))
		})
	})
})

// verbs is an Authorizer that lets every call in and records the verb each
// was checked for.
type verbs struct {
	mu   sync.Mutex
	seen []string
}

func (v *verbs) Authorize(_ *http.Request, verb, _ string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.seen = append(v.seen, verb)
	return nil
}

func TestEachRouteIsAuthorizedForItsVerb(t *testing.T) {
	tests := []struct {
		method, path, body string
		want               string
	}{
		{http.MethodPost, "/v1/inferences", `{"id": "1"}`, "create"},
		{http.MethodGet, "/v1/inferences/1", "", "get"},
		{http.MethodDelete, "/v1/inferences/1", "", "delete"},
		{http.MethodPost, "/v1/inferences/1/cancel", "", "patch"},
		{http.MethodPost, "/v1/namespaces/ml/inferences/1/cancel", "", "patch"},
		{http.MethodPost, "/v1/inferences/1/redeliver", "", "patch"},
		{http.MethodPost, "/v1/namespaces/ml/inferences/1/redeliver", "", "patch"},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			auth := &verbs{}
			h := NewHandler(Options{Client: newFakeClient(defaultModel("ml")), Namespace: "ml", Authorizer: auth})
			serve(h, tc.method, tc.path, tc.body)
			if diff := cmp.Diff([]string{tc.want}, auth.seen); diff != "" {
				t.Errorf("verbs checked (-want +got):\n%s", diff)
			}
		})
	}
}

// Every value of the redeliver annotation starts one redelivery, so no two
// may be alike, however close together they are asked for.
func TestRedeliverValuesAreNeverAlike(t *testing.T) {
	values := make([]string, 1000)
	for i := range values {
		ir := &inferencev1alpha1.InferenceRequest{}
		askRedelivery(ir)
		values[i] = ir.Annotations[inferencev1alpha1.AnnotationRedeliver]
	}
	slices.Sort(values)
	if distinct := len(slices.Compact(values)); distinct != len(values) {
		t.Errorf("%d values hold only %d distinct ones", len(values), distinct)
	}
}

// A request that changes under every attempt is answered 503, to be tried
// again, rather than waited on.
func TestChangeGivesUpWhenTheRequestKeepsChanging(t *testing.T) {
	ir := (&Submission{ID: "1", Model: "default"}).object("default")
	patches := 0
	busy := interceptor.NewClient(newFakeClient(ir), interceptor.Funcs{
		Patch: func(context.Context, client.WithWatch, client.Object, client.Patch, ...client.PatchOption) error {
			patches++
			return apierrors.NewConflict(schema.GroupResource{Group: "inference.kinfer.dev", Resource: "inferencerequests"},
				ir.Name, errors.New("the object has been modified"))
		},
	})
	rec := serve(NewHandler(Options{Client: busy, Namespace: "default", RetryAfter: 2 * time.Second}),
		http.MethodPost, "/v1/inferences/1/cancel", "")
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") != "2" {
		t.Errorf("answered %d (Retry-After %q) %s, want 503 with Retry-After 2", rec.Code, rec.Header().Get("Retry-After"),
			rec.Body.String())
	}
	if patches != maxChangeAttempts {
		t.Errorf("%d patches, want %d", patches, maxChangeAttempts)
	}
}
