// Package accesslog writes edgeshim's access log: one structured line
// (log/slog, text or JSON) per request, and per WebSocket when it ends.
//
// A Record travels in the request's context: the proxy starts it (client,
// TLS, method, path, route), handlers add what they know (the bridge's
// device and commands delivered, the backend that answered, the reason of
// a refusal), and the proxy writes it when the request ends, or the
// WebSocket handler when its socket ends (Hold, Finish).
//
// Successful requests (status below 400) and WebSockets are sampled at
// Options.Sample, errors (400 and above) at Options.ErrorSample. The line
// never carries a query string (only the poll's numeric "wait"), a header
// or a payload, so tokens, passwords and cookies never reach it.
package accesslog

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Options configure a Logger.
type Options struct {
	// Writer receives the lines. Required unless the Logger is opened on a
	// file (Open).
	Writer io.Writer
	// JSON selects the JSON format; default: slog's text format.
	JSON bool
	// Sample is the fraction (0 to 1) of requests answered below 400, and
	// of WebSockets, that are logged.
	Sample float64
	// ErrorSample is the fraction of requests answered 400 or above that
	// are logged.
	ErrorSample float64
	// Rand returns a uniform float in [0, 1). Default: math/rand/v2.Float64.
	Rand func() float64
}

// Logger writes access log lines. A nil *Logger logs nothing.
type Logger struct {
	sl          *slog.Logger
	sample, err float64
	rand        func() float64
	file        *reopener // nil unless opened on a file
}

// New returns a Logger writing to o.Writer.
func New(o Options) *Logger {
	if o.Rand == nil {
		o.Rand = rand.Float64
	}
	var h slog.Handler
	if o.JSON {
		h = slog.NewJSONHandler(o.Writer, nil)
	} else {
		h = slog.NewTextHandler(o.Writer, nil)
	}
	return &Logger{sl: slog.New(h), sample: o.Sample, err: o.ErrorSample, rand: o.Rand}
}

// Open returns a Logger appending to the file at path (created 0640 if
// missing); Reopen opens it again (after log rotation).
func Open(path string, o Options) (*Logger, error) {
	f, err := openFile(path)
	if err != nil {
		return nil, err
	}
	r := &reopener{path: path, f: f}
	o.Writer = r
	l := New(o)
	l.file = r
	return l, nil
}

// Reopen reopens the log file (a rotated file is let go); a Logger not
// opened on a file has nothing to do.
func (l *Logger) Reopen() error {
	if l == nil || l.file == nil {
		return nil
	}
	return l.file.reopen()
}

// Close closes the log file, if any.
func (l *Logger) Close() error {
	if l == nil || l.file == nil {
		return nil
	}
	return l.file.close()
}

// Sampled reports whether a request answered code is to be logged.
func (l *Logger) Sampled(code int) bool {
	if l == nil {
		return false
	}
	p := l.sample
	if code >= 400 {
		p = l.err
	}
	return p >= 1 || (p > 0 && l.rand() < p)
}

func openFile(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
}

// reopener is a file that can be swapped for a new one under writers.
type reopener struct {
	path string
	mu   sync.RWMutex
	f    *os.File
}

func (r *reopener) Write(p []byte) (int, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.f.Write(p)
}

func (r *reopener) reopen() error {
	f, err := openFile(r.path)
	if err != nil {
		return err
	}
	r.mu.Lock()
	old := r.f
	r.f = f
	r.mu.Unlock()
	return old.Close()
}

func (r *reopener) close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.f.Close()
}

// Record is one request's access log entry. The proxy fills the request's
// side; handlers add theirs through the nil-safe setters.
type Record struct {
	Start      time.Time
	Client     string // the client's address (RemoteAddr)
	Proto      string // HTTP/1.1, HTTP/2.0, HTTP/3.0
	TLSVersion uint16 // 0: no TLS
	Resumed    bool
	Host       string
	Method     string
	Path       string // without the query
	RawQuery   string // only its "wait" is logged
	Route      string
	Bridge     string
	Upstream   string // the backend or broker
	Device     string
	Reason     string // the refusal's message (the JSON error's)

	log      *Logger // nil: not logged
	held     bool
	commands atomic.Int64
	done     atomic.Bool
}

type ctxKey struct{}

// NewContext returns ctx carrying rec.
func NewContext(ctx context.Context, rec *Record) context.Context {
	return context.WithValue(ctx, ctxKey{}, rec)
}

// FromContext returns the request's Record, or nil.
func FromContext(ctx context.Context) *Record {
	r, _ := ctx.Value(ctxKey{}).(*Record)
	return r
}

// Begin ties rec to l (nil: not logged).
func (l *Logger) Begin(rec *Record) { rec.log = l }

