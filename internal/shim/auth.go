package shim

import (
	"container/list"
	"context"
	"crypto/sha256"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
)

// defaultCacheSize bounds each of the auth caches unless AuthOptions says otherwise.
const defaultCacheSize = 10000

// AuthOptions configure KubernetesAuth.
type AuthOptions struct {
	Client client.Client
	// TTL is how long a token's user and a user's permission are remembered.
	TTL time.Duration
	// Audiences, when set, are sent as the TokenReview's spec.audiences, and
	// a token is let in only when the API server answers at least one of them
	// in status.audiences. Empty leaves it to the API server's own audiences.
	Audiences []string
	// ReviewsPerSecond bounds the TokenReviews sent for tokens that are not
	// cached, so that a flood of made-up tokens costs the API server a known
	// amount; past it, calls with such tokens are answered 429. Zero leaves
	// them unbounded.
	ReviewsPerSecond float64
	// ReviewBurst is how many TokenReviews may go at once; zero means one
	// second's worth.
	ReviewBurst int
	// CacheSize bounds each cache; zero means 10000.
	CacheSize int
	// Now is the clock for cache expiry and the TokenReview bound; time.Now
	// unless a test sets it.
	Now func() time.Time
}

// KubernetesAuth lets in callers whose bearer token the API server accepts
// (TokenReview) and whose user Kubernetes RBAC allows the call's verb on
// inferencerequests in the namespace (SubjectAccessReview). Both answers are
// cached for the TTL, so a busy client costs the API server little.
//
// Refusals are cached apart from acceptances, each in a cache of bounded
// size that forgets its oldest entries first: made-up tokens (or namespaces),
// however many, can never push a real user's answers out.
type KubernetesAuth struct {
	client    client.Client
	audiences []string
	reviews   *rate.Limiter
	now       func() time.Time

	mu sync.Mutex
	// users and refused are keyed by the SHA-256 of the token.
	users   *boundedCache[[32]byte, *authenticationv1.UserInfo]
	refused *boundedCache[[32]byte, struct{}]
	// allowed and denied are keyed by token hash, verb and namespace.
	allowed, denied *boundedCache[decisionKey, struct{}]
}

// NewKubernetesAuth returns a KubernetesAuth with empty caches.
func NewKubernetesAuth(opts AuthOptions) *KubernetesAuth {
	size := opts.CacheSize
	if size <= 0 {
		size = defaultCacheSize
	}
	a := &KubernetesAuth{
		client:    opts.Client,
		audiences: slices.Clone(opts.Audiences),
		now:       opts.Now,
		users:     newBoundedCache[[32]byte, *authenticationv1.UserInfo](size, opts.TTL),
		refused:   newBoundedCache[[32]byte, struct{}](size, opts.TTL),
		allowed:   newBoundedCache[decisionKey, struct{}](size, opts.TTL),
		denied:    newBoundedCache[decisionKey, struct{}](size, opts.TTL),
	}
	if a.now == nil {
		a.now = time.Now
	}
	if opts.ReviewsPerSecond > 0 {
		burst := opts.ReviewBurst
		if burst <= 0 {
			burst = max(1, int(math.Ceil(opts.ReviewsPerSecond)))
		}
		a.reviews = rate.NewLimiter(rate.Limit(opts.ReviewsPerSecond), burst)
	}
	return a
}

type decisionKey struct {
	token           [32]byte
	verb, namespace string
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
	allowed, err := a.allowedTo(r.Context(), tokenKey, user, verb, namespace)
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
	now := a.now()
	a.mu.Lock()
	user, known := a.users.get(key, now)
	_, refused := a.refused.get(key, now)
	a.mu.Unlock()
	switch {
	case known:
		return user, nil
	case refused:
		return nil, a.invalidToken()
	}

	if a.reviews != nil && !a.reviews.AllowN(now, 1) {
		problem := fail(http.StatusTooManyRequests, "", "too many new bearer tokens to check at the moment; try again later")
		problem.retryAfter = time.Duration(math.Ceil(1/float64(a.reviews.Limit()))) * time.Second
		return nil, problem
	}
	review := &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: a.audiences}}
	if err := a.client.Create(ctx, review); err != nil {
		return nil, fail(http.StatusServiceUnavailable, "", "cannot check the bearer token with the API server now")
	}
	if !review.Status.Authenticated || !a.meantForUs(review.Status.Audiences) {
		a.mu.Lock()
		a.refused.put(key, struct{}{}, now)
		a.mu.Unlock()
		return nil, a.invalidToken()
	}
	user = &review.Status.User
	a.mu.Lock()
	a.users.put(key, user, now)
	a.mu.Unlock()
	return user, nil
}

