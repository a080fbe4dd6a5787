package shim

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
)

var _ = Describe("Kubernetes auth", func() {
	const ttl = time.Hour
	var (
		ns   string
		h    *Handler
		auth *KubernetesAuth
		now  time.Time
	)

	BeforeEach(func() {
		ns = newNamespace()
		now = time.Now()
		auth = NewKubernetesAuth(AuthOptions{Client: k8sClient, TTL: ttl, Now: func() time.Time { return now }})
		h = NewHandler(Options{Client: k8sClient, Namespace: ns, Authorizer: auth, RetryAfter: time.Second})
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

	It("lists webhook keys to those who may read the namespace's requests, and to no one else", func() {
		token := tokenFor("receiver")
		Expect(send(http.MethodGet, "/v1/webhook-keys", "", "")).To(Equal(http.StatusUnauthorized))
		Expect(send(http.MethodGet, "/v1/webhook-keys", token, "")).To(Equal(http.StatusForbidden))
		grant("receiver", "get")
		now = now.Add(2 * time.Hour) // past the cached refusal
		Expect(send(http.MethodGet, "/v1/webhook-keys", token, "")).To(Equal(http.StatusOK))
		Expect(send(http.MethodGet, "/v1/namespaces/"+ns+"/webhook-keys", token, "")).To(Equal(http.StatusOK))
		Expect(send(http.MethodGet, "/v1/namespaces/"+newNamespace()+"/webhook-keys", token, "")).To(Equal(http.StatusForbidden))
	})

	It("with audiences set, accepts tokens issued for them and refuses the API server's own", func() {
		tokenFor("audience")
		grant("audience", "get")
		audienceToken := func(audiences ...string) string {
			GinkgoHelper()
			tr, err := kubernetes.NewForConfigOrDie(cfg).CoreV1().ServiceAccounts(ns).CreateToken(ctx, "audience",
				&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: audiences}}, metav1.CreateOptions{})
			Expect(err).NotTo(HaveOccurred())
			return tr.Status.Token
		}
		auth = NewKubernetesAuth(AuthOptions{Client: k8sClient, TTL: ttl, Audiences: []string{"kinfer"}})
		h = NewHandler(Options{Client: k8sClient, Namespace: ns, Authorizer: auth, RetryAfter: time.Second})

		Expect(send(http.MethodGet, "/v1/inferences/1", audienceToken("kinfer"), "")).To(Equal(http.StatusNotFound), "let in")
		Expect(send(http.MethodGet, "/v1/inferences/1", audienceToken(), "")).To(Equal(http.StatusUnauthorized))
		Expect(send(http.MethodGet, "/v1/inferences/1", audienceToken("someone-else"), "")).To(Equal(http.StatusUnauthorized))
	})

	It("remembers decisions for the TTL, then asks again", func() {
		token := tokenFor("cached")
		binding := grant("cached", "create")
		Expect(send(http.MethodPost, "/v1/inferences", token, `{"id": "a"}`)).To(Equal(http.StatusAccepted))

		Expect(k8sClient.Delete(ctx, binding)).To(Succeed())
		Expect(send(http.MethodPost, "/v1/inferences", token, `{"id": "b"}`)).To(Equal(http.StatusAccepted), "within the TTL")

		now = now.Add(ttl + time.Second)
		Eventually(func() int { return send(http.MethodPost, "/v1/inferences", token, `{"id": "c"}`) }).
			Should(Equal(http.StatusForbidden))
	})
})

// reviewer stands in for the API server's TokenReviews and
// SubjectAccessReviews: tokens in users authenticate, with the audiences
// given; every authenticated user is allowed everything.
type reviewer struct {
	users map[string][]string // token -> audiences answered

	mu           sync.Mutex
	tokenReviews int
	audiences    [][]string // spec.audiences of each TokenReview
}

func (rv *reviewer) client() client.Client {
	return interceptor.NewClient(newFakeClient(), interceptor.Funcs{
		Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
			switch review := obj.(type) {
			case *authenticationv1.TokenReview:
				rv.mu.Lock()
				defer rv.mu.Unlock()
				rv.tokenReviews++
				rv.audiences = append(rv.audiences, review.Spec.Audiences)
				if audiences, ok := rv.users[review.Spec.Token]; ok {
					review.Status = authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: audiences,
						User: authenticationv1.UserInfo{Username: "user-" + review.Spec.Token}}
				}
				return nil
			case *authorizationv1.SubjectAccessReview:
				review.Status.Allowed = true
				return nil
			}
			return c.Create(ctx, obj, opts...)
		},
	})
}

func (rv *reviewer) reviews() int {
	rv.mu.Lock()
	defer rv.mu.Unlock()
	return rv.tokenReviews
}

