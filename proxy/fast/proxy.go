package fast

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/edgeshim/edgeshim/limits"
	"github.com/edgeshim/edgeshim/limits/accesslog"
	"github.com/edgeshim/edgeshim/proxy/internal/h1"
	"github.com/edgeshim/edgeshim/proxy/upstream"
)

// request is what the fast path keeps of a request once its head is
// consumed.
type request struct {
	head        bool // HEAD: no response body
	http10      bool
	closeAfter  bool // the client asked for close (or HTTP/1.0 without keep-alive)
	keepAlive10 bool // HTTP/1.0 with Connection: keep-alive
	replayable  bool // may be sent again on a fresh connection (replayableReq)
	idempotent  bool // may go to another backend after a dial failure (idempotentReq)
	body        int64
	bodyLeft    int64 // body bytes not yet read from the client
	method      []byte
	path, query []byte // the clean path routed on; the query with its '?'
	deadline    time.Time
}

// proxy serves one fast request. It returns whether the connection goes
// on.
func (fc *Conn) proxy(fr *Route, headLen int, t0 time.Time) bool {
	fs, rp := fc.fs, fr
	h := &fc.h
	req := request{
		head: string(h.method) == http.MethodHead, http10: h.http10, body: h.contentLength,
		closeAfter:  h.conn.Close || (h.http10 && !h.conn.KeepAlive),
		keepAlive10: h.http10 && h.conn.KeepAlive && !h.conn.Close,
	}
	req.replayable, req.idempotent = upstream.Replayable(h.method, req.body > 0), upstream.Idempotent(h.method, req.body > 0)
	if d := rp.RequestTimeout; d > 0 {
		req.deadline = t0.Add(d)
	}
	bufp := fs.bufs.Get()
	defer fs.bufs.Put(bufp)

	// The outgoing head after its request line; the request line goes in
	// front of it, per backend, in the room left at the start of buf.
	room := len(h.method) + len(h.target) + fr.MaxPath + 16
	buf := fc.appendOutHead(bufp[:room], rp, h)
	fc.method = append(fc.method[:0], h.method...)
	req.method = fc.method
	// The target outlives the head's bytes, consumed below.
	fc.target = append(fc.target[:0], h.target...)
	req.path, req.query = fc.target[:len(h.path)], fc.target[len(h.path):]
	fc.br.Discard(headLen)
	if req.body > 0 {
		// read bounds the whole request, body included (from the head's
		// first byte, close enough).
		if fs.read > 0 {
			fc.readDeadline(t0.Add(fs.read), 0)
		} else {
			fc.readDeadline(time.Time{}, 0)
		}
	}
	if fs.write > 0 {
		// A deadline set up to a second ago is kept: one call less per
		// request, at the price of a bound up to 1s shorter.
		fc.writeDeadline(t0.Add(fs.write), time.Second)
	}
	// A body that fits goes in the same write as the head.
	req.bodyLeft = req.body
	var res result
	if req.body > 0 && req.body <= int64(cap(buf)-len(buf)) {
		n := len(buf)
		buf = buf[:n+int(req.body)]
		m, err := io.ReadFull(fc.br, buf[n:])
		if req.bodyLeft -= int64(m); err != nil {
			res = fc.fail(fr, &req, upstream.BodyError(err)) // nothing was sent
		}
	}
	if res.code == 0 {
		res = fc.roundTrip(fr, &req, buf, room)
	}
	fr.Requests.Inc(res.code)
	fr.Duration.Observe(time.Since(t0).Seconds())
	if al := fs.alog; al.Sampled(res.code) && !rp.NoLog {
		fc.accessLog(al, rp, &req, &res, t0)
	}
	return res.keep && !fc.l.Draining()
}

