package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// InferenceModelSpec says how every request for the model runs. It is the only
// place images, commands, resources and service accounts come from: a request
// names a model and never an image, which is what makes it safe to accept
// requests from outside the cluster.
//
// +kubebuilder:validation:XValidation:rule="!(has(self.workers) && has(self.maxConcurrency))",message="maxConcurrency cannot be set together with workers: a pool's workers.max bounds it"
type InferenceModelSpec struct {
	// template is the pod template of every Job run for this model. Its labels
	// and annotations reach the Job and its pods, so a kueue.x-k8s.io/queue-name
	// label hands the Jobs to Kueue. kinfer sets restartPolicy Never and adds the
	// KINFER_REQUEST_ID, KINFER_MODEL and KINFER_INPUT variables to every
	// container; the worker writes its result to its termination message file.
	// +required
	// +kubebuilder:validation:XValidation:rule="has(self.spec) && size(self.spec.containers) > 0",message="template.spec.containers must have at least one container"
	Template corev1.PodTemplateSpec `json:"template"`

	// timeoutSeconds bounds how long one request may run, retries included; it
	// becomes the Job's activeDeadlineSeconds. A request that runs longer fails
	// with reason DeadlineExceeded. Requests may ask for a shorter limit, never
	// a longer one.
	// +optional
	// +kubebuilder:default=900
	// +kubebuilder:validation:Minimum=1
	TimeoutSeconds *int64 `json:"timeoutSeconds,omitempty"`

	// maxRetries is how many times a failed pod is retried before the request
	// fails; it becomes the Job's backoffLimit. A worker that exits with code 42
	// (bad input) is never retried.
	// +optional
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	MaxRetries *int32 `json:"maxRetries,omitempty"`

	// maxConcurrency, when set, is the most Jobs of this model that may be
	// unfinished at once in the namespace; further requests wait in phase
	// Queued, highest priority first, then oldest first. Unset means no limit beyond the cluster's own.
	// +optional
	// +kubebuilder:validation:Minimum=1
	MaxConcurrency *int32 `json:"maxConcurrency,omitempty"`

	// queueTimeoutSeconds, when set, bounds how long a request may wait to
	// start (behind maxConcurrency, or for a queue such as Kueue to admit its
	// Job). A request still waiting when it passes fails with reason
	// QueueTimeout, and its callback says "expired". Requests may ask for a
	// shorter wait, never a longer one. Unset means no limit.
	// +optional
	// +kubebuilder:validation:Minimum=1
	QueueTimeoutSeconds *int64 `json:"queueTimeoutSeconds,omitempty"`

	// maxPriority is the highest spec.priority a request for this model may
	// ask for. Among a model's waiting requests, a higher priority starts
	// first. 0, the default, keeps every request at priority 0: oldest first.
	// +optional
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000000
	MaxPriority *int32 `json:"maxPriority,omitempty"`

	// requestTTLSeconds is how long a request is kept after it has ended
	// (its callback delivered or given up, or nothing to deliver). The request
	// is then deleted, and its Job and pods with it. 0 deletes it at once.
	// +optional
	// +kubebuilder:default=86400
	// +kubebuilder:validation:Minimum=0
	RequestTTLSeconds *int64 `json:"requestTTLSeconds,omitempty"`

	// workers, when set, runs the model as a pool: one Job owned by the model
	// whose pods each serve many requests, taking them from the manager's work
	// API, so the model is loaded once per pod rather than once per request.
	// Unset runs one Job per request. timeoutSeconds is then the run time of
	// each request, and maxRetries how often a request is handed out again
	// after its pod died, its lease ran out or its worker reported an error.
	// +optional
	Workers *WorkersSpec `json:"workers,omitempty"`

	// callback says how results are delivered to the requests' callback URLs.
	// +optional
	// +kubebuilder:default={}
	Callback CallbackSpec `json:"callback,omitempty"`
}

// WorkersSpec sizes a model's pool and the leases its pods hold.
//
// +kubebuilder:validation:XValidation:rule="self.min <= self.max",message="workers.min must not be above workers.max"
type WorkersSpec struct {
	// min is how many pods the pool keeps while idle; 0 lets it scale to zero
	// and come back with the next request.
	// +optional
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	Min int32 `json:"min"`

	// max is the most pods the pool runs at once.
	// +required
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	Max int32 `json:"max"`

	// batchSize is the most requests handed to one pod at once.
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=256
	BatchSize int32 `json:"batchSize,omitempty"`

	// idleSeconds is how long a pod above min may go without work before it
	// is told to exit.
	// +optional
	// +kubebuilder:default=60
	// +kubebuilder:validation:Minimum=1
	IdleSeconds int32 `json:"idleSeconds,omitempty"`

	// leaseSeconds is how long a request handed to a pod stays its own
	// without being renewed; after that it is handed out again.
	// +optional
	// +kubebuilder:default=30
	// +kubebuilder:validation:Minimum=2
	// +kubebuilder:validation:Maximum=3600
	LeaseSeconds int32 `json:"leaseSeconds,omitempty"`
}

