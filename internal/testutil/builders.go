// Package testutil holds builders for kinfer's objects, written once and shared
// by the unit and envtest suites.
package testutil

import (
	"encoding/json"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/utils/ptr"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
)

// InferenceRequestWrapper builds an InferenceRequest step by step.
type InferenceRequestWrapper struct {
	inferencev1alpha1.InferenceRequest
}

// MakeInferenceRequest starts a request with only a name and namespace: the API
// server fills in the defaults.
func MakeInferenceRequest(name, namespace string) *InferenceRequestWrapper {
	return &InferenceRequestWrapper{inferencev1alpha1.InferenceRequest{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
	}}
}

// Obj returns the built request.
func (w *InferenceRequestWrapper) Obj() *inferencev1alpha1.InferenceRequest {
	return &w.InferenceRequest
}

// ID sets spec.id.
func (w *InferenceRequestWrapper) ID(id string) *InferenceRequestWrapper {
	w.Spec.ID = id
	return w
}

// Callback sets spec.callbackURL.
func (w *InferenceRequestWrapper) Callback(url string) *InferenceRequestWrapper {
	w.Spec.CallbackURL = url
	return w
}

// Model sets spec.model.
func (w *InferenceRequestWrapper) Model(model string) *InferenceRequestWrapper {
	w.Spec.Model = model
	return w
}

// Input sets spec.input to v encoded as JSON.
func (w *InferenceRequestWrapper) Input(v any) *InferenceRequestWrapper {
	w.Spec.Input = JSON(v)
	return w
}

// Priority sets spec.priority.
func (w *InferenceRequestWrapper) Priority(p int32) *InferenceRequestWrapper {
	w.Spec.Priority = p
	return w
}

// QueueTimeout sets spec.queueTimeoutSeconds.
func (w *InferenceRequestWrapper) QueueTimeout(seconds int64) *InferenceRequestWrapper {
	w.Spec.QueueTimeoutSeconds = ptr.To(seconds)
	return w
}

// Timeout sets spec.timeoutSeconds.
func (w *InferenceRequestWrapper) Timeout(seconds int64) *InferenceRequestWrapper {
	w.Spec.TimeoutSeconds = ptr.To(seconds)
	return w
}

// Delivered makes the request one that succeeded and whose callback was
// delivered at at: an ended request, waiting only to expire.
func (w *InferenceRequestWrapper) Delivered(at time.Time) *InferenceRequestWrapper {
	t := metav1.NewTime(at)
	w.Status.Phase = inferencev1alpha1.PhaseSucceeded
	w.Status.CompletionTime = &t
	w.Status.Delivery = inferencev1alpha1.DeliveryStatus{State: inferencev1alpha1.DeliveryDelivered, DeliveredTime: t.DeepCopy()}
	return w
}

// InferenceModelWrapper builds an InferenceModel step by step.
type InferenceModelWrapper struct {
	inferencev1alpha1.InferenceModel
}

// MakeInferenceModel starts a model whose template runs one container of image.
func MakeInferenceModel(name, namespace, image string) *InferenceModelWrapper {
	return &InferenceModelWrapper{inferencev1alpha1.InferenceModel{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: inferencev1alpha1.InferenceModelSpec{
			Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
				Containers: []corev1.Container{{Name: "inference", Image: image}},
			}},
		},
	}}
}

// Obj returns the built model.
func (w *InferenceModelWrapper) Obj() *inferencev1alpha1.InferenceModel {
	return &w.InferenceModel
}

// TemplateLabel sets a label on the pod template.
func (w *InferenceModelWrapper) TemplateLabel(key, value string) *InferenceModelWrapper {
	if w.Spec.Template.Labels == nil {
		w.Spec.Template.Labels = map[string]string{}
	}
	w.Spec.Template.Labels[key] = value
	return w
}

// TemplateAnnotation sets an annotation on the pod template.
func (w *InferenceModelWrapper) TemplateAnnotation(key, value string) *InferenceModelWrapper {
	if w.Spec.Template.Annotations == nil {
		w.Spec.Template.Annotations = map[string]string{}
	}
	w.Spec.Template.Annotations[key] = value
	return w
}

