package h2front

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// stream is one request. Its fields are guarded by conn.mu.
type stream struct {
	c  *conn
	id uint32
	// wake is signalled when the send windows grow, data arrives or the
	// stream ends.
	wake       sync.Cond
	cancel     context.CancelFunc // of the request's context; nil until it has one
	sendWindow int64
	recvWindow int64
	// recvUnacked: consumed body bytes not yet given back.
	recvUnacked int64
	declared    int64 // Content-Length, -1 if none
	bodyBytes   int64
	remoteDone  bool // END_STREAM received
	// localDone: the frame carrying our END_STREAM is committed (set
	// before it is written, so that the client, having read it, never
	// finds the stream still open here).
	localDone   bool
	handlerDone bool
	aborted     bool
	truncated   bool    // the header list was over MaxHeaderListSize: 431
	head        reqHead // the request's HEADERS
	// interrupt is a connection Direct reads from or writes to for the
	// stream (Stream.Interrupt): abort interrupts it.
	interrupt interface{ SetDeadline(time.Time) error }
	err       error // why the stream ended early
	body      *body
	trailer   http.Header // request trailers declared, filled when they arrive
	// rdl and wdl are the stream's read and write deadlines (zero:
	// none): past one, the connection's sweep resets it.
	rdl, wdl time.Time

	// Allocated with the stream.
	bodyv body
	rw    responseWriter
	ds    Stream
}

// errTimeout is what a handler's reads and writes return after its
// stream's read or write deadline passed.
var errTimeout = fmt.Errorf("h2front: stream deadline: %w", os.ErrDeadlineExceeded)

// Stream deadlines: a timer per stream (two with a request body) cost an
// allocation, a timer start and stop per request, and the runtime's
// poller wake-up when the new timer was the earliest (about 1 % of the
// CPU of an HTTP/2 request, within this machine's noise). A connection has one timer instead, armed for its earliest
// deadline: as every new stream's deadline is later than the ones
// before (the same timeout from a later start), a stream usually arms
// nothing. When it fires, sweep resets the streams past a deadline and
// arms it for the earliest of the others.

// armLocked makes sure the connection's deadline timer fires by t.
// c.mu held.
func (c *conn) armLocked(t time.Time) {
	if t.IsZero() || c.closed || !c.dlAt.IsZero() && !t.Before(c.dlAt) {
		return
	}
	c.dlAt = t
	if c.dlTimer == nil {
		c.dlTimer = time.AfterFunc(time.Until(t), c.sweep)
	} else {
		c.dlTimer.Reset(time.Until(t))
	}
}

// sweep resets the streams whose read or write deadline passed, and
// arms the timer for the next.
func (c *conn) sweep() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	now := time.Now()
	c.dlAt = time.Time{}
	var next time.Time
	var expired []*stream
	for _, st := range c.streams {
		if st.handlerDone || st.aborted {
			continue
		}
		if past(st.rdl, now) || past(st.wdl, now) {
			expired = append(expired, st)
			continue
		}
		for _, t := range [2]time.Time{st.rdl, st.wdl} {
			if !t.IsZero() && (next.IsZero() || t.Before(next)) {
				next = t
			}
		}
	}
	for _, st := range expired {
		st.abort(errTimeout)
		c.removeLocked(st)
	}
	c.armLocked(next)
	c.mu.Unlock()
	for _, st := range expired {
		c.logf("stream deadline passed", "stream", st.id)
		c.write(func() error { return c.fr.WriteRSTStream(st.id, http2.ErrCodeInternal) })
	}
}

func past(t, now time.Time) bool { return !t.IsZero() && !now.Before(t) }

// setDeadline moves (or clears, t zero) one of the stream's deadlines.
func (st *stream) setDeadline(dl *time.Time, t time.Time) {
	c := st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if st.handlerDone || st.aborted {
		return
	}
	*dl = t
	c.armLocked(t)
}

