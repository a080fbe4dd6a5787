package shim

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"strings"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
)

// Limits on what a client may send.
const (
	maxBodyBytes = 1 << 20
	maxIDLength  = 253
	maxURLLength = 2048
)

// LabelIDHash carries a hash of the client's id on every request the shim
// creates, so requests can be found by id however they were made.
const LabelIDHash = "inference.kinfer.dev/id-hash"

// Submission is the body of POST /v1/inferences: the original service's
// {"id", "callback_url"}, and optionally the model and its input.
type Submission struct {
	ID          string          `json:"id"`
	CallbackURL string          `json:"callback_url,omitempty"`
	Model       string          `json:"model,omitempty"`
	Input       json.RawMessage `json:"input,omitempty"`
}

// apiError is every error answer: a message for people and, where one field
// is at fault, its name in the body as the client sent it.
type apiError struct {
	status  int
	Message string `json:"error"`
	Field   string `json:"field,omitempty"`
}

func (e *apiError) Error() string { return e.Message }

func fail(status int, field, format string, args ...any) *apiError {
	return &apiError{status: status, Field: field, Message: fmt.Sprintf(format, args...)}
}

// wireSubmission is what is decoded: id may be a JSON string or, as the
// original service's clients may send it, a number, kept as written.
type wireSubmission struct {
	ID          json.RawMessage `json:"id"`
	CallbackURL *string         `json:"callback_url"`
	Model       *string         `json:"model"`
	Input       json.RawMessage `json:"input"`
}

// decodeSubmission reads and checks a submission. Every problem is an
// *apiError with the status to answer: 415, 413, 400 or 422.
func decodeSubmission(r *http.Request, denied func(netip.Addr) error) (*Submission, *apiError) {
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
	return parseSubmission(body, denied)
}

func requireJSON(contentType string) *apiError {
	mediaType, _, err := mime.ParseMediaType(contentType)
	if err != nil || (mediaType != "application/json" && !strings.HasSuffix(mediaType, "+json")) {
		return fail(http.StatusUnsupportedMediaType, "", "Content-Type must be application/json, got %q", contentType)
	}
	return nil
}

// parseSubmission decodes body strictly (unknown fields and trailing data are
// refused) and validates each field the way the API server would, so clients
// learn of a mistake with the field named rather than as a server error.
func parseSubmission(body []byte, denied func(netip.Addr) error) (*Submission, *apiError) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var w wireSubmission
	if err := dec.Decode(&w); err != nil {
		return nil, decodeError(err)
	}
	if dec.More() || !atEOF(dec) {
		return nil, fail(http.StatusBadRequest, "", "body must hold a single JSON object")
	}

	s := &Submission{}
	var problem *apiError
	if s.ID, problem = parseID(w.ID); problem != nil {
		return nil, problem
	}
	if w.CallbackURL != nil {
		s.CallbackURL = *w.CallbackURL
		if problem := validateCallback(s.CallbackURL, denied); problem != nil {
			return nil, problem
		}
	}
	s.Model = inferencev1alpha1.DefaultModelName
	if w.Model != nil {
		s.Model = *w.Model
		if !modelPattern.MatchString(s.Model) || len(s.Model) > 63 {
			return nil, fail(http.StatusUnprocessableEntity, "model",
				"model must be the name of an InferenceModel: at most 63 lowercase letters, digits, '-' and '.'")
		}
	}
	if len(w.Input) > 0 && string(w.Input) != "null" {
		var compact bytes.Buffer
		if err := json.Compact(&compact, w.Input); err != nil {
			return nil, fail(http.StatusBadRequest, "input", "input is not valid JSON")
		}
		if compact.Len() > inferencev1alpha1.MaxInputBytes {
			return nil, fail(http.StatusUnprocessableEntity, "input",
				"input is %d bytes of JSON; at most %d are accepted", compact.Len(), inferencev1alpha1.MaxInputBytes)
		}
		s.Input = compact.Bytes()
	}
	return s, nil
}

var modelPattern = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`)

func atEOF(dec *json.Decoder) bool {
	_, err := dec.Token()
	return errors.Is(err, io.EOF)
}

func decodeError(err error) *apiError {
	var syntax *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	switch {
	case errors.Is(err, io.EOF):
		return fail(http.StatusBadRequest, "", "body is empty; send a JSON object with at least an id")
	case errors.As(err, &syntax):
		return fail(http.StatusBadRequest, "", "body is not valid JSON: %v", err)
	case errors.As(err, &typeErr):
		if typeErr.Field == "" {
			return fail(http.StatusBadRequest, "", "body must be a JSON object")
		}
		return fail(http.StatusBadRequest, typeErr.Field, "%s must be a JSON %s", typeErr.Field, expected(typeErr.Field))
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		field := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return fail(http.StatusBadRequest, field, "unknown field %q; known fields are id, callback_url, model and input", field)
	}
	return fail(http.StatusBadRequest, "", "body is not valid JSON: %v", err)
}

func expected(field string) string {
	if field == "id" {
		return "string or number"
	}
	return "string"
}

// parseID takes the id as a JSON string, or a JSON number kept as written.
func parseID(raw json.RawMessage) (string, *apiError) {
	var id string
	switch {
	case len(raw) == 0 || string(raw) == "null":
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
	return id, nil
}

// validateCallback holds callback_url to the API's rule (an absolute http or
// https URL with a host) and, when the host is a literal IP address, to the
// manager's outbound policy: a callback that could never be delivered is
// refused now rather than failed later. Host names are judged at delivery,
// when they are resolved.
func validateCallback(raw string, denied func(netip.Addr) error) *apiError {
	u, err := url.Parse(raw)
	if err != nil || len(raw) > maxURLLength || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
		return fail(http.StatusUnprocessableEntity, "callback_url",
			"callback_url must be an absolute http or https URL with a host, at most %d bytes", maxURLLength)
	}
	if addr, err := netip.ParseAddr(u.Hostname()); err == nil && denied != nil {
		if err := denied(addr); err != nil {
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

// IDHashLabel is the value of LabelIDHash for id.
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
