package h2front

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// countingConn counts the writes reaching the socket.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// client is a raw HTTP/2 client over a loopback TCP connection to a
// Server serving in a goroutine the test waits for.
type client struct {
	t    *testing.T
	c    net.Conn
	fr   *http2.Framer
	sc   *countingConn
	done chan struct{}
}

func newClient(t *testing.T, s *Server, settings ...http2.Setting) *client {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	raw, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	cl := &client{t: t, c: c, sc: &countingConn{Conn: raw}}
	cl.done = serve(s, cl.sc)
	t.Cleanup(func() {
		c.Close()
		<-cl.done
		s.Close()
	})
	c.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(c, preface)
	cl.fr = http2.NewFramer(c, c)
	cl.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	cl.fr.WriteSettings(settings...)
	return cl
}

func (cl *client) request(id uint32, path string, end bool) {
	cl.requestFields(id, [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "localhost"}, {":path", path}}, end)
}

// requestFields sends a HEADERS frame of fields.
func (cl *client) requestFields(id uint32, fields [][2]string, end bool) {
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	for _, f := range fields {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := cl.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: b.Bytes(), EndStream: end, EndHeaders: true}); err != nil {
		cl.t.Fatal(err)
	}
}

// next reads frames until one that fn accepts; SETTINGS are acked.
func (cl *client) next(fn func(http2.Frame) bool) http2.Frame {
	cl.t.Helper()
	for {
		f, err := cl.fr.ReadFrame()
		if err != nil {
			cl.t.Fatalf("read: %v", err)
		}
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			cl.fr.WriteSettingsAck()
		}
		if fn(f) {
			return f
		}
	}
}

// serve serves c in a goroutine and closes it when ServeConn returns;
// the channel is closed then.
func serve(s *Server, c net.Conn) chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.ServeConn(c)
		c.Close()
	}()
	return done
}

func testServer(h http.HandlerFunc) *Server {
	return New(Options{Handler: h, Logger: slog.New(slog.DiscardHandler), IdleTimeout: time.Minute})
}

// TestServeBasics: a GET is answered with its status, headers, a
// Content-Length and the body, ending the stream.
func TestServeBasics(t *testing.T) {
	s := testServer(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Path", r.URL.Path)
		w.WriteHeader(201)
		io.WriteString(w, "hello")
	})
	cl := newClient(t, s)
	cl.request(1, "/p", true)
	h := cl.next(func(f http2.Frame) bool { _, ok := f.(*http2.MetaHeadersFrame); return ok }).(*http2.MetaHeadersFrame)
	got := map[string]string{}
	for _, f := range h.Fields {
		got[f.Name] = f.Value
	}
	if got[":status"] != "201" || got["x-path"] != "/p" || got["content-length"] != "5" {
		t.Errorf("response headers %v", got)
	}
	d := cl.next(func(f http2.Frame) bool { _, ok := f.(*http2.DataFrame); return ok }).(*http2.DataFrame)
	if string(d.Data()) != "hello" || !d.StreamEnded() {
		t.Errorf("DATA %q end %v", d.Data(), d.StreamEnded())
	}
}

// TestResponsesBatched: the answers to requests that arrive in one read
// leave in far fewer socket writes than one per response (no write per
// frame, no flush per response while others are pending).
func TestResponsesBatched(t *testing.T) {
	var wg sync.WaitGroup
	wg.Add(10)
	release := make(chan struct{})
	s := testServer(func(w http.ResponseWriter, r *http.Request) {
		wg.Done()
		<-release
		io.WriteString(w, "ok")
	})
	cl := newClient(t, s)
	cl.next(func(f http2.Frame) bool { _, ok := f.(*http2.SettingsFrame); return ok })
	cl.fr.WriteSettingsAck()
	for i := range uint32(10) {
		cl.request(2*i+1, "/b", true)
	}
	wg.Wait()
	before := cl.sc.writes.Load()
	close(release)
	ended := 0
	cl.next(func(f http2.Frame) bool {
		if d, ok := f.(*http2.DataFrame); ok && d.StreamEnded() {
			ended++
		}
		return ended == 10
	})
	if n := cl.sc.writes.Load() - before; n > 5 {
		t.Errorf("10 responses took %d socket writes, want them batched (≤5)", n)
	} else {
		t.Logf("10 responses in %d socket writes", n)
	}
}

