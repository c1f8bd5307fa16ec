// Package embedded runs the in-process MQTT broker (mochi-mqtt) of
// edgeshim's embedded default, so a newcomer needs nothing else to see a
// command reach a long-polling device. Production deployments point
// bridges at their own broker instead.
package embedded

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// Broker is a running embedded broker.
type Broker struct {
	srv  *mqtt.Server
	addr net.Addr
}

// Start listens on addr (anonymous access: bind it to loopback) and serves
// in the background.
func Start(addr string, log *slog.Logger) (*Broker, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	bound := ln.Addr()
	ln.Close() // mochi binds its own listener; reuse the port just reserved
	// mochi logs ordinary client events (a disconnect with will, 0x04, is
	// how every session ends) as warnings; only its errors are news.
	quiet := slog.New(minLevel{log.Handler(), slog.LevelError})
	srv := mqtt.New(&mqtt.Options{InlineClient: false, Logger: quiet})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "tcp", Address: bound.String()})); err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	if err := srv.Serve(); err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	return &Broker{srv: srv, addr: bound}, nil
}

// Addr is the bound address.
func (b *Broker) Addr() net.Addr { return b.addr }

// Close stops the broker and its listeners.
func (b *Broker) Close() error { return b.srv.Close() }

// minLevel drops records below level.
type minLevel struct {
	slog.Handler
	level slog.Level
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.level && h.Handler.Enabled(ctx, l)
}

func (h minLevel) WithAttrs(a []slog.Attr) slog.Handler {
	return minLevel{h.Handler.WithAttrs(a), h.level}
}
func (h minLevel) WithGroup(n string) slog.Handler { return minLevel{h.Handler.WithGroup(n), h.level} }
