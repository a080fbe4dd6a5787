package shim

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/kinfer/kinfer/internal/callback"
)

// FuzzParseSubmission holds the decoder to two promises for any body: it
// never panics, and it never answers as if the server had failed.
func FuzzParseSubmission(f *testing.F) {
	for _, seed := range []string{
		`{"id": "1234", "callback_url": "http://localhost:8001/v1/results"}`,
		`{"id": 42, "model": "m", "input": {"a": [1, null, true]}}`,
		`{"id": "", "callback_url": "ftp://x"}`,
		`{"id": "1", "callback_url": "http://[::ffff:127.0.0.1]/"}`,
		`{"id": "1", "input": "\u0000"}`,
		`{"id": "1"} trailing`,
		`[]`, `null`, `"id"`, `{`, ``, `{"id": 1e400}`, `{"id": -0}`, `{"id":"1","id":"2"}`,
	} {
		f.Add([]byte(seed))
	}
	policy, err := callback.NewPolicy(nil, false)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		s, problem := parseSubmission(body, policy.Check)
		if problem != nil {
			if problem.status >= 500 || problem.status < 400 {
				t.Errorf("body %q answered %d", body, problem.status)
			}
			return
		}
		if s.ID == "" || len(s.ID) > maxIDLength {
			t.Errorf("body %q accepted with id %q", body, s.ID)
		}
		if ObjectName(s.ID) == "" {
			t.Errorf("no object name for id %q", s.ID)
		}
	})
}

func TestValidateCallbackChecksLiteralAddressesOnly(t *testing.T) {
	denyAll := func(netip.Addr) error { return &callback.DeniedAddressError{} }
	if problem := validateCallback("http://client.example.com/r", denyAll); problem != nil {
		t.Errorf("a host name was judged before it was resolved: %v", problem)
	}
	if problem := validateCallback("http://10.0.0.1/r", denyAll); problem == nil || problem.status != http.StatusUnprocessableEntity {
		t.Errorf("a denied literal address was accepted: %v", problem)
	}
}

func TestAPIServerValidationBecomes422(t *testing.T) {
	invalidErr := apierrors.NewInvalid(schema.GroupKind{Group: "inference.kinfer.dev", Kind: "InferenceRequest"}, "req-1",
		field.ErrorList{field.Invalid(field.NewPath("spec", "callbackURL"), "x", "callbackURL must be an absolute http or https URL with a host")})
	rec := httptest.NewRecorder()
	(&Handler{}).writeFailure(rec, httptest.NewRequest(http.MethodPost, "/v1/inferences", nil), invalidErr)

	if rec.Code != http.StatusUnprocessableEntity {
		t.Fatalf("status %d, want 422", rec.Code)
	}
	var body map[string]string
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	if body["field"] != "callback_url" || !strings.Contains(body["error"], "absolute http or https URL") {
		t.Errorf("body %v, want the API server's message for field callback_url", body)
	}
}

func TestUnexpectedErrorsHideTheirText(t *testing.T) {
	rec := httptest.NewRecorder()
	(&Handler{}).writeFailure(rec, httptest.NewRequest(http.MethodGet, "/v1/inferences/1", nil),
		errors.New("secret internal detail"))
	if rec.Code != http.StatusInternalServerError || strings.Contains(rec.Body.String(), "secret internal detail") {
		t.Errorf("answer %d %s, want a 500 without the error's text", rec.Code, rec.Body.String())
	}
}
