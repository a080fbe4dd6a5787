package localstack

import (
	"testing"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/callback"
)

func TestSigningSecretIsRandomUsableAndLabelled(t *testing.T) {
	first, err := SigningSecret("default", SigningSecretName)
	if err != nil {
		t.Fatal(err)
	}
	second, err := SigningSecret("default", SigningSecretName)
	if err != nil {
		t.Fatal(err)
	}
	if first.StringData["secret"] == second.StringData["secret"] {
		t.Error("two signing secrets got the same key")
	}
	keys, err := callback.ParseKeys(first.StringData["secret"])
	if err != nil || len(keys) != 1 || len(keys[0]) != 32 {
		t.Errorf("the key does not parse as one 32-byte whsec_ key: %d keys, %v", len(keys), err)
	}
	if first.Labels[inferencev1alpha1.LabelSigningKey] != "true" {
		t.Errorf("labels %v: kinfer signs only with Secrets labelled %s=true", first.Labels, inferencev1alpha1.LabelSigningKey)
	}
	if first.Namespace != "default" || first.Name != SigningSecretName {
		t.Errorf("made %s/%s", first.Namespace, first.Name)
	}
}
