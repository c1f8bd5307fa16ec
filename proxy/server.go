// Package proxy owns the HTTP front: the HTTPS server for HTTP/1.1 and
// HTTP/2, the HTTP/3 server, the route table, reverse proxying to backend
// pools, WebSocket pass-through and the mapping of failures to status codes.
// Bridges are mounted on it as plain http.Handlers.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgeshim/edgeshim/config"
	"github.com/edgeshim/edgeshim/limits"
	"github.com/edgeshim/edgeshim/limits/accesslog"
	"github.com/edgeshim/edgeshim/limits/park"
	"github.com/edgeshim/edgeshim/proxy/fast"
	"github.com/edgeshim/edgeshim/proxy/h2front"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// Options configure a Server.
type Options struct {
	// Config is the whole configuration, defaults filled and validated.
	Config *config.Config
	// TLS is the server TLS configuration (from tlsterm). HTTP/3 derives
	// its configuration from it.
	TLS *tls.Config
	// HandshakeFailed is called with the reason (tlsterm.FailureReason)
	// when a TLS handshake fails. Optional.
	HandshakeFailed func(reason string)
	// HTTPChallenge wraps the listen.http handler to answer ACME HTTP-01
	// challenges. Optional.
	HTTPChallenge func(http.Handler) http.Handler
	// Bridges are the bridge handlers by name, mounted on the routes that
	// name them.
	Bridges map[string]http.Handler
	// Logger is required.
	Logger *slog.Logger
	// Registerer receives the proxy metrics. Required.
	Registerer prometheus.Registerer
	// Now is the clock for backend ejection. Default: time.Now.
	Now func() time.Time
	// AccessLog writes the access log. Default: nil, none.
	AccessLog *accesslog.Logger
}

// Server is edgeshim's HTTP front.
type Server struct {
	opts   Options
	log    *slog.Logger
	router *router
	https  *http.Server
	plain  *http.Server    // listen.http; nil if not configured
	h2in   *h2Handoff      // HTTP/2 connections to https; nil until Start
	h2f    *h2front.Server // HTTP/2 server of listen.http2_server "edgeshim"; nil: net/http's
	tln    *tlsListener    // nil until Start
	fast   *fast.Server
	h3     *http3.Server
	m      *metrics
	alog   *accesslog.Logger
	noLog  map[string]bool // routes with access_log: false

	// base is the parent of every request context; cancelling it ends
	// hijacked (upgraded) connections, which http.Server.Shutdown does not
	// track.
	base     context.Context
	cancel   context.CancelFunc
	upgrades sync.WaitGroup // upgraded (WebSocket) connections being relayed
	park     *park.Parker   // idle MQTT-over-WebSocket sockets wait here
	loops    sync.WaitGroup // health checks
	serveWG  sync.WaitGroup

	admission *limits.Admission
	live      atomic.Pointer[config.Limits] // the reloadable limits (SetLimits)
	limited   []*limits.Listener            // the listeners' per-IP caps follow SetLimits
	logs      refusalLogs
	drain     drainState // see drain.go
	ov        *overloadMetrics

	mu    sync.Mutex
	addrs map[string]net.Addr
	udp   net.PacketConn
}

