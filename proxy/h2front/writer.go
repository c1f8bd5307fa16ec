package h2front

import (
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// bodyBufSize is how much of a response body is buffered before DATA
// frames are written: a response up to it leaves with its HEADERS, with a
// Content-Length.
const bodyBufSize = 16 << 10

// responseWriter is a stream's http.ResponseWriter. It is used by the
// handler's goroutine only.
type responseWriter struct {
	st        *stream
	req       *http.Request
	header    http.Header // nil for Direct: dh
	head      bool        // a HEAD request: no body is sent
	direct    bool        // Direct serves the stream: dh is the head
	dh        Head
	autoLen   bool   // Direct: a content-length of buf goes with the head
	dtrailers Fields // Direct: the trailers
	finished  bool
	status    int
	sent      bool // HEADERS written
	trailers  []string
	buf       []byte
	written   int64
	err       error
}

var (
	_ http.Flusher                    = (*responseWriter)(nil)
	_ interface{ FlushError() error } = (*responseWriter)(nil)
)

func (w *responseWriter) Header() http.Header { return w.header }

// SetWriteDeadline moves the stream's write deadline (see
// Options.WriteTimeout); zero: none.
func (w *responseWriter) SetWriteDeadline(t time.Time) error {
	w.st.setDeadline(&w.st.wdl, t)
	return nil
}

// SetReadDeadline moves the stream's request body deadline; zero: none.
func (w *responseWriter) SetReadDeadline(t time.Time) error {
	w.st.setDeadline(&w.st.rdl, t)
	return nil
}

func (w *responseWriter) WriteHeader(code int) {
	if w.status != 0 {
		return
	}
	if code < 100 || code > 999 {
		panic("h2front: invalid WriteHeader code " + strconv.Itoa(code))
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		// Informational: sent now, the final status follows.
		if w.err == nil {
			w.err = w.st.c.writeHeaders(w.st.id, code, w.header, false, nil)
		}
		return
	}
	w.status = code
	for _, v := range w.header["Trailer"] {
		for _, k := range strings.Split(v, ",") {
			if k = http.CanonicalHeaderKey(strings.TrimSpace(k)); k != "" {
				w.trailers = append(w.trailers, k)
			}
		}
	}
}

func bodyAllowed(code int) bool {
	return code != http.StatusNoContent && code != http.StatusNotModified && (code < 100 || code > 199)
}

func (w *responseWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return 0, w.err
	}
	if !bodyAllowed(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	if w.head {
		w.written += int64(len(p))
		return len(p), nil
	}
	if len(w.buf)+len(p) <= bodyBufSize {
		if w.buf == nil {
			w.buf = make([]byte, 0, min(bodyBufSize, max(len(p), 512)))
		}
		w.buf = append(w.buf, p...)
		w.written += int64(len(p))
		return len(p), nil
	}
	if err := w.sendHeaders(false, nil); err != nil {
		return 0, err
	}
	if err := w.sendData(w.buf, false); err != nil {
		return 0, err
	}
	w.buf = w.buf[:0]
	if err := w.sendData(p, false); err != nil {
		return 0, err
	}
	w.written += int64(len(p))
	return len(p), nil
}

func (w *responseWriter) WriteString(s string) (int, error) { return w.Write([]byte(s)) }

func (w *responseWriter) Flush() { w.FlushError() }

// FlushError writes the headers and the body buffered so far to the
// connection's socket.
func (w *responseWriter) FlushError() error {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return w.err
	}
	if err := w.sendHeaders(false, nil); err != nil {
		return err
	}
	if len(w.buf) > 0 {
		if err := w.sendData(w.buf, false); err != nil {
			return err
		}
		w.buf = w.buf[:0]
	}
	// On the socket when Flush returns, even if another writer would
	// flush it soon: the bridge then waits for the device's TCP ack of
	// every byte queued (awaitReceived).
	c := w.st.c
	c.wmu.Lock()
	err := c.flushLocked()
	c.wmu.Unlock()
	if err != nil {
		w.err = err
	}
	return err
}

// reserve takes n bytes of the send windows if both have them.
func (w *responseWriter) reserve(n int) bool {
	c := w.st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if w.st.aborted || c.closed || int64(n) > w.st.sendWindow || int64(n) > c.sendWindow || uint32(n) > c.peerFrame {
		return false
	}
	w.st.sendWindow -= int64(n)
	c.sendWindow -= int64(n)
	return true
}

