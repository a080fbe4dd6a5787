package shim

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
)

// Limits on what a client may send.
const (
	maxBodyBytes = 1 << 20
	maxIDLength  = 253
	maxURLLength = 2048
)

// Bounds of a submission's integer fields, as the API enforces them.
const (
	maxPriority   = 1000000
	minTimeoutSec = 1
)

// Submission is the body of POST /v1/inferences: the original service's
// {"id", "callback_url"}, and optionally the model, its input, and what the
// request asks of its model's queue and limits.
type Submission struct {
	ID          string
	CallbackURL string
	Model       string
	// Input is the input as compact JSON; nil when none was sent.
	Input json.RawMessage
	// InputHash is the value of inferencev1alpha1.AnnotationInputHash for Input.
	InputHash string
	// Priority orders the request among its model's waiting requests; 0
	// when none was sent.
	Priority int32
	// QueueTimeoutSeconds and TimeoutSeconds shorten the model's limits;
	// nil when not sent.
	QueueTimeoutSeconds *int64
	TimeoutSeconds      *int64
}

// apiError is every error answer: a message for people and, where one field
// is at fault, its name in the body as the client sent it.
type apiError struct {
	status  int
	Message string `json:"error"`
	Field   string `json:"field,omitempty"`
	// retryAfter, when set, is sent as Retry-After.
	retryAfter time.Duration
}

func (e *apiError) Error() string { return e.Message }

func fail(status int, field, format string, args ...any) *apiError {
	return &apiError{status: status, Field: field, Message: fmt.Sprintf(format, args...)}
}

// callbackRules are what a callback_url must satisfy to be accepted.
type callbackRules struct {
	// denied refuses literal addresses the manager would never deliver to;
	// nil allows every address.
	denied func(netip.Addr) error
	// requireHTTPS refuses plain http URLs, which the manager would refuse to
	// deliver to.
	requireHTTPS bool
}

// decodeSubmission reads and checks a submission. Every problem is an
// *apiError with the status to answer: 415, 413, 400 or 422.
func decodeSubmission(r *http.Request, rules callbackRules) (*Submission, *apiError) {
	if err := requireJSON(r.Header.Get("Content-Type")); err != nil {
		return nil, err
	}
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxBodyBytes))
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return nil, fail(http.StatusRequestEntityTooLarge, "", "body is larger than %d bytes", maxBodyBytes)
	}
	if err != nil {
		return nil, fail(http.StatusBadRequest, "", "reading body: %v", err)
	}
	return parseSubmission(body, rules)
}

func requireJSON(contentType string) *apiError {
	mediaType, _, err := mime.ParseMediaType(contentType)
	if err != nil || (mediaType != "application/json" && !strings.HasSuffix(mediaType, "+json")) {
		return fail(http.StatusUnsupportedMediaType, "", "Content-Type must be application/json, got %q", contentType)
	}
	return nil
}

// parseSubmission decodes body strictly (unknown, misspelt and repeated keys
// and trailing data are refused) and validates each field the way the API
// server would, so clients learn of a mistake with the field named rather
// than as a server error.
func parseSubmission(body []byte, rules callbackRules) (*Submission, *apiError) {
	fields, problem := submissionFields(body)
	if problem != nil {
		return nil, problem
	}
	callbackURL, problem := stringField(fields, "callback_url")
	if problem != nil {
		return nil, problem
	}
	model, problem := stringField(fields, "model")
	if problem != nil {
		return nil, problem
	}

	s := &Submission{}
	if s.ID, problem = parseID(fields["id"]); problem != nil {
		return nil, problem
	}
	if callbackURL != nil {
		s.CallbackURL = *callbackURL
		if problem := validateCallback(s.CallbackURL, rules); problem != nil {
			return nil, problem
		}
	}
	s.Model = inferencev1alpha1.DefaultModelName
	if model != nil {
		s.Model = *model
		if !modelPattern.MatchString(s.Model) || len(s.Model) > 63 {
			return nil, fail(http.StatusUnprocessableEntity, "model",
				"model must be the name of an InferenceModel: at most 63 lowercase letters, digits, '-' and '.'")
		}
	}
	if raw := fields["input"]; !absent(raw) {
		if problem := s.setInput(raw); problem != nil {
			return nil, problem
		}
	}
	if problem := s.setLimits(fields); problem != nil {
		return nil, problem
	}
	return s, nil
}

