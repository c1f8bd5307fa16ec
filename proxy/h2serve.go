package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/edgeshim/edgeshim/config"
	"github.com/edgeshim/edgeshim/limits"
	"github.com/edgeshim/edgeshim/proxy/h2front"
)

// HTTP/2 is net/http's own server (http.Server.Protocols and HTTP2), not
// x/net/http2's deprecated ConfigureServer/ServeConn: tlsListener does the
// handshake, and a connection that negotiated "h2" is handed, still a
// *tls.Conn, to the same http.Server through h2Handoff, a second listener
// it serves. net/http sees NegotiatedProtocol "h2" and runs its HTTP/2
// server on it; Shutdown sends it GOAWAY and waits for its streams, as it
// did with ConfigureServer.
//
// What x/net's http2.Server had that net/http's HTTP2Config does not: a
// separate IdleTimeout (net/http's HTTP/2 takes http.Server.IdleTimeout,
// the same value) — nothing else is lost.

// http2Config is the HTTP/2 server's configuration: the settings edgeshim
// had on x/net's http2.Server, field for field.
func http2Config(idle, write time.Duration, log *slog.Logger) *http.HTTP2Config {
	return &http.HTTP2Config{
		MaxConcurrentStreams:          100,
		MaxReadFrameSize:              1 << 16,
		MaxReceiveBufferPerConnection: 1 << 20,
		MaxReceiveBufferPerStream:     1 << 18,
		MaxDecoderHeaderTableSize:     4096,
		MaxEncoderHeaderTableSize:     4096,
		SendPingTimeout:               idle / 2,
		PingTimeout:                   15 * time.Second,
		WriteByteTimeout:              write,
		CountError: func(errType string) {
			log.Debug("http2 protocol error", "type", errType)
		},
	}
}

// enableHTTP2 turns on net/http's HTTP/2 on hs, which serves TLS
// connections handed to it (see h2Handoff): net/http's Serve configures
// HTTP/2 only when the TLS configuration offers "h2".
func enableHTTP2(hs *http.Server, conf *http.HTTP2Config) {
	hs.Protocols = new(http.Protocols)
	hs.Protocols.SetHTTP1(true)
	hs.Protocols.SetHTTP2(true)
	hs.HTTP2 = conf
	for _, p := range []string{"h2", "http/1.1"} {
		if !slices.Contains(hs.TLSConfig.NextProtos, p) {
			hs.TLSConfig.NextProtos = append(hs.TLSConfig.NextProtos, p)
		}
	}
}

// h2Handoff is the listener through which tlsListener hands HTTP/2
// connections to http.Server. serve blocks until net/http has closed the
// connection (ConnState StateClosed), so that tlsListener keeps owning it
// as before (closeConns, wait).
type h2Handoff struct {
	addr  net.Addr
	ready chan net.Conn
	done  chan struct{}
	once  sync.Once

	mu    sync.Mutex
	ended map[net.Conn]chan struct{} // handed over, not yet closed
}

var _ net.Listener = (*h2Handoff)(nil)

func newH2Handoff(addr net.Addr) *h2Handoff {
	return &h2Handoff{addr: addr, ready: make(chan net.Conn), done: make(chan struct{}), ended: map[net.Conn]chan struct{}{}}
}

func (h *h2Handoff) Accept() (net.Conn, error) {
	select {
	case c := <-h.ready:
		return c, nil
	case <-h.done:
		return nil, net.ErrClosed
	}
}

// Close stops handing over: connections waiting in serve are closed.
func (h *h2Handoff) Close() error {
	h.once.Do(func() { close(h.done) })
	return nil
}

func (h *h2Handoff) Addr() net.Addr { return h.addr }

// serve hands c to http.Server and returns when net/http has closed it.
func (h *h2Handoff) serve(c *tls.Conn) {
	end := make(chan struct{})
	h.mu.Lock()
	h.ended[c] = end
	h.mu.Unlock()
	select {
	case h.ready <- c:
		<-end
	case <-h.done:
		h.mu.Lock()
		delete(h.ended, c)
		h.mu.Unlock()
		c.Close()
	}
}

// connState is http.Server.ConnState: it ends serve of a handed-over
// connection when net/http is done with it.
func (h *h2Handoff) connState(c net.Conn, st http.ConnState) {
	if st != http.StateClosed && st != http.StateHijacked {
		return
	}
	h.mu.Lock()
	end, ok := h.ended[c]
	delete(h.ended, c)
	h.mu.Unlock()
	if ok {
		close(end)
	}
}

// newH2Front is the HTTP/2 server of listen.http2_server "edgeshim"
// (see package h2front) with the settings http2Config gives net/http's.
func newH2Front(hs *http.Server, base context.Context, lim config.Limits, log *slog.Logger, direct h2front.Direct) *h2front.Server {
	return h2front.New(h2front.Options{
		Handler: hs.Handler,
		Direct:  direct,
		// http.ServerContextKey: httputil.ReverseProxy aborts a response
		// whose body copy failed (RST_STREAM) only when it is set.
		BaseContext:          context.WithValue(base, http.ServerContextKey, hs),
		ConnContext:          connContext,
		MaxConcurrentStreams: 100,
		// net/http's HTTP/2 figure for the same MaxHeaderBytes: a longer
		// list is answered 431, a shorter one meets limits.HeaderSize.
		MaxHeaderListSize: uint32(limits.HardHeaderBytes(int64(lim.MaxHeaderBytes)) + 10*32),
		// RFC 9113's default: a larger frame is a FRAME_SIZE_ERROR (h2spec
		// 4.2/3 assumes it).
		MaxReadFrameSize:  1 << 14,
		StreamWindow:      1 << 18,
		ConnWindow:        1 << 20,
		IdleTimeout:       lim.Timeouts.Idle.D(),
		ReadHeaderTimeout: lim.Timeouts.ReadHeader.D(),
		WriteTimeout:      lim.Timeouts.Write.D(),
		ReadTimeout:       lim.Timeouts.Read.D(),
		Logger:            log,
	})
}

// startH2 returns what tlsListener calls for each "h2" connection, and
// start, which serves the HTTP/2 handoff on s.https (with h2front:
// nothing). start is called once the tlsListener has cloned the TLS
// configuration: net/http's Serve writes to it.
func (s *Server) startH2(addr net.Addr) (serve func(*tls.Conn), start func()) {
	if s.h2f != nil {
		return func(c *tls.Conn) { s.h2f.ServeConn(c) }, func() {}
	}
	h := newH2Handoff(addr)
	s.h2in = h
	s.https.ConnState = h.connState
	return h.serve, func() {
		s.serveWG.Add(1)
		go func() {
			defer s.serveWG.Done()
			defer h.Close()
			if err := s.https.Serve(h); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("https (HTTP/2) server stopped", "err", err)
			}
		}()
	}
}
