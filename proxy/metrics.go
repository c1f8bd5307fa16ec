package proxy

import (
	"bufio"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/edgeshim/edgeshim/limits"
	"github.com/edgeshim/edgeshim/limits/accesslog"
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec

	backendRequests *prometheus.CounterVec
	backendDuration *prometheus.HistogramVec
	backendHealthy  *prometheus.GaugeVec
	backendInflight *prometheus.GaugeVec
	backendConns    *prometheus.GaugeVec
	retries         *prometheus.CounterVec

	wsOpen     prometheus.Gauge
	wsMessages *prometheus.CounterVec
	wsCloses   *prometheus.CounterVec

	connsOpen         prometheus.Gauge
	connsRefused      *prometheus.CounterVec
	handshakesRefused *prometheus.CounterVec
	handshakesWaiting prometheus.Gauge
	proxyRefused      *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeshim_http_requests_total",
			Help: "HTTP requests served, by route and status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "edgeshim_http_request_duration_seconds",
			Help:    "Time to serve an HTTP request (long-polls included), by route.",
			Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"route"}),
	}
	m.backendRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "edgeshim_backend_requests_total",
		Help: "Requests sent to backends, by route, backend and status code (\"error\" when no response).",
	}, []string{"route", "backend", "code"})
	m.backendDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "edgeshim_backend_response_seconds",
		Help:    "Time until a backend's response headers, by route and backend.",
		Buckets: prometheus.DefBuckets,
	}, []string{"route", "backend"})
	m.backendHealthy = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "edgeshim_backend_healthy",
		Help: "1 while a backend is in rotation, 0 while ejected or failing its health check.",
	}, []string{"route", "backend"})
	m.backendInflight = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "edgeshim_backend_inflight",
		Help: "Requests in flight to a backend (upstream connections in use).",
	}, []string{"route", "backend"})
	m.backendConns = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "edgeshim_backend_connections_open",
		Help: "Open upstream connections to a backend (idle in the pool or in use), by route and backend.",
	}, []string{"route", "backend"})
	m.retries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "edgeshim_backend_retries_total",
		Help: "Idempotent requests retried on another backend after a dial failure.",
	}, []string{"route"})
	m.connsOpen = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "edgeshim_connections_open",
		Help: "Open client connections on the HTTPS listener.",
	})
	m.connsRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "edgeshim_conns_refused_total",
		Help: "Connections closed at accept, before TLS, by reason (max_conns, per_ip_max_conns, per_ip_rate).",
	}, []string{"reason"})
	m.handshakesRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "edgeshim_tls_handshakes_refused_total",
		Help: "TLS handshakes refused by admission control, by reason (queue_full, queue_timeout).",
	}, []string{"reason"})
	m.handshakesWaiting = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "edgeshim_tls_handshakes_waiting",
		Help: "TLS handshakes waiting for admission.",
	})
	m.wsOpen = prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgeshim_mqtt_ws_sockets_open",
		Help: "MQTT-over-WebSocket sockets being relayed."})
	m.wsMessages = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgeshim_mqtt_ws_messages_total",
		Help: "Relayed WebSocket messages, by direction (to_broker, to_client)."}, []string{"direction"})
	m.wsCloses = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgeshim_mqtt_ws_closes_total",
		Help: "Relayed sockets closed, by close code and reason (slow_reader, pong_timeout, too_big, peer_closed, peer_gone, upstream_lost, shutdown, text_frame). 1006: the peer was gone, no close frame sent."}, []string{"code", "reason"})
	reg.MustRegister(m.wsOpen, m.wsMessages, m.wsCloses)
	reg.MustRegister(m.connsOpen, m.connsRefused, m.handshakesRefused, m.handshakesWaiting)
	m.proxyRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "edgeshim_proxy_protocol_refused_total",
		Help: "Connections closed before TLS for their PROXY protocol header, by reason (untrusted, missing, malformed, truncated, oversized, timeout, empty).",
	}, []string{"reason"})
	for _, r := range limits.ProxyReasons {
		m.proxyRefused.WithLabelValues(r)
	}
	reg.MustRegister(m.proxyRefused)
	reg.MustRegister(m.requests, m.duration, m.backendRequests, m.backendDuration, m.backendHealthy, m.backendInflight, m.backendConns, m.retries)
	// Refusal counters exist at 0 from the start, so that rate() and
	// alerts see them before the first refusal.
	for _, reason := range []string{limits.ReasonMaxConns, limits.ReasonPerIPMaxConns, limits.ReasonPerIPRate} {
		m.connsRefused.WithLabelValues(reason)
	}
	for _, reason := range []string{"queue_full", "queue_timeout"} {
		m.handshakesRefused.WithLabelValues(reason)
	}
	return m
}

// initRoute creates a route's request counters for the refusals edgeshim
// answers itself (400, 413, 429, 431, 503) at 0, so that refusal rates and
// alerts have series before the first refusal.
func (m *metrics) initRoute(name string) {
	for _, code := range []string{"400", "413", "429", "431", "503"} {
		m.requests.WithLabelValues(name, code)
	}
}

// setRouteName records the matched route's name in the request's access
// log record (where the instrumenting middleware reads it back); a route
// with access_log: false drops the record.
func setRouteName(r *http.Request, name string, noLog bool) {
	if rec := accesslog.FromContext(r.Context()); rec != nil {
		rec.Route = name
		if noLog {
			rec.Disable()
		}
	}
}

// statusWriter records the status code. It forwards Unwrap so that
// http.ResponseController reaches the underlying writer (deadlines, flush,
// hijack).
type statusWriter struct {
	http.ResponseWriter
	code  int
	bytes int64
	rec   *accesslog.Record
}

// RecordReason takes the message of an error answer (limits.WriteError).
func (w *statusWriter) RecordReason(msg string) { w.rec.SetReason(msg) }

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush lets handlers that do not use ResponseController stream.
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Hijack lets libraries that type-assert http.Hijacker (gorilla/websocket)
// take over the connection; the status is recorded as 101.
func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil && w.code == 0 {
		w.code = http.StatusSwitchingProtocols
	}
	return c, rw, err
}

// instrument counts and times each request under its route's name, and
// writes its access log line (al; nil: none) unless a WebSocket handler
// holds it until its socket ends. routeOf names the route before next
// runs, so that a request a limit refuses in front of the router (413,
// 431, 400, 503) is counted under the route it was for; "none" is a
// request no route matches. noLog are the routes with access_log: false.
func (m *metrics) instrument(al *accesslog.Logger, noLog map[string]bool, routeOf func(*http.Request) string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &accesslog.Record{Start: start, Route: routeOf(r), Client: r.RemoteAddr, Proto: r.Proto,
			Host: r.Host, Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery}
		rec.SetTLS(r.TLS)
		if !noLog[rec.Route] {
			al.Begin(rec)
		}
		r = r.WithContext(accesslog.NewContext(r.Context(), rec))
		sw := &statusWriter{ResponseWriter: w, rec: rec}
		next.ServeHTTP(sw, r)
		code := sw.code
		if code == 0 {
			code = http.StatusOK
		}
		m.requests.WithLabelValues(rec.Route, strconv.Itoa(code)).Inc()
		m.duration.WithLabelValues(rec.Route).Observe(time.Since(start).Seconds())
		rec.Done(code, sw.bytes)
	})
}
