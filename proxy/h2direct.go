package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/edgeshim/edgeshim/limits"
	"github.com/edgeshim/edgeshim/limits/accesslog"
	"github.com/edgeshim/edgeshim/proxy/fast"
	"github.com/edgeshim/edgeshim/proxy/h2front"
	"github.com/edgeshim/edgeshim/proxy/internal/h1"
	"github.com/edgeshim/edgeshim/proxy/upstream"
)

// The direct exchange: HTTP/2 requests on fast routes (every backend
// plain http://, no decompress: the HTTP/1.1 fast path's routes) are
// served by h2Direct, an h2front.Direct, without an http.Request, a
// handler chain or a header map. It applies the same policy as the
// HTTP/1.1 fast path, from the same place: the route match
// (fastRouter), the forwarded fields (upstream.Forwarded), the path
// (upstream.AppendOutPath), the retry loop (Attempts), the error answers
// (RoutePolicy.Answer), the per-route and per-backend metrics and the
// access log record. The backend request head is written as bytes,
// exchanged over the route's backend pool, its response head parsed by
// upstream.ReadRespHead and relayed as HEADERS and DATA.
//
// Not taken (the handler chain serves them, through ReverseProxy):
// requests over the heap watermark or on an overflowed connection (they
// are shed there), near the header limits (answered 431 there), with a
// body of unknown length, over syncMaxBody or the route's max_body, and
// paths that are not clean (normalised or refused there).

// h2Direct is the HTTP/2 direct exchange of a Server.
type h2Direct struct {
	base         context.Context // the server's: backend dials end with it
	routes       fastRouter
	heap         *limits.HeapWatermark
	maxHeaders   int
	maxHeadBytes int64
	alog         *accesslog.Logger
	altSvcLines  func() []byte

	altSvcOnce sync.Once
	altSvc     string // Alt-Svc's value with HTTP/3, else ""

	scratch sync.Pool // *h2Scratch
}

var _ h2front.Direct = (*h2Direct)(nil)

// h2Scratch is what a direct exchange reuses from request to request.
type h2Scratch struct {
	buf, line, host []byte
	xff, fwd        []string
	rh              upstream.RespHead
	resp            respFields
	trailers        respFields
}

// respFields are a response's fields as HTTP/2 sends them
// (h2front.Fields): lower-case names, values sliced from one string.
type respFields struct {
	names, values []string
	altSvc        string
}

var _ h2front.Fields = (*respFields)(nil)

func (f *respFields) WriteFields(enc func(name, value string)) {
	for i, n := range f.names {
		enc(n, f.values[i])
	}
	if f.altSvc != "" {
		enc("alt-svc", f.altSvc)
	}
}

// set takes rh's passed-on fields (and Content-Length, cl >= 0).
func (f *respFields) set(rh *upstream.RespHead, cl int64) {
	size := 20
	for i := range rh.Fields {
		if fl := &rh.Fields[i]; fl.Kind == h1.Pass {
			size += len(fl.Value)
		}
	}
	var all strings.Builder
	all.Grow(size)
	for i := range rh.Fields {
		if fl := &rh.Fields[i]; fl.Kind == h1.Pass {
			all.Write(fl.Value)
		}
	}
	if cl >= 0 {
		all.WriteString(strconv.FormatInt(cl, 10))
	}
	vals, at := all.String(), 0
	f.names, f.values = f.names[:0], f.values[:0]
	for i := range rh.Fields {
		if fl := &rh.Fields[i]; fl.Kind == h1.Pass {
			f.names = append(f.names, lowerName(fl.Name))
			f.values = append(f.values, vals[at:at+len(fl.Value)])
			at += len(fl.Value)
		}
	}
	if cl >= 0 {
		f.names = append(f.names, "content-length")
		f.values = append(f.values, vals[at:])
	}
}

// lowerName is a response field name as HTTP/2 writes it.
func lowerName(name []byte) string {
	for _, k := range respKeys {
		if h1.EqualFold(name, k) {
			return k
		}
	}
	return strings.ToLower(string(name))
}

// respKeys are response field names common enough to be found without
// an allocation.
var respKeys = [...]string{"content-type", "date", "server", "cache-control", "etag", "last-modified", "vary",
	"expires", "accept-ranges", "content-encoding", "location", "set-cookie", "content-length"}