// ending marks our END_STREAM as committed (see localDone).
func (st *stream) ending() {
	st.c.mu.Lock()
	st.localDone = true
	st.c.mu.Unlock()
}

// abort ends the stream early: its handler's reads and writes fail with
// err, its context is cancelled. c.mu held.
func (st *stream) abort(err error) {
	if st.aborted {
		return
	}
	st.aborted = true
	st.err = err
	st.body.fail(err)
	if st.cancel != nil {
		st.cancel()
	}
	if st.interrupt != nil {
		st.interrupt.SetDeadline(aLongTimeAgo)
	}
	st.wake.Broadcast()
}

// endedEarly is why the stream was reset (by the client, a deadline,
// the connection's end), or nil: nothing more may be written on it.
func (st *stream) endedEarly() error {
	c := st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if st.aborted {
		return st.err
	}
	if c.closed {
		return ErrConnClosed
	}
	return nil
}

// body is a request body: DATA received, read by the handler. Guarded
// by conn.mu.
type body struct {
	st          *stream
	buf         []byte
	off         int
	eof         bool
	err         error
	closed      bool
	continue100 bool // "expect: 100-continue": answer 100 on the first read
}

func (b *body) unread() int64 {
	if b == nil {
		return 0
	}
	n := int64(len(b.buf) - b.off)
	b.buf, b.off = nil, 0
	return n
}

func (b *body) fail(err error) {
	if b != nil && b.err == nil && !b.eof {
		b.err = err
	}
}

func (b *body) push(p []byte, end bool) {
	if b.closed {
		b.st.c.recvUnacked += int64(len(p))
		b.st.recvUnacked += int64(len(p))
	} else {
		if b.off > 0 && b.off == len(b.buf) {
			b.buf, b.off = b.buf[:0], 0
		}
		b.buf = append(b.buf, p...)
	}
	if end {
		b.eof = true
	}
	b.st.wake.Broadcast()
}

func (b *body) Read(p []byte) (int, error) {
	st := b.st
	c := st.c
	c.mu.Lock()
	if b.continue100 {
		b.continue100 = false
		c.mu.Unlock()
		c.writeHeaders(st.id, 100, nil, false, nil)
		c.mu.Lock()
	}
	for b.off == len(b.buf) && !b.eof && b.err == nil && !b.closed {
		st.wake.Wait()
	}
	if b.off == len(b.buf) || b.closed {
		err := b.err
		if b.closed {
			err = http.ErrBodyReadAfterClose
		} else if err == nil {
			err = io.EOF
		}
		c.mu.Unlock()
		return 0, err
	}
	n := copy(p, b.buf[b.off:])
	b.off += n
	c.recvUnacked += int64(n)
	st.recvUnacked += int64(n)
	c.mu.Unlock()
	c.refund(st)
	return n, nil
}

func (b *body) Close() error {
	c := b.st.c
	c.mu.Lock()
	if !b.closed {
		b.closed = true
		n := int64(len(b.buf) - b.off)
		b.buf, b.off = nil, 0
		c.recvUnacked += n
		b.st.recvUnacked += n
	}
	c.mu.Unlock()
	c.refund(b.st)
	return nil
}

// connection-specific fields a request must not carry (RFC 9113 8.2.2).
func connSpecific(name string) bool {
	switch name {
	case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
		return true
	}
	return false
}

