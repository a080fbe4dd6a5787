package v1alpha1

import (
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MaxInputBytes is the largest input a request may carry, as compact JSON.
// The API server cannot measure arbitrary JSON, so the HTTP shim refuses larger
// inputs and the controller fails requests that carry them without running a Job.
const MaxInputBytes = 64 << 10

// DefaultModelName is the model a request runs on when it names none.
const DefaultModelName = "default"

// InferenceRequestSpec is one inference as the client asked for it. It cannot
// be changed once created, but for cancel, which may go from false to true:
// a request that should run differently is a new one. CEL in a CRD cannot
// read a schemaless field, so the admission policy in config/policy keeps
// input unchanged.
//
// +kubebuilder:validation:XValidation:rule="has(self.id) == has(oldSelf.id) && (!has(self.id) || self.id == oldSelf.id)",message="spec.id cannot be changed: only spec.cancel may change once a request exists"
// +kubebuilder:validation:XValidation:rule="has(self.callbackURL) == has(oldSelf.callbackURL) && (!has(self.callbackURL) || self.callbackURL == oldSelf.callbackURL)",message="spec.callbackURL cannot be changed: only spec.cancel may change once a request exists"
// +kubebuilder:validation:XValidation:rule="has(self.model) == has(oldSelf.model) && (!has(self.model) || self.model == oldSelf.model)",message="spec.model cannot be changed: only spec.cancel may change once a request exists"
// +kubebuilder:validation:XValidation:rule="has(self.priority) == has(oldSelf.priority) && (!has(self.priority) || self.priority == oldSelf.priority)",message="spec.priority cannot be changed: only spec.cancel may change once a request exists"
// +kubebuilder:validation:XValidation:rule="has(self.queueTimeoutSeconds) == has(oldSelf.queueTimeoutSeconds) && (!has(self.queueTimeoutSeconds) || self.queueTimeoutSeconds == oldSelf.queueTimeoutSeconds)",message="spec.queueTimeoutSeconds cannot be changed: only spec.cancel may change once a request exists"
// +kubebuilder:validation:XValidation:rule="has(self.timeoutSeconds) == has(oldSelf.timeoutSeconds) && (!has(self.timeoutSeconds) || self.timeoutSeconds == oldSelf.timeoutSeconds)",message="spec.timeoutSeconds cannot be changed: only spec.cancel may change once a request exists"
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.cancel) || !oldSelf.cancel || (has(self.cancel) && self.cancel)",message="spec.cancel cannot be taken back once true"
type InferenceRequestSpec struct {
	// id is the client's identifier for the request, echoed in the callback
	// and the key the HTTP shim finds requests by: any Unicode text without
	// control characters (U+0000-U+001F, U+007F-U+009F). Requests created with
	// kubectl may leave it out: the request's name then serves as its id.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[^\x00-\x1f\x7f-\x9f]*$`
	ID string `json:"id,omitempty"`

	// callbackURL is where the result is POSTed once the request ends, as an
	// absolute http or https URL. Without it nothing is delivered and clients
	// read the result from status.
	// +optional
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''",message="callbackURL must be an absolute http or https URL with a host"
	CallbackURL string `json:"callbackURL,omitempty"`

	// model is the name of the InferenceModel in the request's namespace that
	// runs the request.
	// +optional
	// +kubebuilder:default=default
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	Model string `json:"model,omitempty"`

	// input is passed to the worker as JSON in KINFER_INPUT. Any JSON value is
	// accepted, up to 64 KiB; a larger input fails the request without running it.
	// +optional
	// +kubebuilder:validation:Schemaless
	// +kubebuilder:pruning:PreserveUnknownFields
	Input *apiextensionsv1.JSON `json:"input,omitempty"`

	// priority orders the request among its model's waiting requests: a
	// higher priority starts first, equal priorities oldest first. It may be
	// at most the model's maxPriority, which is 0 unless the model opts in.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000000
	Priority int32 `json:"priority,omitempty"`

	// queueTimeoutSeconds bounds how long the request may wait to start. It
	// may only be shorter than its model's queueTimeoutSeconds; the shorter of
	// the two applies. A request still waiting when it passes fails with
	// reason QueueTimeout, and its callback says "expired".
	// +optional
	// +kubebuilder:validation:Minimum=1
	QueueTimeoutSeconds *int64 `json:"queueTimeoutSeconds,omitempty"`

	// timeoutSeconds bounds how long the request may run once started. It
	// may only be shorter than its model's timeoutSeconds; the shorter of the
	// two applies. A request that runs longer fails with reason DeadlineExceeded.
	// +optional
	// +kubebuilder:validation:Minimum=1
	TimeoutSeconds *int64 `json:"timeoutSeconds,omitempty"`

	// cancel, set to true, ends the request as Canceled: a waiting request at
	// once, a running one by deleting its Job. Its callback says "canceled".
	// It is the one field that may change after create, and only from false
	// to true; a request that has already ended is not changed by it.
	// +optional
	Cancel bool `json:"cancel,omitempty"`
}

