// Package h2front serves HTTP/2 connections on x/net's frame layer
// (http2.Framer and hpack) with as little per-request machinery as
// edgeshim's HTTP/1.1 fast path: the goroutine that did a connection's
// TLS handshake reads its frames, each request runs its http.Handler in a
// goroutine of its own (as net/http's HTTP/2 server does), and every
// frame is written by the goroutine that produced it, straight into the
// connection's buffer, under one lock. The buffer is flushed once no
// other writer is pending (the reader holds off flushing while it still
// has frames buffered): the responses of one read turn leave in one
// write. There is no serve loop to hand frames and writes to, and no
// goroutine per frame write.
//
// It implements what edgeshim needs of RFC 9113: SETTINGS, PING,
// WINDOW_UPDATE flow control both ways, RST_STREAM, GOAWAY (graceful
// drain), the stream state machine, request header validation
// (pseudo-headers, connection-specific fields, TE, Content-Length
// against DATA), a header list limit answered 431, limits on concurrent
// handlers (a rapid-reset flood is refused, then GOAWAY
// ENHANCE_YOUR_CALM), and idle/ping timeouts. Not implemented: server
// push, priorities (accepted and ignored), extended CONNECT.
package h2front

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// Options configure a Server.
type Options struct {
	// Handler serves every request Direct does not. Required.
	Handler http.Handler
	// Direct, if set, is offered each request first (see Direct).
	Direct Direct
	// BaseContext is the parent of a connection's request contexts.
	// Default: context.Background().
	BaseContext context.Context
	// ConnContext adds values of the connection to its context (as
	// http.Server.ConnContext). Optional.
	ConnContext func(ctx context.Context, c net.Conn) context.Context
	// MaxConcurrentStreams is advertised and enforced; it also bounds the
	// handlers running at once. Default: 100.
	MaxConcurrentStreams uint32
	// MaxHeaderListSize bounds a request's decoded header list; a longer
	// one is answered 431. Default: 1 MiB.
	MaxHeaderListSize uint32
	// MaxReadFrameSize is the largest frame accepted. Default: 64 KiB.
	MaxReadFrameSize uint32
	// StreamWindow and ConnWindow are the receive windows for request
	// bodies. Defaults: 256 KiB, 1 MiB.
	StreamWindow, ConnWindow int32
	// IdleTimeout closes a connection without streams after this long
	// without a frame (GOAWAY first). 0: none.
	IdleTimeout time.Duration
	// ReadHeaderTimeout bounds the wait for the client preface and the
	// first SETTINGS. Default: IdleTimeout, or 10s.
	ReadHeaderTimeout time.Duration
	// WriteTimeout bounds each flush of the connection's buffer, and a
	// stream's response from its start (as net/http's HTTP/2 server: the
	// stream is reset past it; handlers extend it with
	// http.ResponseController.SetWriteDeadline). 0: none.
	WriteTimeout time.Duration
	// ReadTimeout bounds reading a request body from the stream's start
	// (the stream is reset past it; SetReadDeadline extends it). 0: none.
	ReadTimeout time.Duration
	// PingTimeout: a connection with streams but no frame for
	// IdleTimeout/2 is sent a PING and closed without an answer within
	// PingTimeout. Default: 15s.
	PingTimeout time.Duration
	// Logger logs protocol errors at debug level. Required.
	Logger *slog.Logger
}

// Server serves HTTP/2 connections handed to ServeConn.
type Server struct {
	o Options

	mu       sync.Mutex
	conns    map[*conn]struct{}
	draining bool

	dateCache dateCache
	workers   workers

	// afterFinish, if set (by tests), runs between a response's last
	// frame and its handler's bookkeeping.
	afterFinish func()
}

// New returns a Server; it starts nothing.
func New(o Options) *Server {
	if o.MaxConcurrentStreams == 0 {
		o.MaxConcurrentStreams = 100
	}
	if o.MaxHeaderListSize == 0 {
		o.MaxHeaderListSize = 1 << 20
	}
	if o.MaxReadFrameSize == 0 {
		o.MaxReadFrameSize = 1 << 16
	}
	o.MaxReadFrameSize = min(max(o.MaxReadFrameSize, 1<<14), 1<<24-1)
	if o.StreamWindow <= 0 {
		o.StreamWindow = 256 << 10
	}
	if o.ConnWindow <= 0 {
		o.ConnWindow = 1 << 20
	}
	o.ConnWindow = max(o.ConnWindow, initialWindow)
	if o.ReadHeaderTimeout <= 0 {
		o.ReadHeaderTimeout = o.IdleTimeout
		if o.ReadHeaderTimeout <= 0 {
			o.ReadHeaderTimeout = 10 * time.Second
		}
	}
	if o.PingTimeout <= 0 {
		o.PingTimeout = 15 * time.Second
	}
	if o.BaseContext == nil {
		o.BaseContext = context.Background()
	}
	s := &Server{o: o, conns: map[*conn]struct{}{}}
	s.workers.now = time.Now
	return s
}

// Close ends the Server's idle handler goroutines and waits for all of
// them: call it once its connections are served (ServeConn returned).
// Connections served after Close run each handler in a goroutine of its
// own.
func (s *Server) Close() {
	s.workers.close()
}

// ServeConn serves c, whose TLS handshake (ALPN "h2") is done, until the
// connection ends, and waits for its handlers to return. It does not
// close c: the caller does, after it returns (or to end it early).
func (s *Server) ServeConn(c net.Conn) {
	cn := newConn(s, c)
	s.mu.Lock()
	s.conns[cn] = struct{}{}
	draining := s.draining
	s.mu.Unlock()
	if draining {
		cn.drainSoon()
	}
	cn.serve()
	s.mu.Lock()
	delete(s.conns, cn)
	s.mu.Unlock()
}

// Drain sends GOAWAY to every connection (and to connections served
// later): their streams are served to their end, then they close.
func (s *Server) Drain() {
	s.mu.Lock()
	s.draining = true
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.drainSoon()
	}
}