// processHeaders starts a stream, or takes a request's trailers.
func (c *conn) processHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if id%2 != 1 {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	c.mu.Lock()
	if st := c.streams[id]; st != nil {
		closed := st.remoteDone && st.localDone // localDone is the handler's: read under c.mu
		c.mu.Unlock()
		if closed {
			// Closed both ways; only its handler still winds down.
			return http2.ConnectionError(http2.ErrCodeStreamClosed)
		}
		if st.remoteDone {
			return c.streamError(http2.StreamError{StreamID: id, Code: http2.ErrCodeStreamClosed}, false)
		}
		return c.trailers(st, f)
	}
	if id <= c.maxStreamID {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	c.maxStreamID = id
	if c.goingAway {
		c.mu.Unlock()
		return nil // after GOAWAY: ignored (RFC 9113 6.8)
	}
	if uint32(len(c.streams)) >= c.o.MaxConcurrentStreams {
		c.mu.Unlock()
		return c.streamError(http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}, false)
	}
	if c.handlers >= c.o.MaxConcurrentStreams {
		// Handlers of reset streams still run: a rapid-reset flood.
		c.refused++
		calm := c.refused > maxRefusedFactor*int(c.o.MaxConcurrentStreams)
		c.mu.Unlock()
		if calm {
			return http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
		}
		return c.streamError(http2.StreamError{StreamID: id, Code: http2.ErrCodeRefusedStream}, false)
	}
	c.mu.Unlock()
	if f.HasPriority() && f.Priority.StreamDep == id {
		return c.streamError(http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}, false)
	}
	hd, err := parseHead(f)
	if err != nil {
		c.logf("bad request", "stream", id, "err", err)
		return c.streamError(http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol, Cause: err}, false)
	}
	if f.StreamEnded() && hd.declared > 0 {
		return c.streamError(http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}, false)
	}
	st := &stream{c: c, id: id, recvWindow: int64(c.o.StreamWindow), declared: hd.declared, remoteDone: f.StreamEnded()}
	st.wake.L = &c.mu
	st.head = hd
	st.truncated = f.Truncated
	if !f.StreamEnded() {
		st.bodyv = body{st: st, continue100: hd.expect100}
		st.body = &st.bodyv
		if len(hd.trailer) > 0 {
			st.trailer = http.Header{}
			for _, k := range hd.trailer {
				for _, k := range strings.Split(k, ",") {
					if k = http.CanonicalHeaderKey(strings.TrimSpace(k)); k != "" {
						st.trailer[k] = nil
					}
				}
			}
		}
	}
	st.rw = responseWriter{st: st, head: hd.method == http.MethodHead}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrConnClosed
	}
	st.sendWindow = c.peerWindow
	if d := c.o.WriteTimeout; d > 0 {
		st.wdl = time.Now().Add(d)
		c.armLocked(st.wdl)
	}
	if d := c.o.ReadTimeout; d > 0 && !st.remoteDone {
		st.rdl = time.Now().Add(d)
		c.armLocked(st.rdl)
	}
	c.streams[id] = st
	c.handlers++
	c.wg.Add(1)
	c.mu.Unlock()
	c.s.workers.run(job{c: c, st: st})
	return nil
}

func headerTooLarge(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusRequestHeaderFieldsTooLarge)
	io.WriteString(w, `{"error":"request header too large"}`+"\n")
}