// appendOutHead appends the outgoing header lines: Host, the client's
// fields but the hop-by-hop ones, X-Forwarded-For/-Host/-Proto and
// Forwarded (upstream.Forwarded, as net/http's path sets them),
// Content-Length, and Te: trailers if the client sent it; then the blank
// line. It is rewrite and http.Request.Write on a reqHead.
func (fc *Conn) appendOutHead(b []byte, rp *Route, h *reqHead) []byte {
	f := upstream.Forwarded[[]byte]{Peer: fc.peer, Host: h.host, TLS: true, Trusted: rp.Trusted.Has(fc.peer), XFF: fc.xff[:0], Fwd: fc.fwd[:0]}
	b = append(b, "Host: "...)
	b = append(b, h.host...)
	b = append(b, "\r\n"...)
	for i := range h.fields {
		switch fl := &h.fields[i]; fl.Kind {
		case h1.Pass:
			b = appendField(b, fl.Name, fl.Value)
		case h1.XFF:
			f.XFF = append(f.XFF, fl.Value)
		case h1.XFH:
			if f.XFH == nil {
				f.XFH = fl.Value
			}
		case h1.XFP:
			if f.XFP == nil {
				f.XFP = fl.Value
			}
		case h1.Fwd:
			f.Fwd = append(f.Fwd, fl.Value)
		}
	}
	fc.xff, fc.fwd = f.XFF[:0], f.Fwd[:0] // scratch kept for the next request
	b = f.AppendLines(b)
	switch m := string(h.method); {
	case h.contentLength > 0, m == http.MethodPost || m == http.MethodPut || m == http.MethodPatch:
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, h.contentLength, 10)
		b = append(b, "\r\n"...)
	}
	if h.teTrailers {
		b = append(b, "Te: trailers\r\n"...)
	}
	return append(b, "\r\n"...)
}

func appendField(b, name, value []byte) []byte {
	b = append(b, name...)
	b = append(b, ": "...)
	b = append(b, value...)
	return append(b, "\r\n"...)
}

// appendRequestLine writes "METHOD path HTTP/1.1\r\n" for a backend whose
// URL path is base (appendOutPath, strip_prefix with strip).
func appendRequestLine(b, method []byte, base, strip string, req *request) []byte {
	b = append(b, method...)
	b = append(b, ' ')
	b = upstream.AppendOutPath(b, base, strip, req.path)
	b = append(b, req.query...)
	return append(b, " HTTP/1.1\r\n"...)
}

type result struct {
	code    int
	keep    bool
	bytes   int64  // response body bytes written
	backend string // the backend that answered or failed, for the access log
	reason  string // an error answer's message
}

// roundTrip is the policy's retry loop (attempts) on the fast path: it
// exchanges the request and response with a backend, or answers the error
// as errorHandler does (classify). buf holds the outgoing head after its
// request line (and the body if it fits), with room bytes free in front.
func (fc *Conn) roundTrip(fr *Route, req *request, buf []byte, room int) result {
	rp := fr
	a := rp.Up.Attempts(req.idempotent)
	for {
		b, err := a.Next()
		if err != nil {
			return fc.fail(fr, req, err)
		}
		fc.line = appendRequestLine(fc.line[:0], req.method, b.Conns.Path, rp.Strip, req)
		out := buf[room-len(fc.line):]
		copy(out, fc.line)
		start := time.Now()
		b.Begin()
		res, err := fc.exchange(fr, b, req, out, start)
		b.End()
		if err == nil {
			res.backend = b.Name
			return res
		}
		err = fc.why(req, err)
		if a.Failed(b, err) {
			continue
		}
		return fc.fail(fr, req, b.Failed(err))
	}
}

// why adds what the fast path knows of a failed exchange to err: the
// client went away, the server is closing the connection, the route's
// request timeout passed.
func (fc *Conn) why(req *request, err error) error {
	switch {
	case fc.gone.Load():
		return upstream.Because(upstream.ErrClientGone, err)
	case fc.isAborted():
		return upstream.Because(upstream.ErrAborted, err)
	case !req.deadline.IsZero() && !time.Now().Before(req.deadline):
		return upstream.Because(upstream.ErrRequestTimeout, err)
	}
	return err
}