// RequestPhase summarises where a request stands, for kubectl get.
// +kubebuilder:validation:Enum=Pending;Queued;Running;Succeeded;Failed;Canceled
type RequestPhase string

const (
	// PhasePending means the request is stored and waits for its model or its Job.
	PhasePending RequestPhase = "Pending"
	// PhaseQueued means the request waits to start: its model runs as many Jobs
	// as its maxConcurrency allows, or a queue (Kueue) has not admitted its Job.
	PhaseQueued RequestPhase = "Queued"
	// PhaseRunning means the request's Job exists and has not finished.
	PhaseRunning RequestPhase = "Running"
	// PhaseSucceeded means the worker wrote a result.
	PhaseSucceeded RequestPhase = "Succeeded"
	// PhaseFailed means the request produced no result; status.error says why.
	PhaseFailed RequestPhase = "Failed"
	// PhaseCanceled means spec.cancel ended the request before it finished.
	PhaseCanceled RequestPhase = "Canceled"
)

// DeliveryState says where delivery of the result to the callback stands.
// +kubebuilder:validation:Enum=NotRequested;Pending;Delivered;Failed
type DeliveryState string

const (
	// DeliveryNotRequested means the request has no callbackURL.
	DeliveryNotRequested DeliveryState = "NotRequested"
	// DeliveryPending means delivery waits for the result or for its next attempt.
	DeliveryPending DeliveryState = "Pending"
	// DeliveryDelivered means the receiver answered 2xx.
	DeliveryDelivered DeliveryState = "Delivered"
	// DeliveryFailed means the receiver answered 410 or every attempt failed.
	DeliveryFailed DeliveryState = "Failed"
)

// Complete reports whether the phase is an end: Succeeded, Failed or Canceled.
func (p RequestPhase) Complete() bool {
	return p == PhaseSucceeded || p == PhaseFailed || p == PhaseCanceled
}

// Over reports whether delivery has reached an end: delivered, given up, or
// never asked for.
func (s DeliveryState) Over() bool {
	return s == DeliveryDelivered || s == DeliveryFailed || s == DeliveryNotRequested
}

// CurrentPhase is status.phase, or Pending before the controller has set one.
func (ir *InferenceRequest) CurrentPhase() RequestPhase {
	if ir.Status.Phase == "" {
		return PhasePending
	}
	return ir.Status.Phase
}

// CurrentDeliveryState is status.delivery.state, or before the controller has
// set one, the state it starts in: NotRequested without a callbackURL,
// Pending with one.
func (ir *InferenceRequest) CurrentDeliveryState() DeliveryState {
	switch {
	case ir.Status.Delivery.State != "":
		return ir.Status.Delivery.State
	case ir.Spec.CallbackURL == "":
		return DeliveryNotRequested
	default:
		return DeliveryPending
	}
}