// trailers takes the trailing HEADERS of a request body.
func (c *conn) trailers(st *stream, f *http2.MetaHeadersFrame) error {
	if !f.StreamEnded() || len(f.PseudoFields()) > 0 {
		return c.streamError(http2.StreamError{StreamID: st.id, Code: http2.ErrCodeProtocol}, false)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if st.declared >= 0 && st.bodyBytes != st.declared {
		c.mu.Unlock()
		err := c.streamError(http2.StreamError{StreamID: st.id, Code: http2.ErrCodeProtocol}, false)
		c.mu.Lock()
		return err
	}
	for _, hf := range f.RegularFields() {
		k := http.CanonicalHeaderKey(hf.Name)
		if _, ok := st.trailer[k]; ok {
			st.trailer[k] = append(st.trailer[k], hf.Value)
		}
	}
	st.remoteDone = true
	st.rdl = time.Time{}
	st.body.push(nil, true)
	if st.handlerDone {
		c.removeLocked(st)
	}
	return nil
}

// reqHead is a request's HEADERS, checked (parseHead): what Direct is
// shown, and what request builds an http.Request of.
type reqHead struct {
	method, scheme, authority, path string
	fields                          []hpack.HeaderField // the regular fields
	declared                        int64               // Content-Length, -1 if none
	host                            string              // a "host" field
	trailer                         []string            // "trailer" fields
	cookies                         int                 // "cookie" fields
	expect100                       bool
	checkURL                        bool // path needs url.ParseRequestURI's checks
}

// parseHead checks a HEADERS frame's fields as RFC 9113 asks (8.2, 8.3).
// It allocates nothing: the http.Request is built later, if a Handler
// serves the stream (request).
func parseHead(f *http2.MetaHeadersFrame) (hd reqHead, err error) {
	hd.declared = -1
	fields := f.Fields
	for i, hf := range fields {
		if !strings.HasPrefix(hf.Name, ":") {
			// x/net's framer refuses a pseudo-header after a regular one.
			hd.fields = fields[i:]
			break
		}
		switch hf.Name {
		case ":method":
			hd.method = hf.Value
		case ":scheme":
			hd.scheme = hf.Value
		case ":authority":
			hd.authority = hf.Value
		case ":path":
			hd.path = hf.Value
		default:
			return hd, fmt.Errorf("pseudo-header %s not allowed", hf.Name)
		}
	}
	for _, hf := range hd.fields {
		if connSpecific(hf.Name) {
			return hd, fmt.Errorf("connection-specific field %s", hf.Name)
		}
		switch hf.Name {
		case "te":
			if hf.Value != "trailers" {
				return hd, errors.New(`te other than "trailers"`)
			}
		case "cookie":
			hd.cookies++
		case "content-length":
			n, perr := strconv.ParseUint(hf.Value, 10, 63)
			if perr != nil || hd.declared >= 0 && int64(n) != hd.declared {
				return hd, errors.New("bad content-length")
			}
			hd.declared = int64(n)
		case "host":
			if hd.host == "" {
				hd.host = hf.Value
			}
		case "trailer":
			hd.trailer = append(hd.trailer, hf.Value)
		case "expect":
			hd.expect100 = strings.EqualFold(hf.Value, "100-continue")
		}
	}
	if hd.authority == "" {
		hd.authority = hd.host
	}
	if hd.method == "" || !httpguts.ValidHostHeader(hd.authority) {
		return hd, errors.New("missing :method or bad :authority")
	}
	for _, r := range hd.method {
		if !httpguts.IsTokenRune(r) {
			return hd, errors.New("bad :method")
		}
	}
	if hd.method == http.MethodConnect {
		if hd.scheme != "" || hd.path != "" || hd.authority == "" {
			return hd, errors.New("bad CONNECT")
		}
		return hd, nil
	}
	if hd.scheme == "" || hd.path == "" {
		return hd, errors.New("missing :scheme or :path")
	}
	if !plainPath(hd.path) {
		// Not the common form: url.ParseRequestURI decides, now.
		if _, err := url.ParseRequestURI(hd.path); err != nil {
			return hd, err
		}
		hd.checkURL = true
	}
	return hd, nil
}

// plainPath reports whether p is an origin-form target that
// url.ParseRequestURI accepts: a '/', then no control byte, and every
// '%' starting an escape.
func plainPath(p string) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case c <= ' ' || c == 0x7f:
			return false
		case c == '%':
			if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
				return false
			}
		}
	}
	return true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// request builds the http.Request of st's head, with its context (a
