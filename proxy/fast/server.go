package fast

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"net/http/httputil"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgeshim/edgeshim/bridge/longpoll"
	"github.com/edgeshim/edgeshim/limits"
	"github.com/edgeshim/edgeshim/limits/accesslog"
	"github.com/edgeshim/edgeshim/limits/park"
	"github.com/edgeshim/edgeshim/proxy/internal/h1"
	"github.com/edgeshim/edgeshim/proxy/upstream"
	"github.com/prometheus/client_golang/prometheus"
)

// Config is what the fast path takes from the rest of the proxy, once,
// at construction: the route table (Routes), the server's base context,
// access log, Alt-Svc and heap watermark, the limits, and where the
// metrics of the bridges' polls go. The listener whose connections it
// serves comes with each connection (Serve).
type Config struct {
	// Routes routes a request. Required.
	Routes Router
	// Base is the parent of the backend dials' contexts: cancelled when
	// the server closes. Required.
	Base context.Context
	// AccessLog writes the access log; nil: none.
	AccessLog *accesslog.Logger
	// AltSvc returns the Alt-Svc header lines ("Alt-Svc: ...\r\n") of
	// TCP responses, or nil when HTTP/3 is off. Called once, at the
	// first response (the port is known after the server started); nil:
	// none.
	AltSvc func() []byte
	// Heap is the heap watermark: over it, requests go to net/http (which
	// sheds them). Required.
	Heap *limits.HeapWatermark
	// Buffers recycle the request and response copy buffers. Required.
	Buffers httputil.BufferPool
	// The limits' timeouts (0: none) and header limits: a head with more
	// than MaxHeaders lines or over MaxHeadBytes is not fast (net/http
	// answers it 431).
	ReadHeader, Read, Write, Idle time.Duration
	MaxHeaders, MaxHeadBytes      int
	// Polls: some routes are bridges' long-poll routes (Target.Poll);
	// their counters are registered with Registerer.
	Polls      bool
	Registerer prometheus.Registerer
}

// Router routes requests for the fast path.
type Router interface {
	// Match returns the target of a request to host (h1.HostForMatch's
	// form) and path (the request target's path, not yet checked for
	// dot-segments: a path that is not clean has no target here, so that
	// net/http normalises or refuses it). The zero Target: net/http serves
	// it.
	Match(host, path []byte) Target
}

// Target is where a request goes: a proxy route the fast path serves, a
// bridge's long-poll route, or (neither) net/http.
type Target struct {
	Proxy *Route
	Poll  *PollRoute
}

// Route is a proxy route whose backends are all plain http://, with no
// decompression: the fast path serves its requests.
type Route struct {
	Name    string
	Up      *upstream.Route
	Trusted upstream.TrustList
	Strip   string // the route's path when strip_prefix, else ""
	// MaxPath is the longest backend URL path (the request line grows by
	// it).
	MaxPath int
	// RequestTimeout and HeaderTimeout are timeouts.request and
	// timeouts.response_header (0: none).
	RequestTimeout, HeaderTimeout time.Duration
	NoLog                         bool // access_log: false
	// Requests and Duration are edgeshim_http_requests_total{route,code}
	// and edgeshim_http_request_duration_seconds{route}.
	Requests *upstream.CodeCounters
	Duration interface{ Observe(float64) }
	// Policy is what the route decides that the fast path does not.
	Policy RoutePolicy
}

// RoutePolicy is the part of a route's policy that lives with the route
// (package proxy): its live body limit, how failures are answered and
// logged, and the Retry-After it gives.
type RoutePolicy interface {
	// BodyLimit is the largest request body (max_body, live).
	BodyLimit() int64
	// Answer is how a failed exchange is answered, with its log line.
	Answer(err error) (code int, msg string, retryAfter bool)
	// Answered records that b answered.
	Answered(b *upstream.Backend)
	// RetryAfter is a Retry-After in seconds.
	RetryAfter() int
}

