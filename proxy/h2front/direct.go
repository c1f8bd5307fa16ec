package h2front

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"time"

	"golang.org/x/net/http2/hpack"
)

// Direct serves requests without an http.Request or a Handler: a proxy
// route that relays bytes needs neither, and building them (the request,
// its header map, URL and context, the response's header map) was a
// third of the allocations per proxied request.
type Direct interface {
	// ServeDirect is called in the stream's goroutine, before the
	// Handler. It serves s and returns true, or returns false having
	// used nothing of s but its request fields: the Handler serves the
	// request.
	ServeDirect(s *Stream) bool
}

// Stream is a request for Direct, checked as for the Handler (RFC 9113's
// rules on fields, :authority, :path), and its response. Requests whose
// header list was too large, CONNECT, and requests that declare trailers
// are not offered to Direct.
type Stream struct {
	Method, Authority string
	// Path is :path as sent (query included): a '/' and then no control
	// byte, every '%' an escape.
	Path string
	// Fields are the regular fields, in order, with lower-case names;
	// a cookie may come in several.
	Fields []hpack.HeaderField
	// ContentLength is the body's declared length: 0 when HEADERS ended
	// the stream, -1 when it is not declared.
	ContentLength int64
	Remote        string
	TLS           *tls.ConnectionState
	// Conn is the connection's context (ConnContext's values); it ends
	// with the connection.
	Conn context.Context

	st *stream
}

// Head is a response head for Stream.WriteHead.
type Head struct {
	Status int
	// Fields writes the fields: lower-case names, valid values, no
	// connection-specific field.
	Fields Fields
	// HasDate, HasType, HasLength: Fields writes date, content-type,
	// content-length. Else a date is added, a content-type sniffed from
	// the body (unless HasEncoding), and a content-length added when the
	// whole body is written before the stream's end.
	HasDate, HasType, HasLength, HasEncoding bool
}

// Fields writes header fields with enc.
type Fields interface {
	WriteFields(enc func(name, value string))
}

// Trailers sets the response's trailers: they end the stream after the
// body.
func (s *Stream) Trailers(f Fields) { s.st.rw.dtrailers = f }

// Body is the request body; nil when there is none.
func (s *Stream) Body() io.Reader {
	if s.st.body == nil {
		return nil
	}
	return s.st.body
}

// WriteHead sets the response head; it leaves with the first Flush, the
// first body bytes past the buffer, or the stream's end. Only the first
// call counts; informational statuses are not for Direct.
func (s *Stream) WriteHead(h Head) {
	w := &s.st.rw
	if w.status != 0 || h.Status < 200 || h.Status > 999 {
		return
	}
	w.direct = true
	w.dh = h
	w.status = h.Status
}

// Write writes body bytes (buffered: see WriteHead); the head must have
// been set.
func (s *Stream) Write(p []byte) (int, error) {
	if s.st.rw.status == 0 {
		return 0, http.ErrBodyNotAllowed
	}
	return s.st.rw.Write(p)
}

// End completes the response: the head, the body buffered, the
// trailers. Direct calls it before it returns true, or it is called
// after (the fields the head refers to must live until then).
func (s *Stream) End() error { return s.st.rw.finish() }

// Flush sends the head and the body written so far.
func (s *Stream) Flush() error { return s.st.rw.FlushError() }

// Reset abandons the response (a backend body that broke off): the
// stream is reset (RST_STREAM INTERNAL_ERROR).
func (s *Stream) Reset() { s.st.reset() }

// Interrupt registers c as the connection the stream waits on: the
// stream's end (reset by the client, its deadline, the connection's end)
// sets c's deadline in the past. It reports false if the stream has
// already ended (c is not registered). Interrupt(nil) unregisters and
// reports false if the stream ended meanwhile (c's deadline may have
// been set: c is not to be reused).
func (s *Stream) Interrupt(c interface{ SetDeadline(time.Time) error }) bool {
	st := s.st
	st.c.mu.Lock()
	defer st.c.mu.Unlock()
	if c == nil {
		st.interrupt = nil
		return !st.aborted
	}
	if st.aborted {
		return false
	}
	st.interrupt = c
	return true
}

// Ended is why the stream ended before its response did (the client
// reset it, a deadline, the connection ended), or nil.
func (s *Stream) Ended() error { return s.st.endedEarly() }

// Date is the Date header's value now.
func (s *Stream) Date() string { return s.st.c.s.date() }

// directOK reports whether Direct may be offered st.
func (st *stream) directOK() bool {
	hd := &st.head
	return !st.truncated && hd.method != http.MethodConnect && !hd.checkURL && len(hd.trailer) == 0
}
