package hack

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// make deploy and make deploy-samples put a user's own images into what
// they apply, and leave config/ as it was.
func TestDeployUsesTheImagesGiven(t *testing.T) {
	before := configDigest(t)
	tests := []struct {
		name   string
		make   []string
		kind   string
		wantOK func(image string) bool
	}{
		{name: "manager", make: []string{"deploy", "IMG=registry.example:5000/team/kinfer:v9.8.7"}, kind: "Deployment",
			wantOK: func(image string) bool { return image == "registry.example:5000/team/kinfer:v9.8.7" }},
		{name: "workers", make: []string{"deploy-samples", "WORKER_REGISTRY=registry.example/team", "WORKER_TAG=v9"},
			kind: "InferenceModel", wantOK: func(image string) bool {
				return strings.HasPrefix(image, "registry.example/team/worker-") && strings.HasSuffix(image, ":v9")
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			images := renderedImages(t, tc.make, tc.kind)
			if len(images) == 0 {
				t.Fatalf("make %s renders no %s", tc.make[0], tc.kind)
			}
			for _, image := range images {
				if !tc.wantOK(image) {
					t.Errorf("make %s renders a %s with image %s", strings.Join(tc.make, " "), tc.kind, image)
				}
			}
		})
	}
	if after := configDigest(t); after != before {
		t.Error("rendering the manifests changed config/")
	}
}

// renderedImages runs what make would pipe into kubectl apply and lists the
// container images of the objects of kind in it.
func renderedImages(t *testing.T, args []string, kind string) []string {
	t.Helper()
	cmd := exec.Command("make", append([]string{"--no-print-directory", "-n"}, args...)...)
	cmd.Dir = ".."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("make -n %v: %v", args, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	render, _, found := strings.Cut(lines[len(lines)-1], " | kubectl apply")
	if !found || !strings.HasPrefix(render, "hack/kustomize-images.sh ") {
		t.Fatalf("make %s does not apply what hack/kustomize-images.sh renders: %s", args[0], lines[len(lines)-1])
	}
	cmd = exec.Command("bash", "-c", render)
	cmd.Dir = ".."
	cmd.Stderr = os.Stderr
	rendered, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v", render, err)
	}
	var images []string
	decoder := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(rendered), 4096)
	for {
		obj := &unstructured.Unstructured{}
		err := decoder.Decode(&obj.Object)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if obj.GetKind() != kind {
			continue
		}
		containers, _, _ := unstructured.NestedSlice(obj.Object, "spec", "template", "spec", "containers")
		for _, c := range containers {
			image, _, _ := unstructured.NestedString(c.(map[string]any), "image")
			images = append(images, image)
		}
	}
	return images
}

// configDigest is config/ as one string, to tell whether anything changed it.
func configDigest(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(filepath.Join("..", "config"), func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		raw, err := os.ReadFile(path)
		b.WriteString(path + "\n" + string(raw))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}
