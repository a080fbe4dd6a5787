package shim

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
)

// The Python example must work against the real shim: it submits the original
// service's body and prints the callback. The test stands in for the
// controller and POSTs the callback the request asks for.
var _ = Describe("The Python example client", func() {
	It("submits, and prints the callback it receives", func() {
		python, err := exec.LookPath("python3")
		Expect(err).NotTo(HaveOccurred(), "python3 is needed to test examples/python")

		ns := newNamespace()
		listener, err := net.Listen("tcp", "127.0.0.1:0")
		Expect(err).NotTo(HaveOccurred())
		srv := &Server{Handler: NewHandler(Options{Client: k8sClient, Namespace: ns, RetryAfter: time.Second}), Log: logr.Discard(), Metrics: NewMetrics(), listener: listener}
		serveCtx, stop := context.WithCancel(context.Background())
		defer stop()
		go func() { _ = srv.Start(serveCtx) }()

		receiverPort := freePort()
		cmd := exec.Command(python, filepath.Join("..", "..", "examples", "python", "client.py"),
			"--server", "http://"+listener.Addr().String(), "--listen", "127.0.0.1:"+receiverPort,
			"--id", "py-1234", "--input", `{"text": "great movie"}`, "--timeout", "60")
		// The output is read while the process may still write it.
		out := &lockedBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		Expect(cmd.Start()).To(Succeed())
		defer func() { _ = cmd.Process.Kill() }()

		ir := &inferencev1alpha1.InferenceRequest{}
		Eventually(func() error {
			return k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: ObjectName("py-1234")}, ir)
		}, "20s").Should(Succeed())
		Expect(ir.Spec.CallbackURL).To(Equal("http://127.0.0.1:" + receiverPort + "/v1/results"))
		Expect(ir.Spec.Input.Raw).To(MatchJSON(`{"text": "great movie"}`))

		body := `{"type":"inference.completed","id":"py-1234","status":"succeeded","result":"OK"}`
		req, err := http.NewRequest(http.MethodPost, ir.Spec.CallbackURL, strings.NewReader(body))
		Expect(err).NotTo(HaveOccurred())
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("webhook-id", "msg_test")
		resp, err := http.DefaultClient.Do(req)
		Expect(err).NotTo(HaveOccurred())
		Expect(resp.StatusCode).To(Equal(http.StatusOK))
		_ = resp.Body.Close()

		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		Eventually(done, "20s").Should(Receive(BeNil()), out.String())
		Expect(out.String()).To(ContainSubstring(`Server answered 202: {"message": "Received", "id": "py-1234"`))
		Expect(out.String()).To(ContainSubstring("Callback received (webhook-id msg_test): " + body))
	})
})

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func freePort() string {
	GinkgoHelper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	Expect(err).NotTo(HaveOccurred())
	defer func() { _ = l.Close() }()
	_, port, err := net.SplitHostPort(l.Addr().String())
	Expect(err).NotTo(HaveOccurred())
	return port
}