// TestFlowControl: with a zero stream window the response body waits for
// WINDOW_UPDATE, then comes in pieces no larger than the window.
func TestFlowControl(t *testing.T) {
	s := testServer(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "0123456789") })
	cl := newClient(t, s, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	cl.request(1, "/f", true)
	cl.next(func(f http2.Frame) bool { _, ok := f.(*http2.MetaHeadersFrame); return ok })
	cl.fr.WritePing(false, [8]byte{1})
	// Nothing but the PING's answer may come before the window opens.
	cl.next(func(f http2.Frame) bool {
		if _, ok := f.(*http2.DataFrame); ok {
			t.Fatal("DATA sent with a zero window")
		}
		p, ok := f.(*http2.PingFrame)
		return ok && p.IsAck()
	})
	cl.fr.WriteWindowUpdate(1, 4)
	d := cl.next(func(f http2.Frame) bool { _, ok := f.(*http2.DataFrame); return ok }).(*http2.DataFrame)
	if string(d.Data()) != "0123" || d.StreamEnded() {
		t.Errorf("first DATA %q end %v, want 4 bytes", d.Data(), d.StreamEnded())
	}
	cl.fr.WriteWindowUpdate(1, 100)
	d = cl.next(func(f http2.Frame) bool { _, ok := f.(*http2.DataFrame); return ok }).(*http2.DataFrame)
	if string(d.Data()) != "456789" || !d.StreamEnded() {
		t.Errorf("second DATA %q end %v", d.Data(), d.StreamEnded())
	}
}

// TestDrain: Drain sends GOAWAY, the stream in flight is still answered,
// then the connection ends.
func TestDrain(t *testing.T) {
	started := make(chan struct{})
	release := make(chan struct{})
	s := testServer(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
		io.WriteString(w, "late")
	})
	cl := newClient(t, s)
	cl.request(1, "/d", true)
	<-started
	s.Drain()
	g := cl.next(func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok }).(*http2.GoAwayFrame)
	if g.ErrCode != http2.ErrCodeNo || g.LastStreamID != 1 {
		t.Errorf("GOAWAY %v last %d", g.ErrCode, g.LastStreamID)
	}
	close(release)
	d := cl.next(func(f http2.Frame) bool { _, ok := f.(*http2.DataFrame); return ok }).(*http2.DataFrame)
	if string(d.Data()) != "late" {
		t.Errorf("DATA %q", d.Data())
	}
	select {
	case <-cl.done:
	case <-time.After(10 * time.Second):
		t.Fatal("connection still served after its last stream")
	}
}

// TestRequestBody: a body is read by the handler, and the refused
// request fields are answered RST_STREAM PROTOCOL_ERROR.
func TestRequestBody(t *testing.T) {
	s := testServer(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Write(bytes.ToUpper(b))
	})
	cl := newClient(t, s)
	cl.request(1, "/u", false)
	cl.fr.WriteData(1, false, []byte("abc"))
	cl.fr.WriteData(1, true, []byte("def"))
	d := cl.next(func(f http2.Frame) bool { _, ok := f.(*http2.DataFrame); return ok }).(*http2.DataFrame)
	if string(d.Data()) != "ABCDEF" {
		t.Errorf("echo %q", d.Data())
	}
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":path", "/"}, {"connection", "close"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	cl.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: b.Bytes(), EndStream: true, EndHeaders: true})
	r := cl.next(func(f http2.Frame) bool { _, ok := f.(*http2.RSTStreamFrame); return ok }).(*http2.RSTStreamFrame)
	if r.StreamID != 3 || r.ErrCode != http2.ErrCodeProtocol {
		t.Errorf("RST_STREAM %d %v, want 3 PROTOCOL_ERROR", r.StreamID, r.ErrCode)
	}
}

// TestFlushReachesSocket: Flush puts the body on the socket even while
// another writer is pending (who would otherwise flush for it): the
// bridge waits for the device's TCP ack right after Flush.
func TestFlushReachesSocket(t *testing.T) {
	var s *Server
	got := make(chan struct{})
	s = testServer(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		var c *conn
		for c = range s.conns {
		}
		s.mu.Unlock()
		c.writers.Add(1) // another writer, busy elsewhere
		defer c.release()
		io.WriteString(w, "cmd")
		w.(http.Flusher).Flush()
		select {
		case <-got:
		case <-time.After(5 * time.Second):
			t.Error("flushed body not on the socket")
		}
	})
	cl := newClient(t, s)
	cl.request(1, "/f", true)
	d := cl.next(func(f http2.Frame) bool { _, ok := f.(*http2.DataFrame); return ok }).(*http2.DataFrame)
	if string(d.Data()) != "cmd" {
		t.Errorf("DATA %q", d.Data())
	}
	close(got)
}

