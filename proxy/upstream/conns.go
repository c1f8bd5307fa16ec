package upstream

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

// Conns is the synchronous client of one plain http:// backend: an idle
// pool of HTTP/1.1 connections, each used by one request at a time in the
// goroutine of the request (the HTTP/1.1 fast path's client connection,
// an HTTP/2 stream's handler).
type Conns struct {
	// Path is the backend URL's path, joined in front of the request's
	// (AppendOutPath).
	Path string

	addr    string
	dial    DialFunc
	maxIdle int

	mu     sync.Mutex
	idle   []*Conn // most recently used last
	closed bool
}

// DialFunc dials a backend (net.Dialer.DialContext's signature).
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// NewConns returns the connection pool of the backend at addr (host:port)
// whose URL path is path, keeping up to maxIdle idle connections.
func NewConns(addr, path string, dial DialFunc, maxIdle int) *Conns {
	return &Conns{Path: path, addr: addr, dial: dial, maxIdle: maxIdle}
}

// backendIdleTimeout is how long an idle backend connection is kept
// (http.Transport's IdleConnTimeout in the slow path).
const backendIdleTimeout = 90 * time.Second

// Conn is one backend connection. Its reads go through R (the response
// head is parsed in R's buffer), its writes to C.
type Conn struct {
	C net.Conn
	R *bufio.Reader

	at     time.Time // when it went idle
	reused bool
}

// Close closes the connection.
func (bc *Conn) Close() { bc.C.Close() }

// Idle returns the most recently used idle connection, or nil.
func (fb *Conns) Idle() *Conn {
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
		bc.Close()
	}
	return nil
}

// Dial dials a new connection.
func (fb *Conns) Dial(ctx context.Context) (*Conn, error) {
	c, err := fb.dial(ctx, "tcp", fb.addr)
	if err != nil {
		return nil, err
	}
	return &Conn{C: c, R: bufio.NewReaderSize(c, maxRespHead)}, nil
}

// Put makes bc idle, or closes it when the pool is full or closed. Only
// a connection whose response was read to its end, with nothing more
// buffered, goes back.
func (fb *Conns) Put(bc *Conn) {
	bc.at = time.Now()
	// Deadlines stay: the next request sets the ones it needs before it
	// reads or writes.
	fb.mu.Lock()
	if fb.closed || len(fb.idle) >= fb.maxIdle {
		fb.mu.Unlock()
		bc.Close()
		return
	}
	fb.idle = append(fb.idle, bc)
	fb.mu.Unlock()
}

// NumIdle is the number of idle connections.
func (fb *Conns) NumIdle() int {
	fb.mu.Lock()
	defer fb.mu.Unlock()
	return len(fb.idle)
}

// CloseIdle closes the idle connections; connections put back later are
// closed too.
func (fb *Conns) CloseIdle() {
	fb.mu.Lock()
	idle := fb.idle
	fb.idle, fb.closed = nil, true
	fb.mu.Unlock()
	for _, bc := range idle {
		bc.Close()
	}
}

// CodeCounters resolves the children of a counter vector by status code
// once per code, not per request.
type CodeCounters struct {
	vec    *prometheus.CounterVec
	labels []string // the labels before "code"
	c      [600]atomic.Pointer[prometheus.Counter]
}

// NewCodeCounters counts in vec, whose last label is the status code,
// with the labels before it.
func NewCodeCounters(vec *prometheus.CounterVec, labels ...string) *CodeCounters {
	return &CodeCounters{vec: vec, labels: labels}
}

