package localstack

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/yaml"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/pkg/worker"
)

var repoRoot = filepath.Join("..", "..")

// make run installs every sample model, so the local node must know how to
// run each one's image: a Go worker built from examples/workers, or a Python
// program in the repository.
func TestImageMapRunsEverySampleModel(t *testing.T) {
	images := ImageMap(repoRoot, "/bin-dir")
	for _, file := range SampleModels {
		raw, err := os.ReadFile(filepath.Join(repoRoot, "config", "samples", file))
		if err != nil {
			t.Fatal(err)
		}
		var model inferencev1alpha1.InferenceModel
		if err := yaml.UnmarshalStrict(raw, &model); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		for _, c := range model.Spec.Template.Spec.Containers {
			if _, ok := images[c.Image]; !ok {
				t.Errorf("%s: image %s is not in the local node's image map", file, c.Image)
			}
		}
	}
	for image, program := range SampleImages {
		if _, err := os.Stat(filepath.Join(repoRoot, "examples", "workers", program, "main.go")); err != nil {
			t.Errorf("image %s: %v", image, err)
		}
	}
	for image, program := range SamplePythonImages {
		if _, err := os.Stat(filepath.Join(repoRoot, program)); err != nil {
			t.Errorf("image %s: %v", image, err)
		}
	}
}

// The Python sample's image runs under the local node as the node runs it:
// the image map's command, the contract's variables, the result written to
// KINFER_RESULT_PATH.
func TestPythonSampleWorkerRunsFromTheImageMap(t *testing.T) {
	argv := ImageMap(repoRoot, "/bin-dir")["ghcr.io/kinfer/worker-python:v0.1.0"]
	if len(argv) == 0 {
		t.Fatal("the Python sample's image is not in the image map")
	}
	result := filepath.Join(t.TempDir(), "result")
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = t.TempDir()
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), worker.EnvRequestID + "=1234", worker.EnvModel + "=python",
		worker.EnvInput + `={"text": "a great movie"}`, worker.EnvResultPath + "=" + result}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", argv, err, out)
	}
	raw, err := os.ReadFile(result)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]int
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatalf("result %q: %v", raw, err)
	}
	if diff := cmp.Diff(map[string]int{"words": 3, "characters": 13}, got); diff != "" {
		t.Errorf("result (-want +got):\n%s", diff)
	}
}
