package shim

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
)

// What the shim needs of the cluster, for the manager's generated ClusterRole.
// +kubebuilder:rbac:groups=inference.kinfer.dev,resources=inferencerequests,verbs=create;get;delete;patch
// +kubebuilder:rbac:groups=inference.kinfer.dev,resources=inferencemodels,verbs=get;list
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create

// Metrics count and time the shim's calls. Each Server gets its own, which
// main registers on controller-runtime's metrics.Registry so that /metrics
// serves them.
type Metrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

// NewMetrics builds the shim's metrics, not yet registered anywhere.
func NewMetrics() *Metrics {
	return &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kinfer_shim_requests_total",
			Help: "HTTP calls to the shim, by route and status code.",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kinfer_shim_request_duration_seconds",
			Help:    "Time to answer an HTTP call to the shim, by route.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14), // 1 ms to about 8 s
		}, []string{"route"}),
	}
}

// Register adds the metrics to reg.
func (m *Metrics) Register(reg prometheus.Registerer) error {
	if err := reg.Register(m.requests); err != nil {
		return err
	}
	return reg.Register(m.latency)
}

// shutdownGrace is how long in-flight calls may take to finish once the
// manager stops.
const shutdownGrace = 30 * time.Second

// Server runs the Handler on its own listener, with health endpoints, metrics
// and an access log. It is a manager Runnable that needs no leader election,
// so any number of replicas can serve.
type Server struct {
	Addr    string
	Handler *Handler
	Log     logr.Logger
	// Metrics counts and times the calls served.
	Metrics *Metrics
	// CertFile and KeyFile, when both are set, are a PEM certificate (chain)
	// and its key: the shim then serves HTTPS only. They are read once, at
	// start.
	CertFile, KeyFile string

	// listener, when set, is served instead of listening on Addr.
	listener net.Listener
	// connState, when set, hears of each connection's changes of state.
	connState func(net.Conn, http.ConnState)
}

// NeedLeaderElection is false: every replica serves.
func (s *Server) NeedLeaderElection() bool { return false }

// Start serves until ctx ends, then lets in-flight calls finish.
func (s *Server) Start(ctx context.Context) error {
	tlsConfig, err := s.tlsConfig()
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           s.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		BaseContext:       func(net.Listener) context.Context { return logr.NewContext(context.Background(), s.Log) },
		ConnState:         s.connState,
	}
	listener := s.listener
	if listener == nil {
		if listener, err = net.Listen("tcp", s.Addr); err != nil {
			return err
		}
	}
	if tlsConfig != nil {
		listener = tls.NewListener(listener, tlsConfig)
	}
	s.Log.Info("Serving the HTTP shim", "address", listener.Addr().String(), "https", tlsConfig != nil)

	stopped := make(chan error, 1)
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		stopped <- srv.Shutdown(shutdown)
	}()
	if err := srv.Serve(listener); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return <-stopped
}

// tlsConfig loads the certificate when one is configured; nil means plain
// HTTP.
func (s *Server) tlsConfig() (*tls.Config, error) {
	if s.CertFile == "" && s.KeyFile == "" {
		return nil, nil
	}
	if s.CertFile == "" || s.KeyFile == "" {
		return nil, errors.New("the shim needs both a TLS certificate file and a key file, or neither")
	}
	cert, err := tls.LoadX509KeyPair(s.CertFile, s.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("loading the shim's TLS certificate: %w", err)
	}
	// HTTP/1.1 only, as the manager's metrics server by default: HTTP/2 brings
	// stream floods and rapid reset, and nothing for one-shot JSON calls.
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}, nil
}

// routes serves health, readiness and the OpenAPI document itself, and
// every other call through the instrumented Handler.
func (s *Server) routes() *http.ServeMux {
	mux := http.NewServeMux()
	ok := func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	}
	mux.HandleFunc("GET /healthz", ok)
	mux.HandleFunc("GET /readyz", ok)
	mux.HandleFunc("GET /openapi.json", serveOpenAPI)
	mux.Handle("/", s.instrument(s.Handler))
	return mux
}

// instrument counts and times each call and logs it at V(1).
func (s *Server) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		elapsed := time.Since(start)
		s.Metrics.requests.WithLabelValues(route, strconv.Itoa(rec.status)).Inc()
		s.Metrics.latency.WithLabelValues(route).Observe(elapsed.Seconds())
		s.Log.V(1).Info("Served", "method", r.Method, "path", r.URL.Path, "code", rec.status,
			"duration", elapsed.String(), "remote", r.RemoteAddr)
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(status int) {
	r.status = status
	r.ResponseWriter.WriteHeader(status)
}