// exchange sends the request to b and relays the response. An error
// means nothing was written to the client.
func (fc *Conn) exchange(fr *Route, b *upstream.Backend, req *request, out []byte, start time.Time) (result, error) {
	fb := b.Conns
	rp := fr
	fresh := false
	var bc *upstream.Conn
	defer func() {
		if bc != nil {
			fc.setBackend(nil)
		}
	}()
	for {
		var err error
		bc, err = fc.getBackendConn(fb, req, fresh)
		if err != nil {
			return result{}, err
		}
		if !req.deadline.IsZero() {
			bc.C.SetWriteDeadline(req.deadline)
		}
		_, err = bc.C.Write(out)
		if err == nil && req.bodyLeft > 0 {
			err = fc.sendBody(bc, req, out[:cap(out)])
		}
		if err == nil {
			var n int
			n, err = fc.readResponseHead(bc, req, rp, start)
			if err == nil {
				return fc.relay(fr, b, bc, req, n, out[:0], start), nil
			}
		}
		retry := !fc.gone.Load() && upstream.RetryFresh(bc, req.replayable, err)
		bc.Close()
		if !retry {
			return result{}, err
		}
		// A reused connection the backend had closed: again on a new one,
		// as http.Transport does.
		fresh = true
	}
}

func (fc *Conn) getBackendConn(fb *upstream.Conns, req *request, fresh bool) (*upstream.Conn, error) {
	bc := (*upstream.Conn)(nil)
	if !fresh {
		bc = fb.Idle()
	}
	if bc == nil {
		ctx, cancel := fc.fs.base, context.CancelFunc(func() {})
		if !req.deadline.IsZero() {
			ctx, cancel = context.WithDeadline(ctx, req.deadline)
		}
		var err error
		bc, err = fb.Dial(ctx)
		cancel()
		if err != nil {
			return nil, err
		}
	}
	if !fc.setBackend(bc) {
		bc.Close()
		return nil, upstream.ErrAborted
	}
	return bc, nil
}

