package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/edgeshim/edgeshim/bridge"
	"github.com/edgeshim/edgeshim/bridge/embedded"
	"github.com/edgeshim/edgeshim/config"
	"github.com/edgeshim/edgeshim/proxy"
	"github.com/edgeshim/edgeshim/tlsterm"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

func newLogger(cfg config.Log, w io.Writer) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(cfg.Level))
	o := &slog.HandlerOptions{Level: lvl}
	if cfg.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, o))
	}
	return slog.New(slog.NewTextHandler(w, o))
}

// serve wires the packages and runs until ctx ends, then shuts down within
// the configured grace period.
func serve(ctx context.Context, cfg *config.Config, logw io.Writer) error {
	log := newLogger(cfg.Log, logw)
	defer applyRuntime(cfg.Runtime, os.Getenv, log)()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	registerBuildInfo(reg)

	term, err := tlsterm.New(tlsterm.Options{TLS: cfg.TLS, DataDir: cfg.DataDir, Listen: cfg.Listen, Logger: log, Registerer: reg})
	if err != nil {
		return err
	}
	defer term.Close()

	if cfg.EmbeddedBroker.Enabled {
		mb, err := embedded.Start(cfg.EmbeddedBroker.Listen, log.With("component", "embedded-broker"))
		if err != nil {
			return err
		}
		log.Info("listening", "name", "mqtt", "addr", mb.Addr().String())
		defer mb.Close() // after the bridges, so their wills are delivered
	}

	bridges := map[string]*bridge.Bridge{}
	handlers := map[string]http.Handler{}
	for name, bc := range cfg.Bridges {
		b, err := bridge.New(bridge.Options{Name: name, Config: bc, Limits: cfg.Limits,
			Logger: log.With("bridge", name), Registerer: prometheus.WrapRegistererWith(prometheus.Labels{"bridge": name}, reg)})
		if err != nil {
			return fmt.Errorf("bridges.%s: %w", name, err)
		}
		bridges[name], handlers[name] = b, b
	}
	api, err := newAdminAPI(cfg, bridges, reg, log)
	if err != nil {
		return err
	}

	srv, err := proxy.New(proxy.Options{Config: cfg, TLS: term.TLSConfig(), HandshakeFailed: term.HandshakeFailed,
		HTTPChallenge: term.HTTPChallenge, Bridges: handlers, Logger: log, Registerer: reg})
	if err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		return err
	}
	term.StartACME() // after Start: challenges are answered by the listeners
	admin, err := startAdmin(cfg.Listen.Admin, reg, log, api)
	if err != nil {
		srv.Close()
		return err
	}
	log.Info("edgeshim started", "version", versionString())

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-hup:
			if err := term.Reload(); err != nil {
				log.Error("reload failed; keeping the previous certificates and keys", "err", err)
			}
		}
	}

	log.Info("shutting down", "grace", cfg.Shutdown.Grace.String())
	admin.ready.Store(false)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.Shutdown.Grace.D())
	defer cancel()
	var errs []error
	if err := srv.Shutdown(sctx); err != nil {
		errs = append(errs, fmt.Errorf("proxy shutdown: %w", err))
	}
	for name, b := range bridges {
		if err := b.Shutdown(sctx); err != nil {
			errs = append(errs, fmt.Errorf("bridge %s shutdown: %w", name, err))
		}
	}
	admin.close()
	if err := errors.Join(errs...); err != nil {
		log.Warn("shutdown was not clean", "err", err)
	}
	log.Info("stopped")
	return nil
}