// errorFields are an error answer's fields (limits.WriteError's).
type errorFields struct {
	retry  int // Retry-After seconds, -1: none
	length int
}

func (f *errorFields) WriteFields(enc func(name, value string)) {
	enc("content-type", "application/json")
	if f.retry >= 0 {
		enc("retry-after", strconv.Itoa(f.retry))
	}
	enc("x-content-type-options", "nosniff")
	enc("content-length", strconv.Itoa(f.length))
}

// directResult is what a direct exchange did, for its metrics and log.
type directResult struct {
	code    int
	bytes   int64
	backend string
	reason  string
}

// ServeDirect serves s if it is a request for a fast route the direct
// exchange takes (h2front.Direct).
func (d *h2Direct) ServeDirect(s *h2front.Stream) bool {
	t0 := time.Now()
	if v, _ := s.Conn.Value(overflowKey{}).(bool); v || d.heap.Over() {
		return false
	}
	path, query := s.Path, ""
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path, query = path[:i], path[i:]
	}
	if !directPath(path) || !d.withinLimits(s) {
		return false
	}
	sc, _ := d.scratch.Get().(*h2Scratch)
	if sc == nil {
		sc = &h2Scratch{buf: make([]byte, 0, 16<<10)}
	}
	defer d.scratch.Put(sc)
	sc.host = h1.HostForMatch(sc.host[:0], []byte(s.Authority))
	fr := d.routes.Match(sc.host, []byte(path)).Proxy
	if fr == nil {
		return false
	}
	rp := fr.Policy.(*routeProxy)
	if s.ContentLength < 0 || s.ContentLength > syncMaxBody || s.ContentLength > rp.bodyLimit() {
		return false
	}
	rp.direct.Add(1)
	res := d.serve(s, fr, sc, path, query, t0)
	// The head refers to sc: it leaves before sc goes back to the pool.
	if err := s.End(); err != nil && res.code != upstream.StatusClientClosed {
		res.bytes = 0
	}
	fr.Requests.Inc(res.code)
	fr.Duration.Observe(time.Since(t0).Seconds())
	if al := d.alog; al.Sampled(res.code) && !fr.NoLog {
		rec := &accesslog.Record{Start: t0, Client: s.Remote, Proto: "HTTP/2.0", Host: s.Authority,
			Method: s.Method, Path: path, Route: fr.Name, Upstream: res.backend, Reason: res.reason}
		if len(query) > 1 {
			rec.RawQuery = query[1:]
		}
		rec.SetTLS(s.TLS)
		al.Write(rec, res.code, res.bytes)
	}
	return true
}

// directPath reports whether path is one the direct exchange forwards as
// it came: the HTTP/1.1 fast path's characters (no escapes, which
// net/http's path decodes before routing, no '#' or '\\').
func directPath(path string) bool {
	for i := 0; i < len(path); i++ {
		if c := path[i]; !h1.IsAlnum(c) && strings.IndexByte("-._~!$&'()*+,;=:@/", c) < 0 {
			return false
		}
	}
	return true
}

// withinLimits reports whether s is clearly within the header limits the
// handler chain enforces (limits.HeaderCount, limits.HeaderSize): the
// figures here count each cookie field apart, at least what the chain
// counts, so a request near a limit goes there to be measured exactly.
func (d *h2Direct) withinLimits(s *h2front.Stream) bool {
	size := len(s.Method) + 1 + len(s.Path) + 1 + len("HTTP/2.0") + 2 + len("Host: ") + len(s.Authority) + 2
	for _, f := range s.Fields {
		size += len(f.Name) + 2 + len(f.Value) + 2
	}
	return len(s.Fields) <= d.maxHeaders && int64(size) <= d.maxHeadBytes
}

