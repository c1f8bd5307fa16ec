package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgeshim/edgeshim/config"
	"github.com/edgeshim/edgeshim/limits"
	"github.com/edgeshim/edgeshim/limits/accesslog"
	"github.com/edgeshim/edgeshim/limits/faillog"
	"github.com/edgeshim/edgeshim/limits/park"
	"github.com/edgeshim/edgeshim/proxy/fast"
	"github.com/edgeshim/edgeshim/proxy/upstream"
	"github.com/edgeshim/edgeshim/tlsterm"
	"github.com/prometheus/client_golang/prometheus"
)

// routeProxy forwards one route's requests to its backend pool.
type routeProxy struct {
	name     string
	route    config.Route
	up       upstream.Route // the pool and the retry policy
	rp       *httputil.ReverseProxy
	maxBody  int64        // the route's own max_body, 0: none
	liveMax  func() int64 // limits.max_body, live (reloadable)
	trusted  upstream.TrustList
	strip    string // the route's path when strip_prefix, else ""
	log      *slog.Logger
	m        *metrics
	retry    func() int // Retry-After seconds
	upgrades *sync.WaitGroup
	hc       *config.HealthCheck
	client   *http.Client // active health checks
	h1       *http.Transport
	h2c      *http.Transport // h2c:// backends: HTTP/2 with prior knowledge
	fast     *fast.Route     // nil unless every backend is plain http://
	fails    *faillog.Log    // backend errors, aggregated
	direct   atomic.Int64    // requests served by the HTTP/2 direct exchange (h2direct.go)
}

// closeIdle closes the idle upstream connections of the route's pools.
func (rp *routeProxy) closeIdle() {
	rp.fails.Close()
	rp.h1.CloseIdleConnections()
	rp.h2c.CloseIdleConnections()
	for _, b := range rp.up.Pool.Backends() {
		if b.Conns != nil {
			b.Conns.CloseIdle()
		}
	}
}

// proxyDeps are what a routeProxy takes from its Server.
type proxyDeps struct {
	cfg      *config.Config
	log      *slog.Logger
	m        *metrics
	now      func() time.Time
	retry    func() int
	upgrades *sync.WaitGroup
	base     context.Context     // cancelled on shutdown: ends upgraded connections
	drain    context.Context     // cancelled when the drain starts (Server.Drain); child of base
	bufs     httputil.BufferPool // response copy buffers, shared by all routes
	park     *park.Parker        // where idle upgraded sockets wait
	maxBody  func() int64        // limits.max_body, live (reloadable)
}

// copyBufSize is the size of a response copy buffer.
const copyBufSize = 32 << 10

// bufferPool recycles response copy buffers: without it ReverseProxy
// allocates 32 KiB per response, most of the proxy's garbage.
type bufferPool struct{ p sync.Pool }

var _ httputil.BufferPool = (*bufferPool)(nil)

func (b *bufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, copyBufSize)
}

func (b *bufferPool) Put(buf []byte) {
	if cap(buf) == copyBufSize {
		buf = buf[:copyBufSize]
		b.p.Put(&buf)
	}
}

// countingDialer dials backends and keeps edgeshim_backend_connections_open
// per backend (by dial address) as connections open and close.
func countingDialer(d *net.Dialer, backends []*upstream.Backend, g *prometheus.GaugeVec) func(context.Context, string, string) (net.Conn, error) {
	byAddr := map[string]prometheus.Gauge{}
	for _, b := range backends {
		port := b.URL.Port()
		if port == "" {
			port = "80"
			if b.URL.Scheme == "https" {
				port = "443"
			}
		}
		byAddr[net.JoinHostPort(b.URL.Hostname(), port)] = g.WithLabelValues(b.Name)
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		gauge, ok := byAddr[addr]
		if !ok {
			return c, nil
		}
		gauge.Inc()
		return &countedConn{Conn: c, g: gauge}, nil
	}
}

// countedConn decrements its gauge once, on the first Close.
type countedConn struct {
	net.Conn
	g    prometheus.Gauge
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(c.g.Dec)
	return c.Conn.Close()
}

