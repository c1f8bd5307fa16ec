package proxy

import (
	"bufio"
	"crypto/tls"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgeshim/edgeshim/limits"
	"github.com/edgeshim/edgeshim/limits/park"
	"github.com/edgeshim/edgeshim/proxy/internal/h1"
	"github.com/edgeshim/edgeshim/proxy/upstream"
)

// The HTTP/1.1 fast path.
//
// After the TLS handshake of a connection that did not negotiate h2, the
// handshake goroutine serves the connection's requests itself while each
// is "fast": its head passes parseHead (a strict subset of HTTP/1.1), it
// routes to a proxy route whose backends are all plain http:// (no
// decompression), its body has a Content-Length within the limits, and
// the server is not shedding load. It proxies such a request
// synchronously in the same goroutine: a backend connection from the
// backend's idle pool (or dialed), the rewritten head (and body) written,
// the response head read and its body relayed with its framing checked,
// then the backend connection goes back to the pool. No http.Request, no
// Transport, no goroutine per request: only when the backend has not
// answered within watchAfter does a goroutine read the client connection
// to notice that the client went away (as net/http's background read
// does), and it is stopped before the response is written.
//
// The first request that is not fast hands the connection, with the
// bytes already read replayed first, to net/http (a scanConn, as before),
// which serves it and the rest of the connection. The switch happens
// before anything of that request was written anywhere, so such requests
// are served exactly as before: every refusal (CL+TE, bad bytes, 431, 413,
// 501, upgrades, ...) is net/http's and framingGuard's.
type fastServer struct {
	s          *Server
	readHeader time.Duration
	read       time.Duration
	write      time.Duration
	idle       time.Duration
	maxHeaders int
	// maxHeadBytes: a longer head is not fast (net/http's path answers
	// its 431 through limits.HeaderSize).
	maxHeadBytes int
	heap         *limits.HeapWatermark
	bufs         *bufferPool

	altSvcOnce sync.Once
	altSvc     []byte // "Alt-Svc: ...\r\n" when HTTP/3 is on

	readers sync.Pool // *bufio.Reader of connections
	date    atomic.Pointer[dateCache]

	polls *fastPolls // the bridges' long-polls (fastpoll.go); nil: none
	// parker holds idle keep-alive connections (fastidle.go) and held
	// polls (fastpoll.go).
	parker     *park.Parker
	idleParked atomic.Int64 // times an idle connection was parked (tests)

	// served and fellBack count fast requests and fallbacks (tests).
	served   atomic.Int64
	fellBack atomic.Int64
}

// watchAfter is how long a backend may take to answer before the client
// connection is watched for its going away.
const watchAfter = 10 * time.Millisecond

var aLongTimeAgo = time.Unix(1, 0)

// fastConn is one client connection on the fast path.
type fastConn struct {
	fs   *fastServer
	l    *tlsListener
	tc   *tls.Conn
	br   *bufio.Reader
	peer netip.Addr
	// Scratch, kept across requests: the method, the target, the request
	// line, the client's X-Forwarded-For and Forwarded lines.
	method, target, line []byte
	xff, fwd             [][]byte
	h                    fastHead
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

	poll atomic.Pointer[fastPoll] // parked long-poll, for abort

	parkedIdle atomic.Pointer[fastIdle] // parked between requests, for shutdown and abort
	kept       bool                     // a request was read: the next waits as keep-alive
	idleEnd    time.Time                // the idle timeout of the wait for the next request

	// The deadlines set on tc, so that setting them again can be skipped.
	rdl, wdl time.Time
}

// readDeadline sets tc's read deadline unless the one set is within
// slack of t.
func (fc *fastConn) readDeadline(t time.Time, slack time.Duration) {
	if d := t.Sub(fc.rdl); d > slack || d < -slack || t.IsZero() != fc.rdl.IsZero() {
		fc.rdl = t
		fc.tc.SetReadDeadline(t)
	}
}