// child of the connection's, cancelled when the stream ends).
func (c *conn) request(st *stream) (*http.Request, error) {
	hd := &st.head
	h := make(http.Header, len(hd.fields))
	vals := make([]string, len(hd.fields)) // one backing array for the values
	var cookies []string
	if hd.cookies > 1 {
		cookies = make([]string, 0, hd.cookies)
	}
	for _, hf := range hd.fields {
		if hf.Name == "cookie" && hd.cookies > 1 {
			cookies = append(cookies, hf.Value)
			continue
		}
		k := canonicalKey(hf.Name)
		if vv, ok := h[k]; ok {
			h[k] = append(vv, hf.Value)
		} else {
			vals[0] = hf.Value
			h[k], vals = vals[:1:1], vals[1:]
		}
	}
	if len(cookies) > 0 {
		h["Cookie"] = []string{strings.Join(cookies, "; ")}
	}
	var u *url.URL
	uri := hd.path
	if hd.method == http.MethodConnect {
		u, uri = &url.URL{Host: hd.authority}, hd.authority
	} else {
		var err error
		if u, err = url.ParseRequestURI(hd.path); err != nil {
			return nil, err
		}
	}
	cl := hd.declared
	if st.body == nil { // HEADERS ended the stream
		cl = 0
	}
	ctx, cancel := context.WithCancel(c.ctx)
	c.mu.Lock()
	if st.aborted {
		cancel()
	}
	st.cancel = cancel
	c.mu.Unlock()
	req := &http.Request{
		Method: hd.method, URL: u, Proto: "HTTP/2.0", ProtoMajor: 2, Header: h, Host: hd.authority,
		RemoteAddr: c.remote, RequestURI: uri, TLS: c.tls, ContentLength: cl, Body: http.NoBody,
	}
	if st.body != nil {
		req.Body = st.body
		req.Trailer = st.trailer
	}
	st.rw.header = make(http.Header, 4)
	return req.WithContext(ctx), nil
}

// runStream serves one stream: Direct first, if there is one and the
// request may go there, else the Handler with an http.Request.
func (c *conn) runStream(st *stream) {
	defer c.wg.Done()
	rw := &st.rw
	clean := false
	defer func() {
		if e := recover(); e != nil {
			if e != http.ErrAbortHandler {
				buf := make([]byte, 16<<10)
				buf = buf[:runtime.Stack(buf, false)]
				c.o.Logger.Error("http2: panic serving", "remote", c.remote, "panic", fmt.Sprint(e), "stack", string(buf))
			}
			st.reset()
		}
		c.mu.Lock()
		if st.cancel != nil {
			st.cancel()
		}
		c.mu.Unlock()
		c.handlerDone(st, clean)
	}()
	if d := c.o.Direct; d != nil && st.directOK() {
		ds := &st.ds
		*ds = Stream{
			Method: st.head.method, Authority: st.head.authority, Path: st.head.path, Fields: st.head.fields,
			ContentLength: st.head.declared, Remote: c.remote, TLS: c.tls, Conn: c.ctx, st: st,
		}
		if st.body == nil { // HEADERS ended the stream
			ds.ContentLength = 0
		}
		if d.ServeDirect(ds) {
			rw.direct = true
			clean = rw.finish() == nil
			if c.s.afterFinish != nil {
				c.s.afterFinish()
			}
			return
		}
	}
	var h http.Handler = http.HandlerFunc(headerTooLarge)
	req, err := c.request(st)
	switch {
	case err != nil:
		// parseHead's checks let it through; url's did not.
		c.logf("bad request", "stream", st.id, "err", err)
		h = http.HandlerFunc(badRequest)
		req = &http.Request{Method: st.head.method, URL: &url.URL{}, Header: http.Header{}, Body: http.NoBody, ProtoMajor: 2}
		rw.header = http.Header{}
	case !st.truncated:
		h = c.o.Handler
	}
	rw.req = req
	h.ServeHTTP(rw, req)
	clean = rw.finish() == nil
	if c.s.afterFinish != nil {
		c.s.afterFinish()
	}
}

func badRequest(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	io.WriteString(w, `{"error":"bad request target"}`+"\n")
}

// reset abandons st's response: RST_STREAM INTERNAL_ERROR.
func (st *stream) reset() {
	c := st.c
	c.write(func() error { return c.fr.WriteRSTStream(st.id, http2.ErrCodeInternal) })
	c.mu.Lock()
	st.abort(errStreamReset)
	c.mu.Unlock()
}

