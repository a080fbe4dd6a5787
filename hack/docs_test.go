package hack

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/kinfer/kinfer/internal/docscheck"
)

// documents are the pages people read: README.md and every page in docs/.
func documents(t *testing.T) map[string]string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("..", "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, f := range append(files, filepath.Join("..", "README.md")) {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel("..", f)
		out[rel] = string(raw)
	}
	return out
}

// flagPrograms are the programs whose flags the documents name, built and
// asked for -help: the manager, the local stack, the bench, and the sleep
// worker (whose --delay the worker docs give).
var flagPrograms = []string{".", "./hack/localstack", "./hack/bench", "./examples/workers/sleep"}

// controlPlaneFlags are kube-controller-manager's, which the local stack
// passes and docs/benchmarks.md names; kinfer does not build that program's
// flags, so they are listed here.
var controlPlaneFlags = []string{"kube-api-qps", "kube-api-burst", "concurrent-job-syncs"}

// Every flag the documents name is one of kinfer's programs, with the
// default they give.
func TestDocumentedFlagsExist(t *testing.T) {
	sets := programFlags(t)
	for file, text := range documents(t) {
		for _, problem := range docscheck.CheckFlags(docscheck.Flags(file, text), sets, controlPlaneFlags) {
			t.Error(problem)
		}
	}
}

func TestDocumentedMakeTargetsExist(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	targets := docscheck.MakefileTargets(string(raw))
	for file, text := range documents(t) {
		for _, problem := range docscheck.CheckNames(docscheck.MakeTargets(file, text), targets, "make target") {
			t.Error(problem)
		}
	}
}

// The worker contract's names and exit codes live in pkg/worker alone.
func TestDocumentedWorkerContractIsTheSDKs(t *testing.T) {
	env, exits, err := docscheck.WorkerContract(filepath.Join("..", "pkg", "worker"))
	if err != nil {
		t.Fatal(err)
	}
	if len(env) == 0 || len(exits) == 0 {
		t.Fatalf("read no contract from pkg/worker: %v, %v", env, exits)
	}
	for file, text := range documents(t) {
		for _, problem := range docscheck.CheckNames(docscheck.EnvNames(file, text), env, "worker variable") {
			t.Error(problem)
		}
		for _, problem := range docscheck.CheckNames(docscheck.ExitCodes(file, text), exits, "worker exit code") {
			t.Error(problem)
		}
	}
}

// programFlags builds the programs and reads their -help, by package.
func programFlags(t *testing.T) map[string]docscheck.FlagSet {
	t.Helper()
	dir := t.TempDir()
	build := exec.Command("go", append([]string{"build", "-o", dir + string(filepath.Separator)}, flagPrograms...)...)
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build %v: %v\n%s", flagPrograms, err, out)
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	sets := map[string]docscheck.FlagSet{}
	for _, pkg := range flagPrograms {
		name := filepath.Base(filepath.Join(root, pkg))
		if pkg == "." {
			name = "kinfer" // go build names the root's program after the module
		}
		// -help prints the flags and exits 0, or 2 where the program parses
		// with ContinueOnError; either way the output is what counts.
		out, _ := exec.Command(filepath.Join(dir, name), "-help").CombinedOutput()
		set := docscheck.ParseHelp(string(out))
		if len(set) == 0 {
			t.Fatalf("%s -help lists no flags:\n%s", pkg, out)
		}
		sets[pkg] = set
	}
	return sets
}