// writeDeadline sets tc's write deadline unless the one set is within
// slack of t.
func (fc *fastConn) writeDeadline(t time.Time, slack time.Duration) {
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

func (fc *fastConn) Read(p []byte) (int, error) {
	if fc.stashed && len(p) > 0 {
		p[0], fc.stashed = fc.stash[0], false
		return 1, nil
	}
	return fc.tc.Read(p)
}

// shutdown closes the connection if it is idle; a busy one closes after
// its request (it sees the listener draining).
func (fc *fastConn) shutdown() {
	if fc.state.CompareAndSwap(connIdle, connClosing) {
		fc.tc.NetConn().Close()
		fc.closeIdle()
	}
}

// abort closes the connection and its backend connection at once.
func (fc *fastConn) abort() {
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

func (fc *fastConn) isAborted() bool {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return fc.aborted
}

func (fc *fastConn) setBackend(bc *upstream.Conn) bool {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if fc.aborted {
		return false
	}
	fc.bc = bc
	return true
}

// serve serves tc on the fast path. It returns the connection to hand to
// net/http, or nil when it has ended (and is closed).
func (fs *fastServer) serve(l *tlsListener, tc *tls.Conn) net.Conn {
	if limits.Overflowed(tc) {
		return newScanConn(tc) // answered 503 by net/http (OverflowGuard)
	}
	fc := &fastConn{fs: fs, l: l, tc: tc}
	switch a := tc.RemoteAddr().(type) {
	case *net.TCPAddr:
		fc.peer = a.AddrPort().Addr().Unmap()
	default:
		fc.peer = peerAddr(a.String())
	}
	if !l.trackFast(fc) {
		tc.Close()
		return nil
	}
	fc.takeReader()
	handoff, parked := fc.loop(l)
	if parked {
		return nil // a parked long-poll's (fastpoll.go)
	}
	return fs.end(l, fc, handoff)
}

// end ends fc's turn on the fast path: closed, or handed to net/http
// (returned) with the bytes read and not served.
func (fs *fastServer) end(l *tlsListener, fc *fastConn, handoff bool) net.Conn {
	tc := fc.tc
	l.untrackFast(fc)
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
		return nil
	}
	tc.SetDeadline(time.Time{})
	sc := newScanConn(tc)
	sc.pre = pre
	return sc
}

// loop serves requests until the connection ends (false) or a request is
// not fast (true: hand it over), or a long-poll or the wait for the next
// request parked it (parked: fc is no longer the caller's).
func (fc *fastConn) loop(l *tlsListener) (handoff, parked bool) {
	fs := fc.fs
	for first := !fc.kept; ; first = false {
		if fc.br.Buffered() == 0 && !fc.stashed {
			if !first {
				switch fc.awaitNext() { // fastidle.go
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
		fr := fs.match(fc)
		if fr == nil {
			switch fc.servePoll(n, t0) { // a bridge's long-poll (fastpoll.go)
			case pollHandoff:
				return true, false
			case pollEnded:
				return false, false
			case pollParked:
				return false, true
			}
			fc.state.Store(connIdle)
			if l.draining.Load() {
				return false, false
			}
			continue
		}
		if fc.h.contentLength > fr.rp.bodyLimit() || fs.heap.Over() {
			return true, false
		}
		fs.served.Add(1)
		if !fc.proxy(fr, n, t0) {
			return false, false
		}
		fc.state.Store(connIdle)
		if l.draining.Load() {
			return false, false
		}
	}
}

// readHead reads until a whole head is buffered. h1.NeedMore: the
// connection failed; h1.NotFast: the head is not fast (or larger than
// the buffer), hand it to net/http.
func (fc *fastConn) readHead(t0 time.Time) (int, h1.Verdict) {
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

// match routes the head as router.match does (routeFor); nil unless the
// route is fast.
func (fs *fastServer) match(fc *fastConn) *fastRoute {
	if r := fs.matchRoute(fc); r != nil {
		return r.fast
	}
	return nil
}

// altSvcLine is the Alt-Svc header line of TCP responses when HTTP/3 is
// on (altSvc's), made once: the port is known after Start.
func (fs *fastServer) altSvcLine() []byte {
	fs.altSvcOnce.Do(func() {
		if fs.s.h3 == nil {
			return
		}
		h := http.Header{}
		_ = fs.s.h3.SetQUICHeaders(h)
		for _, v := range h.Values("Alt-Svc") {
			fs.altSvc = append(fs.altSvc, "Alt-Svc: "+v+"\r\n"...)
		}
	})
	return fs.altSvc
}
