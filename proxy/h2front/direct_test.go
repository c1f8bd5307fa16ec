package h2front

import (
	"io"
	"log/slog"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// directFunc is a Direct of a function.
type directFunc func(s *Stream) bool

func (f directFunc) ServeDirect(s *Stream) bool { return f(s) }

type fieldList [][2]string

func (l fieldList) WriteFields(enc func(name, value string)) {
	for _, f := range l {
		enc(f[0], f[1])
	}
}

// headers reads the next HEADERS of stream id as a map.
func (cl *client) headers(id uint32) (map[string]string, bool) {
	cl.t.Helper()
	h := cl.next(func(f http2.Frame) bool {
		mh, ok := f.(*http2.MetaHeadersFrame)
		return ok && mh.StreamID == id
	}).(*http2.MetaHeadersFrame)
	got := map[string]string{}
	for _, f := range h.Fields {
		got[f.Name] = f.Value
	}
	return got, h.StreamEnded()
}

func directServer(d Direct, h http.HandlerFunc) *Server {
	return New(Options{Handler: h, Direct: d, Logger: slog.New(slog.DiscardHandler), IdleTimeout: time.Minute})
}

// TestDirectServesOrHandsBack: Direct sees the checked request (pseudo
// fields apart, the regular ones in order), answers what it takes with
// its own fields, a date and a content-length added; what it declines
// reaches the Handler, with an http.Request, as if there were no Direct.
func TestDirectServesOrHandsBack(t *testing.T) {
	var handled atomic.Int32
	d := directFunc(func(s *Stream) bool {
		if s.Path != "/direct?q=1" {
			return false
		}
		if s.Method != "GET" || s.Authority != "localhost" || s.ContentLength != 0 || s.Body() != nil || len(s.Fields) != 0 {
			t.Errorf("direct request %s %s %d fields %v", s.Method, s.Authority, s.ContentLength, s.Fields)
		}
		s.WriteHead(Head{Status: 202, Fields: fieldList{{"x-direct", "yes"}}})
		io.WriteString(s, "direct")
		return true
	})
	s := directServer(d, func(w http.ResponseWriter, r *http.Request) {
		handled.Add(1)
		io.WriteString(w, "handler "+r.URL.Path)
	})
	cl := newClient(t, s)
	cl.request(1, "/direct?q=1", true)
	got, _ := cl.headers(1)
	if got[":status"] != "202" || got["x-direct"] != "yes" || got["content-length"] != "6" || got["date"] == "" ||
		got["content-type"] != "text/plain; charset=utf-8" {
		t.Errorf("direct response headers %v", got)
	}
	data := cl.next(func(f http2.Frame) bool { _, ok := f.(*http2.DataFrame); return ok }).(*http2.DataFrame)
	if string(data.Data()) != "direct" || !data.StreamEnded() {
		t.Errorf("direct DATA %q end %v", data.Data(), data.StreamEnded())
	}
	cl.request(3, "/other", true)
	if got, _ := cl.headers(3); got[":status"] != "200" {
		t.Errorf("handed-back response %v", got)
	}
	data = cl.next(func(f http2.Frame) bool { _, ok := f.(*http2.DataFrame); return ok }).(*http2.DataFrame)
	if string(data.Data()) != "handler /other" || handled.Load() != 1 {
		t.Errorf("handler answered %q, %d times", data.Data(), handled.Load())
	}
}

// TestDirectTrailersAndReset: trailers end a direct response after its
// body; Reset abandons one with RST_STREAM.
func TestDirectTrailersAndReset(t *testing.T) {
	d := directFunc(func(s *Stream) bool {
		s.WriteHead(Head{Status: 200, HasLength: true})
		io.WriteString(s, "body")
		if s.Path == "/reset" {
			s.Flush()
			s.Reset()
			return true
		}
		s.Trailers(fieldList{{"x-sum", "4"}})
		return true
	})
	s := directServer(d, func(http.ResponseWriter, *http.Request) { t.Error("handler called") })
	cl := newClient(t, s)
	cl.request(1, "/trailers", true)
	if _, end := cl.headers(1); end {
		t.Fatal("HEADERS ended the stream")
	}
	if tr, end := cl.headers(1); tr["x-sum"] != "4" || !end {
		t.Errorf("trailers %v end %v", tr, end)
	}
	cl.request(3, "/reset", true)
	rst := cl.next(func(f http2.Frame) bool { _, ok := f.(*http2.RSTStreamFrame); return ok }).(*http2.RSTStreamFrame)
	if rst.StreamID != 3 || rst.ErrCode != http2.ErrCodeInternal {
		t.Errorf("RST_STREAM %d %v, want 3 INTERNAL_ERROR", rst.StreamID, rst.ErrCode)
	}
}

// deadlineRecorder records the deadlines set on it.
type deadlineRecorder struct{ set chan time.Time }

func (d *deadlineRecorder) SetDeadline(t time.Time) error { d.set <- t; return nil }

// TestDirectInterruptedByReset: the connection Direct waits on is
// interrupted (a deadline in the past) when the client resets the
// stream, and Interrupt reports the stream's end.
func TestDirectInterruptedByReset(t *testing.T) {
	rec := &deadlineRecorder{set: make(chan time.Time, 1)}
	registered := make(chan struct{})
	result := make(chan bool, 1)
	d := directFunc(func(s *Stream) bool {
		if !s.Interrupt(rec) {
			t.Error("Interrupt on a live stream reported its end")
		}
		close(registered)
		select {
		case <-rec.set: // what a blocked backend read would see
		case <-time.After(10 * time.Second):
			result <- true
			return true
		}
		result <- s.Interrupt(nil)
		if s.Ended() == nil {
			t.Error("Ended is nil after the client's reset")
		}
		return true
	})
	s := directServer(d, func(http.ResponseWriter, *http.Request) { t.Error("handler called") })
	cl := newClient(t, s)
	cl.request(1, "/wait", true)
	<-registered
	cl.fr.WriteRSTStream(1, http2.ErrCodeCancel)
	select {
	case ok := <-result:
		if ok {
			t.Error("the reset did not interrupt the registered connection, or Interrupt(nil) after it reported a live stream")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Direct did not return")
	}
}

// TestDirectNotOfferedOddRequests: CONNECT, a request declaring trailers
// and a path url.ParseRequestURI must check go to the Handler.
func TestDirectNotOfferedOddRequests(t *testing.T) {
	var offered atomic.Int32
	d := directFunc(func(*Stream) bool { offered.Add(1); return false })
	s := directServer(d, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.RequestURI) })
	cl := newClient(t, s)
	cl.requestFields(1, [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "x"}, {":path", "http://x/abs"}}, true)
	cl.headers(1)
	cl.requestFields(3, [][2]string{{":method", "POST"}, {":scheme", "https"}, {":authority", "x"}, {":path", "/t"}, {"trailer", "x-sum"}}, false)
	cl.fr.WriteData(3, true, nil)
	cl.headers(3)
	cl.request(5, "/plain", true)
	cl.headers(5)
	if n := offered.Load(); n != 1 {
		t.Errorf("Direct was offered %d requests, want 1 (the plain GET)", n)
	}
}
