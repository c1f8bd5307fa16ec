// Package proxy owns the HTTP front: the HTTPS server for HTTP/1.1 and
// HTTP/2 (and HTTP/3), the route table, reverse proxying to backend pools,
// WebSocket pass-through and the mapping of failures to status codes. Bridges
// are mounted on it as plain http.Handlers.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/edgeshim/edgeshim/config"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http2"
)

// Options configure a Server.
type Options struct {
	// Config is the whole configuration, defaults filled and validated.
	Config *config.Config
	// TLS is the server TLS configuration (from tlsterm).
	TLS *tls.Config
	// HandshakeFailed is called when a TLS handshake fails. Optional.
	HandshakeFailed func()
	// Bridges are the bridge handlers by name, mounted on the routes that
	// name them.
	Bridges map[string]http.Handler
	// Logger is required.
	Logger *slog.Logger
	// Registerer receives the proxy metrics. Required.
	Registerer prometheus.Registerer
}

// Server is edgeshim's HTTP front.
type Server struct {
	opts    Options
	log     *slog.Logger
	router  *router
	https   *http.Server
	m       *metrics
	mu      sync.Mutex
	ln      net.Listener
	serveWG sync.WaitGroup
	addrs   map[string]net.Addr
}

// New builds the server and its route table. It binds nothing; see Start.
func New(opts Options) (*Server, error) {
	s := &Server{opts: opts, log: opts.Logger, m: newMetrics(opts.Registerer), addrs: map[string]net.Addr{}}
	rt, err := newRouter(opts.Config.Routes, opts.Bridges)
	if err != nil {
		return nil, err
	}
	s.router = rt
	lim := opts.Config.Limits
	s.https = &http.Server{
		Handler:           s.m.instrument(s.router),
		TLSConfig:         opts.TLS.Clone(),
		ReadHeaderTimeout: lim.Timeouts.ReadHeader.D(),
		ReadTimeout:       lim.Timeouts.Read.D(),
		WriteTimeout:      lim.Timeouts.Write.D(),
		IdleTimeout:       lim.Timeouts.Idle.D(),
		MaxHeaderBytes:    int(lim.MaxHeaderBytes),
		ErrorLog:          slog.NewLogLogger(opts.Logger.Handler(), slog.LevelDebug),
	}
	h2 := &http2.Server{
		MaxConcurrentStreams:         100,
		MaxReadFrameSize:             1 << 16,
		IdleTimeout:                  lim.Timeouts.Idle.D(),
		MaxUploadBufferPerConnection: 1 << 20,
		MaxUploadBufferPerStream:     1 << 18,
		MaxDecoderHeaderTableSize:    4096,
		MaxEncoderHeaderTableSize:    4096,
		ReadIdleTimeout:              lim.Timeouts.Idle.D() / 2,
		PingTimeout:                  15 * time.Second,
		WriteByteTimeout:             lim.Timeouts.Write.D(),
		CountError: func(errType string) {
			s.log.Debug("http2 protocol error", "type", errType)
		},
	}
	if err := http2.ConfigureServer(s.https, h2); err != nil {
		return nil, fmt.Errorf("http2: %w", err)
	}
	return s, nil
}

// Start binds the listeners and serves in the background. Each bound
// address is logged as msg=listening with name and addr.
func (s *Server) Start() error {
	addr := s.opts.Config.Listen.HTTPS
	if addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen https: %w", err)
	}
	s.mu.Lock()
	s.ln = ln
	s.addrs["https"] = ln.Addr()
	s.mu.Unlock()
	s.log.Info("listening", "name", "https", "addr", ln.Addr().String())
	tln := tls.NewListener(ln, s.https.TLSConfig)
	s.serveWG.Add(1)
	go func() {
		defer s.serveWG.Done()
		if err := s.https.Serve(tln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("https server stopped", "err", err)
		}
	}()
	return nil
}

// Addr returns the bound address of a listener by name ("https"), or nil.
func (s *Server) Addr(name string) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addrs[name]
}

// Shutdown stops accepting, waits for in-flight requests until ctx ends,
// then closes what remains.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.https.Shutdown(ctx)
	if err != nil {
		s.https.Close()
	}
	s.serveWG.Wait()
	return err
}

// Close closes all listeners and connections at once.
func (s *Server) Close() error {
	err := s.https.Close()
	s.serveWG.Wait()
	return err
}