// Labels and annotations kinfer puts on the objects it makes.
const (
	// LabelRequest names, on a Job and its pods, the request they run.
	LabelRequest = "inference.kinfer.dev/request"
	// LabelModel names, on a Job and its pods, the model they run; the shim
	// puts it on the requests it creates too, for kubectl get ir -l.
	LabelModel = "inference.kinfer.dev/model"
	// LabelPool names, on a pool's Job and its pods, the model the pool serves.
	LabelPool = "inference.kinfer.dev/pool"
	// LabelPoolGeneration numbers a model's pool Jobs, each made from the
	// model's generation it carries.
	LabelPoolGeneration = "inference.kinfer.dev/pool-generation"
	// LabelIDHash carries a hash of the client's id on every request the
	// shim creates, so requests can be found by id however they were made.
	LabelIDHash = "inference.kinfer.dev/id-hash"
	// AnnotationInputHash carries, on every request the shim creates with an
	// input, the hex SHA-256 of the input's canonical form as the client sent
	// it. The API server rewrites the JSON it stores (numbers go through
	// float64, keys are sorted), so a resubmission is compared with this
	// rather than with spec.input, where two inputs that differ past the 15th
	// digit look the same.
	AnnotationInputHash = "inference.kinfer.dev/input-sha256"
	// AnnotationRedeliver, set to a value it has not had, starts a fresh
	// delivery of an ended request whose delivery was Delivered or Failed:
	// the same webhook-id, attempts counted again from one. The value acted
	// on is kept in status.delivery.observedRedeliver.
	AnnotationRedeliver = "inference.kinfer.dev/redeliver"
)

// Condition types and reasons used in status.conditions.
const (
	// ConditionComplete is True once the request has a result or has failed.
	ConditionComplete = "Complete"
	// ConditionDelivered is True once the receiver accepted the callback.
	ConditionDelivered = "Delivered"
	// ConditionFailed is set when the request ends, in the same status write:
	// True when it ended Failed, False (reason Succeeded or Canceled) when it
	// ended otherwise. A cancel is the client's choice, not a failure.
	ConditionFailed = "Failed"

	// ReasonModelNotFound: the named InferenceModel does not exist (yet).
	ReasonModelNotFound = "ModelNotFound"
	// ReasonQueued: waiting to start, the model running as many Jobs as its
	// maxConcurrency allows.
	ReasonQueued = "Queued"
	// ReasonJobCreated: the Job exists and has not finished.
	ReasonJobCreated = "JobCreated"
	// ReasonPodPending: the Job's pod cannot start yet; the message carries
	// the pod's own reason (ImagePullBackOff, Unschedulable, ...).
	ReasonPodPending = "PodPending"
	// ReasonSucceeded: the Job completed and the result was read.
	ReasonSucceeded = "Succeeded"
	// ReasonJobFailed: the worker failed; status.error has its message.
	ReasonJobFailed = "JobFailed"
	// ReasonDeadlineExceeded: the Job ran past the model's timeoutSeconds.
	ReasonDeadlineExceeded = "DeadlineExceeded"
	// ReasonBackoffLimitExceeded: every retry allowed by maxRetries failed.
	ReasonBackoffLimitExceeded = "BackoffLimitExceeded"
	// ReasonInvalidInput: the input was refused (too large, or the worker
	// exited with code 42) and will not be retried.
	ReasonInvalidInput = "InvalidInput"
	// ReasonResultTooLarge: the worker's result could not be returned (it
	// exited with code 3) and will not be retried.
	ReasonResultTooLarge = "ResultTooLarge"
	// ReasonJobDeleted: the request's Job disappeared before it finished.
	ReasonJobDeleted = "JobDeleted"
	// ReasonJobConflict: a Job with the request's name exists that the request
	// does not own, so the request cannot run; status.error names it.
	ReasonJobConflict = "JobConflict"
	// ReasonResultLost: the Job completed but no pod was left to read the result from.
	ReasonResultLost = "ResultLost"
	// ReasonWaitingForAdmission: the Job is suspended until a queue (Kueue) admits it.
	ReasonWaitingForAdmission = "WaitingForAdmission"
	// ReasonWaitingForWorker: the request of a pool model waits for one of
	// the pool's pods to take it.
	ReasonWaitingForWorker = "WaitingForWorker"
	// ReasonWorkerRunning: a pod of the pool holds the request's lease.
	ReasonWorkerRunning = "WorkerRunning"
	// ReasonQueueTimeout: the request waited longer to start than its
	// queueTimeoutSeconds (or its model's) allows.
	ReasonQueueTimeout = "QueueTimeout"
	// ReasonCanceled: spec.cancel ended the request.
	ReasonCanceled = "Canceled"
	// ReasonPriorityNotAllowed: spec.priority is above the model's maxPriority.
	ReasonPriorityNotAllowed = "PriorityNotAllowed"

	// ReasonNoCallback: the request has no callbackURL, so nothing is delivered.
	ReasonNoCallback = "NoCallback"
	// ReasonAwaitingResult: delivery waits for the request to complete.
	ReasonAwaitingResult = "AwaitingResult"
	// ReasonRetrying: an attempt failed and another is scheduled.
	ReasonRetrying = "Retrying"
	// ReasonDelivered: the receiver answered 2xx.
	ReasonDelivered = "Delivered"
	// ReasonGone: the receiver answered 410 Gone; no more attempts are made.
	ReasonGone = "Gone"
	// ReasonRetriesExhausted: every attempt in the retry schedule failed.
	ReasonRetriesExhausted = "RetriesExhausted"
	// ReasonCallbackDenied: the callback address is refused by the manager's
	// outbound policy (not a public address, or plain http where https is required).
	ReasonCallbackDenied = "CallbackDenied"
	// ReasonRedelivering: a redelivery was asked for; its first attempt is due.
	ReasonRedelivering = "Redelivering"
	// ReasonSigningSecretUnreadable: the model's signing secret is missing, malformed, or
	// not labelled inference.kinfer.dev/signing-key: "true"; nothing was sent.
	ReasonSigningSecretUnreadable = "SigningSecretUnreadable"
)

