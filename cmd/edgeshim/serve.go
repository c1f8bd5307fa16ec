package main

import (
	"context"
	"fmt"
	"io"
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

// serve wires the packages and runs until ctx ends, then shuts down within
// the configured grace period.
func serve(ctx context.Context, cfg *config.Config, file string, logw io.Writer) error {
	log, level := newLeveledLogger(cfg.Log, logw)
	cfg = fitDescriptors(cfg, log)
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
		b, err := bridge.New(bridge.Options{Name: name, Config: bc, Limits: cfg.Limits, TrustedProxies: cfg.TrustedProxies, CheckClientCert: term.CheckClientCert,
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

	alog, err := openAccessLog(cfg.AccessLog, logw)
	if err != nil {
		return err
	}
	defer alog.Close()
	srv, err := proxy.New(proxy.Options{Config: cfg, TLS: term.TLSConfig(), HandshakeFailed: term.HandshakeFailedFor,
		HTTPChallenge: term.HTTPChallenge, Bridges: handlers, Logger: log, Registerer: reg, AccessLog: alog})
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
	rl := newReloader(file, cfg, log, level, term, srv, bridges, reg)

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-hup:
			_ = rl.reload()                       // logged; the previous configuration stays on error
			if err := alog.Reopen(); err != nil { // after logrotate moved it
				log.Error("access log not reopened; it goes on to the old file", "err", err)
			}
		}
	}

	shutdown(cfg.Shutdown, log, admin, srv, bridges)
	log.Info("stopped")
	return nil
}