// New builds the server and its route table. It binds nothing; see Start.
func New(opts Options) (*Server, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Server{opts: opts, log: opts.Logger, m: newMetrics(opts.Registerer), addrs: map[string]net.Addr{},
		alog: opts.AccessLog, noLog: map[string]bool{}}
	for _, rc := range opts.Config.Routes {
		if rc.AccessLog != nil && !*rc.AccessLog {
			s.noLog[rc.Name] = true
		}
	}
	s.logs = newRefusalLogs(opts.Logger)
	s.base, s.cancel = context.WithCancel(context.Background())
	s.drain.init(s.base)
	lim := opts.Config.Limits
	s.live.Store(&lim)
	for _, rc := range opts.Config.Routes {
		if rc.MQTTWS != nil && s.park == nil {
			s.park = park.New()
		}
	}
	bufs := &bufferPool{}
	rt, err := newRouter(opts.Config.Routes, opts.Bridges, proxyDeps{
		cfg: opts.Config, log: opts.Logger, m: s.m, now: opts.Now, upgrades: &s.upgrades, base: s.base, drain: s.drain.ctx, bufs: bufs,
		retry: func() int { return retryAfterSeconds(lim.RetryAfter) }, park: s.park, maxBody: s.maxBody,
	})
	if err != nil {
		s.cancel()
		if s.park != nil {
			s.park.Close()
		}
		return nil, err
	}
	s.router = rt
	heap := limits.NewHeapWatermark(uint64(lim.Overload.MaxHeap), limits.RetryAfter{Min: lim.RetryAfter.Min.D(), Max: lim.RetryAfter.Max.D()})
	heap.Log = s.logs.request
	s.ov = newOverloadMetrics(opts.Registerer)
	wrap := func(h http.Handler) http.Handler {
		h = heap.Wrap(limits.HeaderCount(lim.MaxHeaders, limits.HeaderSize(int64(lim.MaxHeaderBytes), limits.BodyFunc(s.maxBody, h))))
		h = limits.OverflowGuard(limits.RetryAfter{Min: lim.RetryAfter.Min.D(), Max: lim.RetryAfter.Max.D()}, overflowed, s.ov.answered.Inc, h)
		return s.m.instrument(s.alog, s.noLog, rt.routeName, s.framingGuard(h))
	}
	handler := wrap(s.router)
	s.admission = limits.NewAdmission(limits.AdmissionOptions{
		Rate: *lim.Handshake.Rate, Burst: *lim.Handshake.Burst, MaxQueue: lim.Handshake.MaxQueue,
		QueueTimeout: lim.Handshake.QueueTimeout.D(), Refused: s.m.handshakesRefused, Waiting: s.m.handshakesWaiting,
		Log: s.logs.conn, AnswerRefused: *lim.Handshake.AnswerRefused,
	})
	// The listeners serve from a shell whose GetConfigForClient admits the
	// handshake and then hands over the live configuration: certificates
	// and session ticket keys set on it later (rotation, SIGHUP) apply to
	// new handshakes, which a Clone would not see.
	live := opts.TLS
	shell := &tls.Config{
		MinVersion: live.MinVersion,
		NextProtos: live.NextProtos,
		GetConfigForClient: s.admission.GetConfigForClient(func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			if live.GetConfigForClient != nil {
				// Go calls only the outermost GetConfigForClient: the
				// live configuration's own (ACME TLS-ALPN-01) is ours to
				// ask.
				if c, err := live.GetConfigForClient(hello); c != nil || err != nil {
					return c, err
				}
			}
			return live, nil
		}),
	}
	if opts.Config.Listen.HTTP3 {
		s.h3 = &http3.Server{
			Handler:     handler,
			TLSConfig:   http3.ConfigureTLSConfig(shell.Clone()),
			IdleTimeout: lim.Timeouts.Idle.D(),
			QUICConfig: &quic.Config{
				Allow0RTT:             rt.anyEarly(),
				HandshakeIdleTimeout:  lim.Timeouts.Handshake.D(),
				MaxIdleTimeout:        lim.Timeouts.Idle.D(),
				MaxIncomingStreams:    100,
				MaxIncomingUniStreams: 16,
			},
			MaxHeaderBytes: limits.HardHeaderBytes(int64(lim.MaxHeaderBytes)),
			ConnContext:    func(context.Context, *quic.Conn) context.Context { return s.base },
		}
		handler = s.altSvc(handler)
	}
	// Both listeners: the limits' timeouts, and framingGuard answers
	// "OPTIONS *" so that every request net/http parses reaches it and is
	// counted.
	newHTTPServer := func(h http.Handler) *http.Server {
		return &http.Server{
			Handler:                      h,
			ReadHeaderTimeout:            lim.Timeouts.ReadHeader.D(),
			ReadTimeout:                  lim.Timeouts.Read.D(),
			WriteTimeout:                 lim.Timeouts.Write.D(),
			IdleTimeout:                  lim.Timeouts.Idle.D(),
			MaxHeaderBytes:               limits.HardHeaderBytes(int64(lim.MaxHeaderBytes)),
			ErrorLog:                     errorLog(opts.Logger),
			BaseContext:                  func(net.Listener) context.Context { return s.base },
			ConnContext:                  connContext,
			DisableGeneralOptionsHandler: true,
		}
	}
	s.https = newHTTPServer(handler)
	s.https.TLSConfig = shell
	if opts.Config.Listen.HTTP != "" {
		ph := wrap(s.router.plainHTTP(func() net.Addr { return s.Addr("https") }))
		if opts.HTTPChallenge != nil {
			ph = opts.HTTPChallenge(ph)
		}
		s.plain = newHTTPServer(ph)
	}
	enableHTTP2(s.https, http2Config(lim.Timeouts.Idle.D(), lim.Timeouts.Write.D(), s.log))
	if opts.Config.Listen.HTTP2Server != config.HTTP2NetHTTP {
		s.h2f = newH2Front(s.https, s.base, lim, s.log, &h2Direct{
			base: s.base, routes: fastRouter{rt}, heap: heap, maxHeaders: lim.MaxHeaders,
			maxHeadBytes: int64(lim.MaxHeaderBytes), alog: s.alog, altSvcLines: s.altSvcLines,
		})
	}
	s.fast = fast.New(fast.Config{
		Routes: fastRouter{rt}, Base: s.base, AccessLog: s.alog, AltSvc: s.altSvcLines, Heap: heap, Buffers: bufs,
		ReadHeader: lim.Timeouts.ReadHeader.D(), Read: lim.Timeouts.Read.D(), Write: lim.Timeouts.Write.D(),
		Idle: lim.Timeouts.Idle.D(), MaxHeaders: lim.MaxHeaders, MaxHeadBytes: int(lim.MaxHeaderBytes),
		Polls: rt.setFastPolls(opts.Bridges, s.m), Registerer: opts.Registerer,
	})
	return s, nil
}