// serve is the policy's retry loop on the direct exchange.
func (d *h2Direct) serve(s *h2front.Stream, fr *fast.Route, sc *h2Scratch, path, query string, t0 time.Time) directResult {
	var deadline time.Time
	if fr.RequestTimeout > 0 {
		deadline = t0.Add(fr.RequestTimeout)
	}
	hasBody := s.ContentLength > 0
	room := len(s.Method) + len(path) + len(query) + fr.MaxPath + 16
	buf := d.appendHead(append(sc.buf[:0], make([]byte, room)...), s, fr, sc)
	if hasBody {
		n := len(buf)
		buf = append(buf, make([]byte, s.ContentLength)...)
		if _, err := io.ReadFull(s.Body(), buf[n:]); err != nil {
			sc.buf = buf[:0]
			return d.fail(s, fr, d.why(s, deadline, upstream.BodyError(err)))
		}
	}
	sc.buf = buf[:0]
	a := fr.Up.Attempts(upstream.Idempotent(s.Method, hasBody))
	replayable := upstream.Replayable(s.Method, hasBody)
	for {
		b, err := a.Next()
		if err != nil {
			return d.fail(s, fr, err)
		}
		line := append(sc.line[:0], s.Method...)
		line = append(line, ' ')
		line = upstream.AppendOutPath(line, b.Conns.Path, fr.Strip, path)
		line = append(line, query...)
		line = append(line, " HTTP/1.1\r\n"...)
		sc.line = line
		out := buf[room-len(line):]
		copy(out, line)
		b.Begin()
		res, err := d.exchange(s, fr, b, sc, out, buf[:cap(buf)], deadline, replayable)
		b.End()
		if err == nil {
			res.backend = b.Name
			return res
		}
		err = d.why(s, deadline, err)
		if a.Failed(b, err) {
			continue
		}
		return d.fail(s, fr, b.Failed(err))
	}
}

// appendHead appends the outgoing header lines as the HTTP/1.1 fast
// path's appendOutHead does: Host, the client's fields but the hop-by-hop
// ones (cookies joined into one line), the policy's forwarded lines,
// Content-Length, Te: trailers; then the blank line.
func (d *h2Direct) appendHead(b []byte, s *h2front.Stream, fr *fast.Route, sc *h2Scratch) []byte {
	peer := upstream.PeerAddr(s.Remote)
	f := upstream.Forwarded[string]{Peer: peer, Host: s.Authority, TLS: s.TLS != nil, Trusted: fr.Trusted.Has(peer),
		XFF: sc.xff[:0], Fwd: sc.fwd[:0]}
	b = append(b, "Host: "...)
	b = append(b, s.Authority...)
	b = append(b, "\r\n"...)
	te, cookie := false, false
	for i, hf := range s.Fields {
		switch hf.Name {
		case "host", "content-length", "connection", "keep-alive", "proxy-connection", "proxy-authenticate",
			"proxy-authorization", "trailer", "transfer-encoding", "upgrade":
			continue
		case "te":
			te = true // "trailers", the only value HTTP/2 allows
			continue
		case "x-forwarded-for":
			f.XFF = append(f.XFF, hf.Value)
			continue
		case "x-forwarded-host":
			if f.XFH == "" {
				f.XFH = hf.Value
			}
			continue
		case "x-forwarded-proto":
			if f.XFP == "" {
				f.XFP = hf.Value
			}
			continue
		case "forwarded":
			f.Fwd = append(f.Fwd, hf.Value)
			continue
		case "cookie":
			// HTTP/2 may split a cookie; HTTP/1.1 has one line
			// (RFC 9113 8.2.3).
			if cookie {
				continue
			}
			cookie = true
			b = append(b, "cookie: "...)
			b = append(b, hf.Value...)
			for _, more := range s.Fields[i+1:] {
				if more.Name == "cookie" {
					b = append(b, "; "...)
					b = append(b, more.Value...)
				}
			}
			b = append(b, "\r\n"...)
			continue
		}
		b = append(b, hf.Name...)
		b = append(b, ": "...)
		b = append(b, hf.Value...)
		b = append(b, "\r\n"...)
	}
	sc.xff, sc.fwd = f.XFF[:0], f.Fwd[:0]
	b = f.AppendLines(b)
	switch m := s.Method; {
	case s.ContentLength > 0, m == http.MethodPost || m == http.MethodPut || m == http.MethodPatch:
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, s.ContentLength, 10)
		b = append(b, "\r\n"...)
	}
	if te {
		b = append(b, "Te: trailers\r\n"...)
	}
	return append(b, "\r\n"...)
}

