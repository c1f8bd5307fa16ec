package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// adminServer serves /metrics, /healthz and /readyz, and /debug/pprof/
// when EDGESHIM_PPROF=1.
type adminServer struct {
	srv   *http.Server
	ready atomic.Bool
	wg    sync.WaitGroup
}

// api, if not nil, serves /v1/ (the fleet admin API).
func startAdmin(addr string, reg *prometheus.Registry, log *slog.Logger, api http.Handler) (*adminServer, error) {
	a := &adminServer{}
	if addr == "off" || addr == "" {
		return a, nil
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	if api != nil {
		mux.Handle("/v1/", api)
	}
	if os.Getenv("EDGESHIM_PPROF") == "1" {
		// Profiles (heap, goroutine, ...) for measuring memory per
		// connection; off by default, as they disclose internals.
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen admin: %w", err)
	}
	log.Info("listening", "name", "admin", "addr", ln.Addr().String())
	a.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 60 * time.Second}
	a.ready.Store(true)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := a.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin server stopped", "err", err)
		}
	}()
	return a, nil
}

func (a *adminServer) close() {
	if a.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := a.srv.Shutdown(ctx); err != nil {
		a.srv.Close()
	}
	a.wg.Wait()
}

// registerBuildInfo registers edgeshim_build_info{version,goversion} = 1,
// the series dashboards join on to show what runs where. version is the
// one `edgeshim version` prints (-ldflags "-X main.version=...").
func registerBuildInfo(reg prometheus.Registerer) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "edgeshim_build_info",
		Help:        "Always 1; the labels say which edgeshim build runs (version, Go version).",
		ConstLabels: prometheus.Labels{"version": versionString(), "goversion": runtime.Version()},
	}, func() float64 { return 1 }))
}
