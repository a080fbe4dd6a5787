package controllers

import (
	"os"
	"os/exec"
	"path/filepath"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/onsi/gomega/gexec"
	batchv1 "k8s.io/api/batch/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
)

// adminKubeconfig writes a kubeconfig for the suite's API server, as a
// cluster administrator, and returns its path.
func adminKubeconfig() string {
	GinkgoHelper()
	admin, err := testEnv.ControlPlane.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
	Expect(err).NotTo(HaveOccurred())
	kubeconfig, err := admin.KubeConfig()
	Expect(err).NotTo(HaveOccurred())
	path := filepath.Join(GinkgoT().TempDir(), "kubeconfig")
	Expect(os.WriteFile(path, kubeconfig, 0o600)).To(Succeed())
	return path
}

// The conditions docs/operations.md tells people to wait on, waited on with
// the real kubectl: each must turn True in the status write that ends the
// request.
var _ = Describe("kubectl wait", func() {
	var kubeconfig, ns string

	BeforeEach(func() {
		_, err := exec.LookPath("kubectl")
		Expect(err).NotTo(HaveOccurred(), "these specs run the kubectl on PATH")
		kubeconfig = adminKubeconfig()
		ns = newNamespace()
		Expect(k8sClient.Create(ctx, testutil.MakeInferenceModel("default", ns, workerImage).Obj())).To(Succeed())
	})

	// wait starts kubectl wait for a condition of request name, in the background.
	wait := func(name, condition, timeout string) *gexec.Session {
		GinkgoHelper()
		cmd := exec.Command("kubectl", "--kubeconfig", kubeconfig, "-n", ns, "wait",
			"--for=condition="+condition, "--timeout="+timeout, "ir/"+name)
		session, err := gexec.Start(cmd, GinkgoWriter, GinkgoWriter)
		Expect(err).NotTo(HaveOccurred())
		return session
	}
	running := func(ir *inferencev1alpha1.InferenceRequest) *batchv1.Job {
		GinkgoHelper()
		job := &batchv1.Job{}
		Eventually(func() error { return k8sClient.Get(ctx, client.ObjectKeyFromObject(ir), job) }).Should(Succeed())
		return job
	}

	It("lists a model's requests, or a client's id, with kubectl get --field-selector", func() {
		Expect(k8sClient.Create(ctx, testutil.MakeInferenceRequest("on-default", ns).Model("default").Obj())).To(Succeed())
		Expect(k8sClient.Create(ctx, testutil.MakeInferenceRequest("on-other", ns).Model("other").ID("1234").Obj())).To(Succeed())
		get := func(selector string) string {
			GinkgoHelper()
			out, err := exec.Command("kubectl", "--kubeconfig", kubeconfig, "-n", ns, "get", "ir",
				"--field-selector", selector, "-o", "name").CombinedOutput()
			Expect(err).NotTo(HaveOccurred(), string(out))
			return string(out)
		}
		Expect(get("spec.model=other")).To(Equal("inferencerequest.inference.kinfer.dev/on-other\n"))
		Expect(get("spec.id=1234")).To(Equal("inferencerequest.inference.kinfer.dev/on-other\n"))
	})

	It("returns for Complete and Delivered once a request succeeds and its callback is taken, and not for Failed", func() {
		receiver := testutil.NewReceiver()
		DeferCleanup(receiver.Close)
		ir := testutil.MakeInferenceRequest("succeeds", ns).Callback(receiver.URL).Obj()
		Expect(k8sClient.Create(ctx, ir)).To(Succeed())
		job := running(ir)

		complete, delivered := wait(ir.Name, "Complete", "60s"), wait(ir.Name, "Delivered", "60s")
		Consistently(complete).WithTimeout(time.Second).ShouldNot(gexec.Exit(), "the request has not ended yet")
		Expect(testutil.CompleteJob(ctx, k8sClient, job, `"OK"`)).To(Succeed())
		Eventually(complete).WithTimeout(time.Minute).Should(gexec.Exit(0))
		Eventually(delivered).WithTimeout(time.Minute).Should(gexec.Exit(0))

		Eventually(wait(ir.Name, "Failed=False", "30s")).WithTimeout(time.Minute).Should(gexec.Exit(0))
		Eventually(wait(ir.Name, "Failed", "2s")).WithTimeout(time.Minute).ShouldNot(gexec.Exit(0),
			"a request that succeeded never has Failed True")
	})

	It("returns for Failed and Complete once a request's Job fails", func() {
		ir := testutil.MakeInferenceRequest("fails", ns).Obj()
		Expect(k8sClient.Create(ctx, ir)).To(Succeed())
		job := running(ir)

		failed := wait(ir.Name, "Failed", "60s")
		Consistently(failed).WithTimeout(time.Second).ShouldNot(gexec.Exit())
		Expect(testutil.FailJob(ctx, k8sClient, job, batchv1.JobReasonBackoffLimitExceeded, 1, "CUDA out of memory")).To(Succeed())
		Eventually(failed).WithTimeout(time.Minute).Should(gexec.Exit(0))
		Eventually(wait(ir.Name, "Complete", "30s")).WithTimeout(time.Minute).Should(gexec.Exit(0))
	})

	It("returns for Complete and Failed=False once a request is canceled: a cancel is not a failure", func() {
		ir := testutil.MakeInferenceRequest("canceled", ns).Obj()
		Expect(k8sClient.Create(ctx, ir)).To(Succeed())
		running(ir)

		complete, notFailed := wait(ir.Name, "Complete", "60s"), wait(ir.Name, "Failed=False", "60s")
		Expect(updateRequest(ir, false, func(r *inferencev1alpha1.InferenceRequest) { r.Spec.Cancel = true })).To(Succeed())
		Eventually(complete).WithTimeout(time.Minute).Should(gexec.Exit(0))
		Eventually(notFailed).WithTimeout(time.Minute).Should(gexec.Exit(0))
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(ir), ir)).To(Succeed())
		Expect(ir.Status.Phase).To(Equal(inferencev1alpha1.PhaseCanceled))
		Expect(ir.Status.Conditions).To(testutil.HaveCondition(inferencev1alpha1.ConditionFailed, inferencev1alpha1.ReasonCanceled))
	})
})
