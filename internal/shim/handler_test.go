package shim

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	"github.com/google/go-cmp/cmp"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/callback"
	"github.com/kinfer/kinfer/internal/testutil"
)

func jsonValue(raw string) *apiextensionsv1.JSON { return &apiextensionsv1.JSON{Raw: []byte(raw)} }

type answer struct {
	Status int
	Header http.Header
	Body   map[string]any
}

func call(h http.Handler, method, path, contentType, body string) answer {
	GinkgoHelper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	a := answer{Status: rec.Code, Header: rec.Header()}
	Expect(rec.Header().Get("Content-Type")).To(Equal("application/json"), rec.Body.String())
	Expect(json.Unmarshal(rec.Body.Bytes(), &a.Body)).To(Succeed(), rec.Body.String())
	return a
}

func post(h http.Handler, body string) answer {
	GinkgoHelper()
	return call(h, http.MethodPost, "/v1/inferences", "application/json", body)
}

var _ = Describe("Handler", func() {
	var (
		ns string
		h  *Handler
	)

	BeforeEach(func() {
		ns = newNamespace()
		policy, err := callback.NewPolicy(nil, false)
		Expect(err).NotTo(HaveOccurred())
		h = NewHandler(Options{Client: k8sClient, Namespace: ns, Denied: policy.Check, RetryAfter: 5 * time.Second})
	})

	stored := func() []inferencev1alpha1.InferenceRequest {
		GinkgoHelper()
		var list inferencev1alpha1.InferenceRequestList
		Expect(k8sClient.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
		return list.Items
	}

	It("stores the original service's submission and answers Received", func() {
		a := post(h, `{"id": "1234", "callback_url": "http://client.example.com:8001/v1/results"}`)
		Expect(a.Status).To(Equal(http.StatusAccepted))
		Expect(a.Body).To(Equal(map[string]any{"message": "Received", "id": "1234", "name": ObjectName("1234")}))

		items := stored()
		Expect(items).To(HaveLen(1))
		ir := items[0]
		Expect(ir.Name).To(Equal(ObjectName("1234")))
		Expect(ir.Labels).To(HaveKeyWithValue(inferencev1alpha1.LabelIDHash, IDHashLabel("1234")))
		Expect(ir.Labels).To(HaveKeyWithValue(inferencev1alpha1.LabelModel, "default"), "for kubectl get ir -l")
		Expect(ir.Spec.ID).To(Equal("1234"))
		Expect(ir.Spec.CallbackURL).To(Equal("http://client.example.com:8001/v1/results"))
		Expect(ir.Spec.Model).To(Equal("default"))
		Expect(ir.Spec.Input).To(BeNil())
	})

	It("takes a model and any JSON input, and ids as numbers", func() {
		createModel(model("sentiment", ns))
		a := post(h, `{"id": 42, "model": "sentiment", "input": {"text": "great movie", "lang": ["en"]}}`)
		Expect(a.Status).To(Equal(http.StatusAccepted))
		Expect(a.Body).To(HaveKeyWithValue("id", "42"))
		ir := stored()[0]
		Expect(ir.Spec.ID).To(Equal("42"))
		Expect(ir.Spec.Model).To(Equal("sentiment"))
		Expect(ir.Spec.Input.Raw).To(MatchJSON(`{"text":"great movie","lang":["en"]}`))
	})

	It("stores a resubmission once and refuses the same id with another body", func() {
		createModel(model("m2", ns))
		body := `{"id": "order-7", "callback_url": "https://hooks.example.com/r", "input": {"b": 1, "a": 2}}`
		Expect(post(h, body).Status).To(Equal(http.StatusAccepted))
		// The same body, with keys in another order and other spacing.
		Expect(post(h, `{"input":{"a":2,"b":1},"callback_url":"https://hooks.example.com/r","id":"order-7"}`).Status).
			To(Equal(http.StatusAccepted))
		Expect(stored()).To(HaveLen(1))

		for field, other := range map[string]string{
			"callback_url": `{"id": "order-7", "callback_url": "https://other.example.com/r", "input": {"b": 1, "a": 2}}`,
			"input":        `{"id": "order-7", "callback_url": "https://hooks.example.com/r", "input": {"b": 2}}`,
			"model":        `{"id": "order-7", "callback_url": "https://hooks.example.com/r", "input": {"b": 1, "a": 2}, "model": "m2"}`,
			"timeout_seconds": `{"id": "order-7", "callback_url": "https://hooks.example.com/r", "input": {"b": 1, "a": 2},
				"timeout_seconds": 60}`,
			"queue_timeout_seconds": `{"id": "order-7", "callback_url": "https://hooks.example.com/r", "input": {"b": 1, "a": 2},
				"queue_timeout_seconds": 60}`,
		} {
			a := post(h, other)
			Expect(a.Status).To(Equal(http.StatusConflict), field)
			Expect(a.Body).To(HaveKeyWithValue("field", field))
		}
		Expect(stored()).To(HaveLen(1))
	})

	It("answers a reused id with the field that differs, never with what is stored", func() {
		createModel(model("private-model", ns))
		createModel(model("guess", ns))
		const secretURL = "https://hooks.example.com/r?token=s3cr3t-t0ken"
		Expect(post(h, `{"id": "taken", "callback_url": "`+secretURL+`", "model": "private-model"}`).Status).
			To(Equal(http.StatusAccepted))

		for field, body := range map[string]string{
			"callback_url": `{"id": "taken", "callback_url": "https://attacker.example/r?token=mine", "model": "private-model"}`,
			"model":        `{"id": "taken", "callback_url": "` + secretURL + `", "model": "guess"}`,
			"input":        `{"id": "taken", "callback_url": "` + secretURL + `", "model": "private-model", "input": 1}`,
		} {
			req := httptest.NewRequest(http.MethodPost, "/v1/inferences", strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			Expect(rec.Code).To(Equal(http.StatusConflict), field)
			var answer map[string]string
			Expect(json.Unmarshal(rec.Body.Bytes(), &answer)).To(Succeed())
			Expect(answer).To(HaveKeyWithValue("field", field))
			for _, stored := range []string{"hooks.example.com", "s3cr3t-t0ken", "private-model"} {
				Expect(rec.Body.String()).NotTo(ContainSubstring(stored), "the 409 for %s shows what is stored", field)
			}
		}
	})

	It("compares inputs as sent, though the API server rewrites what it stores", func() {
		input := `{"z": 1.0, "a": [0.1, 1e2, 12345678901234567890], "m": {"y": "\u00e9", "b": null}}`
		Expect(post(h, `{"id": "numbers", "input": `+input+`}`).Status).To(Equal(http.StatusAccepted))

		// What the API server keeps is not what was sent: numbers pass through
		// float64 and keys are sorted.
		ir := stored()[0]
		Expect(ir.Spec.Input.Raw).NotTo(MatchJSON(input))
		Expect(string(ir.Spec.Input.Raw)).To(HavePrefix(`{"a":[0.1,100,`))
		Expect(ir.Annotations).To(HaveKey(inferencev1alpha1.AnnotationInputHash))

		Expect(post(h, `{"id": "numbers", "input": `+input+`}`).Status).To(Equal(http.StatusAccepted), "the same body")
		Expect(post(h, `{"input": {"m": {"b": null, "y": "é"}, "a": [0.1, 1e2, 12345678901234567890], "z": 1.0}, "id": "numbers"}`).Status).
			To(Equal(http.StatusAccepted), "the same input with keys in another order and another escape")

		// Each differs past the 15th digit, where float64 sees the same number.
		for _, other := range []string{
			`{"z": 1.0, "a": [0.1, 1e2, 12345678901234567891], "m": {"y": "é", "b": null}}`,
			`{"z": 1.0, "a": [0.10000000000000001, 1e2, 12345678901234567890], "m": {"y": "é", "b": null}}`,
		} {
			a := post(h, `{"id": "numbers", "input": `+other+`}`)
			Expect(a.Status).To(Equal(http.StatusConflict), other)
			Expect(a.Body).To(HaveKeyWithValue("field", "input"))
		}
		Expect(stored()).To(HaveLen(1))
	})

	It("compares the input of a request made without the shim exactly, number by number", func() {
		ir := &inferencev1alpha1.InferenceRequest{}
		ir.Name, ir.Namespace, ir.Spec.ID = ObjectName("by-hand"), ns, "by-hand"
		ir.Spec.Input = jsonValue(`{"x": 0.1234567890123456, "n": 1.0}`)
		Expect(k8sClient.Create(ctx, ir)).To(Succeed())

		Expect(post(h, `{"id": "by-hand", "input": {"n": 1, "x": 0.1234567890123456}}`).Status).To(Equal(http.StatusAccepted))
		a := post(h, `{"id": "by-hand", "input": {"n": 1, "x": 0.12345678901234560001}}`) // the same float64
		Expect(a.Status).To(Equal(http.StatusConflict))
		Expect(a.Body).To(HaveKeyWithValue("field", "input"))
	})

	It("creates one request for 50 identical submissions at once, and answers each 202", func() {
		var wg sync.WaitGroup
		codes := make([]int, 50)
		for i := range codes {
			wg.Go(func() {
				defer GinkgoRecover()
				codes[i] = post(h, `{"id": "burst", "callback_url": "https://hooks.example.com/r"}`).Status
			})
		}
		wg.Wait()
		Expect(codes).To(HaveEach(http.StatusAccepted))
		Expect(stored()).To(HaveLen(1))
	})

	It("puts requests in the namespace the path names", func() {
		h = NewHandler(Options{Client: k8sClient, Namespace: ns, Authorizer: allowAll{}, RetryAfter: time.Second})
		other := newNamespace()
		a := call(h, http.MethodPost, "/v1/namespaces/"+other+"/inferences", "application/json", `{"id": "1"}`)
		Expect(a.Status).To(Equal(http.StatusAccepted))
		var list inferencev1alpha1.InferenceRequestList
		Expect(k8sClient.List(ctx, &list, client.InNamespace(other))).To(Succeed())
		Expect(list.Items).To(HaveLen(1))
		Expect(stored()).To(BeEmpty())

		// Its model cannot exist either, and the API server does not tell
		// one missing from the other.
		a = call(h, http.MethodPost, "/v1/namespaces/no-such-ns/inferences", "application/json", `{"id": "1"}`)
		Expect(a.Status).To(Equal(http.StatusUnprocessableEntity))
		Expect(a.Body).To(HaveKeyWithValue("error", ContainSubstring(`in namespace "no-such-ns"`)))
	})

	It("reports a request's state and result", func() {
		Expect(post(h, `{"id": "1234", "callback_url": "https://hooks.example.com/r"}`).Status).To(Equal(http.StatusAccepted))
		a := call(h, http.MethodGet, "/v1/inferences/1234", "", "")
		Expect(a.Status).To(Equal(http.StatusOK))
		Expect(a.Body).To(SatisfyAll(HaveKeyWithValue("id", "1234"), HaveKeyWithValue("phase", "Pending"),
			HaveKeyWithValue("delivery", HaveKeyWithValue("state", "Pending")), HaveKey("created_at")))

		ir := stored()[0]
		ir.Status.Phase = inferencev1alpha1.PhaseSucceeded
		ir.Status.Result = jsonValue(`{"label": "positive"}`)
		ir.Status.Delivery = inferencev1alpha1.DeliveryStatus{State: inferencev1alpha1.DeliveryDelivered, Attempts: 2}
		Expect(k8sClient.Status().Update(ctx, &ir)).To(Succeed())

		a = call(h, http.MethodGet, "/v1/inferences/1234", "", "")
		Expect(a.Body).To(SatisfyAll(HaveKeyWithValue("phase", "Succeeded"),
			HaveKeyWithValue("result", map[string]any{"label": "positive"}),
			HaveKeyWithValue("delivery", SatisfyAll(HaveKeyWithValue("state", "Delivered"), HaveKeyWithValue("attempts", 2.0)))))

		Expect(call(h, http.MethodGet, "/v1/inferences/unknown", "", "")).To(HaveField("Status", http.StatusNotFound))
	})

	It("deletes a request by id", func() {
		Expect(post(h, `{"id": "gone-soon"}`).Status).To(Equal(http.StatusAccepted))
		a := call(h, http.MethodDelete, "/v1/inferences/gone-soon", "", "")
		Expect(a.Status).To(Equal(http.StatusAccepted))
		Expect(a.Body).To(HaveKeyWithValue("message", "Deleted"))
		Expect(stored()).To(BeEmpty())
		Expect(call(h, http.MethodDelete, "/v1/inferences/gone-soon", "", "")).To(HaveField("Status", http.StatusNotFound))
		Expect(call(h, http.MethodGet, "/v1/inferences/gone-soon", "", "")).To(HaveField("Status", http.StatusNotFound))
	})

	It("has the API server refuse ids with control characters from kubectl too", func() {
		for _, id := range []string{"a\x00b", "tab\there", "del\x7f", "next-line\u0085", "c1-end\u009f"} {
			ir := &inferencev1alpha1.InferenceRequest{}
			ir.Name, ir.Namespace, ir.Spec.ID = ObjectName(id), ns, id
			err := k8sClient.Create(ctx, ir)
			Expect(apierrors.IsInvalid(err)).To(BeTrue(), "id %q: %v", id, err)
			Expect(err.Error()).To(ContainSubstring("spec.id"))
		}
		ir := &inferencev1alpha1.InferenceRequest{}
		ir.Name, ir.Namespace, ir.Spec.ID = ObjectName("Order #42 / ünïcode ✓\u00a0"), ns, "Order #42 / ünïcode ✓\u00a0"
		Expect(k8sClient.Create(ctx, ir)).To(Succeed())
	})

	It("does not answer for a request made by hand under a shim name with another id", func() {
		ir := &inferencev1alpha1.InferenceRequest{}
		ir.Name, ir.Namespace, ir.Spec.ID = ObjectName("mine"), ns, "someone-else"
		Expect(k8sClient.Create(ctx, ir)).To(Succeed())
		Expect(call(h, http.MethodGet, "/v1/inferences/mine", "", "")).To(HaveField("Status", http.StatusNotFound))
		Expect(post(h, `{"id": "mine"}`)).To(HaveField("Status", http.StatusConflict))
	})

	It("finds a request made with kubectl without spec.id by its name, for every call by id", func() {
		byHand := func(name, id string) {
			GinkgoHelper()
			ir := testutil.MakeInferenceRequest(name, ns).Obj()
			ir.Spec.ID = id
			Expect(k8sClient.Create(ctx, ir)).To(Succeed())
		}
		byHand("by-kubectl", "")
		a := call(h, http.MethodGet, "/v1/inferences/by-kubectl", "", "")
		Expect(a.Status).To(Equal(http.StatusOK))
		Expect(a.Body).To(SatisfyAll(HaveKeyWithValue("id", "by-kubectl"), HaveKeyWithValue("name", "by-kubectl")))
		a = call(h, http.MethodPost, "/v1/inferences/by-kubectl/cancel", "", "")
		Expect(a.Status).To(Equal(http.StatusAccepted), "%v", a.Body)
		Expect(a.Body).To(HaveKeyWithValue("id", "by-kubectl"))
		a = call(h, http.MethodDelete, "/v1/inferences/by-kubectl", "", "")
		Expect(a.Status).To(Equal(http.StatusAccepted))
		Expect(a.Body).To(SatisfyAll(HaveKeyWithValue("id", "by-kubectl"), HaveKeyWithValue("name", "by-kubectl")))
		Expect(stored()).To(BeEmpty())

		By("a request with an id of its own is known by that id, not by its name")
		byHand("named-otherwise", "its-own-id")
		Expect(call(h, http.MethodGet, "/v1/inferences/named-otherwise", "", "")).To(HaveField("Status", http.StatusNotFound))
		Expect(call(h, http.MethodDelete, "/v1/inferences/named-otherwise", "", "")).To(HaveField("Status", http.StatusNotFound))

		By("the shim's own request for an id comes before a request named like it")
		byHand("shared", "")
		Expect(post(h, `{"id": "shared"}`).Status).To(Equal(http.StatusAccepted))
		a = call(h, http.MethodGet, "/v1/inferences/shared", "", "")
		Expect(a.Body).To(HaveKeyWithValue("name", ObjectName("shared")))

		By("an id that cannot be a name is never looked up as one")
		Expect(call(h, http.MethodGet, "/v1/inferences/Not%20A%20Name", "", "")).To(HaveField("Status", http.StatusNotFound))
	})

	It("finds the sample request by its id, and takes its POST as a resubmission", func() {
		raw, err := os.ReadFile(filepath.Join("..", "..", "config", "samples", "inference_v1alpha1_inferencerequest.yaml"))
		Expect(err).NotTo(HaveOccurred())
		sample := &inferencev1alpha1.InferenceRequest{}
		Expect(yaml.UnmarshalStrict(raw, sample)).To(Succeed())
		sample.Namespace = ns
		Expect(k8sClient.Create(ctx, sample)).To(Succeed())

		Expect(call(h, http.MethodGet, "/v1/inferences/1234", "", "")).To(HaveField("Status", http.StatusOK))
		a := post(h, `{"id": "1234", "callback_url": "http://client.ml.svc:8001/v1/results"}`)
		Expect(a.Status).To(Equal(http.StatusAccepted), "%v", a.Body)
		Expect(stored()).To(HaveLen(1))
	})

	DescribeTable("refuses bad submissions, naming the field, and stores nothing",
		func(contentType, body string, status int, field string) {
			a := call(h, http.MethodPost, "/v1/inferences", contentType, body)
			Expect(a.Status).To(Equal(status), fmt.Sprint(a.Body))
			Expect(a.Body).To(HaveKey("error"))
			if field != "" {
				Expect(a.Body).To(HaveKeyWithValue("field", field))
			}
			Expect(stored()).To(BeEmpty())
		},
		Entry("malformed JSON", "application/json", `{"id": "1"`, http.StatusBadRequest, ""),
		Entry("not an object", "application/json", `["1"]`, http.StatusBadRequest, ""),
		Entry("trailing data", "application/json", `{"id": "1"} {"id": "2"}`, http.StatusBadRequest, ""),
		Entry("empty body", "application/json", ``, http.StatusBadRequest, ""),
		Entry("unknown field", "application/json", `{"id": "1", "callback": "http://x.example/"}`, http.StatusBadRequest, "callback"),
		Entry("key in another case", "application/json", `{"id": "1", "Callback_URL": "http://x.example/"}`, http.StatusBadRequest, "Callback_URL"),
		Entry("key twice", "application/json", `{"id": "1", "id": "2"}`, http.StatusBadRequest, "id"),
		Entry("control character in id", "application/json", `{"id": "a\u0000b"}`, http.StatusUnprocessableEntity, "id"),
		Entry("id of the wrong type", "application/json", `{"id": true}`, http.StatusBadRequest, "id"),
		Entry("callback of the wrong type", "application/json", `{"id": "1", "callback_url": 7}`, http.StatusBadRequest, "callback_url"),
		Entry("no id", "application/json", `{"callback_url": "http://x.example/"}`, http.StatusUnprocessableEntity, "id"),
		Entry("empty id", "application/json", `{"id": ""}`, http.StatusUnprocessableEntity, "id"),
		Entry("overlong id", "application/json", `{"id": "`+strings.Repeat("a", 254)+`"}`, http.StatusUnprocessableEntity, "id"),
		Entry("relative callback", "application/json", `{"id": "1", "callback_url": "/v1/results"}`, http.StatusUnprocessableEntity, "callback_url"),
		Entry("ftp callback", "application/json", `{"id": "1", "callback_url": "ftp://x.example/"}`, http.StatusUnprocessableEntity, "callback_url"),
		Entry("loopback callback", "application/json", `{"id": "1", "callback_url": "http://127.0.0.1:8001/"}`,
			http.StatusUnprocessableEntity, "callback_url"),
		Entry("metadata callback", "application/json", `{"id": "1", "callback_url": "http://169.254.169.254/"}`,
			http.StatusUnprocessableEntity, "callback_url"),
		Entry("bad model", "application/json", `{"id": "1", "model": "Bad_Model"}`, http.StatusUnprocessableEntity, "model"),
		Entry("input over 64 KiB", "application/json", `{"id": "1", "input": "`+strings.Repeat("x", 65536)+`"}`,
			http.StatusUnprocessableEntity, "input"),
		Entry("body over 1 MiB", "application/json", `{"id": "1", "input": "`+strings.Repeat("x", 1<<20)+`"}`,
			http.StatusRequestEntityTooLarge, ""),
		Entry("not JSON", "text/plain", `{"id": "1"}`, http.StatusUnsupportedMediaType, ""),
		Entry("no content type", "", `{"id": "1"}`, http.StatusUnsupportedMediaType, ""),
	)

	It("answers unknown routes and methods with JSON errors", func() {
		Expect(call(h, http.MethodGet, "/v2/things", "", "")).To(HaveField("Status", http.StatusNotFound))
		Expect(call(h, http.MethodPut, "/v1/inferences/1", "application/json", "{}").Status).
			To(Or(Equal(http.StatusMethodNotAllowed), Equal(http.StatusNotFound)))
	})

	It("answers 503 with Retry-After when the API server is down, and stores nothing", func() {
		down := &envtest.Environment{CRDDirectoryPaths: testEnv.CRDDirectoryPaths, ErrorIfCRDPathMissing: true}
		downCfg, err := down.Start()
		Expect(err).NotTo(HaveOccurred())
		downCfg.Timeout = 2 * time.Second
		downClient, err := client.New(downCfg, client.Options{Scheme: testScheme})
		Expect(err).NotTo(HaveOccurred())
		Expect(down.Stop()).To(Succeed())

		h = NewHandler(Options{Client: downClient, Namespace: ns, RetryAfter: 5 * time.Second})
		for _, a := range []answer{
			post(h, `{"id": "1"}`),
			call(h, http.MethodGet, "/v1/inferences/1", "", ""),
			call(h, http.MethodDelete, "/v1/inferences/1", "", ""),
		} {
			Expect(a.Status).To(Equal(http.StatusServiceUnavailable), fmt.Sprint(a.Body))
			Expect(a.Header.Get("Retry-After")).To(Equal("5"))
			Expect(a.Body["error"]).NotTo(ContainSubstring("dial tcp"), "no Go error strings for clients")
		}
	})
})

var _ = Describe("ObjectName", func() {
	It("is a DNS label of at most 63 characters for any id", func() {
		for _, id := range []string{"1234", "Order #42 / ünïcode ✓", "----", "✓✓✓", strings.Repeat("x", 253), "a.b.c", "UPPER"} {
			name := ObjectName(id)
			Expect(len(name)).To(BeNumerically("<=", 63), id)
			Expect(name).To(MatchRegexp(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`), id)
			Expect(name).To(Equal(ObjectName(id)), "a pure function of the id")
		}
		Expect(ObjectName("1234")).To(HavePrefix("req-1234-"))
		Expect(ObjectName("A")).NotTo(Equal(ObjectName("a")), "ids differing only in case have different names")
		Expect(ObjectName("a b")).NotTo(Equal(ObjectName("a-b")))
	})
})

// allowAll is an Authorizer that lets every call in, for tests about
// what happens once a call is authorized.
type allowAll struct{}

func (allowAll) Authorize(*http.Request, string, string) error { return nil }

// newFakeClient is an in-memory API server for tests that need no real one,
// holding objects.
func newFakeClient(objects ...client.Object) client.WithWatch {
	return testutil.FakeClient(objects...).Build()
}

// defaultModel is the model submissions naming none run on, in namespace.
func defaultModel(namespace string) *inferencev1alpha1.InferenceModel {
	return testutil.MakeInferenceModel(inferencev1alpha1.DefaultModelName, namespace, "registry.example/worker:1").Obj()
}

func serve(h http.Handler, method, path, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// A Handler is served by http.Server from many goroutines from its first
// call on; run with -race, this fails if serving writes to the Handler.
func TestHandlerServesConcurrentCallsFromTheStart(t *testing.T) {
	h := NewHandler(Options{Client: newFakeClient(), Namespace: "default"})
	start := make(chan struct{})
	codes := make([]int, 8)
	var wg sync.WaitGroup
	for i := range codes {
		wg.Go(func() {
			<-start
			codes[i] = serve(h, http.MethodGet, "/v1/inferences/missing", "").Code
		})
	}
	close(start)
	wg.Wait()
	want := []int{404, 404, 404, 404, 404, 404, 404, 404}
	if diff := cmp.Diff(want, codes); diff != "" {
		t.Errorf("answers (-want +got):\n%s", diff)
	}
}

func TestWithoutAuthenticationOnlyTheShimNamespaceIsServed(t *testing.T) {
	h := NewHandler(Options{Client: newFakeClient(defaultModel("ml")), Namespace: "ml"})
	tests := []struct {
		name, method, path, body string
		want                     int
	}{
		{"submit to the default namespace", http.MethodPost, "/v1/inferences", `{"id": "1"}`, http.StatusAccepted},
		{"submit naming the shim's namespace", http.MethodPost, "/v1/namespaces/ml/inferences", `{"id": "2"}`, http.StatusAccepted},
		{"read in the shim's namespace", http.MethodGet, "/v1/namespaces/ml/inferences/1", "", http.StatusOK},
		{"submit to kube-system", http.MethodPost, "/v1/namespaces/kube-system/inferences", `{"id": "3"}`, http.StatusForbidden},
		{"read in another namespace", http.MethodGet, "/v1/namespaces/other/inferences/1", "", http.StatusForbidden},
		{"delete in another namespace", http.MethodDelete, "/v1/namespaces/other/inferences/1", "", http.StatusForbidden},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := serve(h, tc.method, tc.path, tc.body)
			if rec.Code != tc.want {
				t.Fatalf("answered %d %s, want %d", rec.Code, rec.Body.String(), tc.want)
			}
			if tc.want == http.StatusForbidden && !strings.Contains(rec.Body.String(), `serves namespace \"ml\" only`) {
				t.Errorf("the refusal %s does not say which namespace is served", rec.Body.String())
			}
		})
	}
}

func TestStatusShowsWhyTheRequestIsWhereItIs(t *testing.T) {
	ir := &inferencev1alpha1.InferenceRequest{}
	ir.Name, ir.Spec.ID, ir.Spec.Model = "req-1", "1", "default"
	ir.Status.Phase = inferencev1alpha1.PhaseQueued
	ir.Status.Conditions = []metav1.Condition{
		{Type: inferencev1alpha1.ConditionDelivered, Status: metav1.ConditionFalse, Reason: inferencev1alpha1.ReasonAwaitingResult,
			Message: "no result yet"},
		{Type: inferencev1alpha1.ConditionComplete, Status: metav1.ConditionFalse, Reason: inferencev1alpha1.ReasonQueued,
			Message: "model default runs at most 4 requests at once"},
	}
	got := statusOf(ir)
	want := [2]string{inferencev1alpha1.ReasonQueued, "model default runs at most 4 requests at once"}
	if diff := cmp.Diff(want, [2]string{got.Reason, got.Message}); diff != "" {
		t.Errorf("reason and message (-want +got):\n%s", diff)
	}
}

// A client that hangs up mid-submit is no failure of the shim's: it is not
// logged as an error (with a stack trace in production logs), only at V(1).
func TestClientHangingUpIsNotAnError(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	hungUp := interceptor.NewClient(newFakeClient(defaultModel("default")), interceptor.Funcs{
		Create: func(context.Context, client.WithWatch, client.Object, ...client.CreateOption) error {
			cancel() // the client goes while the API server is asked
			return fmt.Errorf("client rate limiter Wait returned an error: %w", context.Canceled)
		},
	})
	var errorsLogged, infoLogged []string
	log := funcr.New(func(prefix, args string) {
		if strings.Contains(args, `"error"`) && strings.Contains(prefix+args, "Shim call failed") {
			errorsLogged = append(errorsLogged, args)
		} else {
			infoLogged = append(infoLogged, args)
		}
	}, funcr.Options{Verbosity: 1})
	h := NewHandler(Options{Client: hungUp, Namespace: "default"})
	req := httptest.NewRequest(http.MethodPost, "/v1/inferences", strings.NewReader(`{"id": "1"}`)).
		WithContext(logr.NewContext(ctx, log))
	req.Header.Set("Content-Type", "application/json")
	h.ServeHTTP(httptest.NewRecorder(), req)
	if len(errorsLogged) != 0 {
		t.Errorf("a hang-up was logged as an error: %v", errorsLogged)
	}
	if !slices.ContainsFunc(infoLogged, func(l string) bool { return strings.Contains(l, "Client went away") }) {
		t.Errorf("the hang-up was not logged at V(1): %v %v", infoLogged, errorsLogged)
	}
}

// positions is a Queue that knows where some requests stand.
type positions map[string][2]int

func (p positions) Position(ir *inferencev1alpha1.InferenceRequest) (int, int, bool) {
	at, ok := p[ir.Name]
	return at[0], at[1], ok
}

func TestGetTellsWhereAWaitingRequestStands(t *testing.T) {
	c := newFakeClient()
	for _, id := range []string{"first", "third", "running"} {
		s := &Submission{ID: id, Model: "default"}
		if err := c.Create(context.Background(), s.object("default")); err != nil {
			t.Fatal(err)
		}
	}
	h := NewHandler(Options{Client: c, Namespace: "default", Queue: positions{
		ObjectName("first"): {0, 3}, ObjectName("third"): {2, 3},
	}})
	for id, want := range map[string]string{
		"first":   `"queue_position":0,"queue_length":3`,
		"third":   `"queue_position":2,"queue_length":3`,
		"running": "",
	} {
		rec := serve(h, http.MethodGet, "/v1/inferences/"+id, "")
		if rec.Code != http.StatusOK {
			t.Fatalf("GET %s answered %d %s", id, rec.Code, rec.Body.String())
		}
		body := rec.Body.String()
		if want == "" && strings.Contains(body, "queue_") {
			t.Errorf("GET %s of a request that does not wait shows a queue: %s", id, body)
		}
		if want != "" && !strings.Contains(body, want) {
			t.Errorf("GET %s = %s, want it to hold %s", id, body, want)
		}
	}
}