// sendBody streams the rest of the request body to the backend.
func (fc *Conn) sendBody(bc *upstream.Conn, req *request, buf []byte) error {
	for req.bodyLeft > 0 {
		n, err := fc.br.Read(buf[:min(int64(len(buf)), req.bodyLeft)])
		req.bodyLeft -= int64(n)
		if n > 0 {
			if _, werr := bc.C.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err != nil {
			return upstream.BodyError(err)
		}
	}
	return nil
}

// readResponseHead waits for the response head, up to the response
// header timeout; past watchAfter it watches the client connection in a
// goroutine (net/http's background read), so that a client that goes
// away ends the wait.
func (fc *Conn) readResponseHead(bc *upstream.Conn, req *request, rp *Route, start time.Time) (int, error) {
	hdrDeadline := req.deadline
	if d := rp.HeaderTimeout; d > 0 {
		if t := start.Add(d); hdrDeadline.IsZero() || t.Before(hdrDeadline) {
			hdrDeadline = t
		}
	}
	quick := start.Add(watchAfter)
	watch := fc.br.Buffered() == 0 && !fc.stashed && (hdrDeadline.IsZero() || quick.Before(hdrDeadline))
	if watch {
		bc.C.SetReadDeadline(quick)
	} else {
		bc.C.SetReadDeadline(hdrDeadline)
	}
	n, err := upstream.ReadRespHead(bc.R, &fc.rh)
	if err == nil || !watch || !upstream.IsTimeout(err) {
		return n, upstream.HeaderTimeout(err)
	}
	bc.C.SetReadDeadline(hdrDeadline)
	done := make(chan struct{})
	fc.readDeadline(time.Time{}, 0)
	go fc.watch(bc, done)
	n, err = upstream.ReadRespHead(bc.R, &fc.rh)
	fc.tc.SetReadDeadline(aLongTimeAgo)
	<-done
	fc.tc.SetReadDeadline(time.Time{})
	if fc.gone.Load() {
		return 0, upstream.ErrClientGone
	}
	return n, upstream.HeaderTimeout(err)
}

// watch reads one byte from the client: a pipelined request's first byte
// is kept for Read; an error other than the deadline that stops the
// watch means the client went away, and the backend wait is cut short.
func (fc *Conn) watch(bc *upstream.Conn, done chan struct{}) {
	defer close(done)
	n, err := fc.tc.Read(fc.stash[:])
	if n == 1 {
		fc.stashed = true
		return
	}
	if err != nil && !upstream.IsTimeout(err) {
		fc.gone.Store(true)
		bc.C.SetReadDeadline(aLongTimeAgo)
	}
}

// relay writes the response head and streams the body to the client,
// then returns the backend connection to the pool if it can be reused.
// The backend's head is buffered in bc.R (n bytes).
func (fc *Conn) relay(fr *Route, b *upstream.Backend, bc *upstream.Conn, req *request, n int, buf []byte, start time.Time) result {
	rh := &fc.rh
	rp := fr
	for rh.Code != http.StatusSwitchingProtocols && rh.Code < 200 {
		// 1xx: passed on (ReverseProxy does), then the real response.
		if !req.http10 {
			buf = fc.appendRespHead(buf[:0], rh, upstream.BodyNone, req, false)
			if _, err := fc.tc.Write(buf); err != nil {
				bc.Close()
				return result{code: rh.Code}
			}
		}
		bc.R.Discard(n)
		bc.C.SetReadDeadline(req.deadline)
		var err error
		if n, err = upstream.ReadRespHead(bc.R, rh); err != nil {
			// The 1xx went out: counted and logged, nothing more is
			// answered.
			bc.Close()
			err = b.Failed(fc.why(req, upstream.HeaderTimeout(err)))
			rp.Up.Fault(b, err)
			code, msg, _ := rp.Policy.Answer(err)
			return result{code: code, backend: b.Name, reason: msg}
		}
	}
	if rh.Code == http.StatusSwitchingProtocols {
		bc.Close()
		return fc.fail(fr, req, upstream.ErrBadResponse)
	}
	rp.Policy.Answered(b)
	b.Metrics.Codes.Inc(rh.Code)
	b.Metrics.Duration.Observe(time.Since(start).Seconds())

	in := upstream.BodyClose
	switch {
	case req.head || rh.Code == http.StatusNoContent || rh.Code == http.StatusNotModified:
		in = upstream.BodyNone
	case rh.Chunked:
		in = upstream.BodyChunked
	case rh.HasCL:
		in = upstream.BodyLength
	}
	outF := in
	if (in == upstream.BodyChunked || in == upstream.BodyClose) && req.http10 {
		outF = upstream.BodyClose // HTTP/1.0 has no chunked: the body ends with the connection
	} else if in == upstream.BodyClose {
		outF = upstream.BodyChunked
	}
	keepClient := !req.closeAfter && outF != upstream.BodyClose && req.bodyLeft == 0 && !fc.l.Draining()
	if req.http10 && outF != upstream.BodyLength && outF != upstream.BodyNone {
		keepClient = false
	}
	buf = fc.appendRespHead(buf[:0], rh, outF, req, keepClient)
	bc.R.Discard(n)
	keepBackend := !rh.Conn.Close && (!rh.HTTP10 || rh.Conn.KeepAlive) && in != upstream.BodyClose
	if in != upstream.BodyNone && !(in == upstream.BodyLength && int64(bc.R.Buffered()) >= rh.CL) {
		// The body has the request's deadline, not the head's.
		bc.C.SetReadDeadline(req.deadline)
	}
	// The backend connection goes back to the pool as soon as its
	// response is read, before the client has all of it (as with
	// http.Transport), so that the client's next request finds it.
	// net/http sniffs a Content-Type for a body of known length that has
	// none (and no Content-Encoding) from its first bytes: the head waits
	// for them. (A streamed body's head is flushed before it, by a timer
	// that races with the first write: mostly not sniffed; never here.)
	sniff := -1
	if in == upstream.BodyLength && !rh.HasCT && !rh.HasCE {
		sniff = len(buf)
	}
	ok := true
	var sent int64
	switch in {
	case upstream.BodyNone:
		fc.releaseBackend(b, bc, keepBackend)
		_, err := fc.tc.Write(buf)
		ok = err == nil
	case upstream.BodyLength:
		var rest []byte
		if rest, ok = fc.relayLength(bc, rh.CL, buf, sniff); ok {
			fc.releaseBackend(b, bc, keepBackend)
			_, err := fc.tc.Write(rest)
			ok = err == nil
			sent = rh.CL
		}
	default:
		if ok = fc.relayStream(bc, in, outF, buf, &sent); ok {
			fc.releaseBackend(b, bc, keepBackend)
		}
	}
	if !ok {
		bc.Close()
		return result{code: rh.Code, bytes: sent}
	}
	return result{code: rh.Code, keep: keepClient, bytes: sent}
}

// releaseBackend returns bc to the pool if it can be reused, else
// closes it.
func (fc *Conn) releaseBackend(b *upstream.Backend, bc *upstream.Conn, keep bool) {
	if fc.setBackend(nil) && keep && bc.R.Buffered() == 0 {
		b.Conns.Put(bc)
	} else {
		bc.Close()
	}
}

// appendRespHead writes the status line and the backend's fields but the
// hop-by-hop ones, with the framing headers of out, Date if the backend
// sent none, Alt-Svc with HTTP/3, and Connection as net/http writes it.
func (fc *Conn) appendRespHead(b []byte, rh *upstream.RespHead, out int, req *request, keep bool) []byte {
	b = appendStatusLine(b, req.http10, rh.Code)
	for i := range rh.Fields {
		f := &rh.Fields[i]
		if f.Kind == h1.Pass || (f.Kind == h1.Trailer && out == upstream.BodyChunked) {
			b = appendField(b, f.Name, f.Value)
		}
	}
	if rh.Code >= 200 {
		switch {
		case out == upstream.BodyLength || (out == upstream.BodyNone && rh.HasCL && rh.Code != http.StatusNoContent):
			b = append(b, "Content-Length: "...)
			b = strconv.AppendInt(b, rh.CL, 10)
			b = append(b, "\r\n"...)
		case out == upstream.BodyChunked:
			b = append(b, "Transfer-Encoding: chunked\r\n"...)
		}
		if !rh.HasDate {
			b = fc.fs.appendDate(b)
		}
		b = fc.appendConnection(b, req, keep)
	}
	return append(b, "\r\n"...)
}

func appendStatusLine(b []byte, http10 bool, code int) []byte {
	if http10 {
		b = append(b, "HTTP/1.0 "...)
	} else {
		b = append(b, "HTTP/1.1 "...)
	}
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, ' ')
	if t := http.StatusText(code); t != "" {
		b = append(b, t...)
	} else {
		b = append(b, "status code "...)
		b = strconv.AppendInt(b, int64(code), 10)
	}
	return append(b, "\r\n"...)
}

