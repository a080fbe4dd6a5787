package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
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

// The manager's writes split into the operator's, its Events, the models'
// status and the shim's creates.
func TestSplitManagerWrites(t *testing.T) {
	operator, events, models, shimCreates := splitManagerWrites(map[string]int{
		"create inferencerequests": 10, "patch inferencerequests/status": 20, "create events": 7, "patch events": 1,
		"patch inferencemodels/status": 2,
	})
	if diff := cmp.Diff(map[string]int{"patch inferencemodels/status": 2}, models); diff != "" {
		t.Errorf("models (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]int{"patch inferencerequests/status": 20}, operator); diff != "" {
		t.Errorf("operator (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]int{"create events": 7, "patch events": 1}, events); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if shimCreates != 10 {
		t.Errorf("shim creates %d, want 10", shimCreates)
	}
}

// Only the writes logged between the two offsets are counted.
func TestCountWritesInCountsBetweenTwoOffsets(t *testing.T) {
	line := func(resource string) string {
		return `{"stage":"ResponseComplete","verb":"create","userAgent":"manager/v1",` +
			`"impersonatedUser":{"username":"` + managerUser + `"},` +
			`"objectRef":{"resource":"` + resource + `","namespace":"ns"},"responseStatus":{"code":201}}` + "\n"
	}
	before, during, after := line("jobs"), line("inferencerequests")+line("inferencerequests"), line("pods")
	path := filepath.Join(t.TempDir(), "audit.log")
	if err := os.WriteFile(path, []byte(before+during+after), 0o600); err != nil {
		t.Fatal(err)
	}
	from := int64(len(before))
	manager, _, err := countWritesIn(path, "ns", from, from+int64(len(during)))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]int{"create inferencerequests": 2}, manager); diff != "" {
		t.Errorf("writes between the offsets (-want +got):\n%s", diff)
	}
	manager, _, err = countWritesIn(path, "ns", from, -1)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]int{"create inferencerequests": 2, "create pods": 1}, manager); diff != "" {
		t.Errorf("writes from the offset on (-want +got):\n%s", diff)
	}
}
