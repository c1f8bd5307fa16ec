package proxy

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgeshim/edgeshim/proxy/internal/h1"
	"github.com/prometheus/client_golang/prometheus"
)

// fastRoute is what the HTTP/1 fast path needs of a proxy route whose
// backends are all plain http://: the route's metric children, resolved
// once, and a synchronous client per backend.
type fastRoute struct {
	rp       *routeProxy
	requests codeCounters // edgeshim_http_requests_total{route}
	duration prometheus.Observer
	// maxPath is the longest backend URL path (the request line grows by
	// it).
	maxPath int
}

// fastBackend is the fast path's client of one backend: an idle pool of
// HTTP/1.1 connections, used by one request at a time in the goroutine of
// the client connection.
type fastBackend struct {
	addr    string
	path    string // the backend URL's path, joined in front of the request's
	dial    func(context.Context, string, string) (net.Conn, error)
	maxIdle int
	codes   codeCounters // edgeshim_backend_requests_total{route, backend}

	mu     sync.Mutex
	idle   []*bconn // most recently used last
	closed bool
}

// backendIdleTimeout is how long an idle backend connection is kept
// (http.Transport's IdleConnTimeout in the slow path).
const backendIdleTimeout = 90 * time.Second

// bconn is one backend connection.
type bconn struct {
	c      net.Conn
	br     *bufio.Reader
	at     time.Time // when it went idle
	reused bool
}

func (bc *bconn) close() { bc.c.Close() }

func newFastRoute(rp *routeProxy, m *metrics, dial func(context.Context, string, string) (net.Conn, error), maxIdle int) *fastRoute {
	fr := &fastRoute{
		rp:       rp,
		requests: codeCounters{vec: m.requests, labels: []string{rp.name}},
		duration: m.duration.WithLabelValues(rp.name),
	}
	for _, b := range rp.pool.backends {
		port := b.url.Port()
		if port == "" {
			port = "80"
		}
		b.fast = &fastBackend{
			addr: net.JoinHostPort(b.url.Hostname(), port), path: b.url.Path, dial: dial, maxIdle: maxIdle,
			codes: codeCounters{vec: m.backendRequests, labels: []string{rp.name, b.name}},
		}
		fr.maxPath = max(fr.maxPath, len(b.url.Path))
	}
	return fr
}

// getIdle returns the most recently used idle connection, or nil.
func (fb *fastBackend) getIdle() *bconn {
	now := time.Now()
	fb.mu.Lock()
	defer fb.mu.Unlock()
	for len(fb.idle) > 0 {
		bc := fb.idle[len(fb.idle)-1]
		fb.idle = fb.idle[:len(fb.idle)-1]
		if now.Sub(bc.at) < backendIdleTimeout {
			bc.reused = true
			return bc
		}
		bc.close()
	}
	return nil
}

func (fb *fastBackend) dialConn(ctx context.Context) (*bconn, error) {
	c, err := fb.dial(ctx, "tcp", fb.addr)
	if err != nil {
		return nil, err
	}
	return &bconn{c: c, br: bufio.NewReaderSize(c, maxRespHead)}, nil
}

// put makes bc idle, or closes it when the pool is full or closed.
func (fb *fastBackend) put(bc *bconn) {
	bc.at = time.Now()
	// Deadlines stay: the next request sets the ones it needs before it
	// reads or writes.
	fb.mu.Lock()
	if fb.closed || len(fb.idle) >= fb.maxIdle {
		fb.mu.Unlock()
		bc.close()
		return
	}
	fb.idle = append(fb.idle, bc)
	fb.mu.Unlock()
}

// closeIdle closes the idle connections; connections put back later are
// closed too.
func (fb *fastBackend) closeIdle() {
	fb.mu.Lock()
	idle := fb.idle
	fb.idle, fb.closed = nil, true
	fb.mu.Unlock()
	for _, bc := range idle {
		bc.close()
	}
}

// codeCounters resolves the children of a counter vector by status code
// once per code, not per request.
type codeCounters struct {
	vec    *prometheus.CounterVec
	labels []string // the labels before "code"
	c      [600]atomic.Pointer[prometheus.Counter]
}