// DeliveryStatus records delivery of the result to the callback. It holds what
// the cluster cannot rebuild, so a restarted controller resumes the schedule
// where it stood.
type DeliveryStatus struct {
	// state says where delivery stands.
	// +optional
	State DeliveryState `json:"state,omitempty"`

	// webhookID is sent as the webhook-id header of every attempt; receivers
	// use it to recognise a retried delivery.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	WebhookID string `json:"webhookID,omitempty"`

	// attempts is how many delivery attempts have been made.
	// +optional
	// +kubebuilder:validation:Minimum=0
	Attempts int32 `json:"attempts,omitempty"`

	// lastAttemptTime is when the latest attempt started.
	// +optional
	LastAttemptTime *metav1.Time `json:"lastAttemptTime,omitempty"`

	// nextAttemptTime is when the next attempt is due, while one is scheduled.
	// +optional
	NextAttemptTime *metav1.Time `json:"nextAttemptTime,omitempty"`

	// lastStatusCode is the HTTP status of the latest attempt's answer, or 0
	// when it got none.
	// +optional
	LastStatusCode int32 `json:"lastStatusCode,omitempty"`

	// lastError says why the latest attempt failed.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	LastError string `json:"lastError,omitempty"`

	// deliveredTime is when the receiver accepted the callback.
	// +optional
	DeliveredTime *metav1.Time `json:"deliveredTime,omitempty"`

	// observedRedeliver is the value of the inference.kinfer.dev/redeliver
	// annotation last acted on, so that each new value starts one redelivery.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	ObservedRedeliver string `json:"observedRedeliver,omitempty"`
}