// why adds what the stream knows of a failed exchange to err: the client
// went away (or its stream ended), the route's request timeout passed.
func (d *h2Direct) why(s *h2front.Stream, deadline time.Time, err error) error {
	switch {
	case errors.Is(err, upstream.ErrClientGone):
		return err
	case s.Ended() != nil:
		return upstream.Because(upstream.ErrClientGone, err)
	case !deadline.IsZero() && !time.Now().Before(deadline):
		return upstream.Because(upstream.ErrRequestTimeout, err)
	}
	return err
}

// exchange sends out (the head, and the body after it) to b and relays
// the response. An error means nothing was written to the client.
func (d *h2Direct) exchange(s *h2front.Stream, fr *fast.Route, b *upstream.Backend, sc *h2Scratch, out, buf []byte,
	deadline time.Time, replayable bool) (directResult, error) {
	fb := b.Conns
	for fresh := false; ; fresh = true {
		bc := (*upstream.Conn)(nil)
		if !fresh {
			bc = fb.Idle()
		}
		if bc == nil {
			ctx, cancel := d.base, context.CancelFunc(func() {})
			if !deadline.IsZero() {
				ctx, cancel = context.WithDeadline(ctx, deadline)
			}
			var err error
			bc, err = fb.Dial(ctx)
			cancel()
			if err != nil {
				return directResult{}, err
			}
		}
		if !s.Interrupt(bc.C) {
			bc.Close()
			return directResult{}, upstream.ErrClientGone
		}
		start := time.Now()
		if !deadline.IsZero() {
			bc.C.SetWriteDeadline(deadline)
		}
		hdl := deadline
		if t := fr.HeaderTimeout; t > 0 {
			if t := start.Add(t); hdl.IsZero() || t.Before(hdl) {
				hdl = t
			}
		}
		bc.C.SetReadDeadline(hdl)
		_, err := bc.C.Write(out)
		var n int
		if err == nil {
			n, err = readFinalHead(bc, &sc.rh)
		}
		if err == nil {
			return d.relay(s, fr, b, bc, sc, n, buf, deadline, start), nil
		}
		ended := !s.Interrupt(nil)
		bc.Close()
		if ended {
			return directResult{}, upstream.Because(upstream.ErrClientGone, err)
		}
		if err = upstream.HeaderTimeout(err); !upstream.RetryFresh(bc, replayable, err) {
			return directResult{}, err
		}
		// A reused connection the backend had closed: again on a new
		// one, as http.Transport does.
	}
}

// readFinalHead reads the response head after any 1xx (dropped, as
// syncExchange does); 101 is a bad response (no upgrade is sent).
func readFinalHead(bc *upstream.Conn, rh *upstream.RespHead) (int, error) {
	for {
		n, err := upstream.ReadRespHead(bc.R, rh)
		switch {
		case err != nil:
			return 0, err
		case rh.Code == http.StatusSwitchingProtocols:
			return 0, upstream.ErrBadResponse
		case rh.Code >= 200:
			return n, nil
		}
		bc.R.Discard(n)
	}
}

