package shim

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/callback"
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
		h = &Handler{Client: k8sClient, Namespace: ns, Denied: policy.Check, RetryAfter: 5 * time.Second}
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
		Expect(ir.Labels).To(HaveKeyWithValue(LabelIDHash, IDHashLabel("1234")))
		Expect(ir.Spec.ID).To(Equal("1234"))
		Expect(ir.Spec.CallbackURL).To(Equal("http://client.example.com:8001/v1/results"))
		Expect(ir.Spec.Model).To(Equal("default"))
		Expect(ir.Spec.Input).To(BeNil())
	})

	It("takes a model and any JSON input, and ids as numbers", func() {
		a := post(h, `{"id": 42, "model": "sentiment", "input": {"text": "great movie", "lang": ["en"]}}`)
		Expect(a.Status).To(Equal(http.StatusAccepted))
		Expect(a.Body).To(HaveKeyWithValue("id", "42"))
		ir := stored()[0]
		Expect(ir.Spec.ID).To(Equal("42"))
		Expect(ir.Spec.Model).To(Equal("sentiment"))
		Expect(ir.Spec.Input.Raw).To(MatchJSON(`{"text":"great movie","lang":["en"]}`))
	})

	It("stores a resubmission once and refuses the same id with another body", func() {
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
		} {
			a := post(h, other)
			Expect(a.Status).To(Equal(http.StatusConflict), field)
			Expect(a.Body).To(HaveKeyWithValue("field", field))
		}
		Expect(stored()).To(HaveLen(1))
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
		other := newNamespace()
		a := call(h, http.MethodPost, "/v1/namespaces/"+other+"/inferences", "application/json", `{"id": "1"}`)
		Expect(a.Status).To(Equal(http.StatusAccepted))
		var list inferencev1alpha1.InferenceRequestList
		Expect(k8sClient.List(ctx, &list, client.InNamespace(other))).To(Succeed())
		Expect(list.Items).To(HaveLen(1))
		Expect(stored()).To(BeEmpty())

		Expect(call(h, http.MethodPost, "/v1/namespaces/no-such-ns/inferences", "application/json", `{"id": "1"}`)).
			To(HaveField("Status", http.StatusNotFound))
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

	It("does not answer for a request made by hand under a shim name with another id", func() {
		ir := &inferencev1alpha1.InferenceRequest{}
		ir.Name, ir.Namespace, ir.Spec.ID = ObjectName("mine"), ns, "someone-else"
		Expect(k8sClient.Create(ctx, ir)).To(Succeed())
		Expect(call(h, http.MethodGet, "/v1/inferences/mine", "", "")).To(HaveField("Status", http.StatusNotFound))
		Expect(post(h, `{"id": "mine"}`)).To(HaveField("Status", http.StatusConflict))
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

		h.Client = downClient
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
