package shim

import (
	_ "embed"
	"net/http"
)

// openAPI documents every route, body, answer and error; docs/api.md says the
// same for people.
//
//go:embed openapi.json
var openAPI []byte

func serveOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(openAPI)
}