// relay writes the response head and body to the stream, and returns
// the backend connection to its pool once the body is read, if it can be
// reused. A body that breaks off resets the stream.
func (d *h2Direct) relay(s *h2front.Stream, fr *fast.Route, b *upstream.Backend, bc *upstream.Conn, sc *h2Scratch,
	n int, buf []byte, deadline, start time.Time) directResult {
	rh := &sc.rh
	fr.Policy.Answered(b)
	b.Metrics.Codes.Inc(rh.Code)
	b.Metrics.Duration.Observe(time.Since(start).Seconds())
	in := upstream.BodyClose
	switch {
	case s.Method == http.MethodHead || rh.Code == http.StatusNoContent || rh.Code == http.StatusNotModified:
		in = upstream.BodyNone
	case rh.Chunked:
		in = upstream.BodyChunked
	case rh.HasCL:
		in = upstream.BodyLength
	}
	cl := int64(-1)
	if rh.HasCL && rh.Code != http.StatusNoContent {
		cl = rh.CL
	}
	sc.resp.set(rh, cl)
	sc.resp.altSvc = d.altSvcValue()
	s.WriteHead(h2front.Head{Status: rh.Code, Fields: &sc.resp, HasDate: rh.HasDate, HasType: rh.HasCT,
		HasLength: cl >= 0, HasEncoding: rh.HasCE})
	keep := !rh.Conn.Close && (!rh.HTTP10 || rh.Conn.KeepAlive) && in != upstream.BodyClose
	bc.R.Discard(n)
	if in != upstream.BodyNone {
		bc.C.SetReadDeadline(deadline) // the body has the request's deadline, not the head's
	}
	release := func(complete bool) {
		if s.Interrupt(nil) && complete && keep && bc.R.Buffered() == 0 {
			b.Conns.Put(bc)
		} else {
			bc.Close()
		}
	}
	res := directResult{code: rh.Code}
	var err error
	switch in {
	case upstream.BodyNone:
		release(true)
		return res
	case upstream.BodyLength:
		for left := rh.CL; left > 0 && err == nil; {
			var m int
			m, err = bc.R.Read(buf[:min(int64(len(buf)), left)])
			left -= int64(m)
			if m > 0 {
				if _, werr := s.Write(buf[:m]); werr != nil {
					release(false)
					return res // the client is gone: nothing more to send
				}
				res.bytes += int64(m)
			}
			if left == 0 {
				err = nil
			}
		}
	default:
		var src io.Reader = bc.R
		if in == upstream.BodyChunked {
			src = httputil.NewChunkedReader(bc.R)
		}
		for err == nil {
			var m int
			m, err = src.Read(buf)
			if m > 0 {
				if _, werr := s.Write(buf[:m]); werr != nil {
					release(false)
					return res
				}
				res.bytes += int64(m)
				s.Flush()
			}
		}
		if err == io.EOF {
			err = nil
			if in == upstream.BodyChunked {
				err = d.readTrailers(bc, sc)
				if err == nil && len(sc.trailers.names) > 0 {
					s.Trailers(&sc.trailers)
				}
			}
		}
	}
	release(err == nil)
	if err != nil {
		s.Reset()
	}
	return res
}

// readTrailers reads a chunked body's trailer section into sc.trailers.
func (d *h2Direct) readTrailers(bc *upstream.Conn, sc *h2Scratch) error {
	t := &sc.trailers
	t.names, t.values = t.names[:0], t.values[:0]
	total := 0
	for {
		line, err := bc.R.ReadSlice('\n')
		if err != nil {
			return err
		}
		if total += len(line); total > 8<<10 {
			return upstream.ErrBadResponse
		}
		if string(line) == "\r\n" {
			return nil
		}
		if len(line) < 2 || line[len(line)-2] != '\r' {
			return upstream.ErrBadResponse
		}
		f, ok := h1.SplitField(line[:len(line)-2])
		if !ok {
			return upstream.ErrBadResponse
		}
		name := strings.ToLower(strings.TrimSpace(string(f.Name)))
		if h1.IsHopHeader([]byte(name)) || name == "content-length" || name == "transfer-encoding" || name == "trailer" {
			continue
		}
		t.names = append(t.names, name)
		t.values = append(t.values, string(f.Value))
	}
}

// fail answers an error as errorHandler does (answerFor): nothing when
// the client is gone.
func (d *h2Direct) fail(s *h2front.Stream, fr *fast.Route, err error) directResult {
	code, msg, retryAfter := fr.Policy.Answer(err)
	res := directResult{code: code, reason: msg}
	var be *upstream.BackendError
	if errors.As(err, &be) {
		res.backend = be.Backend
	}
	if code == upstream.StatusClientClosed {
		if s.Ended() == nil {
			s.Reset()
		}
		return res
	}
	ef := &errorFields{retry: -1}
	if retryAfter {
		ef.retry = fr.Policy.RetryAfter()
	}
	body := limits.ErrorBody(msg)
	ef.length = len(body)
	s.WriteHead(h2front.Head{Status: code, Fields: ef, HasType: true, HasLength: true})
	s.Write([]byte(body))
	res.bytes = int64(len(body))
	return res
}

// altSvcValue is the Alt-Svc value the handler chain's altSvc adds, or
// "" when HTTP/3 is off.
func (d *h2Direct) altSvcValue() string {
	d.altSvcOnce.Do(func() {
		if d.altSvcLines == nil {
			return
		}
		for _, l := range strings.Split(string(d.altSvcLines()), "\r\n") {
			if v, ok := strings.CutPrefix(l, "Alt-Svc: "); ok {
				d.altSvc = v
				return
			}
		}
	})
	return d.altSvc
}