// PollRoute is a bridge route whose handler serves long-polls on the fast
// path.
type PollRoute struct {
	Name, Bridge, Broker string
	NoLog                bool
	Handler              longpoll.Handler
	// Requests and Duration are the route's
	// edgeshim_http_requests_total{route,code} and
	// edgeshim_http_request_duration_seconds{route}.
	Requests *upstream.CodeCounters
	Duration interface{ Observe(float64) }
}

// Listener is what the fast path needs of the listener that owns a
// connection: tracking (for its shutdown and abort), whether it drains,
// a count for each connection parked without a goroutine (its wait waits
// for them), and the handoff of a connection to net/http.
type Listener interface {
	// Track adds c unless the listener is closed.
	Track(c *Conn) bool
	Untrack(c *Conn)
	// Draining: connections end after their request.
	Draining() bool
	// Hold counts a parked connection until Release.
	Hold()
	Release()
	// HandOff gives tc to net/http, pre (bytes read and not served)
	// replayed first; from any goroutine.
	HandOff(tc *tls.Conn, pre []byte)
}

// Stats are the fast path's counts, for tests.
type Stats struct {
	Served, FellBack int64 // requests served; connections handed to net/http
	IdleParked       int64 // times an idle keep-alive connection was parked
	Polls            int64 // bridge polls served
	PollsParked      int64 // times a held poll was parked
}

// Server is the HTTP/1.1 fast path of one proxy server (see the package
// doc).
type Server struct {
	routes     Router
	base       context.Context
	alog       *accesslog.Logger
	altSvcFn   func() []byte
	readHeader time.Duration
	read       time.Duration
	write      time.Duration
	idle       time.Duration
	maxHeaders int
	// maxHeadBytes: a longer head is not fast (net/http's path answers
	// its 431 through limits.HeaderSize).
	maxHeadBytes int
	heap         *limits.HeapWatermark
	bufs         httputil.BufferPool

	altSvcOnce sync.Once
	altSvc     []byte // "Alt-Svc: ...\r\n" when HTTP/3 is on

	readers sync.Pool // *bufio.Reader of connections
	date    atomic.Pointer[dateCache]

	polls *pollStats // the bridges' long-polls (poll.go); nil: none
	// parker holds idle keep-alive connections (idle.go) and held
	// polls (poll.go).
	parker     *park.Parker
	idleParked atomic.Int64 // times an idle connection was parked (tests)

	// served and fellBack count fast requests and fallbacks (tests).
	served   atomic.Int64
	fellBack atomic.Int64
}

// New returns a fast path server; Close releases it.
func New(c Config) *Server {
	return &Server{
		routes: c.Routes, base: c.Base, alog: c.AccessLog, altSvcFn: c.AltSvc,
		readHeader: c.ReadHeader, read: c.Read, write: c.Write, idle: c.Idle,
		maxHeaders: c.MaxHeaders, maxHeadBytes: c.MaxHeadBytes, heap: c.Heap, bufs: c.Buffers,
		parker: park.New(), polls: newPollStats(c.Polls, c.Registerer),
	}
}

// Close closes the parker: connections parked in it end (the listener's
// abort closes them first).
func (fs *Server) Close() { fs.parker.Close() }

// Stats returns the fast path's counts.
func (fs *Server) Stats() Stats {
	st := Stats{Served: fs.served.Load(), FellBack: fs.fellBack.Load(), IdleParked: fs.idleParked.Load()}
	if fs.polls != nil {
		st.Polls, st.PollsParked = fs.polls.n.Load(), fs.polls.nParked.Load()
	}
	return st
}

// watchAfter is how long a backend may take to answer before the client
// connection is watched for its going away.
const watchAfter = 10 * time.Millisecond

var aLongTimeAgo = time.Unix(1, 0)

