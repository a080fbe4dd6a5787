package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/shim"
)

// memoryClient stands in for the API server in the shim's handler: creates
// are kept in a map and every model exists, so only the handler's own work is
// measured.
type memoryClient struct {
	client.Client // nil: calls other than Create and Get of a model fail loudly

	mu      sync.Mutex
	objects map[types.NamespacedName]bool
	seq     int
}

func (m *memoryClient) Create(_ context.Context, obj client.Object, _ ...client.CreateOption) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	key := client.ObjectKeyFromObject(obj)
	if m.objects[key] {
		return apierrors.NewAlreadyExists(schema.GroupResource{Group: "inference.kinfer.dev", Resource: "inferencerequests"}, key.Name)
	}
	m.objects[key] = true
	m.seq++
	obj.SetUID(types.UID(fmt.Sprintf("uid-%d", m.seq)))
	obj.SetResourceVersion(fmt.Sprint(m.seq))
	obj.SetCreationTimestamp(metav1.Now())
	return nil
}

// Get finds every model, with no limits of its own: the shim reads the
// model of each submission before it stores the request.
func (m *memoryClient) Get(_ context.Context, key client.ObjectKey, obj client.Object, _ ...client.GetOption) error {
	model, ok := obj.(*inferencev1alpha1.InferenceModel)
	if !ok {
		return fmt.Errorf("the bench's in-memory store reads models only, not %T", obj)
	}
	model.Name, model.Namespace = key.Name, key.Namespace
	return nil
}

// benchShimInProcess serves the shim's handler, with the in-memory client,
// next to a minimal net/http JSON handler doing the least the same exchange
// needs, both loaded alike in this process.
func benchShimInProcess(_ context.Context, o *options, r *report) error {
	n := 10 * o.shimRequests
	handler := shim.NewHandler(shim.Options{Client: &memoryClient{objects: map[types.NamespacedName]bool{}},
		Namespace: "bench", RetryAfter: time.Second})
	minimal := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var body struct {
			ID          string `json:"id"`
			CallbackURL string `json:"callback_url"`
		}
		if err := json.NewDecoder(req.Body).Decode(&body); err != nil || body.ID == "" {
			http.Error(w, `{"error": "bad body"}`, http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		_ = json.NewEncoder(w).Encode(map[string]string{"message": "Received", "id": body.ID})
	})
	rate := func(h http.Handler, prefix string) (float64, error) {
		srv := httptest.NewServer(h)
		defer srv.Close()
		start := time.Now()
		err := parallel(n, o.clients, func(i int) error {
			body := fmt.Sprintf(`{"id": "%s-%06d", "callback_url": "http://client.example.com/v1/results"}`, prefix, i)
			resp, err := httpClient.Post(srv.URL+"/v1/inferences", "application/json", bytes.NewBufferString(body))
			if err != nil {
				return err
			}
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				return fmt.Errorf("%s answered %d", prefix, resp.StatusCode)
			}
			return nil
		})
		return float64(n) / time.Since(start).Seconds(), err
	}
	say("shim: %d submits to the handler with an in-memory store, and to a minimal handler", n)
	// Warm both up, then measure each.
	if _, err := rate(minimal, "warm"); err != nil {
		return err
	}
	base, err := rate(minimal, "min")
	if err != nil {
		return err
	}
	own, err := rate(handler, "shim")
	if err != nil {
		return err
	}
	r.check("7. shim", "handler with an in-memory store ÷ minimal net/http JSON handler, same process",
		fmt.Sprintf("%.2f (%.0f/s ÷ %.0f/s)", own/base, own, base), "≥ 0.5", own/base >= 0.5)
	return nil
}