// SetTLS records the connection's TLS version and resumption.
func (r *Record) SetTLS(cs *tls.ConnectionState) {
	if r != nil && cs != nil {
		r.TLSVersion, r.Resumed = cs.Version, cs.DidResume
	}
}

// Disable drops the record: its route has access_log: false.
func (r *Record) Disable() {
	if r != nil {
		r.log = nil
	}
}

// SetDevice records the device the bridge identified.
func (r *Record) SetDevice(device string) {
	if r != nil {
		r.Device = device
	}
}

// SetUpstream records the backend or broker that served the request.
func (r *Record) SetUpstream(u string) {
	if r != nil {
		r.Upstream = u
	}
}

// SetReason records the message of an error answer.
func (r *Record) SetReason(msg string) {
	if r != nil {
		r.Reason = msg
	}
}

// AddCommands counts commands delivered to the device (safe from any
// goroutine).
func (r *Record) AddCommands(n int) {
	if r != nil {
		r.commands.Add(int64(n))
	}
}

// Held reports whether Hold deferred the line to Finish.
func (r *Record) Held() bool { return r != nil && r.held }

// Hold defers the line to Finish, called when the WebSocket the request
// became ends. It returns nil (and Finish on nil does nothing) when the
// socket is not to be logged, so that an unlogged socket keeps nothing.
func (r *Record) Hold() *Record {
	if r == nil {
		return nil
	}
	r.held = true
	if !r.log.Sampled(101) {
		return nil
	}
	return r
}

// Finish writes a held record's line: a WebSocket that ended with close
// code and reason, after the time since Start.
func (r *Record) Finish(code int, reason string) {
	if r == nil || !r.done.CompareAndSwap(false, true) {
		return
	}
	r.write(101, 0, code, reason)
}

// Done writes the line of a request answered code with n body bytes,
// unless it is held, disabled or not sampled.
func (r *Record) Done(code int, n int64) {
	if r == nil || r.held || r.log == nil || !r.log.Sampled(code) {
		return
	}
	r.write(code, n, 0, "")
}

// write writes the line; closeCode is a WebSocket's.
func (r *Record) write(code int, n int64, closeCode int, closeReason string) {
	l := r.log
	if l == nil {
		return
	}
	var a [22]slog.Attr
	attrs := a[:0]
	attrs = append(attrs, slog.String("client", r.Client))
	if r.TLSVersion != 0 {
		attrs = append(attrs, slog.String("tls", tlsVersion(r.TLSVersion)), slog.Bool("resumed", r.Resumed))
	}
	attrs = append(attrs, slog.String("proto", r.Proto), slog.String("route", r.Route))
	if r.Bridge != "" {
		attrs = append(attrs, slog.String("bridge", r.Bridge))
	}
	if r.Device != "" {
		attrs = append(attrs, slog.String("device", r.Device))
	}
	attrs = append(attrs, slog.String("method", r.Method), slog.String("host", r.Host), slog.String("path", r.Path))
	if w := waitParam(r.RawQuery); w != "" {
		attrs = append(attrs, slog.String("wait", w))
	}
	attrs = append(attrs, slog.Int("status", code), slog.Int64("bytes", n),
		slog.Float64("duration", time.Since(r.Start).Seconds()))
	if c := r.commands.Load(); c > 0 || r.Bridge != "" {
		attrs = append(attrs, slog.Int64("commands", c))
	}
	if r.Upstream != "" {
		attrs = append(attrs, slog.String("upstream", r.Upstream))
	}
	if r.Reason != "" {
		attrs = append(attrs, slog.String("reason", r.Reason))
	}
	if closeCode != 0 {
		attrs = append(attrs, slog.Int("close_code", closeCode), slog.String("close_reason", closeReason))
	}
	l.sl.LogAttrs(context.Background(), slog.LevelInfo, "access", attrs...)
}

// Write writes rec's line for a request answered code with n body bytes,
// without sampling (the caller has asked Sampled): for records that are
// not in a request context (the HTTP/1.1 fast path).
func (l *Logger) Write(rec *Record, code int, n int64) {
	rec.log = l
	rec.write(code, n, 0, "")
}

func tlsVersion(v uint16) string {
	switch v {
	case tls.VersionTLS13:
		return "1.3"
	case tls.VersionTLS12:
		return "1.2"
	}
	return strings.TrimPrefix(tls.VersionName(v), "TLS ")
}

// waitParam returns the query's wait value if it is a small whole number
// (the poll's long-poll time), else "": nothing else of a query string is
// logged.
func waitParam(q string) string {
	for q != "" {
		var kv string
		kv, q, _ = strings.Cut(q, "&")
		if v, ok := strings.CutPrefix(kv, "wait="); ok {
			if len(v) == 0 || len(v) > 6 {
				return ""
			}
			for i := 0; i < len(v); i++ {
				if v[i] < '0' || v[i] > '9' {
					return ""
				}
			}
			return v
		}
	}
	return ""
}