// appendDate adds a Date line, formatted once a second.
func (fs *Server) appendDate(b []byte) []byte {
	now := time.Now()
	d := fs.date.Load()
	if d == nil || d.sec != now.Unix() {
		line := now.UTC().AppendFormat([]byte("Date: "), http.TimeFormat)
		d = &dateCache{sec: now.Unix(), line: append(line, "\r\n"...)}
		fs.date.Store(d)
	}
	return append(b, d.line...)
}

type dateCache struct {
	sec  int64
	line []byte
}

// appendConnection adds Alt-Svc (HTTP/3 on) and Connection as net/http
// does: close when the connection ends after this response (HTTP/1.1),
// keep-alive for an HTTP/1.0 keep-alive.
func (fc *Conn) appendConnection(b []byte, req *request, keep bool) []byte {
	b = append(b, fc.fs.altSvcLine()...)
	switch {
	case !keep && !req.http10:
		b = append(b, "Connection: close\r\n"...)
	case keep && req.keepAlive10:
		b = append(b, "Connection: keep-alive\r\n"...)
	}
	return b
}

// relayLength reads a body of n bytes and writes all but the last of it;
// it returns what is left to write. buf holds the response head; sniff,
// if not -1, is where the head ends and a sniffed Content-Type goes in
// front of the first bytes. Data is written when the backend has no more
// buffered (so that a slow body streams) or buf is full.
func (fc *Conn) relayLength(bc *upstream.Conn, n int64, buf []byte, sniff int) ([]byte, bool) {
	all := buf[:cap(buf)]
	buf = buf[: len(buf) : cap(buf)-sniffRoom]
	for n > 0 {
		if len(buf) == cap(buf) {
			if _, err := fc.tc.Write(buf); err != nil {
				return nil, false
			}
			buf = buf[:0]
		}
		m, err := bc.R.Read(buf[len(buf):min(cap(buf), len(buf)+int(min(n, int64(cap(buf)))))])
		buf = buf[:len(buf)+m]
		n -= int64(m)
		if sniff >= 0 && m > 0 {
			buf, sniff = insertContentType(all[:len(buf)], sniff, buf[sniff:]), -1
		}
		if n == 0 {
			break
		}
		if err != nil {
			return nil, false
		}
		if bc.R.Buffered() > 0 && len(buf) < cap(buf) {
			continue
		}
		if _, err := fc.tc.Write(buf); err != nil {
			return nil, false
		}
		buf = buf[:0]
	}
	return buf, true
}

