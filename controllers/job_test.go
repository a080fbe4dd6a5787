package controllers

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/testutil"
	"github.com/kinfer/kinfer/pkg/worker"
)

func TestBuildJob(t *testing.T) {
	model := testutil.MakeInferenceModel("sentiment", "ml", "registry.example/sentiment:1.4").
		Timeout(120).MaxRetries(1).TemplateLabel("team", "ml").TemplateAnnotation("owner", "ml-team").
		Containers(
			corev1.Container{Name: "inference", Image: "registry.example/sentiment:1.4",
				Env: []corev1.EnvVar{{Name: "MODEL_DIR", Value: "/models"}, {Name: worker.EnvInput, Value: "stale"}}},
			corev1.Container{Name: "sidecar", Image: "registry.example/proxy:2", TerminationMessagePath: "/tmp/msg"},
		).Obj()
	ir := testutil.MakeInferenceRequest("req-1234-3f2a9c1b7e", "ml").ID("1234").Model("sentiment").Obj()

	job := buildJob(ir, model, `{"text":"great movie"}`, "")

	labels := map[string]string{"team": "ml", inferencev1alpha1.LabelRequest: "req-1234-3f2a9c1b7e", inferencev1alpha1.LabelModel: "sentiment"}
	env := []corev1.EnvVar{
		{Name: worker.EnvRequestID, Value: "1234"},
		{Name: worker.EnvModel, Value: "sentiment"},
		{Name: worker.EnvInput, Value: `{"text":"great movie"}`},
	}
	want := &batchv1.Job{}
	want.Name, want.Namespace = "req-1234-3f2a9c1b7e", "ml"
	want.Labels = labels
	want.Annotations = map[string]string{"owner": "ml-team"}
	want.Spec = batchv1.JobSpec{
		ActiveDeadlineSeconds: ptr.To[int64](120),
		BackoffLimit:          ptr.To[int32](1),
		PodFailurePolicy: &batchv1.PodFailurePolicy{Rules: []batchv1.PodFailurePolicyRule{
			{Action: batchv1.PodFailurePolicyActionFailJob, OnExitCodes: &batchv1.PodFailurePolicyOnExitCodesRequirement{
				Operator: batchv1.PodFailurePolicyOnExitCodesOpIn, Values: []int32{3, 42}}},
			{Action: batchv1.PodFailurePolicyActionIgnore, OnPodConditions: []batchv1.PodFailurePolicyOnPodConditionsPattern{
				{Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue}}},
		}},
	}
	want.Spec.Template.Labels = labels
	want.Spec.Template.Annotations = map[string]string{"owner": "ml-team"}
	want.Spec.Template.Spec = corev1.PodSpec{
		RestartPolicy: corev1.RestartPolicyNever,
		Containers: []corev1.Container{
			{Name: "inference", Image: "registry.example/sentiment:1.4",
				Env:                      append([]corev1.EnvVar{{Name: "MODEL_DIR", Value: "/models"}}, env...),
				TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError},
			{Name: "sidecar", Image: "registry.example/proxy:2", TerminationMessagePath: "/tmp/msg",
				Env:                      append(append([]corev1.EnvVar{}, env...), corev1.EnvVar{Name: worker.EnvResultPath, Value: "/tmp/msg"}),
				TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError},
		},
	}
	if diff := cmp.Diff(want, job); diff != "" {
		t.Errorf("buildJob (-want +got):\n%s", diff)
	}
	if model.Spec.Template.Spec.Containers[0].Env[1].Value != "stale" {
		t.Error("buildJob changed the model's template")
	}
}

func TestBuildJobSuspendsForKueue(t *testing.T) {
	model := testutil.MakeInferenceModel("default", "ml", "img").TemplateLabel(kueueQueueLabel, "gpu").Obj()
	job := buildJob(testutil.MakeInferenceRequest("r", "ml").Obj(), model, "null", "")
	if job.Spec.Suspend == nil || !*job.Spec.Suspend {
		t.Error("a template with a Kueue queue label must give a suspended Job")
	}
	if job.Spec.Template.Labels[kueueQueueLabel] != "gpu" {
		t.Error("the queue label must reach the pods")
	}
}

func TestRequestIDDefaultsToName(t *testing.T) {
	if got := requestID(testutil.MakeInferenceRequest("req-7", "ml").Obj()); got != "req-7" {
		t.Errorf("requestID without spec.id = %q, want the name", got)
	}
}

