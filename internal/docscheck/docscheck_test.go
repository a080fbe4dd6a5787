package docscheck

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const page = "# A page\n\n" +
	"| flag | default | meaning |\n| --- | --- | --- |\n" +
	"| `--real-flag` | `:8000` | where it listens |\n" +
	"| `--wrong-default` | `10s` | how long |\n" +
	"| `--described` | the Pod's namespace | where |\n\n" +
	"Prose with `--made-up-flag` and `--timer` (default `5s`), and `make` alone.\n\n" +
	"```sh\n" +
	"make run LOCALSTACK_FLAGS=--real-flag=:9000\n" +
	"make build made-up-target IMG=x # make comment\n" +
	"kubectl apply --server-side -k config/default\n" +
	"TOKEN=$(kubectl create token x --audience kinfer)\n" +
	"helm install kinfer charts/kinfer \\\n  --set a=b\n" +
	"go run ./hack/bench --sections shim\n" +
	"```\n\n" +
	"A worker gets `KINFER_MODEL` and `KINFER_MADE_UP`, and exits 42 or exit code 7.\n" +
	"Calls: `GET /v1/things/{id}`, `POST /v1/made-up`, and `/v1/namespaces/{ns}/things...` as GET /v1/namespaces/{ns}/things...\n"

func names(ms []Mention) []string {
	out := make([]string, 0, len(ms))
	for _, m := range ms {
		out = append(out, m.Name)
	}
	return out
}

func TestFlagsAreReadFromKinferCommandsOnly(t *testing.T) {
	got := Flags("page.md", page)
	want := []string{"real-flag", "wrong-default", "described", "made-up-flag", "timer", "real-flag", "sections"}
	if diff := cmp.Diff(want, names(got)); diff != "" {
		t.Errorf("flags (-want +got):\n%s", diff)
	}
	defaults := map[string]string{}
	for _, m := range got {
		if m.HasDefault {
			defaults[m.Name] = m.Default
		}
	}
	if diff := cmp.Diff(map[string]string{"real-flag": ":8000", "wrong-default": "10s", "timer": "5s"}, defaults); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}
}

func TestCheckFlagsRefusesMadeUpFlagsAndWrongDefaults(t *testing.T) {
	help := "Usage of prog:\n" +
		"  -real-flag string\n    \twhere it listens (default \":8000\")\n" +
		"  -wrong-default duration\n    \thow long (default 1m0s)\n" +
		"  -described string\n    \twhere\n" +
		"  -timer duration\n    \thow often\n    \tsecond line (default 5s)\n" +
		"  -sections string\n    \twhich (default \"a,b\")\n" +
		"  -verbose\n    \ttalk more\n"
	set := ParseHelp(help)
	wantSet := FlagSet{"real-flag": ":8000", "wrong-default": "1m0s", "described": "", "timer": "5s",
		"sections": "a,b", "verbose": "false"}
	if diff := cmp.Diff(wantSet, set); diff != "" {
		t.Fatalf("ParseHelp (-want +got):\n%s", diff)
	}
	problems := CheckFlags(Flags("page.md", page), map[string]FlagSet{"prog": set}, nil)
	if len(problems) != 2 || !strings.Contains(problems[0], "--wrong-default is said to default to \"10s\"") ||
		!strings.Contains(problems[1], "--made-up-flag is no flag") {
		t.Errorf("problems: %q", problems)
	}
	if got := CheckFlags(Flags("page.md", page), map[string]FlagSet{"prog": set}, []string{"made-up-flag"}); len(got) != 1 {
		t.Errorf("a flag of another program is still refused: %q", got)
	}
}

func TestMakeTargetsMustExist(t *testing.T) {
	got := MakeTargets("page.md", page)
	if diff := cmp.Diff([]string{"run", "build", "made-up-target"}, names(got)); diff != "" {
		t.Errorf("targets (-want +got):\n%s", diff)
	}
	targets := MakefileTargets("VAR ?= x\n.PHONY: run\nrun: build ## Run.\n\tgo run .\nbuild test: fmt\n$(TOOL): | bin\n")
	for _, want := range []string{"run", "build", "test", ".PHONY"} {
		if !targets[want] && want != ".PHONY" {
			t.Errorf("MakefileTargets misses %s: %v", want, targets)
		}
	}
	if targets["VAR"] {
		t.Error("a variable was read as a target")
	}
	if problems := CheckNames(got, targets, "make target"); len(problems) != 1 || !strings.Contains(problems[0], "made-up-target") {
		t.Errorf("problems: %q", problems)
	}
}

func TestWorkerNamesAndExitCodesMustBeTheContracts(t *testing.T) {
	env, exits, err := WorkerContract("../../pkg/worker")
	if err != nil {
		t.Fatal(err)
	}
	if !env["KINFER_MODEL"] || !exits["42"] || !exits["0"] {
		t.Fatalf("contract read: %v, %v", env, exits)
	}
	problems := CheckNames(EnvNames("page.md", page), env, "worker variable")
	problems = append(problems, CheckNames(ExitCodes("page.md", page), exits, "worker exit code")...)
	want := []string{"page.md:21: worker variable KINFER_MADE_UP does not exist", "page.md:21: worker exit code 7 does not exist"}
	if diff := cmp.Diff(want, problems); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}
}

func TestRoutesMustBeServed(t *testing.T) {
	served := func(method, path string) bool {
		return method == "GET" && (path == "/v1/things/x" || path == "/v1/namespaces/x/things")
	}
	got := Routes("page.md", page)
	if diff := cmp.Diff([]string{"GET /v1/things/{id}", "POST /v1/made-up", "GET /v1/namespaces/{ns}/things"}, names(got)); diff != "" {
		t.Errorf("routes (-want +got):\n%s", diff)
	}
	problems := CheckRoutes(got, served)
	if len(problems) != 1 || !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, "POST /v1/made-up") }) {
		t.Errorf("problems: %q", problems)
	}
}
