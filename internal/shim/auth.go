package shim

import (
	"context"
	"crypto/sha256"
	"net/http"
	"strings"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
)

// maxCachedDecisions bounds the auth cache; past it, the cache starts over.
const maxCachedDecisions = 10000

// KubernetesAuth lets in callers whose bearer token the API server accepts
// (TokenReview) and whose user Kubernetes RBAC allows the call's verb on
// inferencerequests in the namespace (SubjectAccessReview). Both answers are
// cached for TTL, so a busy client costs the API server little.
type KubernetesAuth struct {
	Client client.Client
	TTL    time.Duration
	// Now is the clock for cache expiry; time.Now unless a test sets it.
	Now func() time.Time

	mu    sync.Mutex
	users map[[32]byte]cached[*authenticationv1.UserInfo]
	// decisions is keyed by token hash, verb and namespace.
	decisions map[decisionKey]cached[bool]
}

type decisionKey struct {
	token           [32]byte
	verb, namespace string
}

type cached[T any] struct {
	value   T
	expires time.Time
}

// Authorize implements Authorizer.
func (a *KubernetesAuth) Authorize(r *http.Request, verb, namespace string) error {
	token, ok := bearerToken(r.Header.Get("Authorization"))
	if !ok {
		return fail(http.StatusUnauthorized, "", "send a Kubernetes bearer token: Authorization: Bearer <token>")
	}
	tokenKey := sha256.Sum256([]byte(token))
	user, err := a.user(r.Context(), token, tokenKey)
	if err != nil {
		return err
	}
	allowed, err := a.allowed(r.Context(), tokenKey, user, verb, namespace)
	if err != nil {
		return err
	}
	if !allowed {
		return fail(http.StatusForbidden, "", "user %q may not %s inferencerequests in namespace %q", user.Username, verb, namespace)
	}
	return nil
}

func bearerToken(header string) (string, bool) {
	scheme, token, ok := strings.Cut(header, " ")
	token = strings.TrimSpace(token)
	return token, ok && strings.EqualFold(scheme, "Bearer") && token != ""
}

func (a *KubernetesAuth) user(ctx context.Context, token string, key [32]byte) (*authenticationv1.UserInfo, error) {
	if user, ok := lookup(a, a.users, key); ok {
		if user == nil {
			return nil, fail(http.StatusUnauthorized, "", "the bearer token is not valid")
		}
		return user, nil
	}
	review := &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: token}}
	if err := a.Client.Create(ctx, review); err != nil {
		return nil, fail(http.StatusServiceUnavailable, "", "cannot check the bearer token with the API server now")
	}
	var user *authenticationv1.UserInfo
	if review.Status.Authenticated {
		user = &review.Status.User
	}
	a.mu.Lock()
	a.users = store(a, a.users, key, user)
	a.mu.Unlock()
	if user == nil {
		return nil, fail(http.StatusUnauthorized, "", "the bearer token is not valid")
	}
	return user, nil
}

func (a *KubernetesAuth) allowed(
	ctx context.Context, token [32]byte, user *authenticationv1.UserInfo, verb, namespace string,
) (bool, error) {
	key := decisionKey{token: token, verb: verb, namespace: namespace}
	if allowed, ok := lookup(a, a.decisions, key); ok {
		return allowed, nil
	}
	extra := make(map[string]authorizationv1.ExtraValue, len(user.Extra))
	for k, v := range user.Extra {
		extra[k] = authorizationv1.ExtraValue(v)
	}
	review := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User: user.Username, UID: user.UID, Groups: user.Groups, Extra: extra,
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Namespace: namespace,
			Verb:      verb,
			Group:     inferencev1alpha1.GroupVersion.Group,
			Version:   inferencev1alpha1.GroupVersion.Version,
			Resource:  "inferencerequests",
		},
	}}
	if err := a.Client.Create(ctx, review); err != nil {
		return false, fail(http.StatusServiceUnavailable, "", "cannot check permissions with the API server now")
	}
	a.mu.Lock()
	a.decisions = store(a, a.decisions, key, review.Status.Allowed)
	a.mu.Unlock()
	return review.Status.Allowed, nil
}

func (a *KubernetesAuth) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

func lookup[K comparable, V any](a *KubernetesAuth, m map[K]cached[V], key K) (V, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	entry, ok := m[key]
	if !ok || !a.now().Before(entry.expires) {
		var zero V
		return zero, false
	}
	return entry.value, true
}

// store caches value under key (the caller holds a.mu), starting the map over
// when it is full so memory stays bounded whatever tokens arrive.
func store[K comparable, V any](a *KubernetesAuth, m map[K]cached[V], key K, value V) map[K]cached[V] {
	if m == nil || len(m) >= maxCachedDecisions {
		m = map[K]cached[V]{}
	}
	m[key] = cached[V]{value: value, expires: a.now().Add(a.TTL)}
	return m
}
