package shim

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/utils/ptr"

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
		`{"id": "1", "priority": 5, "queue_timeout_seconds": -0, "timeout_seconds": 9e99}`,
	} {
		f.Add([]byte(seed))
	}
	policy, err := callback.NewPolicy(nil, false)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		s, problem := parseSubmission(body, callbackRules{denied: policy.Check})
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
	if problem := validateCallback("http://client.example.com/r", callbackRules{denied: denyAll}); problem != nil {
		t.Errorf("a host name was judged before it was resolved: %v", problem)
	}
	if problem := validateCallback("http://10.0.0.1/r", callbackRules{denied: denyAll}); problem == nil || problem.status != http.StatusUnprocessableEntity {
		t.Errorf("a denied literal address was accepted: %v", problem)
	}
}

func TestAPIServerValidationBecomes422(t *testing.T) {
	invalidErr := apierrors.NewInvalid(schema.GroupKind{Group: "inference.kinfer.dev", Kind: "InferenceRequest"}, "req-1",
		field.ErrorList{field.Invalid(field.NewPath("spec", "callbackURL"), "x", "callbackURL must be an absolute http or https URL with a host")})
	rec := httptest.NewRecorder()
	NewHandler(Options{}).writeFailure(rec, httptest.NewRequest(http.MethodPost, "/v1/inferences", nil), invalidErr)

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
	NewHandler(Options{}).writeFailure(rec, httptest.NewRequest(http.MethodGet, "/v1/inferences/1", nil),
		errors.New("secret internal detail"))
	if rec.Code != http.StatusInternalServerError || strings.Contains(rec.Body.String(), "secret internal detail") {
		t.Errorf("answer %d %s, want a 500 without the error's text", rec.Code, rec.Body.String())
	}
}

// refusal is what a test expects of a refused submission.
type refusal struct {
	Status int
	Field  string
}

func refusalOf(problem *apiError) *refusal {
	if problem == nil {
		return nil
	}
	return &refusal{Status: problem.status, Field: problem.Field}
}

func TestParseSubmissionMatchesKeysExactly(t *testing.T) {
	tests := []struct {
		name, body string
		want       *refusal
	}{
		{"known keys", `{"id": "1", "callback_url": "https://hooks.example.com/r", "model": "m", "input": 1}`, nil},
		{"known keys for the queue and limits", `{"id": "1", "priority": 1, "queue_timeout_seconds": 2, "timeout_seconds": 3}`, nil},
		{"a key written with escapes is the same key", `{"\u0069d": "1"}`, nil},
		{"upper-case key", `{"id": "1", "CALLBACK_URL": "https://hooks.example.com/r"}`, &refusal{400, "CALLBACK_URL"}},
		{"key in another case", `{"Id": "1"}`, &refusal{400, "Id"}},
		{"Kelvin sign for k", `{"id": "1", "callbac\u212a_url": "https://hooks.example.com/r"}`, &refusal{400, "callbac\u212a_url"}},
		{"duplicate id", `{"id": "1", "id": "2"}`, &refusal{400, "id"}},
		{"duplicate callback_url", `{"id": "1", "callback_url": "https://a.example/", "callback_url": "https://b.example/"}`,
			&refusal{400, "callback_url"}},
		{"duplicate null input", `{"id": "1", "input": null, "input": null}`, &refusal{400, "input"}},
		{"duplicate key inside input", `{"id": "1", "input": {"a": 1, "b": {"c": 1, "c": 2}}}`, &refusal{400, "input"}},
		{"unknown field", `{"id": "1", "callback": "http://x.example/"}`, &refusal{400, "callback"}},
		{"malformed JSON", `{"id": "1"`, &refusal{400, ""}},
		{"cut after a key", `{"id":`, &refusal{400, ""}},
		{"not an object", `["1"]`, &refusal{400, ""}},
		{"null body", `null`, &refusal{400, ""}},
		{"trailing data", `{"id": "1"} {"id": "2"}`, &refusal{400, ""}},
		{"empty body", ``, &refusal{400, ""}},
		{"id of the wrong type", `{"id": true}`, &refusal{400, "id"}},
		{"callback of the wrong type", `{"id": "1", "callback_url": 7}`, &refusal{400, "callback_url"}},
		{"model of the wrong type", `{"id": "1", "model": ["m"]}`, &refusal{400, "model"}},
		{"no id", `{"callback_url": "http://x.example/"}`, &refusal{422, "id"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, problem := parseSubmission([]byte(tc.body), callbackRules{})
			if diff := cmp.Diff(tc.want, refusalOf(problem)); diff != "" {
				t.Errorf("body %s (-want +got):\n%s", tc.body, diff)
			}
		})
	}
}

