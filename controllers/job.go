package controllers

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
)

// Labels kinfer puts on every Job and its pods.
const (
	LabelRequest = "inference.kinfer.dev/request"
	LabelModel   = "inference.kinfer.dev/model"
)

// Environment every worker container gets; see the worker contract in the README.
const (
	EnvRequestID  = "KINFER_REQUEST_ID"
	EnvModel      = "KINFER_MODEL"
	EnvInput      = "KINFER_INPUT"
	EnvResultPath = "KINFER_RESULT_PATH"
)

// ExitCodeBadInput is the worker's way to say "bad input, do not retry".
const ExitCodeBadInput = 42

// kueueQueueLabel hands a Job to Kueue, which starts it suspended and admits it.
const kueueQueueLabel = "kueue.x-k8s.io/queue-name"

// requestID is the id the client knows the request by: spec.id, or the name
// when a kubectl user left the id out.
func requestID(ir *inferencev1alpha1.InferenceRequest) string {
	if ir.Spec.ID != "" {
		return ir.Spec.ID
	}
	return ir.Name
}

// inputJSON is the request's input as compact JSON, "null" when there is none.
func inputJSON(ir *inferencev1alpha1.InferenceRequest) (string, error) {
	if ir.Spec.Input == nil || len(ir.Spec.Input.Raw) == 0 {
		return "null", nil
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, ir.Spec.Input.Raw); err != nil {
		return "", fmt.Errorf("input is not JSON: %w", err)
	}
	return compact.String(), nil
}

// buildJob is the Job that runs ir on model. It is a pure function of the two,
// so a retried reconcile builds the same Job and the API server's AlreadyExists
// stops a second one; the caller sets the controller reference.
func buildJob(ir *inferencev1alpha1.InferenceRequest, model *inferencev1alpha1.InferenceModel, input string) *batchv1.Job {
	template := model.Spec.Template.DeepCopy()
	template.Labels = withLabels(template.Labels, map[string]string{LabelRequest: ir.Name, LabelModel: model.Name})
	template.Spec.RestartPolicy = corev1.RestartPolicyNever

	env := []corev1.EnvVar{
		{Name: EnvRequestID, Value: literalEnv(requestID(ir))},
		{Name: EnvModel, Value: literalEnv(model.Name)},
		{Name: EnvInput, Value: literalEnv(input)},
	}
	for i := range template.Spec.Containers {
		c := &template.Spec.Containers[i]
		c.Env = slices.DeleteFunc(c.Env, func(e corev1.EnvVar) bool {
			return e.Name == EnvRequestID || e.Name == EnvModel || e.Name == EnvInput
		})
		c.Env = append(c.Env, env...)
		// A worker that dies before writing its result still leaves its last
		// log lines as the message, which becomes status.error.
		c.TerminationMessagePolicy = corev1.TerminationMessageFallbackToLogsOnError
		if c.TerminationMessagePath != "" && c.TerminationMessagePath != corev1.TerminationMessagePathDefault &&
			!slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == EnvResultPath }) {
			c.Env = append(c.Env, corev1.EnvVar{Name: EnvResultPath, Value: literalEnv(c.TerminationMessagePath)})
		}
	}

	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{
			Name:        ir.Name,
			Namespace:   ir.Namespace,
			Labels:      withLabels(model.Spec.Template.Labels, map[string]string{LabelRequest: ir.Name, LabelModel: model.Name}),
			Annotations: withLabels(model.Spec.Template.Annotations, nil),
		},
		Spec: batchv1.JobSpec{
			ActiveDeadlineSeconds: model.Spec.TimeoutSeconds,
			BackoffLimit:          model.Spec.MaxRetries,
			Template:              *template,
			PodFailurePolicy: &batchv1.PodFailurePolicy{Rules: []batchv1.PodFailurePolicyRule{
				{
					Action: batchv1.PodFailurePolicyActionFailJob,
					OnExitCodes: &batchv1.PodFailurePolicyOnExitCodesRequirement{
						Operator: batchv1.PodFailurePolicyOnExitCodesOpIn,
						Values:   []int32{ExitCodeBadInput},
					},
				},
				{
					// Evictions, preemptions and node drains are not the worker's fault.
					Action: batchv1.PodFailurePolicyActionIgnore,
					OnPodConditions: []batchv1.PodFailurePolicyOnPodConditionsPattern{
						{Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue},
					},
				},
			}},
		},
	}
	if _, queued := template.Labels[kueueQueueLabel]; queued {
		job.Spec.Suspend = ptr.To(true)
	}
	return job
}

// literalEnv escapes value for env[].value, which the kubelet expands: it
// replaces $(NAME) with the variables defined before it in the container
// (secrets among them) and turns $$ into $. A client's input or id would
// otherwise read the model's secrets, or reach the worker changed. With every
// $ doubled, the worker gets value byte for byte.
func literalEnv(value string) string {
	return strings.ReplaceAll(value, "$", "$$")
}

// withLabels returns a new map holding base overlaid with extra.
func withLabels(base, extra map[string]string) map[string]string {
	if len(base)+len(extra) == 0 {
		return nil
	}
	out := make(map[string]string, len(base)+len(extra))
	for k, v := range base {
		out[k] = v
	}
	for k, v := range extra {
		out[k] = v
	}
	return out
}

// jobCondition returns the Job's final condition, Complete or Failed, when it
// has one set to True. Only these two mean the Job is over: SuccessCriteriaMet
// and FailureTarget are announced while pods may still be terminating.
func jobCondition(job *batchv1.Job) *batchv1.JobCondition {
	for i := range job.Status.Conditions {
		c := &job.Status.Conditions[i]
		if (c.Type == batchv1.JobComplete || c.Type == batchv1.JobFailed) && c.Status == corev1.ConditionTrue {
			return c
		}
	}
	return nil
}

// parseResult keeps a termination message that is JSON as that JSON, and
// anything else as a JSON string; an empty message is a null result.
func parseResult(message string) json.RawMessage {
	trimmed := strings.TrimSpace(message)
	if trimmed == "" {
		return json.RawMessage("null")
	}
	if json.Valid([]byte(trimmed)) {
		var compact bytes.Buffer
		if err := json.Compact(&compact, []byte(trimmed)); err == nil {
			return compact.Bytes()
		}
	}
	quoted, _ := json.Marshal(message)
	return quoted
}

// terminated returns the terminated state of the pod's first container (the
// one whose message is the result), or nil while it has not terminated.
func terminated(pod *corev1.Pod, container string) *corev1.ContainerStateTerminated {
	for _, s := range pod.Status.ContainerStatuses {
		if s.Name == container && s.State.Terminated != nil {
			return s.State.Terminated
		}
	}
	return nil
}

// failureMessage picks what a failed pod says about its failure: the first
// container that exited non-zero, its message or else its reason and code.
func failureMessage(pod *corev1.Pod) (message string, exitCode int32) {
	for _, s := range pod.Status.ContainerStatuses {
		t := s.State.Terminated
		if t == nil || t.ExitCode == 0 {
			continue
		}
		if msg := strings.TrimSpace(t.Message); msg != "" {
			return msg, t.ExitCode
		}
		return fmt.Sprintf("container %s exited with code %d (%s)", s.Name, t.ExitCode, t.Reason), t.ExitCode
	}
	if pod.Status.Message != "" {
		return pod.Status.Message, 0
	}
	return "", 0
}