func newRouteProxy(name string, rc config.Route, d proxyDeps) (*routeProxy, error) {
	pc := rc.Proxy
	var urls []*url.URL
	for i, s := range pc.Backends {
		u, err := url.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("proxy.backends[%d]: %w", i, err)
		}
		urls = append(urls, u)
	}
	tlsConf, err := tlsterm.ClientConfig(pc.TLS)
	if err != nil {
		return nil, fmt.Errorf("proxy.tls: %w", err)
	}
	rp := &routeProxy{
		name:     name,
		route:    rc,
		liveMax:  d.maxBody,
		log:      d.log.With("route", name),
		fails:    faillog.New(faillog.Options{Logger: d.log.With("route", name)}),
		m:        d.m,
		retry:    d.retry,
		upgrades: d.upgrades,
		hc:       pc.HealthCheck,
	}
	if rc.MaxBody > 0 {
		rp.maxBody = int64(rc.MaxBody)
	}
	rp.trusted = upstream.NewTrustList(d.cfg.TrustedProxies)
	rp.up = upstream.Route{
		Pool:    upstream.NewPool(urls, pc.LB, pc.Passive.MaxFails, pc.Passive.EjectFor.D(), d.now),
		Retries: *pc.Retries,
		Retried: d.m.retries.WithLabelValues(name),
		Log:     rp.log,
	}
	if rc.StripPrefix {
		rp.strip = rc.Path
	}
	rp.up.Pool.OnHealth = func(b *upstream.Backend, healthy bool) {
		v := 0.0
		if healthy {
			v = 1
		}
		d.m.backendHealthy.WithLabelValues(name, b.Name).Set(v)
		rp.log.Warn("backend health changed", "backend", b.Name, "healthy", healthy)
	}
	for _, b := range rp.up.Pool.Backends() {
		d.m.backendHealthy.WithLabelValues(name, b.Name).Set(1)
		b.Metrics.Inflight = d.m.backendInflight.WithLabelValues(name, b.Name)
		b.Metrics.Duration = d.m.backendDuration.WithLabelValues(name, b.Name)
		b.Metrics.Errors = d.m.backendRequests.WithLabelValues(name, b.Name, "error")
	}
	dialer := &net.Dialer{Timeout: pc.Timeouts.Dial.D(), KeepAlive: 30 * time.Second}
	dial := countingDialer(dialer, rp.up.Pool.Backends(), d.m.backendConns.MustCurryWith(prometheus.Labels{"route": name}))
	h1 := &http.Transport{
		Proxy:                  nil,
		DialContext:            dial,
		TLSClientConfig:        tlsConf,
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           pc.MaxIdleConns * len(urls),
		MaxIdleConnsPerHost:    pc.MaxIdleConns,
		IdleConnTimeout:        90 * time.Second,
		TLSHandshakeTimeout:    pc.Timeouts.Dial.D(),
		ResponseHeaderTimeout:  pc.Timeouts.ResponseHeader.D(),
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: 1 << 20,
	}
	// net/http's own unencrypted HTTP/2 (x/net's http2.Transport is
	// deprecated); its header wait is bounded by poolTransport.roundTrip.
	h2c := &http.Transport{
		Proxy:       nil,
		DialContext: dial,
		HTTP2:       &http.HTTP2Config{SendPingTimeout: 30 * time.Second},
	}
	h2c.Protocols = new(http.Protocols)
	h2c.Protocols.SetUnencryptedHTTP2(true)
	rp.h1, rp.h2c = h1, h2c
	if allPlainHTTP(urls) {
		rp.fast = newFastRoute(rp, d.m, dial, pc.MaxIdleConns)
	}
	rp.client = &http.Client{Transport: h1, Timeout: 0}
	rp.rp = &httputil.ReverseProxy{
		Rewrite:      rp.rewrite,
		Transport:    &poolTransport{rp: rp, h1: h1, h2c: h2c, timeoutHdr: pc.Timeouts.ResponseHeader.D()},
		ErrorHandler: rp.errorHandler,
		BufferPool:   d.bufs,
		ErrorLog:     slog.NewLogLogger(d.log.Handler(), slog.LevelDebug),
		// 0: ReverseProxy flushes at once for streaming responses (unknown
		// length, text/event-stream) and buffers the rest.
		FlushInterval: 0,
	}
	return rp, nil
}