// TestStreamDeadlines: a response stalled past the write timeout (here:
// a client that never opens its window) is reset and its handler's
// write fails; SetWriteDeadline extends it (a long-poll).
func TestStreamDeadlines(t *testing.T) {
	failed := make(chan error, 1)
	s := New(Options{Logger: slog.New(slog.DiscardHandler), WriteTimeout: 200 * time.Millisecond,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/long" {
				http.NewResponseController(w).SetWriteDeadline(time.Now().Add(5 * time.Second))
				select {
				case <-time.After(400 * time.Millisecond): // past the write timeout
				case <-r.Context().Done():
					failed <- r.Context().Err()
					return
				}
				io.WriteString(w, "late but allowed")
				return
			}
			w.Write(bytes.Repeat([]byte("x"), 100))
			_, err := w.Write(bytes.Repeat([]byte("y"), 20<<10)) // past the buffer: waits for the window
			failed <- err
		})})
	cl := newClient(t, s, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	cl.request(1, "/stall", true)
	r := cl.next(func(f http2.Frame) bool { _, ok := f.(*http2.RSTStreamFrame); return ok }).(*http2.RSTStreamFrame)
	if r.StreamID != 1 {
		t.Errorf("RST_STREAM on %d", r.StreamID)
	}
	if err := <-failed; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("stalled write: %v, want a deadline error", err)
	}
	cl.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 65535})
	cl.request(3, "/long", true)
	d := cl.next(func(f http2.Frame) bool {
		if r, ok := f.(*http2.RSTStreamFrame); ok && r.StreamID == 3 {
			t.Fatal("long-poll reset despite SetWriteDeadline")
		}
		_, ok := f.(*http2.DataFrame)
		return ok
	}).(*http2.DataFrame)
	if string(d.Data()) != "late but allowed" {
		t.Errorf("DATA %q", d.Data())
	}
}

// TestDrainBeforeSettings: a connection served after Drain gets SETTINGS
// first (RFC 9113 3.4), then GOAWAY, and ends.
func TestDrainBeforeSettings(t *testing.T) {
	s := testServer(func(w http.ResponseWriter, r *http.Request) {})
	s.Drain()
	cl := newClient(t, s)
	f, err := cl.fr.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
		t.Fatalf("first frame %v, want SETTINGS", f.Header())
	}
	cl.next(func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok })
	select {
	case <-cl.done:
	case <-time.After(10 * time.Second):
		t.Fatal("drained connection without streams still served")
	}
}

// TestHeadersOnClosedStream: once the client has read a response's
// END_STREAM, the stream is closed here too, even while its handler
// still winds down: HEADERS on it is a connection error STREAM_CLOSED
// (RFC 9113 5.1), not a stream error as on a half-closed stream.
func TestHeadersOnClosedStream(t *testing.T) {
	release := make(chan struct{})
	s := testServer(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "done") })
	s.afterFinish = func() {
		select {
		case <-release:
		case <-time.After(10 * time.Second):
		}
	}
	defer close(release)
	cl := newClient(t, s)
	cl.request(1, "/", true)
	cl.next(func(f http2.Frame) bool {
		return f.Header().Flags.Has(http2.FlagDataEndStream) && f.Header().StreamID == 1
	})
	cl.request(1, "/", true)
	f := cl.next(func(f http2.Frame) bool {
		switch f.(type) {
		case *http2.GoAwayFrame, *http2.RSTStreamFrame:
			return true
		}
		return false
	})
	if g, ok := f.(*http2.GoAwayFrame); !ok || g.ErrCode != http2.ErrCodeStreamClosed {
		t.Fatalf("HEADERS on a closed stream answered with %v, want GOAWAY STREAM_CLOSED", f)
	}
}