// CallbackSpec tunes delivery of results to callback URLs.
type CallbackSpec struct {
	// timeoutSeconds bounds one delivery attempt, from connecting to reading
	// the answer's status line.
	// +optional
	// +kubebuilder:default=15
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=300
	TimeoutSeconds *int32 `json:"timeoutSeconds,omitempty"`

	// retrySchedule lists the waits between delivery attempts: after the first
	// attempt fails, the next comes after the first wait, and so on, each wait
	// jittered by up to 10%. A Retry-After answer that asks for longer is
	// honoured. When the list is used up, delivery fails with reason
	// RetriesExhausted. Entries are Go durations such as 5s, 30m or 1h30m;
	// an empty list means one attempt only.
	// +optional
	// +listType=atomic
	// +kubebuilder:default={"5s","5m","30m","2h","5h","10h","10h"}
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:Type=string
	// +kubebuilder:validation:items:MaxLength=32
	// +kubebuilder:validation:items:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="self.all(d, duration(d) > duration('0s'))",message="retrySchedule entries must be positive durations such as 5s, 30m or 2h"
	RetrySchedule []metav1.Duration `json:"retrySchedule"` // no omitempty: an empty list must reach the API server as one

	// signingSecretRef names a key of a Secret in the model's namespace holding
	// Standard Webhooks signing keys, separated by spaces: whsec_ and the base64
	// of a shared key (signatures v1, HMAC-SHA256), or whsk_ and the base64 of
	// an ed25519 private key (signatures v1a, verified with the whpk_ public
	// keys the shim serves at /v1/webhook-keys). Each delivery carries one
	// webhook-signature per key, so keys can be rotated by adding the new key
	// before removing the old. The Secret must
	// carry the label inference.kinfer.dev/signing-key: "true"; an attempt with
	// an unlabelled or unreadable Secret sends nothing and is retried. Unset
	// means deliveries are not signed.
	// +optional
	SigningSecretRef *SecretKeyReference `json:"signingSecretRef,omitempty"`
}

// LabelSigningKey marks a Secret that models may sign callbacks with: only a
// Secret labelled with it set to "true" signs. Without it, anyone allowed to
// edit InferenceModels could name any Secret of the namespace as a signing
// secret and obtain signatures made with another team's keys.
const LabelSigningKey = "inference.kinfer.dev/signing-key"

// SecretKeyReference names one key of a Secret in the same namespace.
type SecretKeyReference struct {
	// name is the Secret's name.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// key is the key within the Secret's data.
	// +optional
	// +kubebuilder:default=secret
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	Key string `json:"key,omitempty"`
}

// ModelMode is how a model's requests run.
// +kubebuilder:validation:Enum=Job;Pool
type ModelMode string

const (
	// ModeJob runs each request in a Job of its own.
	ModeJob ModelMode = "Job"
	// ModePool hands requests to the pods of the model's pool.
	ModePool ModelMode = "Pool"
)

// InferenceModelStatus is what the controller observed of a model. Its
// counts are refreshed every few seconds while they change, not on every
// request, so they cost no API writes per request.
type InferenceModelStatus struct {
	// observedGeneration is the spec generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// mode is how the model's requests run: Job (one Job each) or Pool
	// (pods of the model's pool take them from the work API).
	// +optional
	Mode ModelMode `json:"mode,omitempty"`

	// queued is how many of the model's requests wait to start.
	// +optional
	Queued int32 `json:"queued"`

	// running is how many of the model's requests run: in Jobs of their own,
	// or handed to the pool's pods.
	// +optional
	Running int32 `json:"running"`

	// readyWorkers is how many of the pool's pods are ready (Pool mode).
	// +optional
	ReadyWorkers int32 `json:"readyWorkers,omitempty"`

	// workers is readyWorkers and workers.max as "ready/max", for kubectl
	// get (Pool mode).
	// +optional
	Workers string `json:"workers,omitempty"`

	// conditions describe the model's state. kinfer sets none yet.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// InferenceModel says how requests for one model run: the pod template of their
// Jobs, time and retry limits, concurrency, and how results are delivered.
// Requests name a model in their namespace by its name.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=im,categories=kinfer
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.status.mode`
// +kubebuilder:printcolumn:name="Workers",type=string,JSONPath=`.status.workers`,description="Pool pods ready / workers.max"
// +kubebuilder:printcolumn:name="Queued",type=integer,JSONPath=`.status.queued`
// +kubebuilder:printcolumn:name="Running",type=integer,JSONPath=`.status.running`
// +kubebuilder:printcolumn:name="Image",type=string,JSONPath=`.spec.template.spec.containers[0].image`
// +kubebuilder:printcolumn:name="Timeout",type=integer,JSONPath=`.spec.timeoutSeconds`,priority=1
// +kubebuilder:printcolumn:name="Retries",type=integer,JSONPath=`.spec.maxRetries`,priority=1
// +kubebuilder:printcolumn:name="Concurrency",type=integer,JSONPath=`.spec.maxConcurrency`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 63",message="metadata.name must be at most 63 characters: it becomes a label value on the model's Jobs"
type InferenceModel struct {
	metav1.TypeMeta `json:",inline"`

	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec says how the model's requests run.
	// +required
	Spec InferenceModelSpec `json:"spec"`

	// status is what the controller observed of the model.
	// +optional
	Status InferenceModelStatus `json:"status,omitempty"`
}

// InferenceModelList is a list of InferenceModels.
//
// +kubebuilder:object:root=true
type InferenceModelList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []InferenceModel `json:"items"`
}