// sendHeaders writes the response's HEADERS if not yet done; last, if
// not nil, follows as the stream's last DATA frame (its window reserved).
func (w *responseWriter) sendHeaders(end bool, last []byte) error {
	if w.sent {
		return nil
	}
	if err := w.st.endedEarly(); err != nil {
		w.err = err
		return err
	}
	w.sent = true
	h := w.header
	if w.trailers != nil || hasTrailerPrefix(h) {
		h = h.Clone()
		for _, k := range w.trailers {
			delete(h, k)
		}
		for k := range h {
			if strings.HasPrefix(k, http.TrailerPrefix) {
				delete(h, k)
			}
		}
	}
	c := w.st.c
	_, hasDate := h["Date"]
	_, hasType := h["Content-Type"]
	encoded := h.Get("Content-Encoding") != ""
	if w.direct {
		hasDate, hasType, encoded = w.dh.HasDate, w.dh.HasType, w.dh.HasEncoding
	}
	sniff := !hasType && len(w.buf) > 0 && bodyAllowed(w.status) && !encoded
	date := !hasDate
	var sniffed string
	if sniff {
		sniffed = http.DetectContentType(w.buf)
	}
	extra := func(enc func(string, string)) {
		if w.dh.Fields != nil {
			w.dh.Fields.WriteFields(enc)
		}
		if w.autoLen {
			enc("content-length", strconv.Itoa(len(w.buf)))
		}
		if date {
			enc("date", c.s.date())
		}
		if sniff {
			enc("content-type", sniffed)
		}
	}
	if end || last != nil {
		w.st.ending()
	}
	var ended error
	w.err = c.write(func() error {
		// Checked under the write lock: a reset written after this
		// comes after these frames, never before.
		if ended = w.st.endedEarly(); ended != nil {
			return nil
		}
		if err := c.writeHeadersLocked(w.st.id, w.status, h, end, extra); err != nil || last == nil {
			return err
		}
		return c.fr.WriteData(w.st.id, true, last)
	})
	if w.err == nil {
		w.err = ended
	}
	return w.err
}

func hasTrailerPrefix(h http.Header) bool {
	for k := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			return true
		}
	}
	return false
}

// sendData writes p as DATA frames within the flow control windows.
func (w *responseWriter) sendData(p []byte, end bool) error {
	c := w.st.c
	st := w.st
	for first := true; first || len(p) > 0; first = false {
		c.mu.Lock()
		for len(p) > 0 && !st.aborted && !c.closed && (st.sendWindow <= 0 || c.sendWindow <= 0) {
			st.wake.Wait()
		}
		if st.aborted || c.closed {
			err := st.err
			if err == nil {
				err = ErrConnClosed
			}
			c.mu.Unlock()
			w.err = err
			return err
		}
		n := min(int64(len(p)), st.sendWindow, c.sendWindow, int64(c.peerFrame))
		st.sendWindow -= n
		c.sendWindow -= n
		last := end && int64(len(p)) == n
		if last {
			st.localDone = true
		}
		c.mu.Unlock()
		chunk := p[:n]
		p = p[n:]
		var ended error
		err := c.write(func() error {
			if ended = st.endedEarly(); ended != nil {
				return nil
			}
			return c.fr.WriteData(st.id, last, chunk)
		})
		if err == nil {
			err = ended
		}
		if err != nil {
			w.err = err
			return err
		}
	}
	return nil
}

// finish completes the response after the handler returned; once.
func (w *responseWriter) finish() error {
	if w.finished {
		return w.err
	}
	w.finished = true
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.err == nil {
		w.err = w.st.endedEarly()
	}
	if w.err != nil {
		return w.err
	}
	trailers := w.collectTrailers()
	if w.dtrailers != nil {
		trailers = http.Header{} // not sent: a sign that there are some
	}
	if !w.sent {
		if w.direct {
			w.autoLen = !w.dh.HasLength && bodyAllowed(w.status) && !w.head
		} else if _, ok := w.header["Content-Length"]; !ok && bodyAllowed(w.status) && !w.head {
			w.header["Content-Length"] = []string{strconv.Itoa(len(w.buf))}
		}
		if len(w.buf) == 0 && trailers == nil {
			return w.sendHeaders(true, nil)
		}
		if trailers == nil && w.reserve(len(w.buf)) {
			// The whole answer in one go: HEADERS and the last DATA.
			return w.sendHeaders(false, w.buf)
		}
		if err := w.sendHeaders(false, nil); err != nil {
			return err
		}
	}
	if len(w.buf) > 0 || trailers == nil {
		if err := w.sendData(w.buf, trailers == nil); err != nil {
			return err
		}
	}
	if trailers != nil {
		w.st.ending()
		if w.dtrailers != nil {
			w.err = w.st.c.writeHeaders(w.st.id, 0, nil, true, w.dtrailers.WriteFields)
		} else {
			w.err = w.st.c.writeHeaders(w.st.id, 0, trailers, true, nil)
		}
	}
	return w.err
}

func (w *responseWriter) collectTrailers() http.Header {
	var t http.Header
	for _, k := range w.trailers {
		if v := w.header[k]; len(v) > 0 {
			if t == nil {
				t = http.Header{}
			}
			t[k] = v
		}
	}
	for k, v := range w.header {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			if t == nil {
				t = http.Header{}
			}
			t[http.CanonicalHeaderKey(strings.TrimPrefix(k, http.TrailerPrefix))] = v
		}
	}
	return t
}

// date is the Date header's value, made once a second.
func (s *Server) date() string {
	now := time.Now().Unix()
	if d := s.dateCache.Load(); d != nil && d.unix == now {
		return d.text
	}
	d := &dateValue{unix: now, text: time.Unix(now, 0).UTC().Format(http.TimeFormat)}
	s.dateCache.Store(d)
	return d.text
}

type dateValue struct {
	unix int64
	text string
}

type dateCache = atomic.Pointer[dateValue]