func TestParseSubmissionRefusesControlCharactersInIDs(t *testing.T) {
	tests := []struct {
		name, id string
		want     *refusal
	}{
		{"NUL", `"a\u0000b"`, &refusal{422, "id"}},
		{"newline", `"a\nb"`, &refusal{422, "id"}},
		{"unit separator", `"a\u001fb"`, &refusal{422, "id"}},
		{"DEL", "\"a\u007fb\"", &refusal{422, "id"}},
		{"C1 next line", `"a\u0085b"`, &refusal{422, "id"}},
		{"C1 at the end of the range", "\"a\u009f\"", &refusal{422, "id"}},
		{"space and punctuation", `"order #42 / x"`, nil},
		{"letters beyond ASCII", `"ünïcode ✓ 注文"`, nil},
		{"no-break space after the C1 range", `"a\u00a0b"`, nil},
		{"number", `1234`, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, problem := parseSubmission([]byte(`{"id": `+tc.id+`}`), callbackRules{})
			if diff := cmp.Diff(tc.want, refusalOf(problem)); diff != "" {
				t.Errorf("id %s (-want +got):\n%s", tc.id, diff)
			}
		})
	}
}

func TestParseSubmissionRefusesPlainHTTPCallbacksWhenHTTPSIsRequired(t *testing.T) {
	tests := []struct {
		name         string
		requireHTTPS bool
		callback     string
		want         *refusal
	}{
		{"http refused", true, "http://hooks.example.com/r", &refusal{422, "callback_url"}},
		{"upper-case HTTP refused", true, "HTTP://hooks.example.com/r", &refusal{422, "callback_url"}},
		{"https accepted", true, "https://hooks.example.com/r", nil},
		{"http accepted when not required", false, "http://hooks.example.com/r", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body := `{"id": "1", "callback_url": "` + tc.callback + `"}`
			_, problem := parseSubmission([]byte(body), callbackRules{requireHTTPS: tc.requireHTTPS})
			if diff := cmp.Diff(tc.want, refusalOf(problem)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestInputHashIgnoresSpellingButNotValue(t *testing.T) {
	hashOf := func(t *testing.T, input string) string {
		t.Helper()
		s, problem := parseSubmission([]byte(`{"id": "1", "input": `+input+`}`), callbackRules{})
		if problem != nil {
			t.Fatalf("input %s refused: %v", input, problem)
		}
		return s.InputHash
	}
	tests := []struct {
		name string
		a, b string
		same bool
	}{
		{"keys in another order, at every depth", `{"b": 1, "a": {"y": [1, 2], "x": null}}`, `{"a": {"x": null, "y": [1, 2]}, "b": 1}`, true},
		{"other spacing", `[1, {"a": "b"}]`, "[1,{\n\"a\":\"b\"}]", true},
		{"escaped and plain strings", `"\u00e9\/"`, `"é/"`, true},
		{"past the 15th digit, where float64 sees the same number", `0.1`, `0.10000000000000001`, false},
		{"integers beyond float64", `9007199254740992`, `9007199254740993`, false},
		{"numbers as written", `1.0`, `1`, false},
		{"array order", `[1, 2]`, `[2, 1]`, false},
		{"key case", `{"a": 1}`, `{"A": 1}`, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := hashOf(t, tc.a) == hashOf(t, tc.b); got != tc.same {
				t.Errorf("%s and %s: same hash is %v, want %v", tc.a, tc.b, got, tc.same)
			}
		})
	}
}

func TestSameInputComparesNumbersExactly(t *testing.T) {
	tests := []struct {
		name, stored, sent string
		want               bool
	}{
		{"as the API server rewrites it", `{"a":1,"b":0.1,"c":100}`, `{"c": 1e2, "b": 0.10, "a": 1.0}`, true},
		{"zero and negative zero", `0`, `-0.0e5`, true},
		{"exponent forms", `1.5e+21`, `15E20`, true},
		{"differs past the 15th digit, where float64 sees the same number", `0.1234567890123456`, `0.12345678901234560001`, false},
		{"integer beyond float64, rounded when stored", `12345678901234567000`, `12345678901234567890`, false},
		{"sign", `-1`, `1`, false},
		{"huge exponents cost nothing", `1e999999999999`, `1e999999999998`, false},
		{"both absent", ``, ``, true},
		{"absent and present", ``, `1`, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := sameInput([]byte(tc.stored), []byte(tc.sent)); got != tc.want {
				t.Errorf("sameInput(%s, %s) = %v, want %v", tc.stored, tc.sent, got, tc.want)
			}
		})
	}
}

func TestParseSubmissionReadsPriorityAndLimits(t *testing.T) {
	type limits struct {
		Priority            int32
		QueueTimeoutSeconds *int64
		TimeoutSeconds      *int64
	}
	tests := []struct {
		name, fields string
		want         limits
		refused      *refusal
	}{
		{"none", ``, limits{}, nil},
		{"all", `, "priority": 7, "queue_timeout_seconds": 30, "timeout_seconds": 120`,
			limits{7, ptr.To[int64](30), ptr.To[int64](120)}, nil},
		{"null is none", `, "priority": null, "timeout_seconds": null`, limits{}, nil},
		{"highest priority", `, "priority": 1000000`, limits{Priority: 1000000}, nil},
		{"priority above the API's bound", `, "priority": 1000001`, limits{}, &refusal{422, "priority"}},
		{"negative priority", `, "priority": -1`, limits{}, &refusal{422, "priority"}},
		{"priority as a string", `, "priority": "5"`, limits{}, &refusal{400, "priority"}},
		{"priority with a fraction", `, "priority": 1.5`, limits{}, &refusal{400, "priority"}},
		{"priority with an exponent", `, "priority": 1e3`, limits{}, &refusal{400, "priority"}},
		{"zero timeout", `, "timeout_seconds": 0`, limits{}, &refusal{422, "timeout_seconds"}},
		{"zero queue timeout", `, "queue_timeout_seconds": 0`, limits{}, &refusal{422, "queue_timeout_seconds"}},
		{"timeout beyond 64 bits", `, "timeout_seconds": 99999999999999999999`, limits{}, &refusal{422, "timeout_seconds"}},
		{"timeout as a bool", `, "timeout_seconds": true`, limits{}, &refusal{400, "timeout_seconds"}},
		{"priority twice", `, "priority": 1, "priority": 2`, limits{}, &refusal{400, "priority"}},
		{"misspelt", `, "queue_timeout": 5`, limits{}, &refusal{400, "queue_timeout"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, problem := parseSubmission([]byte(`{"id": "1"`+tc.fields+`}`), callbackRules{})
			if diff := cmp.Diff(tc.refused, refusalOf(problem)); diff != "" {
				t.Fatalf("refusal (-want +got):\n%s", diff)
			}
			if problem != nil {
				return
			}
			got := limits{s.Priority, s.QueueTimeoutSeconds, s.TimeoutSeconds}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("limits (-want +got):\n%s", diff)
			}
		})
	}
}