// sniffRoom is kept free at the end of a buffer for a sniffed
// Content-Type line.
const sniffRoom = 64

// insertContentType puts "Content-Type: <sniffed>" at the end of the head
// that ends at at (before its blank line), sniffed from the first bytes
// of the body, as net/http's response writer does.
func insertContentType(buf []byte, at int, body []byte) []byte {
	line := "Content-Type: " + http.DetectContentType(body) + "\r\n"
	n := len(buf)
	buf = buf[:n+len(line)]
	copy(buf[at-2+len(line):], buf[at-2:n])
	copy(buf[at-2:], line)
	return buf
}

// relayStream copies a chunked or until-close body, out chunked or
// raw (then the connection closes). Chunk framing is checked; trailers
// are passed on when out is chunked.
func (fc *Conn) relayStream(bc *upstream.Conn, in, out int, buf []byte, sent *int64) bool {
	if _, err := fc.tc.Write(buf); err != nil {
		return false
	}
	// Room in front of the data for a chunk-size line and after it for
	// the chunk's CRLF: one write per chunk.
	const front = 24
	frame := buf[:cap(buf)-8]
	data := frame[front:]
	emit := func(p []byte) bool { // p is data[:len(p)]
		*sent += int64(len(p))
		if out == upstream.BodyChunked {
			var hdr [20]byte
			h := strconv.AppendUint(hdr[:0], uint64(len(p)), 16)
			h = append(h, "\r\n"...)
			start := front - len(h)
			copy(frame[start:], h)
			p = append(frame[start:front+len(p)], "\r\n"...)
		}
		_, err := fc.tc.Write(p)
		return err == nil
	}
	if in == upstream.BodyClose {
		for {
			n, err := bc.R.Read(data)
			if n > 0 && !emit(data[:n]) {
				return false
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				return false
			}
		}
		return fc.endChunked(out, nil)
	}
	for {
		line, err := bc.R.ReadSlice('\n')
		if err != nil {
			return false
		}
		size, ok := upstream.ChunkSizeLine(line)
		if !ok {
			return false
		}
		if size == 0 {
			break
		}
		for size > 0 {
			n, err := bc.R.Read(data[:min(uint64(len(data)), size)])
			size -= uint64(n)
			if n > 0 && !emit(data[:n]) {
				return false
			}
			if err != nil && size > 0 {
				return false
			}
		}
		if crlf, err := bc.R.ReadSlice('\n'); err != nil || string(crlf) != "\r\n" {
			return false
		}
	}
	// Trailer lines, then the blank line.
	trailers := frame[:0]
	for {
		line, err := bc.R.ReadSlice('\n')
		if err != nil || len(trailers)+len(line) > 8<<10 {
			return false
		}
		if string(line) == "\r\n" {
			break
		}
		if len(line) < 2 || line[len(line)-2] != '\r' {
			return false
		}
		if _, ok := h1.SplitField(line[:len(line)-2]); !ok {
			return false
		}
		trailers = append(trailers, line...)
	}
	return fc.endChunked(out, trailers)
}

