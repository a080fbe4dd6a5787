package shim

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/google/go-cmp/cmp"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	promtestutil "github.com/prometheus/client_golang/prometheus/testutil"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/callback"
)

var _ = Describe("Server", func() {
	var (
		base    string
		cancel  context.CancelFunc
		stopped chan error
		h       *Handler
		metrics *Metrics
		// active is closed once the server reads a call from a connection.
		active chan struct{}
	)

	BeforeEach(func() {
		h = NewHandler(Options{Client: k8sClient, Namespace: newNamespace(), RetryAfter: time.Second})
		listener, err := net.Listen("tcp", "127.0.0.1:0")
		Expect(err).NotTo(HaveOccurred())
		base = "http://" + listener.Addr().String()
		metrics = NewMetrics()
		active = make(chan struct{})
		var once sync.Once
		srv := &Server{Handler: h, Log: logr.Discard(), Metrics: metrics, listener: listener,
			connState: func(_ net.Conn, state http.ConnState) {
				if state == http.StateActive {
					once.Do(func() { close(active) })
				}
			}}
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
			OpenAPI    string                    `json:"openapi"`
			Paths      map[string]map[string]any `json:"paths"`
			Components struct {
				Schemas struct {
					Callback struct {
						Properties struct {
							Status struct {
								Enum []string `json:"enum"`
							} `json:"status"`
						} `json:"properties"`
					} `json:"Callback"`
				} `json:"schemas"`
			} `json:"components"`
		}
		Expect(json.NewDecoder(resp.Body).Decode(&doc)).To(Succeed())
		Expect(doc.OpenAPI).To(HavePrefix("3."))
		Expect(doc.Paths["/v1/inferences"]).To(HaveKey("post"))
		Expect(doc.Paths["/v1/inferences/{id}"]).To(SatisfyAll(HaveKey("get"), HaveKey("delete")))
		Expect(doc.Paths["/v1/inferences"]["post"]).To(HaveKey("callbacks"))
		Expect(doc.Components.Schemas.Callback.Properties.Status.Enum).To(ConsistOf(
			callback.StatusSucceeded, callback.StatusFailed, callback.StatusCanceled, callback.StatusExpired),
			"the callback statuses the document names are the ones the controller sends")
		Expect(doc.Paths["/v1/webhook-keys"]).To(HaveKey("get"))
		Expect(doc.Paths["/v1/namespaces/{namespace}/webhook-keys"]).To(HaveKey("get"))
		for _, action := range []string{"cancel", "redeliver"} {
			Expect(doc.Paths["/v1/inferences/{id}/"+action]).To(HaveKey("post"), action)
			Expect(doc.Paths["/v1/namespaces/{namespace}/inferences/{id}/"+action]).To(HaveKey("post"), action)
		}
	})

	It("counts calls by route and code", func() {
		route := "POST /v1/inferences"
		before := promtestutil.ToFloat64(metrics.requests.WithLabelValues(route, "202"))
		resp, err := http.Post(base+"/v1/inferences", "application/json", strings.NewReader(`{"id": "counted"}`))
		Expect(err).NotTo(HaveOccurred())
		_ = resp.Body.Close()
		Expect(resp.StatusCode).To(Equal(http.StatusAccepted))
		Expect(promtestutil.ToFloat64(metrics.requests.WithLabelValues(route, "202"))).To(Equal(before + 1))
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
		// Once the server is reading the call, stopping waits for it.
		Eventually(active).Should(BeClosed())
		cancel()
		Consistently(stopped, "300ms").ShouldNot(Receive(), "the server stopped with a call in flight")
		_, err = writer.Write([]byte(`ight"}`))
		Expect(err).NotTo(HaveOccurred())
		Expect(writer.Close()).To(Succeed())
		wg.Wait()
		Expect(status).To(Equal(http.StatusAccepted))
	})
})

// selfSignedCert writes a certificate for 127.0.0.1 and its key to dir and
// returns their paths, with a pool that trusts the certificate.
func selfSignedCert(t *testing.T, dir string) (certFile, keyFile string, roots *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	template := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "kinfer shim test"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	for file, block := range map[string]*pem.Block{certFile: {Type: "CERTIFICATE", Bytes: der}, keyFile: {Type: "PRIVATE KEY", Bytes: keyDER}} {
		if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	roots = x509.NewCertPool()
	roots.AddCert(cert)
	return certFile, keyFile, roots
}

// startServer runs srv on a loopback port until the test ends and returns
// its address.
func startServer(t *testing.T, srv *Server) string {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.listener = listener
	serveCtx, stop := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- srv.Start(serveCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-stopped; err != nil {
			t.Errorf("server stopped with %v", err)
		}
	})
	return listener.Addr().String()
}

func TestServerWithACertificateServesHTTPSOnly(t *testing.T) {
	certFile, keyFile, roots := selfSignedCert(t, t.TempDir())
	store := newFakeClient(defaultModel("default"))
	addr := startServer(t, &Server{Handler: NewHandler(Options{Client: store, Namespace: "default"}), Log: logr.Discard(), Metrics: NewMetrics(),
		CertFile: certFile, KeyFile: keyFile})

	httpsClient := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	resp, err := httpsClient.Post("https://"+addr+"/v1/inferences", "application/json", strings.NewReader(`{"id": "over-tls"}`))
	if err != nil {
		t.Fatalf("HTTPS call failed: %v", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || resp.TLS == nil {
		t.Errorf("HTTPS submission answered %d (TLS %v), want 202 over TLS", resp.StatusCode, resp.TLS != nil)
	}

	resp, err = http.Post("http://"+addr+"/v1/inferences", "application/json", strings.NewReader(`{"id": "plain"}`))
	if err == nil {
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("a plain HTTP call was answered %d, want the TLS server's 400", resp.StatusCode)
		}
	}
	var list inferencev1alpha1.InferenceRequestList
	if err := store.List(context.Background(), &list); err != nil {
		t.Fatal(err)
	}
	ids := make([]string, 0, len(list.Items))
	for _, ir := range list.Items {
		ids = append(ids, ir.Spec.ID)
	}
	if diff := cmp.Diff([]string{"over-tls"}, ids); diff != "" {
		t.Errorf("stored requests (-want +got):\n%s", diff)
	}
}

func TestServerRefusesToStartWithHalfATLSConfiguration(t *testing.T) {
	certFile, keyFile, _ := selfSignedCert(t, t.TempDir())
	for name, srv := range map[string]*Server{
		"certificate without key": {CertFile: certFile},
		"key without certificate": {KeyFile: keyFile},
		"unreadable certificate":  {CertFile: certFile + ".missing", KeyFile: keyFile},
	} {
		t.Run(name, func(t *testing.T) {
			srv.Handler, srv.Log, srv.Metrics, srv.Addr = NewHandler(Options{}), logr.Discard(), NewMetrics(), "127.0.0.1:0"
			stopped, stop := context.WithCancel(context.Background())
			stop() // a server that starts stops at once
			if err := srv.Start(stopped); err == nil {
				t.Error("the server started")
			}
		})
	}
}