// meantForUs checks the API server's answer against the audiences asked for:
// an authenticator may accept a token without honouring spec.audiences, and
// then says so by answering other audiences.
func (a *KubernetesAuth) meantForUs(audiences []string) bool {
	if len(a.audiences) == 0 {
		return true
	}
	return slices.ContainsFunc(audiences, func(aud string) bool { return slices.Contains(a.audiences, aud) })
}

func (a *KubernetesAuth) invalidToken() *apiError {
	if len(a.audiences) > 0 {
		return fail(http.StatusUnauthorized, "", "the bearer token is not valid here; tokens must be issued for audience %s",
			strings.Join(a.audiences, " or "))
	}
	return fail(http.StatusUnauthorized, "", "the bearer token is not valid")
}

func (a *KubernetesAuth) allowedTo(
	ctx context.Context, token [32]byte, user *authenticationv1.UserInfo, verb, namespace string,
) (bool, error) {
	key := decisionKey{token: token, verb: verb, namespace: namespace}
	now := a.now()
	a.mu.Lock()
	_, allowed := a.allowed.get(key, now)
	_, denied := a.denied.get(key, now)
	a.mu.Unlock()
	if allowed || denied {
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
	if err := a.client.Create(ctx, review); err != nil {
		return false, fail(http.StatusServiceUnavailable, "", "cannot check permissions with the API server now")
	}
	a.mu.Lock()
	if review.Status.Allowed {
		a.allowed.put(key, struct{}{}, now)
	} else {
		a.denied.put(key, struct{}{}, now)
	}
	a.mu.Unlock()
	return review.Status.Allowed, nil
}

// boundedCache remembers at most size values, each for ttl. When full it
// forgets the oldest first; with one TTL for all, the oldest is also the
// first to expire, so expired entries go before live ones. It is not safe
// for concurrent use.
type boundedCache[K comparable, V any] struct {
	size  int
	ttl   time.Duration
	order *list.List // of *cacheEntry[K, V], oldest first
	items map[K]*list.Element
}

type cacheEntry[K comparable, V any] struct {
	key     K
	value   V
	expires time.Time
}

func newBoundedCache[K comparable, V any](size int, ttl time.Duration) *boundedCache[K, V] {
	return &boundedCache[K, V]{size: size, ttl: ttl, order: list.New(), items: map[K]*list.Element{}}
}

func (c *boundedCache[K, V]) get(key K, now time.Time) (V, bool) {
	element, ok := c.items[key]
	if !ok {
		var zero V
		return zero, false
	}
	entry := element.Value.(*cacheEntry[K, V])
	if !now.Before(entry.expires) {
		c.remove(element)
		var zero V
		return zero, false
	}
	return entry.value, true
}

func (c *boundedCache[K, V]) put(key K, value V, now time.Time) {
	if element, ok := c.items[key]; ok {
		c.remove(element)
	}
	for oldest := c.order.Front(); oldest != nil; oldest = c.order.Front() {
		if c.order.Len() < c.size && now.Before(oldest.Value.(*cacheEntry[K, V]).expires) {
			break
		}
		c.remove(oldest)
	}
	c.items[key] = c.order.PushBack(&cacheEntry[K, V]{key: key, value: value, expires: now.Add(c.ttl)})
}

func (c *boundedCache[K, V]) remove(element *list.Element) {
	c.order.Remove(element)
	delete(c.items, element.Value.(*cacheEntry[K, V]).key)
}

func (c *boundedCache[K, V]) len() int { return c.order.Len() }