// TestHandlerGoroutinesReused: streams one after another run on the same
// worker (its stack grown once), a panicking handler does not cost its
// worker, and Close ends the idle ones (goleak checks at the end).
func TestHandlerGoroutinesReused(t *testing.T) {
	s := testServer(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/panic" {
			panic(http.ErrAbortHandler)
		}
		io.WriteString(w, "ok")
	})
	cl := newClient(t, s)
	for i := uint32(0); i < 50; i++ {
		path := "/"
		if i == 10 {
			path = "/panic"
		}
		cl.roundTrip(2*i+1, path)
	}
	// A handler may still be winding down when its answer arrives, and
	// the next stream then starts a worker: a few at most on a loaded
	// machine; one per stream without reuse.
	if n := s.workers.startedN(); n > 5 {
		t.Errorf("%d workers started for 50 streams in turn, want 1 (5 at most)", n)
	}
}

// roundTrip sends a GET on stream id and waits for its end (END_STREAM
// or RST_STREAM).
func (cl *client) roundTrip(id uint32, path string) {
	cl.t.Helper()
	cl.request(id, path, true)
	cl.next(func(f http2.Frame) bool {
		if f.Header().StreamID != id {
			return false
		}
		_, rst := f.(*http2.RSTStreamFrame)
		return rst || f.Header().Flags.Has(http2.FlagDataEndStream)
	})
}

// TestIdleWorkersReaped: a worker idle for workerIdle ends; the next
// stream starts a new one.
func TestIdleWorkersReaped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := testServer(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
		srv, c := net.Pipe()
		done := serve(s, srv)
		cl := &client{t: t, c: c, done: done}
		cl.fr = http2.NewFramer(c, c)
		cl.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		// net.Pipe has no buffer: the client writes in a goroutine while
		// this one reads (and acks the server's SETTINGS from there too,
		// through the same writer goroutine).
		writes := make(chan func(), 8)
		go func() {
			for w := range writes {
				w()
			}
		}()
		defer close(writes)
		writes <- func() { io.WriteString(c, preface); cl.fr.WriteSettings() }
		roundTrip := func(id uint32) {
			writes <- func() { cl.request(id, "/", true) }
			for {
				f, err := cl.fr.ReadFrame()
				if err != nil {
					t.Fatalf("read: %v", err)
				}
				if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
					writes <- func() { cl.fr.WriteSettingsAck() }
				}
				if f.Header().StreamID == id && f.Header().Flags.Has(http2.FlagDataEndStream) {
					return
				}
			}
		}
		roundTrip(1)
		synctest.Wait() // the worker is idle
		if n := s.workers.idleN(); n != 1 {
			t.Fatalf("%d idle workers after a stream, want 1", n)
		}
		time.Sleep(2*workerIdle + time.Second)
		synctest.Wait()
		if n := s.workers.idleN(); n != 0 {
			t.Fatalf("%d idle workers after %v, want 0", n, 2*workerIdle)
		}
		roundTrip(3)
		if n := s.workers.startedN(); n != 2 {
			t.Errorf("%d workers started, want 2 (the reaped one's successor)", n)
		}
		c.Close()
		<-done
		s.Close()
	})
}

// TestDeadlineSweepEarliest: with one deadline timer per connection, a
// stream whose deadline was extended does not hold back a later stream's
// shorter one, and is not reset before its own.
func TestDeadlineSweepEarliest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		ended := make(chan string, 2)
		s := New(Options{Logger: slog.New(slog.DiscardHandler), WriteTimeout: time.Second,
			Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/long" {
					http.NewResponseController(w).SetWriteDeadline(time.Now().Add(10 * time.Second))
				}
				<-r.Context().Done()
				ended <- fmt.Sprintf("%s %v", r.URL.Path, time.Since(start))
			})})
		srv, c := net.Pipe()
		done := serve(s, srv)
		cl := &client{t: t, c: c, done: done}
		cl.fr = http2.NewFramer(c, c)
		cl.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		go io.Copy(io.Discard, c) // the server's frames
		io.WriteString(c, preface)
		cl.fr.WriteSettings()
		cl.request(1, "/long", true)
		// The timer fires at 1s for /long's first deadline and is armed
		// again for its extended one, 10s; /short's, 3s, comes before.
		time.Sleep(2 * time.Second)
		cl.request(3, "/short", true)
		if got, want := <-ended, "/short 3s"; got != want {
			t.Errorf("first reset: %s, want %s", got, want)
		}
		if got, want := <-ended, "/long 10s"; got != want {
			t.Errorf("second reset: %s, want %s", got, want)
		}
		c.Close()
		<-done
		s.Close()
	})
}
