package shim

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/callback"
)

// ed25519Key is a private key made from a name, so that each spec's keys differ.
func ed25519Key(name string) ed25519.PrivateKey {
	seed := sha256.Sum256([]byte(name))
	return ed25519.NewKeyFromSeed(seed[:])
}

func whsk(key ed25519.PrivateKey) string {
	return "whsk_" + base64.StdEncoding.EncodeToString(key.Seed())
}

func whpk(key ed25519.PrivateKey) string {
	return "whpk_" + base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey))
}

var _ = Describe("GET /v1/webhook-keys", func() {
	var (
		ns string
		h  *Handler
	)

	BeforeEach(func() {
		ns = newNamespace()
		h = NewHandler(Options{Client: k8sClient, Namespace: ns, RetryAfter: time.Second})
	})

	signingSecret := func(name, key, value string, labelled bool) {
		GinkgoHelper()
		secret := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			StringData: map[string]string{key: value},
		}
		if labelled {
			secret.Labels = map[string]string{inferencev1alpha1.LabelSigningKey: "true"}
		}
		Expect(k8sClient.Create(ctx, secret)).To(Succeed())
	}
	keys := func(path string) (*httptest.ResponseRecorder, WebhookKeys) {
		GinkgoHelper()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		var out WebhookKeys
		if rec.Code == http.StatusOK {
			Expect(json.Unmarshal(rec.Body.Bytes(), &out)).To(Succeed(), rec.Body.String())
		}
		return rec, out
	}

	It("lists the public keys of the models that sign with ed25519 keys, in the Secret's order", func() {
		shared := "whsec_" + base64.StdEncoding.EncodeToString([]byte("a-shared-key-of-32-bytes-length!"))
		oldKey, newKey, stray := ed25519Key("old "+ns), ed25519Key("new "+ns), ed25519Key("stray "+ns)
		rotating := shared + " " + whsk(oldKey) + "\n" +
			"whsk_" + base64.StdEncoding.EncodeToString(newKey) // seed and public key: the other whsk_ form
		signingSecret("rotating", "secret", rotating, true)
		signingSecret("shared-only", "secret", shared, true)
		signingSecret("unlabelled", "secret", whsk(stray), false)
		signingSecret("other-key", "keys", whsk(stray), true)
		signingSecret("malformed", "secret", whsk(stray)+" whsk_%%%", true)
		for name, ref := range map[string][2]string{
			"sentiment": {"rotating", ""}, "hmac": {"shared-only", ""}, "unlabelled": {"unlabelled", ""},
			"missing": {"no-such-secret", ""}, "wrong-key": {"other-key", ""}, "other-key": {"other-key", "keys"},
			"malformed": {"malformed", ""},
		} {
			createModel(model(name, ns).SigningSecret(ref[0], ref[1]))
		}

		rec, got := keys("/v1/webhook-keys")
		Expect(rec.Code).To(Equal(http.StatusOK), rec.Body.String())
		Expect(rec.Header().Get("Cache-Control")).To(Equal("private, max-age=300"))
		Expect(got).To(Equal(WebhookKeys{Namespace: ns, Models: []ModelKeys{
			{Model: "other-key", Keys: []string{whpk(stray)}},
			{Model: "sentiment", Keys: []string{whpk(oldKey), whpk(newKey)}},
		}}), "models signing only with whsec_ keys, or with Secrets the controller would not sign with, are left out")

		By("serving keys that verify the signatures the controller makes with the Secret")
		parsed, err := callback.ParseKeys(rotating)
		Expect(err).NotTo(HaveOccurred())
		body := []byte(`{"type":"inference.completed","id":"1","status":"succeeded","result":"OK"}`)
		signed := []byte("msg_1.1700000000." + string(body))
		entries := strings.Fields(callback.Signature(parsed, "msg_1", time.Unix(1700000000, 0), body))
		Expect(entries).To(HaveLen(3))
		for i, served := range got.Models[1].Keys {
			public, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(served, "whpk_"))
			Expect(err).NotTo(HaveOccurred())
			sig, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(entries[i+1], "v1a,"))
			Expect(err).NotTo(HaveOccurred())
			Expect(ed25519.Verify(public, signed, sig)).To(BeTrue(), "key %d", i+1)
		}
	})

	It("answers an empty list for a namespace whose models do not sign with ed25519 keys", func() {
		rec, got := keys("/v1/namespaces/" + ns + "/webhook-keys")
		Expect(rec.Code).To(Equal(http.StatusOK), rec.Body.String())
		Expect(rec.Body.String()).To(MatchJSON(`{"namespace": "` + ns + `", "models": []}`))
		Expect(got.Models).To(BeEmpty())
	})

	It("serves only its own namespace when it checks no credentials", func() {
		rec, _ := keys("/v1/namespaces/kube-system/webhook-keys")
		Expect(rec.Code).To(Equal(http.StatusForbidden), rec.Body.String())
	})
})