// endChunked writes the last chunk and the trailers when out is chunked.
func (fc *Conn) endChunked(out int, trailers []byte) bool {
	if out != upstream.BodyChunked {
		return true
	}
	last := append(append(append(make([]byte, 0, len(trailers)+5), "0\r\n"...), trailers...), "\r\n"...)
	_, err := fc.tc.Write(last)
	return err == nil
}

// fail answers an error as errorHandler does (answerFor): nothing when
// the client is gone or the server closes the connection.
func (fc *Conn) fail(fr *Route, req *request, err error) result {
	code, msg, retryAfter := fr.Policy.Answer(err)
	if code == upstream.StatusClientClosed || errors.Is(err, upstream.ErrAborted) {
		return result{code: code, reason: msg}
	}
	retry := -1
	if retryAfter {
		retry = fr.Policy.RetryAfter()
	}
	keep := !req.closeAfter && req.bodyLeft == 0 && !fc.l.Draining()
	resp := fc.appendError(nil, req, code, msg, retry, keep)
	_, werr := fc.tc.Write(resp)
	res := result{code: code, keep: keep && werr == nil, bytes: int64(len(limits.ErrorBody(msg))), reason: msg}
	var be *upstream.BackendError
	if errors.As(err, &be) {
		res.backend = be.Backend
	}
	return res
}

// accessLog writes a fast request's access log line.
func (fc *Conn) accessLog(al *accesslog.Logger, rp *Route, req *request, res *result, t0 time.Time) {
	cs := fc.tc.ConnectionState()
	target := fc.target[:len(fc.target)-len(req.query)]
	rec := &accesslog.Record{Start: t0, Client: fc.tc.RemoteAddr().String(), Proto: "HTTP/1.1", Host: string(fc.host),
		Method: string(req.method), Path: string(target), Route: rp.Name, Upstream: res.backend, Reason: res.reason}
	if req.http10 {
		rec.Proto = "HTTP/1.0"
	}
	if len(req.query) > 1 {
		rec.RawQuery = string(req.query[1:])
	}
	rec.SetTLS(&cs)
	al.Write(rec, res.code, res.bytes)
}

// appendError writes limits.WriteError's response as net/http sends it.
func (fc *Conn) appendError(b []byte, req *request, code int, msg string, retry int, keep bool) []byte {
	body := limits.ErrorBody(msg)
	b = appendStatusLine(b, req.http10, code)
	b = append(b, "Content-Type: application/json\r\n"...)
	if retry >= 0 {
		b = append(b, "Retry-After: "...)
		b = strconv.AppendInt(b, int64(retry), 10)
		b = append(b, "\r\n"...)
	}
	b = append(b, "X-Content-Type-Options: nosniff\r\n"...)
	b = fc.fs.appendDate(b)
	b = append(b, "Content-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, "\r\n"...)
	b = fc.appendConnection(b, req, keep)
	b = append(b, "\r\n"...)
	return append(b, body...)
}
