package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Writes the API server refused are counted apart from the ones it took,
// and only in the namespace asked for.
func TestCountWritesSetsRefusedWritesApart(t *testing.T) {
	line := func(verb, resource, sub, namespace, agent string, impersonated bool, code int) string {
		imp := ""
		if impersonated {
			imp = `"impersonatedUser":{"username":"` + managerUser + `"},`
		}
		return `{"stage":"ResponseComplete","verb":"` + verb + `","userAgent":"` + agent + `/v1",` + imp +
			`"objectRef":{"resource":"` + resource + `","subresource":"` + sub + `","namespace":"` + namespace + `"},` +
			`"responseStatus":{"code":` + strconv.Itoa(code) + `}}`
	}
	log := strings.Join([]string{
		line("patch", "inferencerequests", "status", "ns", "manager", true, 200),
		line("patch", "inferencerequests", "status", "ns", "manager", true, 409),
		line("create", "jobs", "", "ns", "manager", true, 201),
		line("create", "jobs", "", "other", "manager", true, 201),
		line("update", "jobs", "status", "ns", "kube-controller-manager", false, 200),
		`{"stage":"RequestReceived","verb":"create","objectRef":{"resource":"jobs","namespace":"ns"}}`,
	}, "\n")
	path := filepath.Join(t.TempDir(), "audit.log")
	if err := os.WriteFile(path, []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	manager, others, err := countWrites(path, "ns")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"patch inferencerequests/status": 1, "patch inferencerequests/status refused 409": 1, "create jobs": 1}
	if len(manager) != len(want) {
		t.Errorf("manager's writes %v, want %v", manager, want)
	}
	for call, n := range want {
		if manager[call] != n {
			t.Errorf("manager's %q: %d, want %d (all: %v)", call, manager[call], n, manager)
		}
	}
	if len(others) != 1 || others["kube-controller-manager: update jobs/status"] != 1 {
		t.Errorf("others' writes %v, want one update jobs/status by kube-controller-manager", others)
	}
}
