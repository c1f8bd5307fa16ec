// Package bridge owns device sessions: the HTTP poll, long-poll, telemetry
// and ack endpoints, the device WebSocket endpoint, the session registry,
// the upstream drivers (MQTT via paho.golang, WebSocket via
// gorilla/websocket) and presence. A Bridge is an http.Handler that proxy
// mounts on the routes that name it.
package bridge

import (
	"context"
	"log/slog"
	"net/http"

	"github.com/edgeshim/edgeshim/config"
	"github.com/prometheus/client_golang/prometheus"
)

// Options configure a Bridge.
type Options struct {
	// Name is the bridge's name in the config (metrics label).
	Name string
	// Config is the bridge section, defaults filled and validated.
	Config config.Bridge
	// Limits is the limits section (body limits, Retry-After window).
	Limits config.Limits
	// Logger is required.
	Logger *slog.Logger
	// Registerer receives the bridge metrics. Required.
	Registerer prometheus.Registerer
}

// Bridge serves one bridge's device endpoints.
type Bridge struct {
	opts Options
}

var _ http.Handler = (*Bridge)(nil)

// New builds a bridge. It connects nothing until devices arrive.
func New(opts Options) (*Bridge, error) {
	return &Bridge{opts: opts}, nil
}

// ServeHTTP serves the bridge's endpoints.
func (b *Bridge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	http.Error(w, "bridge not implemented yet", http.StatusNotImplemented)
}

// Shutdown ends every device session (their wills fire unless the broker
// is gone) and waits for their goroutines, or until ctx ends.
func (b *Bridge) Shutdown(ctx context.Context) error { return nil }