func getWithToken(h http.Handler, token string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodGet, "/v1/inferences/missing", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestRefusedTokensNeverPushOutAcceptedOnes(t *testing.T) {
	rv := &reviewer{users: map[string][]string{"good": nil}}
	now := time.Now()
	auth := NewKubernetesAuth(AuthOptions{Client: rv.client(), TTL: time.Hour, Now: func() time.Time { return now }})
	h := NewHandler(Options{Client: newFakeClient(), Namespace: "default", Authorizer: auth})

	if rec := getWithToken(h, "good"); rec.Code != http.StatusNotFound {
		t.Fatalf("the good token was answered %d %s, want 404 (let in, no such request)", rec.Code, rec.Body.String())
	}
	flood := 2*defaultCacheSize + 1
	for i := range flood {
		if rec := getWithToken(h, fmt.Sprintf("junk-%d", i)); rec.Code != http.StatusUnauthorized {
			t.Fatalf("junk token %d was answered %d, want 401", i, rec.Code)
		}
	}
	before := rv.reviews()
	if rec := getWithToken(h, "good"); rec.Code != http.StatusNotFound {
		t.Fatalf("after the flood, the good token was answered %d %s, want 404", rec.Code, rec.Body.String())
	}
	if got := rv.reviews() - before; got != 0 {
		t.Errorf("after %d junk tokens the good token cost %d more TokenReviews, want 0 (still cached)", flood, got)
	}
	if got := auth.refused.len(); got > defaultCacheSize {
		t.Errorf("%d refused tokens are remembered, want at most %d", got, defaultCacheSize)
	}
}

func TestAcceptedTokensAreForgottenOldestFirst(t *testing.T) {
	rv := &reviewer{users: map[string][]string{"a": nil, "b": nil, "c": nil, "d": nil}}
	now := time.Now()
	auth := NewKubernetesAuth(AuthOptions{Client: rv.client(), TTL: time.Hour, CacheSize: 3, Now: func() time.Time { return now }})
	h := NewHandler(Options{Client: newFakeClient(), Namespace: "default", Authorizer: auth})

	for _, token := range []string{"a", "b", "c", "d"} {
		getWithToken(h, token)
		now = now.Add(time.Second)
	}
	cost := make([]int, 0, 4)
	for _, token := range []string{"d", "c", "b", "a"} {
		before := rv.reviews()
		if rec := getWithToken(h, token); rec.Code != http.StatusNotFound {
			t.Fatalf("token %s answered %d %s", token, rec.Code, rec.Body.String())
		}
		cost = append(cost, rv.reviews()-before)
	}
	// With room for three, only the oldest, a, is checked again.
	if diff := cmp.Diff([]int{0, 0, 0, 1}, cost); diff != "" {
		t.Errorf("TokenReviews for d, c, b, a (-want +got):\n%s", diff)
	}
}

func TestTokenReviewsAreBounded(t *testing.T) {
	rv := &reviewer{users: map[string][]string{"good": nil, "late": nil}}
	now := time.Now()
	auth := NewKubernetesAuth(AuthOptions{Client: rv.client(), TTL: time.Hour, ReviewsPerSecond: 0.5, ReviewBurst: 2,
		Now: func() time.Time { return now }})
	h := NewHandler(Options{Client: newFakeClient(), Namespace: "default", Authorizer: auth})

	type answer struct {
		Code       int
		RetryAfter string
	}
	call := func(token string) answer {
		rec := getWithToken(h, token)
		return answer{rec.Code, rec.Header().Get("Retry-After")}
	}
	got := []answer{
		call("good"),   // a review: let in
		call("junk-1"), // a review: refused
		call("junk-2"), // past the burst: no review
		call("late"),   // past the burst too, though it is a good token
		call("good"),   // cached: no review needed
		call("junk-1"), // cached refusal: no review needed
	}
	want := []answer{{404, ""}, {401, ""}, {429, "2"}, {429, "2"}, {404, ""}, {401, ""}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("answers (-want +got):\n%s", diff)
	}
	if got := rv.reviews(); got != 2 {
		t.Errorf("%d TokenReviews, want 2: none once the bound is reached", got)
	}

	now = now.Add(2 * time.Second) // one more review allowed
	if got := call("late"); got.Code != http.StatusNotFound {
		t.Errorf("once the bound allows it, a new good token is answered %d, want 404", got.Code)
	}
}

func TestTokensMustBeIssuedForTheConfiguredAudiences(t *testing.T) {
	rv := &reviewer{users: map[string][]string{
		"for-kinfer":     {"kinfer"},
		"for-both":       {"https://kubernetes.default.svc", "kinfer"},
		"for-api-server": {"https://kubernetes.default.svc"},
		"no-audiences":   nil,
	}}
	tests := []struct {
		name      string
		audiences []string
		token     string
		want      int
	}{
		{"a token for kinfer", []string{"kinfer"}, "for-kinfer", http.StatusNotFound},
		{"a token for kinfer among others", []string{"other", "kinfer"}, "for-both", http.StatusNotFound},
		{"a token whose review answers other audiences", []string{"kinfer"}, "for-api-server", http.StatusUnauthorized},
		{"a token whose review answers none", []string{"kinfer"}, "no-audiences", http.StatusUnauthorized},
		{"without audiences, the API server decides", nil, "for-api-server", http.StatusNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rv.audiences = nil
			auth := NewKubernetesAuth(AuthOptions{Client: rv.client(), TTL: time.Hour, Audiences: tc.audiences})
			h := NewHandler(Options{Client: newFakeClient(), Namespace: "default", Authorizer: auth})
			if rec := getWithToken(h, tc.token); rec.Code != tc.want {
				t.Errorf("answered %d %s, want %d", rec.Code, rec.Body.String(), tc.want)
			}
			if diff := cmp.Diff([][]string{tc.audiences}, rv.audiences); diff != "" {
				t.Errorf("spec.audiences sent (-want +got):\n%s", diff)
			}
		})
	}
}