// handlerStack is what a worker's stack is grown to before it serves
// its first stream (workers.go). A goroutine starts with a small stack
// (the runtime's average); a proxy handler chain is deeper, and the
// stack was copied, frame by frame, once or more per request deep in the
// chain (8 % of the CPU under h2load). Grown here, at the bottom, the
// copy has two frames.
const handlerStack = 12 << 10

// growStack makes the stack at least handlerStack (the runtime rounds up
// to a power of two: 16 KiB, from its per-P cache).
//
//go:noinline
func growStack() {
	var b [handlerStack]byte
	stackSink(b[:])
}

//go:noinline
func stackSink(b []byte) { b[0] = 1 }

// canonicalKey is http.CanonicalHeaderKey without an allocation for the
// common request fields.
func canonicalKey(lower string) string {
	if k, ok := commonKeys[lower]; ok {
		return k
	}
	return http.CanonicalHeaderKey(lower)
}

var commonKeys = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{"Accept", "Accept-Charset", "Accept-Encoding", "Accept-Language", "Authorization",
		"Cache-Control", "Content-Encoding", "Content-Length", "Content-Type", "Cookie", "Date", "Etag", "Expect",
		"Forwarded", "From", "Host", "If-Match", "If-Modified-Since", "If-None-Match", "If-Range", "If-Unmodified-Since",
		"Origin", "Pragma", "Range", "Referer", "Te", "Trailer", "User-Agent", "Via", "X-Forwarded-For",
		"X-Forwarded-Host", "X-Forwarded-Proto", "X-Real-Ip", "X-Request-Id", "Priority", "Sec-Fetch-Mode",
		"Sec-Fetch-Site", "Sec-Fetch-Dest"} {
		m[strings.ToLower(k)] = k
	}
	return m
}()

// writeHeaders writes a HEADERS frame (and CONTINUATIONs) of status and
// h, skipping the fields in skip and those a response must not carry.
func (c *conn) writeHeaders(id uint32, status int, h http.Header, end bool, extra func(func(name, value string))) error {
	return c.write(func() error { return c.writeHeadersLocked(id, status, h, end, extra) })
}

func (c *conn) writeHeadersLocked(id uint32, status int, h http.Header, end bool, extra func(func(name, value string))) error {
	c.hbuf.Reset()
	enc := c.enc
	if status > 0 {
		enc(":status", statusText(status))
	}
	for k, vv := range h {
		lk := c.lowerKey(k)
		if connSpecific(lk) || lk == "trailer" || !httpguts.ValidHeaderFieldName(k) {
			continue
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				continue
			}
			enc(lk, v)
		}
	}
	if extra != nil {
		extra(enc)
	}
	block := c.hbuf.Bytes()
	max := int(c.peerFrameSize())
	first := true
	for first || len(block) > 0 {
		frag := block[:min(len(block), max)]
		block = block[len(frag):]
		var err error
		if first {
			err = c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag, EndStream: end, EndHeaders: len(block) == 0})
			first = false
		} else {
			err = c.fr.WriteContinuation(id, len(block) == 0, frag)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// encField HPACK-encodes a field into hbuf; wmu held. c.enc is it as a
// func value, made once per connection (a closure per response was an
// allocation).
func (c *conn) encField(name, value string) {
	c.henc.WriteField(hpack.HeaderField{Name: name, Value: value})
}

func (c *conn) peerFrameSize() uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.peerFrame
}

// lowerKey is k as an HTTP/2 field name; wmu held.
func (c *conn) lowerKey(k string) string {
	if v, ok := c.lower[k]; ok {
		return v
	}
	v := strings.ToLower(k)
	if len(c.lower) < 256 {
		c.lower[k] = v
	}
	return v
}

func statusText(code int) string {
	switch code {
	case 200:
		return "200"
	case 204:
		return "204"
	case 304:
		return "304"
	case 404:
		return "404"
	}
	return strconv.Itoa(code)
}
