package shim

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/yaml"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
)

// The sample request says it is what the shim creates for the POST in its
// comment: the same name, labels, annotations and spec, so that the shim's
// GET finds it by that id and the same POST is a resubmission of it.
func TestSampleRequestIsWhatTheShimCreates(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "config", "samples", "inference_v1alpha1_inferencerequest.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	body := regexp.MustCompile(`(?m)^#\s+POST /v1/inferences (\{.*\})$`).FindSubmatch(raw)
	if body == nil {
		t.Fatal("the sample's comment names no POST /v1/inferences body")
	}
	s, problem := parseSubmission(body[1], callbackRules{})
	if problem != nil {
		t.Fatalf("the sample's POST body is refused: %v", problem)
	}
	want := s.object("")
	var got inferencev1alpha1.InferenceRequest
	if err := yaml.UnmarshalStrict(raw, &got); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want.ObjectMeta, got.ObjectMeta); diff != "" {
		t.Errorf("the sample's metadata is not the shim's (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want.Spec, got.Spec); diff != "" {
		t.Errorf("the sample's spec is not the shim's (-want +got):\n%s", diff)
	}
}
