package shim

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
)

// The Python example must work against the real shim: it submits the original
// service's body and prints the callback. The test stands in for the
// controller and POSTs the callback the request asks for.
var _ = Describe("The Python example client", func() {
	var (
		python, ns, server string
		stop               context.CancelFunc
	)

	BeforeEach(func() {
		var err error
		python, err = exec.LookPath("python3")
		Expect(err).NotTo(HaveOccurred(), "python3 is needed to test examples/python")

		ns = newNamespace()
		listener, err := net.Listen("tcp", "127.0.0.1:0")
		Expect(err).NotTo(HaveOccurred())
		server = "http://" + listener.Addr().String()
		srv := &Server{Handler: NewHandler(Options{Client: k8sClient, Namespace: ns, RetryAfter: time.Second}), Log: logr.Discard(), Metrics: NewMetrics(), listener: listener}
		var serveCtx context.Context
		serveCtx, stop = context.WithCancel(context.Background())
		go func() { _ = srv.Start(serveCtx) }()
	})

	AfterEach(func() { stop() })

	// launch runs the client for id, its receiver on a free port.
	launch := func(id string, args ...string) (*exec.Cmd, *testutil.Output) {
		GinkgoHelper()
		cmd := exec.Command(python, append([]string{filepath.Join("..", "..", "examples", "python", "client.py"),
			"--server", server, "--listen", "127.0.0.1:" + freePort(), "--id", id}, args...)...)
		// The output is read while the process may still write it.
		out := &testutil.Output{}
		cmd.Stdout, cmd.Stderr = out, out
		Expect(cmd.Start()).To(Succeed())
		DeferCleanup(func() { _ = cmd.Process.Kill() })
		return cmd, out
	}
	// stored waits until the request for id is stored.
	stored := func(id string) *inferencev1alpha1.InferenceRequest {
		GinkgoHelper()
		ir := &inferencev1alpha1.InferenceRequest{}
		Eventually(func() error {
			return k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: ObjectName(id)}, ir)
		}, "20s").Should(Succeed())
		return ir
	}
	// start runs the client for id and waits until the request is stored.
	start := func(id string, args ...string) (*exec.Cmd, *testutil.Output, *inferencev1alpha1.InferenceRequest) {
		GinkgoHelper()
		cmd, out := launch(id, args...)
		return cmd, out, stored(id)
	}
	// callBack POSTs body to the request's callback URL, as the controller would.
	callBack := func(ir *inferencev1alpha1.InferenceRequest, body string) {
		GinkgoHelper()
		req, err := http.NewRequest(http.MethodPost, ir.Spec.CallbackURL, strings.NewReader(body))
		Expect(err).NotTo(HaveOccurred())
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("webhook-id", "msg_test")
		resp, err := http.DefaultClient.Do(req)
		Expect(err).NotTo(HaveOccurred())
		Expect(resp.StatusCode).To(Equal(http.StatusOK))
		_ = resp.Body.Close()
	}
	exited := func(cmd *exec.Cmd) chan error {
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		return done
	}

	It("submits, and prints the callback it receives", func() {
		cmd, out, ir := start("py-1234", "--input", `{"text": "great movie"}`, "--timeout", "60")
		Expect(ir.Spec.CallbackURL).To(MatchRegexp(`^http://127\.0\.0\.1:[0-9]+/v1/results$`))
		Expect(ir.Spec.Input.Raw).To(MatchJSON(`{"text": "great movie"}`))

		body := `{"type":"inference.completed","id":"py-1234","status":"succeeded","result":"OK"}`
		callBack(ir, body)
		Eventually(exited(cmd), "20s").Should(Receive(BeNil()), out.String())
		Expect(out.String()).To(ContainSubstring(`Server answered 202: {"message": "Received", "id": "py-1234"`))
		Expect(out.String()).To(ContainSubstring("Callback received (webhook-id msg_test): " + body))
	})

	It("says why an inference did not succeed, and exits non-zero", func() {
		cmd, out, ir := start("py-canceled", "--timeout", "60")
		body := `{"type":"inference.completed","id":"py-canceled","status":"canceled"}`
		callBack(ir, body)
		Eventually(exited(cmd), "20s").Should(Receive(HaveField("ProcessState.ExitCode()", 1)), out.String())
		Expect(out.String()).To(ContainSubstring("Callback received (webhook-id msg_test): " + body))
		Expect(out.String()).To(ContainSubstring("Inference py-canceled did not succeed: the inference was canceled"))
	})

	It("with --count, submits each request once the previous one's callback came, and times each", func() {
		cmd, out := launch("py-n", "--count", "3", "--input", `{"text": "great movie"}`, "--timeout", "60")
		for n := 1; n <= 3; n++ {
			id := fmt.Sprintf("py-n-%d", n)
			ir := stored(id)
			Expect(ir.Spec.Input.Raw).To(MatchJSON(`{"text": "great movie"}`))
			if n < 3 {
				Consistently(func() error {
					return k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: ObjectName(fmt.Sprintf("py-n-%d", n+1))}, ir)
				}, "300ms").ShouldNot(Succeed(), "the next request came before this one's callback")
			}
			if n > 1 {
				// A late second delivery of the previous request is not this one's callback.
				callBack(ir, fmt.Sprintf(`{"type":"inference.completed","id":"py-n-%d","status":"succeeded","result":"OK"}`, n-1))
			}
			callBack(ir, `{"type":"inference.completed","id":"`+id+`","status":"succeeded","result":"OK"}`)
			Eventually(out.String, "20s").Should(MatchRegexp(`Request %s: callback \d+ ms after submit`, id))
		}
		Eventually(exited(cmd), "20s").Should(Receive(BeNil()), out.String())
		Expect(strings.Count(out.String(), "Callback received")).To(Equal(3), out.String())
	})

	It("gives up after --timeout, saying why and where to look", func() {
		cmd, out, _ := start("py late/1", "--timeout", "1")
		Eventually(exited(cmd), "20s").Should(Receive(HaveField("ProcessState.ExitCode()", 1)), out.String())
		Expect(out.String()).To(ContainSubstring("No callback within 1 s"))
		Expect(out.String()).To(ContainSubstring("See where it stands: GET " + server + "/v1/inferences/py%20late%2F1"))
	})
})

func freePort() string {
	GinkgoHelper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	Expect(err).NotTo(HaveOccurred())
	defer func() { _ = l.Close() }()
	_, port, err := net.SplitHostPort(l.Addr().String())
	Expect(err).NotTo(HaveOccurred())
	return port
}