// Inc counts one answer with code.
func (cc *CodeCounters) Inc(code int) {
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

// Body framings of a response, as read from a backend and as written
// to a client.
const (
	BodyNone = iota
	BodyLength
	BodyChunked
	BodyClose // until the connection closes
)

// RespHead is a backend's response head, as ReadRespHead parses it: a
// strict subset of what http.ReadResponse accepts (anything else is
// ErrBadResponse). Its slices point into the connection's buffer and are
// valid until the head is discarded from it.
type RespHead struct {
	HTTP10       bool
	Code         int
	CL           int64 // Content-Length, when HasCL
	HasCL        bool
	Chunked      bool // Transfer-Encoding: chunked (then no HasCL)
	Conn         h1.ConnTokens
	HasDate      bool
	HasCT, HasCE bool // Content-Type; a non-empty Content-Encoding
	// Fields are the header lines; framing, Connection and hop-by-hop
	// ones are h1.Hop, Trailer h1.Trailer.
	Fields []h1.Field
}

// maxRespHead bounds a backend response head, the size of a backend
// connection's buffer (http.Transport's MaxResponseHeaderBytes is 1 MiB;
// the fast path answers 502 to a head over 16 KiB).
const maxRespHead = 16 << 10

// ReadRespHead reads and parses a response head from br without
// consuming it on error (a deadline can interrupt it and it goes on).
func ReadRespHead(br *bufio.Reader, h *RespHead) (int, error) {
	for {
		b, _ := br.Peek(br.Buffered())
		n, v := parseRespHead(b, h)
		switch v {
		case h1.OK:
			return n, nil
		case h1.NotFast:
			return 0, ErrBadResponse
		}
		if br.Buffered() >= maxRespHead {
			return 0, ErrResponseHeadTooLarge
		}
		if _, err := br.Peek(br.Buffered() + 1); err != nil {
			return 0, err
		}
	}
}

func parseRespHead(b []byte, h *RespHead) (int, h1.Verdict) {
	*h = RespHead{Fields: h.Fields[:0], Conn: h1.ConnTokens{Names: h.Conn.Names[:0]}}
	line, fields, n, v := h1.SplitHead(b, h.Fields, 200)
	h.Fields = fields
	if v != h1.OK {
		return 0, v
	}
	// "HTTP/1.x NNN[ reason]"
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || (line[7] != '0' && line[7] != '1') ||
		line[8] != ' ' || (len(line) > 12 && line[12] != ' ') {
		return 0, h1.NotFast
	}
	h.HTTP10 = line[7] == '0'
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return 0, h1.NotFast
		}
		h.Code = h.Code*10 + int(c-'0')
	}
	if h.Code < 100 {
		return 0, h1.NotFast
	}
	nCL := 0
	for i := range h.Fields {
		f := &h.Fields[i]
		switch {
		case h1.EqualFold(f.Name, "content-length"):
			n, ok := h1.ParseContentLength(f.Value)
			if !ok || (nCL > 0 && int64(n) != h.CL) {
				return 0, h1.NotFast
			}
			nCL++
			h.CL, h.HasCL = int64(n), true
			f.Kind = h1.Hop
		case h1.EqualFold(f.Name, "transfer-encoding"):
			if h.Chunked || !h1.EqualFold(f.Value, "chunked") {
				return 0, h1.NotFast // only chunked, once, as http.Transport reads it
			}
			h.Chunked = true
			f.Kind = h1.Hop
		case h1.EqualFold(f.Name, "connection"):
			h.Conn.Add(f.Value)
			f.Kind = h1.Hop
		case h1.IsHopHeader(f.Name), h1.EqualFold(f.Name, "te"), h1.EqualFold(f.Name, "upgrade"):
			f.Kind = h1.Hop
		case h1.EqualFold(f.Name, "trailer"):
			f.Kind = h1.Trailer
		case h1.EqualFold(f.Name, "date"):
			h.HasDate = true
		case h1.EqualFold(f.Name, "content-type"):
			h.HasCT = true
		case h1.EqualFold(f.Name, "content-encoding"):
			h.HasCE = h.HasCE || len(f.Value) > 0
		}
	}
	if h.Chunked {
		h.HasCL, h.CL = false, 0 // Transfer-Encoding wins (RFC 9112 §6.3)
	}
	h1.MarkConnNames(h.Fields, h.Conn.Names)
	return n, h1.OK
}

// ChunkSizeLine parses "hex[;ext]\r\n" as net/http does.
func ChunkSizeLine(line []byte) (uint64, bool) {
	return h1.ParseChunkSize(bytes.TrimSuffix(line, []byte{'\n'}))
}