// Conn is one client connection on the fast path.
type Conn struct {
	fs   *Server
	l    Listener
	tc   *tls.Conn
	br   *bufio.Reader
	peer netip.Addr
	// Scratch, kept across requests: the method, the target, the request
	// line, the client's X-Forwarded-For and Forwarded lines.
	method, target, line []byte
	xff, fwd             [][]byte
	h                    reqHead
	rh                   upstream.RespHead
	host                 []byte // scratch: the Host to match

	// state: connIdle (between requests), connActive, connClosing.
	state atomic.Int32

	// A byte read by the watcher, handed out first by Read.
	stash   [1]byte
	stashed bool
	gone    atomic.Bool // the watcher saw the client go

	mu      sync.Mutex
	bc      *upstream.Conn // in use, closed by abort
	aborted bool

	poll atomic.Pointer[heldPoll] // parked long-poll, for abort

	parkedIdle atomic.Pointer[idlePark] // parked between requests, for shutdown and abort
	kept       bool                     // a request was read: the next waits as keep-alive
	idleEnd    time.Time                // the idle timeout of the wait for the next request

	// The deadlines set on tc, so that setting them again can be skipped.
	rdl, wdl time.Time
}

// readDeadline sets tc's read deadline unless the one set is within
// slack of t.
func (fc *Conn) readDeadline(t time.Time, slack time.Duration) {
	if d := t.Sub(fc.rdl); d > slack || d < -slack || t.IsZero() != fc.rdl.IsZero() {
		fc.rdl = t
		fc.tc.SetReadDeadline(t)
	}
}

// writeDeadline sets tc's write deadline unless the one set is within
// slack of t.
func (fc *Conn) writeDeadline(t time.Time, slack time.Duration) {
	if d := t.Sub(fc.wdl); d > slack || d < -slack || t.IsZero() != fc.wdl.IsZero() {
		fc.wdl = t
		fc.tc.SetWriteDeadline(t)
	}
}

const (
	connIdle int32 = iota
	connActive
	connClosing
)

func (fc *Conn) Read(p []byte) (int, error) {
	if fc.stashed && len(p) > 0 {
		p[0], fc.stashed = fc.stash[0], false
		return 1, nil
	}
	return fc.tc.Read(p)
}

// Shutdown closes the connection if it is idle; a busy one closes after
// its request (it sees the listener draining).
func (fc *Conn) Shutdown() {
	if fc.state.CompareAndSwap(connIdle, connClosing) {
		fc.tc.NetConn().Close()
		fc.closeIdle()
	}
}

// Abort closes the connection and its backend connection at once.
func (fc *Conn) Abort() {
	fc.tc.NetConn().Close() // first: nothing more reaches the client
	fc.abortPoll()
	fc.closeIdle()
	fc.mu.Lock()
	fc.aborted = true
	if fc.bc != nil {
		fc.bc.Close()
	}
	fc.mu.Unlock()
}

func (fc *Conn) isAborted() bool {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return fc.aborted
}

func (fc *Conn) setBackend(bc *upstream.Conn) bool {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if fc.aborted {
		return false
	}
	fc.bc = bc
	return true
}

// Serve serves tc, a connection of l whose TLS handshake is done and did
// not negotiate h2, on the fast path, until it ends, is parked, or is
// handed to net/http (l.HandOff).
func (fs *Server) Serve(l Listener, tc *tls.Conn) {
	if limits.Overflowed(tc) {
		l.HandOff(tc, nil) // answered 503 by net/http (OverflowGuard)
		return
	}
	fc := &Conn{fs: fs, l: l, tc: tc}
	switch a := tc.RemoteAddr().(type) {
	case *net.TCPAddr:
		fc.peer = a.AddrPort().Addr().Unmap()
	default:
		fc.peer = upstream.PeerAddr(a.String())
	}
	if !l.Track(fc) {
		tc.Close()
		return
	}
	fc.takeReader()
	handoff, parked := fc.loop(l)
	if parked {
		return // a parked long-poll's (poll.go)
	}
	fs.end(l, fc, handoff)
}