// setLimits reads priority, queue_timeout_seconds and timeout_seconds,
// within the bounds the API server holds them to. Whether the model allows
// them is judged once the model is read.
func (s *Submission) setLimits(fields map[string]json.RawMessage) *apiError {
	priority, problem := integerField(fields, "priority", 0, maxPriority)
	if problem != nil {
		return problem
	}
	if priority != nil {
		s.Priority = int32(*priority)
	}
	if s.QueueTimeoutSeconds, problem = integerField(fields, "queue_timeout_seconds", minTimeoutSec, math.MaxInt64); problem != nil {
		return problem
	}
	s.TimeoutSeconds, problem = integerField(fields, "timeout_seconds", minTimeoutSec, math.MaxInt64)
	return problem
}

// setInput keeps raw as compact JSON, with the hash of its canonical form.
func (s *Submission) setInput(raw json.RawMessage) *apiError {
	var compact bytes.Buffer
	if err := json.Compact(&compact, raw); err != nil {
		return fail(http.StatusBadRequest, "input", "input is not valid JSON")
	}
	if compact.Len() > inferencev1alpha1.MaxInputBytes {
		return fail(http.StatusUnprocessableEntity, "input",
			"input is %d bytes of JSON; at most %d are accepted", compact.Len(), inferencev1alpha1.MaxInputBytes)
	}
	canonical, err := canonicalJSON(compact.Bytes(), numberAsWritten)
	var dup *duplicateKeyError
	if errors.As(err, &dup) {
		return fail(http.StatusBadRequest, "input", "input has the key %q more than once in one object", dup.key)
	}
	if err != nil {
		return fail(http.StatusBadRequest, "input", "input is not valid JSON")
	}
	s.Input = compact.Bytes()
	s.InputHash = inputHash(canonical)
	return nil
}

// knownFields are a submission's keys, matched exactly.
var knownFields = []string{"id", "callback_url", "model", "input", "priority", "queue_timeout_seconds", "timeout_seconds"}

// submissionFields reads body as one JSON object and returns its values by
// key. Keys must be known fields spelt exactly, each at most once: decoding
// into a struct would match "CALLBACK_URL", and even "callbac\u212a_url" with
// a Kelvin sign, to callback_url and keep the last of repeated keys, so a
// proxy or a log reading the body another way would see another request.
func submissionFields(body []byte) (map[string]json.RawMessage, *apiError) {
	dec := json.NewDecoder(bytes.NewReader(body))
	open, err := dec.Token()
	if errors.Is(err, io.EOF) {
		return nil, fail(http.StatusBadRequest, "", "body is empty; send a JSON object with at least an id")
	}
	if err != nil {
		return nil, syntaxError(err)
	}
	if open != json.Delim('{') {
		return nil, fail(http.StatusBadRequest, "", "body must be a JSON object")
	}
	fields := map[string]json.RawMessage{}
	for dec.More() {
		token, err := dec.Token()
		if err != nil {
			return nil, syntaxError(err)
		}
		key, _ := token.(string)
		if !slices.Contains(knownFields, key) {
			return nil, fail(http.StatusBadRequest, key,
				"unknown field %q; known fields are %s and %s, spelt exactly so", key,
				strings.Join(knownFields[:len(knownFields)-1], ", "), knownFields[len(knownFields)-1])
		}
		if _, seen := fields[key]; seen {
			return nil, fail(http.StatusBadRequest, key, "field %q appears more than once", key)
		}
		var value json.RawMessage
		if err := dec.Decode(&value); err != nil {
			return nil, syntaxError(err)
		}
		fields[key] = value
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, syntaxError(err)
	}
	if !atEOF(dec) {
		return nil, fail(http.StatusBadRequest, "", "body must hold a single JSON object")
	}
	return fields, nil
}

// stringField is the value of key as a string; nil when it is absent or null.
func stringField(fields map[string]json.RawMessage, key string) (*string, *apiError) {
	raw := fields[key]
	if absent(raw) {
		return nil, nil
	}
	var value string
	if raw[0] != '"' || json.Unmarshal(raw, &value) != nil {
		return nil, fail(http.StatusBadRequest, key, "%s must be a JSON string", key)
	}
	return &value, nil
}

// integerField is the value of key as a whole number from least to most;
// nil when it is absent or null. A number with a fraction or an exponent is
// refused even when whole: what a client means by 1e3 seconds is plain, but
// every other spelling of a count would have to be compared as equal to it
// on a resubmission.
func integerField(fields map[string]json.RawMessage, key string, least, most int64) (*int64, *apiError) {
	raw := fields[key]
	if absent(raw) {
		return nil, nil
	}
	if !integerPattern.Match(raw) {
		return nil, fail(http.StatusBadRequest, key, "%s must be a JSON integer", key)
	}
	value, err := strconv.ParseInt(string(raw), 10, 64)
	switch {
	case err == nil && least <= value && value <= most:
		return &value, nil
	case most == math.MaxInt64 && value < least:
		return nil, fail(http.StatusUnprocessableEntity, key, "%s must be at least %d", key, least)
	case most == math.MaxInt64:
		return nil, fail(http.StatusUnprocessableEntity, key, "%s is too large", key)
	}
	return nil, fail(http.StatusUnprocessableEntity, key, "%s must be from %d to %d", key, least, most)
}

