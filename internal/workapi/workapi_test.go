package workapi

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestOnlyTheLeaderServesAndTheOthersSayTryAgain(t *testing.T) {
	elected := make(chan struct{})
	served := 0
	server := &Server{Elected: elected, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		served++
		w.WriteHeader(http.StatusOK)
	})}
	call := func() *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		server.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/v1/namespaces/ml/models/m/take", nil))
		return w
	}

	before := call()
	if before.Code != http.StatusServiceUnavailable || before.Header().Get("Retry-After") == "" || served != 0 {
		t.Fatalf("before the election: %d, Retry-After %q, served %d; want 503 with Retry-After and nothing served",
			before.Code, before.Header().Get("Retry-After"), served)
	}
	close(elected)
	if after := call(); after.Code != http.StatusOK || served != 1 {
		t.Fatalf("once elected: %d, served %d; want the call served", after.Code, served)
	}
}