// end ends fc's turn on the fast path: closed, or handed to net/http
// with the bytes read and not served.
func (fs *Server) end(l Listener, fc *Conn, handoff bool) {
	tc := fc.tc
	l.Untrack(fc)
	var pre []byte
	if handoff {
		fs.fellBack.Add(1)
		if n := fc.br.Buffered(); n > 0 {
			b, _ := fc.br.Peek(n)
			pre = append([]byte(nil), b...)
		}
	}
	fc.br.Reset(nil)
	fs.readers.Put(fc.br)
	if !handoff {
		tc.Close()
		return
	}
	tc.SetDeadline(time.Time{})
	l.HandOff(tc, pre)
}

// loop serves requests until the connection ends (false) or a request is
// not fast (true: hand it over), or a long-poll or the wait for the next
// request parked it (parked: fc is no longer the caller's).
func (fc *Conn) loop(l Listener) (handoff, parked bool) {
	fs := fc.fs
	for first := !fc.kept; ; first = false {
		if fc.br.Buffered() == 0 && !fc.stashed {
			if !first {
				switch fc.awaitNext() { // idle.go
				case idleEnded:
					return false, false
				case idleParked:
					return false, true
				}
			} else {
				if fs.readHeader > 0 {
					fc.readDeadline(time.Now().Add(fs.readHeader), time.Second)
				}
				if _, err := fc.br.Peek(1); err != nil {
					return false, false
				}
			}
		}
		if !fc.state.CompareAndSwap(connIdle, connActive) {
			return false, false // closed by shutdown
		}
		fc.kept = true
		t0 := time.Now()
		n, v := fc.readHead(t0)
		switch v {
		case h1.NotFast:
			return true, false
		case h1.NeedMore: // the connection failed or timed out mid-head
			return false, false
		}
		t := fs.match(fc)
		fr := t.Proxy
		if fr == nil {
			switch fc.servePoll(t.Poll, n, t0) { // a bridge's long-poll (poll.go)
			case pollHandoff:
				return true, false
			case pollEnded:
				return false, false
			case pollParked:
				return false, true
			}
			fc.state.Store(connIdle)
			if l.Draining() {
				return false, false
			}
			continue
		}
		if fc.h.contentLength > fr.Policy.BodyLimit() || fs.heap.Over() {
			return true, false
		}
		fs.served.Add(1)
		if !fc.proxy(fr, n, t0) {
			return false, false
		}
		fc.state.Store(connIdle)
		if l.Draining() {
			return false, false
		}
	}
}

// readHead reads until a whole head is buffered. h1.NeedMore: the
// connection failed; h1.NotFast: the head is not fast (or larger than
// the buffer), hand it to net/http.
func (fc *Conn) readHead(t0 time.Time) (int, h1.Verdict) {
	for waited := false; ; waited = true {
		b, _ := fc.br.Peek(fc.br.Buffered())
		n, v := parseHead(b, &fc.h, fc.fs.maxHeaders)
		if v == h1.OK && n > fc.fs.maxHeadBytes {
			return 0, h1.NotFast
		}
		if v != h1.NeedMore {
			return n, v
		}
		if fc.br.Buffered() == fc.br.Size() {
			return 0, h1.NotFast
		}
		if !waited && fc.fs.readHeader > 0 {
			// The head is not all here: it has read_header from its
			// first byte.
			fc.readDeadline(t0.Add(fc.fs.readHeader), 0)
		}
		if _, err := fc.br.Peek(fc.br.Buffered() + 1); err != nil {
			return 0, h1.NeedMore
		}
	}
}

// altSvcLine is the Alt-Svc header line of TCP responses when HTTP/3 is
// on (altSvc's), made once: the port is known after Start.
func (fs *Server) altSvcLine() []byte {
	fs.altSvcOnce.Do(func() {
		if fs.altSvcFn != nil {
			fs.altSvc = fs.altSvcFn()
		}
	})
	return fs.altSvc
}