// retryAfterSeconds draws a Retry-After uniformly from the window, so that
// a herd told to come back spreads out.
func retryAfterSeconds(w config.RetryAfter) int {
	lo, hi := int(w.Min.D()/time.Second), int(w.Max.D()/time.Second)
	if hi <= lo {
		return lo
	}
	return lo + rand.IntN(hi-lo+1)
}

func (rt *router) anyEarly() bool {
	for _, r := range rt.routes {
		if r.early {
			return true
		}
	}
	return false
}

// altSvcLines are the Alt-Svc header lines of TCP responses when HTTP/3
// is on (altSvc's) for the fast path, which asks once, after Start.
func (s *Server) altSvcLines() []byte {
	if s.h3 == nil {
		return nil
	}
	h := http.Header{}
	_ = s.h3.SetQUICHeaders(h)
	var b []byte
	for _, v := range h.Values("Alt-Svc") {
		b = append(b, "Alt-Svc: "+v+"\r\n"...)
	}
	return b
}

// altSvc advertises HTTP/3 on TCP responses.
func (s *Server) altSvc(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor < 3 {
			_ = s.h3.SetQUICHeaders(w.Header())
		}
		next.ServeHTTP(w, r)
	})
}

// Start binds the listeners and serves in the background. Each bound
// address is logged as msg=listening with name and addr.
func (s *Server) Start() error {
	if err := s.startPlain(); err != nil {
		return err
	}
	addr := s.opts.Config.Listen.HTTPS
	if addr == "" {
		return nil
	}
	ln, err := s.listen(addr)
	if err != nil {
		return fmt.Errorf("listen https: %w", err)
	}
	s.setAddr("https", ln.Addr())
	if s.h3 != nil {
		// The same port over UDP; with port 0 the TCP port chosen is reused.
		udp, err := net.ListenPacket("udp", ln.Addr().String())
		if err != nil {
			ln.Close()
			return fmt.Errorf("listen http3: %w", err)
		}
		s.udp = udp
		s.h3.Port = ln.Addr().(*net.TCPAddr).Port
		s.setAddr("http3", udp.LocalAddr())
		s.serveWG.Add(1)
		go func() {
			defer s.serveWG.Done()
			if err := s.h3.Serve(udp); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, quic.ErrServerClosed) && !s.draining() {
				s.log.Error("http3 server stopped", "err", err)
			}
		}()
	}
	// The TLS handshake is done here, not by net/http, so that HTTP/1
	// connections reach it as scanConns (see framingGuard). Its
	// configuration is copied before startH2's Serve runs: net/http
	// writes to s.https.TLSConfig when it configures HTTP/2.
	serveH2, startH2 := s.startH2(ln.Addr())
	tln := newTLSListener(ln, tlsListenerOptions{
		Config: s.https.TLSConfig.Clone(), HandshakeTimeout: s.opts.Config.Limits.Timeouts.Handshake.D(),
		HandshakeFailed: s.opts.HandshakeFailed, FailLog: s.logs.handshake, Logger: s.log, Base: s.base,
		ServeH2: serveH2, Fast: s.fast,
	})
	startH2()
	s.tln = tln
	s.serveWG.Add(1)
	go func() {
		defer s.serveWG.Done()
		if err := s.https.Serve(tln); err != nil && !errors.Is(err, http.ErrServerClosed) && !s.draining() {
			s.log.Error("https server stopped", "err", err)
		}
	}()
	for _, rp := range s.router.proxies {
		s.loops.Add(1)
		go func() {
			defer s.loops.Done()
			rp.healthLoop(s.base)
		}()
	}
	return nil
}

