package proxy

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgeshim/edgeshim/limits"
	"github.com/edgeshim/edgeshim/proxy/fast"
	"github.com/edgeshim/edgeshim/proxy/internal/h1"
	"github.com/edgeshim/edgeshim/tlsterm"
)

// tlsListener terminates TLS itself so that edgeshim sees the plaintext
// of HTTP/1 connections (net/http hides request framing details from
// handlers; see h1.Scanner). It accepts from the limiting listener, does
// each handshake in a goroutine of its own, bounded by the handshake
// timeout, then:
//   - ALPN "h2": serves the connection with serveH2 in that goroutine;
//   - otherwise: hands a scanConn to http.Server through Accept.
//
// It owns the accept loop, the handshake goroutines and the HTTP/2
// connections: Close stops accepting and closes connections still in
// their handshake; closeConns closes the HTTP/2 ones; wait waits for all
// of its goroutines.
type tlsListener struct {
	inner   net.Listener
	conf    *tls.Config
	timeout time.Duration
	failed  func(reason string) // a handshake failed; may be nil
	failLog *limits.RefusalLog
	log     *slog.Logger
	base    context.Context
	serveH2 func(*tls.Conn)
	fastSrv *fast.Server // nil: HTTP/1 goes to net/http at once

	ready chan net.Conn
	work  chan *tls.Conn // to an idle worker
	done  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup

	mu     sync.Mutex
	closed bool
	shake  map[*tls.Conn]struct{}  // in their handshake
	h2     map[*tls.Conn]struct{}  // served by serveH2
	fast   map[*fast.Conn]struct{} // served by the HTTP/1 fast path
	// draining is set by Close: fast connections end after their
	// request.
	draining atomic.Bool
}

type tlsListenerOptions struct {
	Config           *tls.Config
	HandshakeTimeout time.Duration
	HandshakeFailed  func(reason string)
	// FailLog writes failed handshakes, rate-limited. Optional.
	FailLog *limits.RefusalLog
	Logger  *slog.Logger
	// Base is the handshakes' context: cancelling it aborts them.
	Base context.Context
	// ServeH2 serves an HTTP/2 connection and returns when it has ended.
	ServeH2 func(*tls.Conn)
	// Fast serves HTTP/1 connections until a request is not fast; nil:
	// net/http serves them all.
	Fast *fast.Server
}

func newTLSListener(inner net.Listener, o tlsListenerOptions) *tlsListener {
	l := &tlsListener{
		inner: inner, conf: noteHello(o.Config), timeout: o.HandshakeTimeout, failed: o.HandshakeFailed,
		failLog: o.FailLog, log: o.Logger, base: o.Base, serveH2: o.ServeH2, fastSrv: o.Fast,
		ready: make(chan net.Conn), work: make(chan *tls.Conn), done: make(chan struct{}),
		shake: map[*tls.Conn]struct{}{}, h2: map[*tls.Conn]struct{}{}, fast: map[*fast.Conn]struct{}{},
	}
	l.wg.Add(1)
	go l.acceptLoop()
	return l
}

// Accept returns the next HTTP/1 connection, its handshake done.
func (l *tlsListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *tlsListener) Addr() net.Addr { return l.inner.Addr() }

// Close stops accepting and closes the connections still in their
// handshake and the idle fast ones; fast ones serving a request close
// after it. HTTP/2 connections go on (they drain on GOAWAY).
func (l *tlsListener) Close() error {
	var err error
	l.once.Do(func() {
		close(l.done)
		err = l.inner.Close()
		l.draining.Store(true)
		l.mu.Lock()
		l.closed = true
		for c := range l.shake {
			c.NetConn().Close() // at once: no close_notify
		}
		for c := range l.fast {
			c.Shutdown()
		}
		l.mu.Unlock()
	})
	return err
}

// closeConns closes the HTTP/2 and fast connections.
func (l *tlsListener) closeConns() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for c := range l.h2 {
		c.NetConn().Close() // at once: no close_notify
	}
	for c := range l.fast {
		c.Abort()
	}
}

var _ fast.Listener = (*tlsListener)(nil)

// Track adds a fast connection unless the listener is closed
// (fast.Listener).
func (l *tlsListener) Track(c *fast.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.fast[c] = struct{}{}
	return true
}

// Untrack removes a fast connection (fast.Listener).
func (l *tlsListener) Untrack(c *fast.Conn) {
	l.mu.Lock()
	delete(l.fast, c)
	l.mu.Unlock()
}

// Draining: Close was called; fast connections end after their request
// (fast.Listener).
func (l *tlsListener) Draining() bool { return l.draining.Load() }

// Hold and Release count a fast connection parked without a goroutine,
// which wait waits for as for the listener's goroutines (fast.Listener).
func (l *tlsListener) Hold()    { l.wg.Add(1) }
func (l *tlsListener) Release() { l.wg.Done() }

// HandOff gives a connection to net/http as a scanConn, pre replayed
// first (fast.Listener).
func (l *tlsListener) HandOff(tc *tls.Conn, pre []byte) {
	sc := newScanConn(tc)
	sc.pre = pre
	l.handOff(sc)
}