var integerPattern = regexp.MustCompile(`^-?(0|[1-9][0-9]*)$`)

// absent reports a field that was not sent, or sent as null.
func absent(raw json.RawMessage) bool {
	return len(raw) == 0 || string(raw) == "null"
}

var modelPattern = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`)

func atEOF(dec *json.Decoder) bool {
	_, err := dec.Token()
	return errors.Is(err, io.EOF)
}

// syntaxError answers a body that ends early or is not JSON.
func syntaxError(err error) *apiError {
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fail(http.StatusBadRequest, "", "body is not valid JSON: %v", err)
}

// parseID takes the id as a JSON string, or a JSON number kept as written.
func parseID(raw json.RawMessage) (string, *apiError) {
	var id string
	switch {
	case absent(raw):
		return "", fail(http.StatusUnprocessableEntity, "id", "id is required")
	case raw[0] == '"':
		if err := json.Unmarshal(raw, &id); err != nil {
			return "", fail(http.StatusBadRequest, "id", "id is not a valid JSON string")
		}
	case raw[0] == '-' || (raw[0] >= '0' && raw[0] <= '9'):
		id = string(raw)
	default:
		return "", fail(http.StatusBadRequest, "id", "id must be a JSON string or number")
	}
	if id == "" || len(id) > maxIDLength {
		return "", fail(http.StatusUnprocessableEntity, "id", "id must be 1 to %d bytes long, got %d", maxIDLength, len(id))
	}
	if i := strings.IndexFunc(id, unicode.IsControl); i >= 0 {
		return "", fail(http.StatusUnprocessableEntity, "id",
			"id must not hold control characters; it has %U at byte %d", firstRune(id[i:]), i)
	}
	return id, nil
}

func firstRune(s string) rune {
	r, _ := utf8.DecodeRuneInString(s)
	return r
}

// validateCallback holds callback_url to the API's rule (an absolute http or
// https URL with a host) and to the manager's outbound policy where it can be
// judged now (the scheme, and a host that is a literal IP address): a callback
// that could never be delivered is refused now rather than failed later. Host
// names are judged at delivery, when they are resolved.
func validateCallback(raw string, rules callbackRules) *apiError {
	u, err := url.Parse(raw)
	if err != nil || len(raw) > maxURLLength || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
		return fail(http.StatusUnprocessableEntity, "callback_url",
			"callback_url must be an absolute http or https URL with a host, at most %d bytes", maxURLLength)
	}
	if rules.requireHTTPS && u.Scheme != "https" {
		return fail(http.StatusUnprocessableEntity, "callback_url",
			"callback_url must be an https URL: this server does not deliver results over plain http")
	}
	if addr, err := netip.ParseAddr(u.Hostname()); err == nil && rules.denied != nil {
		if err := rules.denied(addr); err != nil {
			return fail(http.StatusUnprocessableEntity, "callback_url", "%v", err)
		}
	}
	return nil
}

// ObjectName is the InferenceRequest name for a client's id: a readable
// DNS-label prefix of the id, then a hash of the whole id, so any string
// works as an id and two ids do not share a name. It fits the 63 characters a
// request's name (and so its Job's) may have.
func ObjectName(id string) string {
	readable := sanitize(id, 42)
	if readable == "" {
		return "req-" + idHash(id)[:16]
	}
	return "req-" + readable + "-" + idHash(id)[:16]
}

// idHash is the hex SHA-256 of the id; its first 63 characters label requests.
func idHash(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:])
}

// IDHashLabel is the value of inferencev1alpha1.LabelIDHash for id.
func IDHashLabel(id string) string {
	return idHash(id)[:63]
}

// sanitize keeps lowercase letters and digits of s, turns every other run of
// characters into one '-', and cuts the result to at most n characters
// without a leading or trailing '-'.
func sanitize(s string, n int) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(s) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			if dash && b.Len() > 0 {
				b.WriteByte('-')
			}
			dash = false
			b.WriteRune(r)
			if b.Len() >= n {
				break
			}
			continue
		}
		dash = true
	}
	return strings.Trim(b.String()[:min(b.Len(), n)], "-")
}
