package shim

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

var _ = Describe("Server", func() {
	var (
		base    string
		cancel  context.CancelFunc
		stopped chan error
		h       *Handler
	)

	BeforeEach(func() {
		h = &Handler{Client: k8sClient, Namespace: newNamespace(), RetryAfter: time.Second}
		listener, err := net.Listen("tcp", "127.0.0.1:0")
		Expect(err).NotTo(HaveOccurred())
		base = "http://" + listener.Addr().String()
		srv := &Server{Handler: h, Log: logr.Discard(), listener: listener}
		var ctx context.Context
		ctx, cancel = context.WithCancel(context.Background())
		stopped = make(chan error, 1)
		go func() { stopped <- srv.Start(ctx) }()
	})

	AfterEach(func() {
		cancel()
		Eventually(stopped, "40s").Should(Receive(BeNil()))
	})

	It("serves health, readiness and its OpenAPI document", func() {
		for _, path := range []string{"/healthz", "/readyz"} {
			resp, err := http.Get(base + path)
			Expect(err).NotTo(HaveOccurred())
			Expect(resp.StatusCode).To(Equal(http.StatusOK), path)
			_ = resp.Body.Close()
		}
		resp, err := http.Get(base + "/openapi.json")
		Expect(err).NotTo(HaveOccurred())
		defer func() { _ = resp.Body.Close() }()
		var doc struct {
			OpenAPI string                    `json:"openapi"`
			Paths   map[string]map[string]any `json:"paths"`
		}
		Expect(json.NewDecoder(resp.Body).Decode(&doc)).To(Succeed())
		Expect(doc.OpenAPI).To(HavePrefix("3."))
		Expect(doc.Paths["/v1/inferences"]).To(HaveKey("post"))
		Expect(doc.Paths["/v1/inferences/{id}"]).To(SatisfyAll(HaveKey("get"), HaveKey("delete")))
	})

	It("counts calls by route and code", func() {
		route := "POST /v1/inferences"
		before := testutil.ToFloat64(shimRequests.WithLabelValues(route, "202"))
		resp, err := http.Post(base+"/v1/inferences", "application/json", strings.NewReader(`{"id": "counted"}`))
		Expect(err).NotTo(HaveOccurred())
		_ = resp.Body.Close()
		Expect(resp.StatusCode).To(Equal(http.StatusAccepted))
		Expect(testutil.ToFloat64(shimRequests.WithLabelValues(route, "202"))).To(Equal(before + 1))
	})

	It("finishes calls in flight when it stops", func() {
		// A client that sends its body slowly keeps a call in flight.
		reader, writer := io.Pipe()
		var wg sync.WaitGroup
		var status int
		wg.Go(func() {
			defer GinkgoRecover()
			resp, err := http.Post(base+"/v1/inferences", "application/json", reader)
			Expect(err).NotTo(HaveOccurred())
			status = resp.StatusCode
			_ = resp.Body.Close()
		})
		_, err := writer.Write([]byte(`{"id": "in-fl`))
		Expect(err).NotTo(HaveOccurred())
		time.Sleep(200 * time.Millisecond) // let the call reach the handler
		cancel()
		Consistently(stopped, "300ms").ShouldNot(Receive(), "the server stopped with a call in flight")
		_, err = writer.Write([]byte(`ight"}`))
		Expect(err).NotTo(HaveOccurred())
		Expect(writer.Close()).To(Succeed())
		wg.Wait()
		Expect(status).To(Equal(http.StatusAccepted))
	})
})