func TestInputJSON(t *testing.T) {
	tests := []struct {
		name  string
		input any
		want  string
	}{
		{name: "none", want: "null"},
		{name: "object compacted", input: map[string]any{"text": "great movie", "n": 1}, want: `{"n":1,"text":"great movie"}`},
		{name: "string", input: "hello", want: `"hello"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := testutil.MakeInferenceRequest("r", "ml")
			if tc.input != nil {
				w.Input(tc.input)
			}
			got, err := inputJSON(w.Obj())
			if err != nil || got != tc.want {
				t.Errorf("inputJSON = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestParseResult(t *testing.T) {
	tests := []struct {
		message string
		want    string
	}{
		{message: `"OK"`, want: `"OK"`},
		{message: "OK", want: `"OK"`},
		{message: "OK\n", want: `"OK\n"`},
		{message: ` {"label": "positive", "score": 0.98}` + "\n", want: `{"label":"positive","score":0.98}`},
		{message: "[1, 2]", want: `[1,2]`},
		{message: "42", want: `42`},
		{message: "", want: `null`},
		{message: "  \n", want: `null`},
		{message: `{"truncated": `, want: `"{\"truncated\": "`},
		{message: "Traceback (most recent call last):\n  ValueError", want: `"Traceback (most recent call last):\n  ValueError"`},
	}
	for _, tc := range tests {
		got := parseResult(tc.message)
		if !json.Valid(got) {
			t.Errorf("parseResult(%q) = %s, not JSON", tc.message, got)
		}
		if string(got) != tc.want {
			t.Errorf("parseResult(%q) = %s, want %s", tc.message, got, tc.want)
		}
	}
}

func TestFailureMessage(t *testing.T) {
	pod := &corev1.Pod{Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{
		{Name: "sidecar", State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0}}},
		{Name: "inference", State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 137, Reason: "OOMKilled"}}},
	}}}
	msg, code := failureMessage(pod)
	if code != 137 || msg != "container inference exited with code 137 (OOMKilled)" {
		t.Errorf("failureMessage = %q, %d", msg, code)
	}
}

func TestTruncate(t *testing.T) {
	s := "ééééé" // two bytes each; the ellipsis takes three
	got := truncate(s, 6)
	if len(got) > 6 || got != "é…" {
		t.Errorf("truncate(%q, 6) = %q (%d bytes)", s, got, len(got))
	}
	if truncate("short", 10) != "short" {
		t.Error("truncate changed a short string")
	}
}

// TestBuildJobEnvSurvivesKubeletExpansion holds every value kinfer writes
// into env to what the worker must read: the kubelet expands $(NAME) from
// the variables defined before it, so without escaping a client's input
// could read a model's secret, and "$$5" would arrive as "$5".
func TestBuildJobEnvSurvivesKubeletExpansion(t *testing.T) {
	model := testutil.MakeInferenceModel("default", "ml", "img").Containers(corev1.Container{
		Name: "inference", Image: "img", TerminationMessagePath: "/tmp/$(SECRET_TOKEN)",
		Env: []corev1.EnvVar{{Name: "SECRET_TOKEN", ValueFrom: &corev1.EnvVarSource{
			SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "s"}, Key: "k"}}}},
	}).Obj()
	id := "id-$(SECRET_TOKEN)-$$-$"
	input := `{"a":"$(SECRET_TOKEN)","b":"$$5","c":"$","d":"$(MISSING)"}`
	job := buildJob(testutil.MakeInferenceRequest("r", "ml").ID(id).Obj(), model, input, "")

	defined := map[string]string{"SECRET_TOKEN": "s3cret"}
	got := map[string]string{}
	for _, e := range job.Spec.Template.Spec.Containers[0].Env {
		if e.ValueFrom != nil {
			continue
		}
		got[e.Name] = kubeletExpand(e.Value, defined)
		defined[e.Name] = got[e.Name]
	}
	want := map[string]string{worker.EnvRequestID: id, worker.EnvModel: "default", worker.EnvInput: input, worker.EnvResultPath: "/tmp/$(SECRET_TOKEN)"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("env as the worker reads it after the kubelet's expansion (-want +got):\n%s", diff)
	}
}

// kubeletExpand applies the kubelet's rules for env[].value: $(NAME) of a
// defined variable becomes its value, $$ becomes $, and anything else,
// undefined references included, is kept as written.
func kubeletExpand(value string, defined map[string]string) string {
	var out []byte
	for i := 0; i < len(value); i++ {
		if value[i] != '$' || i+1 == len(value) {
			out = append(out, value[i])
			continue
		}
		switch value[i+1] {
		case '$':
			out = append(out, '$')
			i++
		case '(':
			end := strings.IndexByte(value[i+2:], ')')
			if end < 0 {
				out = append(out, '$')
				continue
			}
			end += i + 2
			name := value[i+2 : end]
			if v, ok := defined[name]; ok {
				out = append(out, v...)
			} else {
				out = append(out, value[i:end+1]...)
			}
			i = end
		default:
			out = append(out, '$')
		}
	}
	return string(out)
}