// allPlainHTTP: every backend is http:// (HTTP/1.1 on the fast path; https
// may negotiate HTTP/2, h2c is HTTP/2).
func allPlainHTTP(urls []*url.URL) bool {
	for _, u := range urls {
		if u.Scheme != "http" || u.Opaque != "" || u.RawQuery != "" {
			return false
		}
	}
	return len(urls) > 0
}

func (rp *routeProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if msg := edgeCheck(r); msg != "" {
		rp.log.Info("request refused", "reason", msg, "remote", r.RemoteAddr)
		writeError(w, http.StatusBadRequest, msg)
		return
	}
	maxBody := rp.bodyLimit()
	if r.ContentLength > maxBody {
		writeError(w, http.StatusRequestEntityTooLarge, "body too large")
		return
	}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	}
	if rp.route.Proxy.Timeouts.Request > 0 {
		ctx, cancel := context.WithTimeout(r.Context(), rp.route.Proxy.Timeouts.Request.D())
		defer cancel()
		r = r.WithContext(ctx)
	}
	if isUpgrade(r) {
		rp.upgrades.Add(1)
		defer rp.upgrades.Done()
	}
	rp.rp.ServeHTTP(w, r)
}

// edgeCheck refuses requests an edge must not pass on. Duplicate differing
// Content-Length headers never get here (net/http answers 400 itself).
func edgeCheck(r *http.Request) string {
	if headerHasToken(r.Header["Connection"], "upgrade") || r.Header.Get("Upgrade") != "" {
		if !strings.EqualFold(strings.TrimSpace(r.Header.Get("Upgrade")), "websocket") {
			return "upgrade not allowed: only websocket"
		}
	}
	return ""
}

func isUpgrade(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
}