// handOff gives a connection to net/http.
func (l *tlsListener) handOff(sc net.Conn) {
	select {
	case l.ready <- sc:
	case <-l.done:
		sc.Close()
	}
}

// wait waits until the HTTP/2 and fast connections have ended or ctx is done, then
// closes what remains and waits for every goroutine of the listener. The
// listener must be closed.
func (l *tlsListener) wait(ctx context.Context) error {
	idle := make(chan struct{})
	go func() {
		l.wg.Wait()
		close(idle)
	}()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		l.closeConns()
		<-idle
		return ctx.Err()
	}
}

func (l *tlsListener) acceptLoop() {
	defer l.wg.Done()
	var backoff time.Duration
	for {
		c, err := l.inner.Accept()
		if err != nil {
			select {
			case <-l.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				l.Close()
				return
			}
			// Out of file descriptors and the like: back off as
			// net/http does, and go on.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.log.Warn("accept failed; retrying", "err", err, "in", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-l.done:
				t.Stop()
				return
			}
			continue
		}
		backoff = 0
		tc := tls.Server(c, l.conf)
		if !l.track(l.shake, tc) {
			tc.Close()
			return
		}
		select {
		case l.work <- tc: // an idle worker takes it
		default:
			l.wg.Add(1)
			go l.worker(tc)
		}
	}
}

// track adds c to set unless the listener is closed.
func (l *tlsListener) track(set map[*tls.Conn]struct{}, c *tls.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	set[c] = struct{}{}
	return true
}

func (l *tlsListener) untrack(set map[*tls.Conn]struct{}, c *tls.Conn) {
	l.mu.Lock()
	delete(set, c)
	l.mu.Unlock()
}

// workerIdle is how long a connection worker waits for the next
// connection before it ends.
const workerIdle = 10 * time.Second

// worker serves connections from their handshake on, one after the
// other: a new connection goes to a worker that is idle, whose stack has
// already grown to what a handshake needs, before a new goroutine is
// started for it.
func (l *tlsListener) worker(tc *tls.Conn) {
	defer l.wg.Done()
	t := time.NewTimer(workerIdle)
	defer t.Stop()
	note := &helloNote{}
	ctx := context.WithValue(l.base, helloNoteKey{}, note)
	for {
		*note = helloNote{}
		l.handshake(ctx, note, tc)
		t.Reset(workerIdle)
		select {
		case tc = <-l.work:
		case <-t.C:
			return
		case <-l.done:
			return
		}
	}
}

func (l *tlsListener) handshake(ctx context.Context, note *helloNote, tc *tls.Conn) {
	// A PROXY header first (counted and logged by limits on refusal):
	// handshake admission and all that follows see the client's address.
	var err error
	if r, ok := tc.NetConn().(interface{ Resolve() error }); ok {
		err = r.Resolve()
	}
	if err == nil {
		err = l.doHandshake(ctx, note, tc)
	}
	l.untrack(l.shake, tc)
	if err != nil {
		tc.Close()
		return
	}
	if tc.ConnectionState().NegotiatedProtocol == "h2" {
		if !l.track(l.h2, tc) {
			tc.Close()
			return
		}
		l.serveH2(tc)
		l.untrack(l.h2, tc)
		tc.Close()
		return
	}
	if l.fastSrv != nil {
		l.fastSrv.Serve(l, tc)
		return
	}
	l.handOff(newScanConn(tc))
}

// doHandshake runs the handshake within the timeout. A failure is
// counted and logged as net/http did, and a client that spoke plain HTTP
// is told so.
func (l *tlsListener) doHandshake(ctx context.Context, note *helloNote, tc *tls.Conn) error {
	if l.timeout > 0 {
		tc.SetDeadline(time.Now().Add(l.timeout))
	}
	err := tc.HandshakeContext(ctx)
	if err == nil {
		if l.timeout > 0 {
			tc.SetDeadline(time.Time{})
		}
		return nil
	}
	if errors.Is(err, limits.ErrProxyProtocol) || errors.Is(err, limits.ErrAdmission) {
		return err // an untrusted peer's PROXY header; admission: counted and logged there
	}
	var re tls.RecordHeaderError
	if errors.As(err, &re) && re.Conn != nil && recordLooksLikeHTTP(re.RecordHeader) {
		io.WriteString(re.Conn, "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
		err = fmt.Errorf("client sent an HTTP request to an HTTPS server: %w", err)
	}
	reason := tlsterm.FailureReason(err, note.hello, note.served)
	if l.failed != nil {
		l.failed(reason)
	}
	l.failLog.Refused(reason, remoteIP(tc), err)
	return err
}

// helloNote is what a handshake's GetConfigForClient saw, for the reason
// of its failure (tlsterm.FailureReason). Each handshake worker has one,
// reached through the handshake's context.
type helloNote struct {
	hello  *tls.ClientHelloInfo
	served *tls.Config
}

type helloNoteKey struct{}

// noteHello returns a copy of conf whose GetConfigForClient also notes
// the ClientHello and the configuration chosen for it.
func noteHello(conf *tls.Config) *tls.Config {
	if conf == nil {
		return nil
	}
	c := conf.Clone()
	get := c.GetConfigForClient
	c.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		var got *tls.Config
		var err error
		if get != nil {
			got, err = get(hello)
		}
		if n, ok := hello.Context().Value(helloNoteKey{}).(*helloNote); ok {
			n.hello, n.served = hello, cmp.Or(got, conf)
		}
		return got, err
	}
	return c
}