// InferenceRequestStatus is where the request stands.
type InferenceRequestStatus struct {
	// phase summarises the conditions: Pending, Queued, Running, Succeeded,
	// Failed or Canceled.
	// +optional
	Phase RequestPhase `json:"phase,omitempty"`

	// observedGeneration is the spec generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// jobName is the name of the Job that runs the request.
	// +optional
	JobName string `json:"jobName,omitempty"`

	// worker is, for a request of a pool model, the pod that took it last.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	Worker string `json:"worker,omitempty"`

	// startTime is when the request's Job was created.
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`

	// completionTime is when the request succeeded or failed.
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`

	// result is what the worker wrote: the JSON value itself when it parses as
	// JSON, otherwise a string.
	// +optional
	// +kubebuilder:validation:Schemaless
	// +kubebuilder:pruning:PreserveUnknownFields
	Result *apiextensionsv1.JSON `json:"result,omitempty"`

	// error says, for people, why the request failed.
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	Error string `json:"error,omitempty"`

	// delivery records delivery of the result to callbackURL.
	// +optional
	Delivery DeliveryStatus `json:"delivery,omitempty"`

	// conditions are Complete, Delivered and, once the request has ended,
	// Failed, each with a reason.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// InferenceRequest is one asynchronous inference: the controller runs it as a
// Job built from its model, keeps the result in status and POSTs it to the
// callback URL until the receiver takes it.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=ir,categories=kinfer
// +kubebuilder:selectablefield:JSONPath=`.spec.model`
// +kubebuilder:selectablefield:JSONPath=`.spec.id`
// +kubebuilder:printcolumn:name="ID",type=string,JSONPath=`.spec.id`
// +kubebuilder:printcolumn:name="Model",type=string,JSONPath=`.spec.model`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Delivery",type=string,JSONPath=`.status.delivery.state`
// +kubebuilder:printcolumn:name="Attempts",type=integer,JSONPath=`.status.delivery.attempts`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:printcolumn:name="Reason",type=string,priority=1,JSONPath=`.status.conditions[?(@.type=="Complete")].reason`
// +kubebuilder:printcolumn:name="Message",type=string,priority=1,JSONPath=`.status.conditions[?(@.type=="Complete")].message`
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 63",message="metadata.name must be at most 63 characters: it names the request's Job"
type InferenceRequest struct {
	metav1.TypeMeta `json:",inline"`

	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the inference as the client asked for it; immutable.
	// +required
	Spec InferenceRequestSpec `json:"spec"`

	// status is where the request stands.
	// +optional
	Status InferenceRequestStatus `json:"status,omitempty"`
}

// InferenceRequestList is a list of InferenceRequests.
//
// +kubebuilder:object:root=true
type InferenceRequestList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []InferenceRequest `json:"items"`
}

// RunTimeoutSeconds is how long ir may run once started: the shorter of its
// own timeoutSeconds and model's, nil when neither sets one. A request never
// gets more than its model allows, even should the model be edited later.
func (ir *InferenceRequest) RunTimeoutSeconds(model *InferenceModel) *int64 {
	if model == nil {
		return ir.Spec.TimeoutSeconds
	}
	return shorter(ir.Spec.TimeoutSeconds, model.Spec.TimeoutSeconds)
}

// QueueTimeoutSeconds is how long ir may wait to start: the shorter of its
// own queueTimeoutSeconds and model's, nil when neither sets one. model may
// be nil, while it does not exist.
func (ir *InferenceRequest) QueueTimeoutSeconds(model *InferenceModel) *int64 {
	if model == nil {
		return ir.Spec.QueueTimeoutSeconds
	}
	return shorter(ir.Spec.QueueTimeoutSeconds, model.Spec.QueueTimeoutSeconds)
}

// shorter is the smaller of two optional limits.
func shorter(a, b *int64) *int64 {
	switch {
	case a == nil:
		return b
	case b == nil || *a < *b:
		return a
	default:
		return b
	}
}
