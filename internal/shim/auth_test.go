package shim

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

var _ = Describe("Kubernetes auth", func() {
	var (
		ns   string
		h    *Handler
		auth *KubernetesAuth
		now  time.Time
	)

	BeforeEach(func() {
		ns = newNamespace()
		now = time.Now()
		auth = &KubernetesAuth{Client: k8sClient, TTL: time.Hour, Now: func() time.Time { return now }}
		h = &Handler{Client: k8sClient, Namespace: ns, Authorizer: auth, RetryAfter: time.Second}
	})

	// tokenFor returns a bearer token for a new ServiceAccount in ns.
	tokenFor := func(name string) string {
		GinkgoHelper()
		Expect(k8sClient.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}})).To(Succeed())
		tr, err := kubernetes.NewForConfigOrDie(cfg).CoreV1().ServiceAccounts(ns).
			CreateToken(ctx, name, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
		Expect(err).NotTo(HaveOccurred())
		return tr.Status.Token
	}
	grant := func(account string, verbs ...string) *rbacv1.RoleBinding {
		GinkgoHelper()
		role := &rbacv1.Role{
			ObjectMeta: metav1.ObjectMeta{Name: account + "-requests", Namespace: ns},
			Rules:      []rbacv1.PolicyRule{{APIGroups: []string{"inference.kinfer.dev"}, Resources: []string{"inferencerequests"}, Verbs: verbs}},
		}
		Expect(k8sClient.Create(ctx, role)).To(Succeed())
		binding := &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: account + "-requests", Namespace: ns},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: role.Name},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: account, Namespace: ns}},
		}
		Expect(k8sClient.Create(ctx, binding)).To(Succeed())
		return binding
	}
	send := func(method, path, token, body string) int {
		GinkgoHelper()
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}

	It("refuses calls without a valid token", func() {
		Expect(send(http.MethodPost, "/v1/inferences", "", `{"id": "1"}`)).To(Equal(http.StatusUnauthorized))
		Expect(send(http.MethodPost, "/v1/inferences", "not-a-token", `{"id": "1"}`)).To(Equal(http.StatusUnauthorized))
		Expect(send(http.MethodGet, "/v1/inferences/1", "", "")).To(Equal(http.StatusUnauthorized))
	})

	It("refuses a user whom RBAC does not allow the verb", func() {
		token := tokenFor("nobody")
		Expect(send(http.MethodPost, "/v1/inferences", token, `{"id": "1"}`)).To(Equal(http.StatusForbidden))

		grant("nobody", "get")
		now = now.Add(2 * time.Hour) // past the cached refusal
		Expect(send(http.MethodPost, "/v1/inferences", token, `{"id": "1"}`)).To(Equal(http.StatusForbidden))
		Expect(send(http.MethodDelete, "/v1/inferences/1", token, "")).To(Equal(http.StatusForbidden))
	})

	It("lets in a user whom RBAC allows, verb by verb and namespace by namespace", func() {
		token := tokenFor("client")
		grant("client", "create", "get")
		Expect(send(http.MethodPost, "/v1/inferences", token, `{"id": "1"}`)).To(Equal(http.StatusAccepted))
		Expect(send(http.MethodGet, "/v1/inferences/1", token, "")).To(Equal(http.StatusOK))
		Expect(send(http.MethodDelete, "/v1/inferences/1", token, "")).To(Equal(http.StatusForbidden))
		other := newNamespace()
		Expect(send(http.MethodPost, "/v1/namespaces/"+other+"/inferences", token, `{"id": "1"}`)).To(Equal(http.StatusForbidden))
	})

	It("remembers decisions for the TTL, then asks again", func() {
		token := tokenFor("cached")
		binding := grant("cached", "create")
		Expect(send(http.MethodPost, "/v1/inferences", token, `{"id": "a"}`)).To(Equal(http.StatusAccepted))

		Expect(k8sClient.Delete(ctx, binding)).To(Succeed())
		Expect(send(http.MethodPost, "/v1/inferences", token, `{"id": "b"}`)).To(Equal(http.StatusAccepted), "within the TTL")

		now = now.Add(auth.TTL + time.Second)
		Eventually(func() int { return send(http.MethodPost, "/v1/inferences", token, `{"id": "c"}`) }).
			Should(Equal(http.StatusForbidden))
	})
})
