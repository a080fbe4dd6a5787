package localstack

import (
	"context"
	"crypto/rand"
	"encoding/base64"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
)

// SigningSecretName is the Secret the sentiment sample signs its callbacks
// with. The samples ship no key: make run creates one of its own.
const SigningSecretName = "kinfer-webhook"

// SigningSecret is a Secret holding a new random Standard Webhooks key
// (whsec_ and the base64 of 32 random bytes) under "secret", labelled so
// that kinfer may sign with it.
func SigningSecret(namespace, name string) (*corev1.Secret, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: namespace,
			Labels: map[string]string{inferencev1alpha1.LabelSigningKey: "true"},
		},
		StringData: map[string]string{"secret": "whsec_" + base64.StdEncoding.EncodeToString(key)},
	}, nil
}

// CreateSigningSecret stores a new SigningSecret in the cluster.
func (s *Stack) CreateSigningSecret(ctx context.Context, namespace, name string) error {
	c, err := client.New(s.Config, client.Options{})
	if err != nil {
		return err
	}
	secret, err := SigningSecret(namespace, name)
	if err != nil {
		return err
	}
	return c.Create(ctx, secret)
}