// Containers replaces the template's containers.
func (w *InferenceModelWrapper) Containers(containers ...corev1.Container) *InferenceModelWrapper {
	w.Spec.Template.Spec.Containers = containers
	return w
}

// Timeout sets spec.timeoutSeconds.
func (w *InferenceModelWrapper) Timeout(seconds int64) *InferenceModelWrapper {
	w.Spec.TimeoutSeconds = ptr.To(seconds)
	return w
}

// MaxRetries sets spec.maxRetries.
func (w *InferenceModelWrapper) MaxRetries(n int32) *InferenceModelWrapper {
	w.Spec.MaxRetries = ptr.To(n)
	return w
}

// MaxConcurrency sets spec.maxConcurrency.
func (w *InferenceModelWrapper) MaxConcurrency(n int32) *InferenceModelWrapper {
	w.Spec.MaxConcurrency = ptr.To(n)
	return w
}

// QueueTimeout sets spec.queueTimeoutSeconds.
func (w *InferenceModelWrapper) QueueTimeout(seconds int64) *InferenceModelWrapper {
	w.Spec.QueueTimeoutSeconds = ptr.To(seconds)
	return w
}

// MaxPriority sets spec.maxPriority.
func (w *InferenceModelWrapper) MaxPriority(p int32) *InferenceModelWrapper {
	w.Spec.MaxPriority = ptr.To(p)
	return w
}

// Workers makes the model a pool of at most max pods, with the other
// settings at their defaults.
func (w *InferenceModelWrapper) Workers(maxPods int32) *InferenceModelWrapper {
	w.Spec.Workers = &inferencev1alpha1.WorkersSpec{Max: maxPods}
	return w
}

// RequestTTL sets spec.requestTTLSeconds.
func (w *InferenceModelWrapper) RequestTTL(seconds int64) *InferenceModelWrapper {
	w.Spec.RequestTTLSeconds = ptr.To(seconds)
	return w
}

// CallbackTimeout sets spec.callback.timeoutSeconds.
func (w *InferenceModelWrapper) CallbackTimeout(seconds int32) *InferenceModelWrapper {
	w.Spec.Callback.TimeoutSeconds = ptr.To(seconds)
	return w
}

// RetrySchedule sets spec.callback.retrySchedule from duration strings, kept
// as written so that the API server, not this builder, judges them.
func (w *InferenceModelWrapper) RetrySchedule(waits ...string) *InferenceModelWrapper {
	w.Spec.Callback.RetrySchedule = make([]metav1.Duration, 0, len(waits))
	for _, wait := range waits {
		var d metav1.Duration
		// An unparsable wait cannot be held by metav1.Duration; callers that
		// need to send one use unstructured objects instead.
		if err := json.Unmarshal([]byte(`"`+wait+`"`), &d); err != nil {
			panic("testutil: " + wait + " is not a Go duration: " + err.Error())
		}
		w.Spec.Callback.RetrySchedule = append(w.Spec.Callback.RetrySchedule, d)
	}
	return w
}

// SigningSecret sets spec.callback.signingSecretRef; an empty key leaves the
// key to its default.
func (w *InferenceModelWrapper) SigningSecret(name, key string) *InferenceModelWrapper {
	w.Spec.Callback.SigningSecretRef = &inferencev1alpha1.SecretKeyReference{Name: name, Key: key}
	return w
}

// JSON encodes v as an apiextensions JSON value, panicking on values that
// cannot be encoded: they are test bugs.
func JSON(v any) *apiextensionsv1.JSON {
	raw, err := json.Marshal(v)
	if err != nil {
		panic("testutil: cannot encode " + err.Error())
	}
	return &apiextensionsv1.JSON{Raw: raw}
}

// Unstructured builds an object of kind gvk with the given spec, for values the
// typed structs cannot carry (an explicit empty string, a malformed duration).
func Unstructured(gvk schema.GroupVersionKind, name, namespace string, spec map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{"spec": spec}}
	u.SetGroupVersionKind(gvk)
	u.SetName(name)
	u.SetNamespace(namespace)
	return u
}
