package controllers

import (
	"strings"
	"time"

	"github.com/google/go-cmp/cmp"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
)

const workerImage = "registry.example/sentiment:1.4"

var _ = Describe("InferenceModel API", func() {
	var ns string

	BeforeEach(func() {
		ns = newNamespace()
	})

	model := func(mutate func(*testutil.InferenceModelWrapper)) *inferencev1alpha1.InferenceModel {
		w := testutil.MakeInferenceModel("model-"+rand.String(8), ns, workerImage)
		mutate(w)
		return w.Obj()
	}

	// modelSpec sends spec as given, for values the typed structs cannot hold.
	modelSpec := func(spec map[string]any) client.Object {
		return testutil.Unstructured(inferencev1alpha1.GroupVersion.WithKind("InferenceModel"), "model-"+rand.String(8), ns, spec)
	}
	template := map[string]any{"spec": map[string]any{
		"containers": []any{map[string]any{"name": "inference", "image": workerImage}},
	}}

	It("applies the documented defaults", func() {
		im := model(func(*testutil.InferenceModelWrapper) {})
		Expect(k8sClient.Create(ctx, im)).To(Succeed())

		var got inferencev1alpha1.InferenceModel
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(im), &got)).To(Succeed())
		want := inferencev1alpha1.InferenceModelSpec{
			Template:          im.Spec.Template,
			TimeoutSeconds:    ptr.To[int64](900),
			MaxRetries:        ptr.To[int32](2),
			MaxPriority:       ptr.To[int32](0),
			RequestTTLSeconds: ptr.To[int64](86400),
			Callback: inferencev1alpha1.CallbackSpec{
				TimeoutSeconds: ptr.To[int32](15),
				RetrySchedule: []metav1.Duration{
					{Duration: 5 * time.Second}, {Duration: 5 * time.Minute}, {Duration: 30 * time.Minute},
					{Duration: 2 * time.Hour}, {Duration: 5 * time.Hour}, {Duration: 10 * time.Hour}, {Duration: 10 * time.Hour},
				},
			},
		}
		Expect(cmp.Diff(want, got.Spec)).To(BeEmpty(), "(-want +got)")
		Expect(got.Spec.MaxConcurrency).To(BeNil(), "maxConcurrency has no default: unset means no limit")
		Expect(got.Spec.QueueTimeoutSeconds).To(BeNil(), "queueTimeoutSeconds has no default: unset means no limit")
	})

	It("defaults the signing secret's key to secret", func() {
		im := model(func(w *testutil.InferenceModelWrapper) { w.SigningSecret("kinfer-webhook", "") })
		Expect(k8sClient.Create(ctx, im)).To(Succeed())

		var got inferencev1alpha1.InferenceModel
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(im), &got)).To(Succeed())
		Expect(got.Spec.Callback.SigningSecretRef).To(Equal(&inferencev1alpha1.SecretKeyReference{Name: "kinfer-webhook", Key: "secret"}))
	})

	It("keeps the template's labels and annotations for the Jobs", func() {
		im := model(func(w *testutil.InferenceModelWrapper) {
			w.TemplateLabel("kueue.x-k8s.io/queue-name", "gpu").TemplateAnnotation("example.com/owner", "ml-team")
		})
		Expect(k8sClient.Create(ctx, im)).To(Succeed())

		var got inferencev1alpha1.InferenceModel
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(im), &got)).To(Succeed())
		Expect(got.Spec.Template.Labels).To(HaveKeyWithValue("kueue.x-k8s.io/queue-name", "gpu"))
		Expect(got.Spec.Template.Annotations).To(HaveKeyWithValue("example.com/owner", "ml-team"))
	})

	DescribeTable("accepts",
		func(mutate func(*testutil.InferenceModelWrapper)) {
			Expect(k8sClient.Create(ctx, model(mutate))).To(Succeed())
		},
		Entry("a one-second timeout", func(w *testutil.InferenceModelWrapper) { w.Timeout(1) }),
		Entry("no retries", func(w *testutil.InferenceModelWrapper) { w.MaxRetries(0) }),
		Entry("a concurrency of one", func(w *testutil.InferenceModelWrapper) { w.MaxConcurrency(1) }),
		Entry("deleting requests as soon as they end", func(w *testutil.InferenceModelWrapper) { w.RequestTTL(0) }),
		Entry("a 300-second callback timeout", func(w *testutil.InferenceModelWrapper) { w.CallbackTimeout(300) }),
		Entry("compound and fractional waits", func(w *testutil.InferenceModelWrapper) {
			w.RetrySchedule("1h30m", "1.5s", "250ms")
		}),
		Entry("an empty retry schedule: one attempt only", func(w *testutil.InferenceModelWrapper) { w.RetrySchedule() }),
		Entry("a 63-character name", func(w *testutil.InferenceModelWrapper) { w.Name = strings.Repeat("m", 63) }),
	)

	DescribeTable("refuses",
		func(mutate func(*testutil.InferenceModelWrapper), field, message string) {
			Expect(k8sClient.Create(ctx, model(mutate))).To(testutil.BeInvalid(field, message))
		},
		Entry("a template with an empty container list",
			func(w *testutil.InferenceModelWrapper) { w.Containers([]corev1.Container{}...) },
			"spec.template", "template.spec.containers must have at least one container"),
		Entry("a template without a container list",
			func(w *testutil.InferenceModelWrapper) { w.Containers() },
			"spec.template.spec.containers", "Required value"),
		Entry("a zero timeout",
			func(w *testutil.InferenceModelWrapper) { w.Timeout(0) },
			"spec.timeoutSeconds", "should be greater than or equal to 1"),
		Entry("negative retries",
			func(w *testutil.InferenceModelWrapper) { w.MaxRetries(-1) },
			"spec.maxRetries", "should be greater than or equal to 0"),
		Entry("more than 100 retries",
			func(w *testutil.InferenceModelWrapper) { w.MaxRetries(101) },
			"spec.maxRetries", "should be less than or equal to 100"),
		Entry("a concurrency of zero",
			func(w *testutil.InferenceModelWrapper) { w.MaxConcurrency(0) },
			"spec.maxConcurrency", "should be greater than or equal to 1"),
		Entry("a negative request TTL",
			func(w *testutil.InferenceModelWrapper) { w.RequestTTL(-1) },
			"spec.requestTTLSeconds", "should be greater than or equal to 0"),
		Entry("a zero callback timeout",
			func(w *testutil.InferenceModelWrapper) { w.CallbackTimeout(0) },
			"spec.callback.timeoutSeconds", "should be greater than or equal to 1"),
		Entry("a callback timeout over five minutes",
			func(w *testutil.InferenceModelWrapper) { w.CallbackTimeout(301) },
			"spec.callback.timeoutSeconds", "should be less than or equal to 300"),
		Entry("a zero wait",
			func(w *testutil.InferenceModelWrapper) { w.RetrySchedule("5s", "0s") },
			"spec.callback.retrySchedule", "retrySchedule entries must be positive durations"),
		Entry("a signing secret without a name",
			func(w *testutil.InferenceModelWrapper) { w.SigningSecret("", "secret") },
			"spec.callback.signingSecretRef.name", "at least 1 chars long"),
		Entry("a name too long for a label value",
			func(w *testutil.InferenceModelWrapper) { w.Name = strings.Repeat("m", 64) },
			"<nil>", "metadata.name must be at most 63 characters"),
		Entry("a pool with maxConcurrency",
			func(w *testutil.InferenceModelWrapper) { w.Workers(4).MaxConcurrency(2) },
			"spec", "maxConcurrency cannot be set together with workers"),
		Entry("a pool whose min is above its max",
			func(w *testutil.InferenceModelWrapper) { w.Workers(2).Spec.Workers.Min = 3 },
			"spec.workers", "workers.min must not be above workers.max"),
		Entry("a pool of no pods",
			func(w *testutil.InferenceModelWrapper) { w.Workers(0) },
			"spec.workers.max", "should be greater than or equal to 1"),
		Entry("a one-second lease",
			func(w *testutil.InferenceModelWrapper) { w.Workers(1).Spec.Workers.LeaseSeconds = 1 },
			"spec.workers.leaseSeconds", "should be greater than or equal to 2"),
	)

	It("defaults a pool's settings", func() {
		im := model(func(w *testutil.InferenceModelWrapper) { w.Workers(4) })
		Expect(k8sClient.Create(ctx, im)).To(Succeed())
		var got inferencev1alpha1.InferenceModel
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(im), &got)).To(Succeed())
		Expect(got.Spec.Workers).To(Equal(&inferencev1alpha1.WorkersSpec{
			Min: 0, Max: 4, BatchSize: 1, IdleSeconds: 60, LeaseSeconds: 30,
		}))
	})

	DescribeTable("refuses a retry schedule entry that is not a Go duration",
		func(wait string) {
			im := modelSpec(map[string]any{
				"template": template,
				"callback": map[string]any{"retrySchedule": []any{"5s", wait}},
			})
			Expect(k8sClient.Create(ctx, im)).To(testutil.BeInvalid("spec.callback.retrySchedule[1]", "should match"))
		},
		Entry("words", "5 minutes"),
		Entry("a day unit Go does not know", "1d"),
		Entry("a bare number", "300"),
		Entry("a negative wait", "-5s"),
	)

	It("refuses a template without a pod spec", func() {
		im := modelSpec(map[string]any{"template": map[string]any{"metadata": map[string]any{"labels": map[string]any{"a": "b"}}}})
		Expect(k8sClient.Create(ctx, im)).To(testutil.BeInvalid("spec.template", "template.spec.containers must have at least one container"))
	})

	It("refuses a model without a template", func() {
		im := modelSpec(map[string]any{"timeoutSeconds": int64(60)})
		Expect(k8sClient.Create(ctx, im)).To(testutil.BeInvalid("spec.template", "Required value"))
	})
})
