package shim

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// BenchmarkSubmit compares, against one API server in one run, submitting
// through the shim over HTTP with creating the same InferenceRequests
// directly: ns/op of direct creates divided by ns/op of shim submits is the
// share of the API server's create rate the shim keeps. Run with make bench.
func BenchmarkSubmit(b *testing.B) {
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := env.Start()
	if err != nil {
		b.Fatalf("starting envtest (make bench sets KUBEBUILDER_ASSETS): %v", err)
	}
	defer func() { _ = env.Stop() }()
	// Same client-side limits for both paths, and high enough not to be the limit.
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = 5000, 5000
	if err := setupScheme(); err != nil {
		b.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{Scheme: testScheme})
	if err != nil {
		b.Fatal(err)
	}
	var seq atomic.Int64
	namespace := func() string {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "bench-"}}
		if err := c.Create(b.Context(), ns); err != nil {
			b.Fatal(err)
		}
		return ns.Name
	}

	b.Run("direct-create", func(b *testing.B) {
		ns := namespace()
		b.SetParallelism(8)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				id := fmt.Sprint(seq.Add(1))
				s := &Submission{ID: id, CallbackURL: "http://client.example.com/r", Model: "default"}
				if err := c.Create(b.Context(), s.object(ns)); err != nil {
					b.Error(err)
				}
			}
		})
	})

	b.Run("shim-submit", func(b *testing.B) {
		srv := httptest.NewServer(&Handler{Client: c, Namespace: namespace(), RetryAfter: time.Second})
		defer srv.Close()
		httpClient := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
		b.SetParallelism(8)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				body := fmt.Sprintf(`{"id": "%d", "callback_url": "http://client.example.com/r"}`, seq.Add(1))
				resp, err := httpClient.Post(srv.URL+"/v1/inferences", "application/json", bytes.NewBufferString(body))
				if err != nil {
					b.Error(err)
					continue
				}
				_ = resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted {
					b.Errorf("submit answered %d", resp.StatusCode)
				}
			}
		})
	})
}
