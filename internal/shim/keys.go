package shim

import (
	"context"
	"net/http"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/callback"
)

// WebhookKeys is the answer to GET /v1/webhook-keys: the public keys that
// verify the v1a (ed25519) signatures of the namespace's callbacks, so that
// receivers need no shared secret.
type WebhookKeys struct {
	Namespace string `json:"namespace"`
	// Models lists, by name, the models that sign with at least one whsk_
	// key; models that sign only with whsec_ keys, or not at all, are left
	// out.
	Models []ModelKeys `json:"models"`
}

// ModelKeys are one model's public keys.
type ModelKeys struct {
	Model string `json:"model"`
	// Keys are whpk_ keys, in the order of the whsk_ keys in the model's
	// signing Secret: during a rotation, the old key and the new.
	Keys []string `json:"keys"`
}

// keysMaxAge is how long receivers may keep an answer of webhook-keys. A
// rotation adds the new key before it removes the old, so a receiver that
// fetches the keys again within this time never misses a key in use.
const keysMaxAge = "300"

// webhookKeys serves the public keys of the namespace's models. Public keys
// are no secret, but which models a namespace runs is the namespace's
// business: the call is authorized as a GET of inferencerequests there, so
// whoever may read the namespace's results may learn the keys that sign them.
func (h *Handler) webhookKeys(w http.ResponseWriter, r *http.Request, namespace string) error {
	var models inferencev1alpha1.InferenceModelList
	if err := h.opts.Client.List(r.Context(), &models, client.InNamespace(namespace)); err != nil {
		return err
	}
	out := WebhookKeys{Namespace: namespace, Models: []ModelKeys{}}
	for i := range models.Items {
		keys, err := h.publicKeys(r.Context(), &models.Items[i])
		if err != nil {
			return err
		}
		if len(keys) > 0 {
			out.Models = append(out.Models, ModelKeys{Model: models.Items[i].Name, Keys: keys})
		}
	}
	w.Header().Set("Cache-Control", "private, max-age="+keysMaxAge)
	writeJSON(w, http.StatusOK, out)
	return nil
}

// publicKeys are the whpk_ keys of model's whsk_ keys. It reads the signing
// Secret as the controller does: a Secret that is missing, not labelled as a
// signing key, or malformed signs nothing (the controller refuses to send
// with it, and says why in each request's status), so it lists nothing.
func (h *Handler) publicKeys(ctx context.Context, model *inferencev1alpha1.InferenceModel) ([]string, error) {
	ref := model.Spec.Callback.SigningSecretRef
	if ref == nil {
		return nil, nil
	}
	log := ctrl.LoggerFrom(ctx).WithValues("model", client.ObjectKeyFromObject(model), "secret", ref.Name)
	secret := &corev1.Secret{}
	err := h.opts.Client.Get(ctx, types.NamespacedName{Namespace: model.Namespace, Name: ref.Name}, secret)
	if apierrors.IsNotFound(err) {
		log.V(1).Info("Listing no keys for a model whose signing secret does not exist")
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if secret.Labels[inferencev1alpha1.LabelSigningKey] != "true" {
		log.V(1).Info("Listing no keys for a model whose signing secret is not labelled as one")
		return nil, nil
	}
	keys, err := callback.ParseKeys(string(secret.Data[ref.Key]))
	if err != nil {
		log.V(1).Info("Listing no keys for a model whose signing secret does not parse", "problem", err.Error())
		return nil, nil
	}
	return callback.PublicKeys(keys), nil
}