func (cc *codeCounters) inc(code int) {
	if code < 0 || code >= len(cc.c) {
		cc.vec.WithLabelValues(slices.Concat(cc.labels, []string{strconv.Itoa(code)})...).Inc()
		return
	}
	p := cc.c[code].Load()
	if p == nil {
		c := cc.vec.WithLabelValues(slices.Concat(cc.labels, []string{strconv.Itoa(code)})...)
		p = &c
		cc.c[code].Store(p)
	}
	(*p).Inc()
}

// respHead is a backend's response head.
type respHead struct {
	http10       bool
	code         int
	cl           int64
	hasCL        bool
	chunked      bool
	conn         h1.ConnTokens
	hasDate      bool
	hasCT, hasCE bool // Content-Type; a non-empty Content-Encoding
	fields       []h1.Field
}

// maxRespHead bounds a backend response head, the size of a backend
// connection's buffer (http.Transport's MaxResponseHeaderBytes is 1 MiB;
// the fast path answers 502 to a head over 16 KiB).
const maxRespHead = 16 << 10

// readRespHead reads and parses a response head from br without
// consuming it on error (a deadline can interrupt it and it goes on).
func readRespHead(br *bufio.Reader, h *respHead) (int, error) {
	for {
		b, _ := br.Peek(br.Buffered())
		n, v := parseRespHead(b, h)
		switch v {
		case h1.OK:
			return n, nil
		case h1.NotFast:
			return 0, errBadResponse
		}
		if br.Buffered() >= maxRespHead {
			return 0, errResponseHeadTooLarge
		}
		if _, err := br.Peek(br.Buffered() + 1); err != nil {
			return 0, err
		}
	}
}

func parseRespHead(b []byte, h *respHead) (int, h1.Verdict) {
	*h = respHead{fields: h.fields[:0], conn: h1.ConnTokens{Names: h.conn.Names[:0]}}
	line, fields, n, v := h1.SplitHead(b, h.fields, 200)
	h.fields = fields
	if v != h1.OK {
		return 0, v
	}
	// "HTTP/1.x NNN[ reason]"
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || (line[7] != '0' && line[7] != '1') ||
		line[8] != ' ' || (len(line) > 12 && line[12] != ' ') {
		return 0, h1.NotFast
	}
	h.http10 = line[7] == '0'
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return 0, h1.NotFast
		}
		h.code = h.code*10 + int(c-'0')
	}
	if h.code < 100 {
		return 0, h1.NotFast
	}
	nCL := 0
	for i := range h.fields {
		f := &h.fields[i]
		switch {
		case h1.EqualFold(f.Name, "content-length"):
			n, ok := h1.ParseContentLength(f.Value)
			if !ok || (nCL > 0 && int64(n) != h.cl) {
				return 0, h1.NotFast
			}
			nCL++
			h.cl, h.hasCL = int64(n), true
			f.Kind = h1.Hop
		case h1.EqualFold(f.Name, "transfer-encoding"):
			if h.chunked || !h1.EqualFold(f.Value, "chunked") {
				return 0, h1.NotFast // only chunked, once, as http.Transport reads it
			}
			h.chunked = true
			f.Kind = h1.Hop
		case h1.EqualFold(f.Name, "connection"):
			h.conn.Add(f.Value)
			f.Kind = h1.Hop
		case h1.IsHopHeader(f.Name), h1.EqualFold(f.Name, "te"), h1.EqualFold(f.Name, "upgrade"):
			f.Kind = h1.Hop
		case h1.EqualFold(f.Name, "trailer"):
			f.Kind = h1.Trailer
		case h1.EqualFold(f.Name, "date"):
			h.hasDate = true
		case h1.EqualFold(f.Name, "content-type"):
			h.hasCT = true
		case h1.EqualFold(f.Name, "content-encoding"):
			h.hasCE = h.hasCE || len(f.Value) > 0
		}
	}
	if h.chunked {
		h.hasCL, h.cl = false, 0 // Transfer-Encoding wins (RFC 9112 §6.3)
	}
	h1.MarkConnNames(h.fields, h.conn.Names)
	return n, h1.OK
}

// chunkSizeLine parses "hex[;ext]\r\n" as net/http does.
func chunkSizeLine(line []byte) (uint64, bool) {
	return h1.ParseChunkSize(bytes.TrimSuffix(line, []byte{'\n'}))
}