// remoteIP is the client's IP (the one a PROXY header carried), for logs.
func remoteIP(c net.Conn) string {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.String()
	}
	return c.RemoteAddr().String()
}

// recordLooksLikeHTTP is net/http's test for a plaintext request on a
// TLS port.
func recordLooksLikeHTTP(hdr [5]byte) bool {
	switch string(hdr[:]) {
	case "GET /", "HEAD ", "POST ", "PUT /", "OPTIO":
		return true
	}
	return false
}

// framing scans the plaintext an HTTP/1 connection reads for the framing
// of requests and counts the requests the handler sees, so that the
// handler can refuse the request whose head carried both Content-Length
// and Transfer-Encoding.
type framing struct {
	mu   sync.Mutex
	scan h1.Scanner
	off  atomic.Bool  // the scanner has stopped
	bad  atomic.Int64 // 1 + index of the request to refuse; 0 none
	seen atomic.Int64 // requests handed to the handler
}

func (f *framing) feed(p []byte) {
	if len(p) == 0 || f.off.Load() {
		return
	}
	f.mu.Lock()
	f.scan.Feed(p)
	if i := f.scan.Flagged(); i >= 0 {
		f.bad.Store(int64(i) + 1)
	}
	if f.scan.Stopped() {
		f.off.Store(true)
	}
	f.mu.Unlock()
}

// nextRequest counts a request handed to the handler and reports whether
// it is the one to refuse. The scanner has seen its head: net/http read
// it through Read before parsing it.
func (f *framing) nextRequest() (refuse bool) {
	return f.seen.Add(1) == f.bad.Load()
}

// framer is a connection whose requests framingGuard checks.
type framer interface{ nextRequest() bool }

// scanConn is an HTTPS connection after its handshake. net/http reads the
// TLS state through ConnectionState (Request.TLS).
type scanConn struct {
	*tls.Conn
	framing
	pre []byte // read by the fast path and not served: replayed first
}

func newScanConn(tc *tls.Conn) *scanConn {
	c := &scanConn{Conn: tc}
	c.scan = h1.NewScanner()
	return c
}

func (c *scanConn) Read(p []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(p, c.pre)
		if c.pre = c.pre[n:]; len(c.pre) == 0 {
			c.pre = nil // an empty tail still pins the copy for the conn's life
		}
		c.feed(p[:n])
		return n, nil
	}
	n, err := c.Conn.Read(p)
	c.feed(p[:n])
	return n, err
}

// plainScanConn is a listen.http connection.
type plainScanConn struct {
	net.Conn
	framing
}

// NetConn returns the wrapped connection (for limits/park).
func (c *plainScanConn) NetConn() net.Conn { return c.Conn }

func (c *plainScanConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.feed(p[:n])
	return n, err
}

// plainScanListener hands listen.http connections to net/http as
// plainScanConns.
type plainScanListener struct{ net.Listener }

func (l plainScanListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	pc := &plainScanConn{Conn: c}
	pc.scan = h1.NewScanner()
	return pc, nil
}

type scanConnKey struct{}

// connContext gives HTTP/1 requests (HTTPS and listen.http) their framer,
// and every request its connection (limits.ConnFrom), and marks the
// connections admitted above the soft cap (all versions).
func connContext(ctx context.Context, c net.Conn) context.Context {
	ctx = limits.WithConn(ctx, c)
	ctx = markOverflow(ctx, c)
	if f, ok := c.(framer); ok {
		return context.WithValue(ctx, scanConnKey{}, f)
	}
	return ctx
}

// framingGuard refuses, on HTTP/1 connections, the request whose head
// carried both Content-Length and Transfer-Encoding (400, and the
// connection is closed), and makes sure Request.TLS is set. It also
// answers "OPTIONS *" as net/http would (its own handler for it is off so
// that every request net/http parses is counted here).
func (s *Server) framingGuard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f, ok := r.Context().Value(scanConnKey{}).(framer); ok {
			if f.nextRequest() {
				s.log.Info("request refused", "reason", "both Content-Length and Transfer-Encoding", "remote", r.RemoteAddr)
				w.Header().Set("Connection", "close")
				writeError(w, http.StatusBadRequest, "both Content-Length and Transfer-Encoding")
				return
			}
			if sc, ok := f.(*scanConn); ok && r.TLS == nil {
				cs := sc.ConnectionState()
				r.TLS = &cs
			}
		}
		if r.Method == http.MethodOptions && r.RequestURI == "*" && r.ProtoMajor < 3 {
			w.Header().Set("Content-Length", "0")
			if r.ContentLength != 0 {
				io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, 4<<10))
			}
			return
		}
		next.ServeHTTP(w, r)
	})
}
