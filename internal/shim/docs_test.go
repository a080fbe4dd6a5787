package shim

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/kinfer/kinfer/internal/docscheck"
)

// Every route docs/api.md names is one the shim's server serves: matched by
// a pattern of its own, not by the catch-all that answers "no route".
func TestDocumentedRoutesAreServed(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "docs", "api.md"))
	if err != nil {
		t.Fatal(err)
	}
	h := NewHandler(Options{Namespace: "default"})
	outer := (&Server{Handler: h}).routes()
	served := func(method, path string) bool {
		r := httptest.NewRequest(method, path, nil)
		if _, pattern := outer.Handler(r); pattern != "/" {
			return pattern != ""
		}
		_, pattern := h.mux.Handler(r)
		return pattern != "" && pattern != "/"
	}
	if served(http.MethodPost, "/v1/made-up") || served(http.MethodPut, "/v1/inferences/x") {
		t.Fatal("a route the shim does not have counts as served")
	}
	// The page also shows the callback a client's receiver gets, on a route
	// of the client's own.
	routes := slices.DeleteFunc(docscheck.Routes("docs/api.md", string(raw)),
		func(m docscheck.Mention) bool { return m.Name == "POST /v1/results" })
	if len(routes) < 10 {
		t.Fatalf("read only %d routes from docs/api.md", len(routes))
	}
	for _, problem := range docscheck.CheckRoutes(routes, served) {
		t.Error(problem)
	}
}
