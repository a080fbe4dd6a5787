package localstack

import (
	"encoding/base64"
	"strings"
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
	if err != nil || len(keys) != 1 || keys[0].Version() != callback.VersionSymmetric {
		t.Errorf("the key does not parse as one whsec_ key: %d keys, %v", len(keys), err)
	}
	if raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(first.StringData["secret"], "whsec_")); err != nil || len(raw) != 32 {
		t.Errorf("the key is not 32 bytes: %d, %v", len(raw), err)
	}
	if first.Labels[inferencev1alpha1.LabelSigningKey] != "true" {
		t.Errorf("labels %v: kinfer signs only with Secrets labelled %s=true", first.Labels, inferencev1alpha1.LabelSigningKey)
	}
	if first.Namespace != "default" || first.Name != SigningSecretName {
		t.Errorf("made %s/%s", first.Namespace, first.Name)
	}
}