func headerHasToken(vals []string, token string) bool {
	for _, v := range vals {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// rewrite builds the outbound request: the inbound Host kept, and
// X-Forwarded-*/Forwarded set by the policy's forwarded (the client's own
// values kept only when it is a trusted proxy). The path (strip_prefix,
// the backend's path) and the backend's scheme and host are set per
// attempt by poolTransport.
func (rp *routeProxy) rewrite(pr *httputil.ProxyRequest) {
	in, out := pr.In, pr.Out
	peer := upstream.PeerAddr(in.RemoteAddr)
	upstream.SetForwarded(out.Header, &upstream.Forwarded[string]{
		Peer: peer, Host: in.Host, TLS: in.TLS != nil, Trusted: rp.trusted.Has(peer),
		XFF: in.Header["X-Forwarded-For"], XFH: in.Header.Get("X-Forwarded-Host"),
		XFP: in.Header.Get("X-Forwarded-Proto"), Fwd: in.Header["Forwarded"],
	})
	out.Host = in.Host
}

func (rp *routeProxy) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() == context.Canceled && !errors.Is(err, upstream.ErrClientGone) {
		err = upstream.Because(upstream.ErrClientGone, err)
	}
	code, msg, retryAfter := rp.answerFor(err)
	if code == upstream.StatusClientClosed {
		w.WriteHeader(code) // logged and counted; nobody reads it
		return
	}
	if retryAfter {
		w.Header().Set("Retry-After", strconv.Itoa(rp.retry()))
	}
	writeError(w, code, msg)
}

// poolTransport is the retry loop (attempts) of net/http's paths: it
// points the request at a backend per attempt (outPath) and exchanges it
// (syncExchange for http:// backends, else http.Transport).
type poolTransport struct {
	rp         *routeProxy
	h1         *http.Transport
	h2c        *http.Transport
	timeoutHdr time.Duration
}

func (t *poolTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	var body *clientBody
	hasBody := req.Body != nil && req.Body != http.NoBody
	if hasBody {
		body = &clientBody{ReadCloser: req.Body}
		req.Body = body
	}
	a := t.rp.up.Attempts(upstream.Idempotent(req.Method, hasBody))
	// req is ReverseProxy's own outgoing copy: pointed at each attempt's
	// backend in turn rather than cloned.
	path, rawPath := req.URL.Path, req.URL.RawPath
	for {
		b, err := a.Next()
		if err != nil {
			return nil, err
		}
		req.URL.Host = b.URL.Host
		req.URL.Path = upstream.OutPath(b.URL.Path, t.rp.strip, path)
		if rawPath != "" {
			req.URL.RawPath = upstream.OutPath(b.URL.Path, t.rp.strip, rawPath)
		}
		var rt http.RoundTripper = t.h1
		req.URL.Scheme = b.URL.Scheme
		if b.URL.Scheme == "h2c" {
			req.URL.Scheme = "http"
			rt = t.h2c
		}
		start := time.Now()
		b.Begin()
		var resp *http.Response
		if b.Conns != nil && syncOK(req) {
			resp, err = syncExchange(b.Conns, req, t.timeoutHdr) // see syncbackend.go
		} else {
			resp, err = t.roundTrip(rt, req)
		}
		if err != nil {
			b.End()
			err = why(req, body, err)
			if a.Failed(b, err) {
				continue
			}
			accesslog.FromContext(req.Context()).SetUpstream(b.Name)
			return nil, b.Failed(err)
		}
		t.rp.answered(b)
		accesslog.FromContext(req.Context()).SetUpstream(b.Name)
		t.rp.m.backendRequests.WithLabelValues(t.rp.name, b.Name, strconv.Itoa(resp.StatusCode)).Inc()
		b.Metrics.Duration.Observe(time.Since(start).Seconds())
		resp.Body = &doneBody{ReadCloser: resp.Body, done: b.End}
		return resp, nil
	}
}

// why adds what net/http's path knows of a failed exchange to err: the
// client's body broke (too large, unreadable), the client went away, the
// route's request timeout passed.
func why(req *http.Request, body *clientBody, err error) error {
	if berr := body.failed(); berr != nil {
		err = berr
	}
	if limits.IsTooLarge(err) {
		return err
	}
	switch req.Context().Err() {
	case context.Canceled:
		return upstream.Because(upstream.ErrClientGone, err)
	case context.DeadlineExceeded:
		return upstream.Because(upstream.ErrRequestTimeout, err)
	}
	return err
}

// roundTrip bounds waiting for response headers on h2c too (http.Transport
// has ResponseHeaderTimeout of its own).
func (t *poolTransport) roundTrip(rt http.RoundTripper, req *http.Request) (*http.Response, error) {
	if rt == http.RoundTripper(t.h1) || t.timeoutHdr <= 0 {
		return rt.RoundTrip(req)
	}
	ctx, cancel := context.WithCancelCause(req.Context())
	timer := time.AfterFunc(t.timeoutHdr, func() { cancel(context.DeadlineExceeded) })
	resp, err := rt.RoundTrip(req.WithContext(ctx))
	timer.Stop()
	if err != nil {
		cancel(nil)
		if context.Cause(ctx) == context.DeadlineExceeded {
			return nil, upstream.Because(upstream.ErrHeaderTimeout, context.DeadlineExceeded)
		}
		return nil, err
	}
	resp.Body = &doneBody{ReadCloser: resp.Body, done: func() { cancel(nil) }}
	return resp, nil
}

// doneBody calls done once, when the body is closed.
type doneBody struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (d *doneBody) Close() error {
	err := d.ReadCloser.Close()
	d.once.Do(d.done)
	return err
}

// Write forwards writes for 101 Switching Protocols bodies (the
// bidirectional stream of an upgraded connection).
func (d *doneBody) Write(p []byte) (int, error) {
	if w, ok := d.ReadCloser.(io.Writer); ok {
		return w.Write(p)
	}
	return 0, errors.New("body is not writable")
}

// healthLoop runs the active health check until ctx ends.
func (rp *routeProxy) healthLoop(ctx context.Context) {
	if rp.hc == nil {
		return
	}
	t := time.NewTicker(rp.hc.Interval.D())
	defer t.Stop()
	for {
		for _, b := range rp.up.Pool.Backends() {
			rp.up.Pool.SetActive(b, rp.check(ctx, b))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (rp *routeProxy) check(ctx context.Context, b *upstream.Backend) bool {
	ctx, cancel := context.WithTimeout(ctx, rp.hc.Timeout.D())
	defer cancel()
	u := *b.URL
	if u.Scheme == "h2c" {
		u.Scheme = "http"
	}
	u.Path = upstream.OutPath(u.Path, "", rp.hc.Path)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return false
	}
	resp, err := rp.client.Do(req)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return resp.StatusCode == rp.hc.ExpectStatus
}