// listen binds a TCP listener with the connection caps, which apply before
// any TLS work.
func (s *Server) listen(addr string) (net.Listener, error) {
	ln, err := listenTCP(addr)
	if err != nil {
		return nil, err
	}
	l := limits.NewListener(ln, s.listenerOptions())
	s.mu.Lock()
	s.limited = append(s.limited, l)
	s.drain.lims = append(s.drain.lims, l)
	s.mu.Unlock()
	return l, nil
}

// startPlain serves listen.http, if configured.
func (s *Server) startPlain() error {
	if s.plain == nil {
		return nil
	}
	ln, err := s.listen(s.opts.Config.Listen.HTTP)
	if err != nil {
		return fmt.Errorf("listen http: %w", err)
	}
	s.setAddr("http", ln.Addr())
	s.drain.plainLn = ln
	s.serveWG.Add(1)
	go func() {
		defer s.serveWG.Done()
		if err := s.plain.Serve(plainScanListener{ln}); err != nil && !errors.Is(err, http.ErrServerClosed) && !s.draining() {
			s.log.Error("http server stopped", "err", err)
		}
	}()
	return nil
}

func (s *Server) setAddr(name string, a net.Addr) {
	s.mu.Lock()
	s.addrs[name] = a
	s.mu.Unlock()
	s.log.Info("listening", "name", name, "addr", a.String())
}

// Addr returns the bound address of a listener by name ("https", "http",
// "http3"), or nil.
func (s *Server) Addr(name string) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addrs[name]
}

// listenTCP listens for devices without TCP keepalive on accepted
// connections (Go's default probes every idle connection after 15 s).
// edgeshim bounds idle connections itself (idle timeout, long-poll wait,
// WebSocket ping/pong), as nginx does by default; probes would only wake
// the radios of idle cellular devices, and setting them up costs four
// setsockopt calls per accepted connection.
func listenTCP(addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	return lc.Listen(context.Background(), "tcp", addr)
}

// Close closes all listeners and connections at once.
func (s *Server) Close() error {
	s.drain.graceCancel()
	var errs []error
	if s.h3 != nil {
		errs = append(errs, s.h3.Close())
	}
	for _, hs := range s.httpServers() {
		errs = append(errs, hs.Close())
	}
	if s.tln != nil {
		s.tln.Close()
		s.tln.closeConns()
		s.tln.wait(context.Background())
	}
	s.drain.wg.Wait() // a Drain's shutdowns end with the grace cancelled
	s.closeRest()
	return errors.Join(errs...)
}

func (s *Server) httpServers() []*http.Server {
	if s.plain != nil {
		return []*http.Server{s.https, s.plain}
	}
	return []*http.Server{s.https}
}

func (s *Server) closeRest() {
	s.cancel()
	defer s.logs.close()
	s.upgrades.Wait()
	if s.park != nil {
		s.park.Close()
	}
	s.fast.Close()
	s.loops.Wait()
	s.serveWG.Wait()
	if s.h2f != nil {
		s.h2f.Close() // its idle handler goroutines
	}
	for _, rp := range s.router.proxies {
		rp.closeIdle()
	}
	if s.udp != nil {
		s.udp.Close()
	}
}
