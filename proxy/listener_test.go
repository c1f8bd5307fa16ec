package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestHandshakeFailuresCounted: a client speaking plain HTTP to the TLS
// port is told so with a 400, a client that stalls in the handshake is
// closed at limits.timeouts.handshake, and both are counted through
// Options.HandshakeFailed.
func TestHandshakeFailuresCounted(t *testing.T) {
	failed := make(chan string, 10)
	s, _ := startProxy(t, `limits: {timeouts: {handshake: 300ms}}`, func(o *Options) {
		o.HandshakeFailed = func(reason string) { failed <- reason }
	})
	dial := func() net.Conn {
		c, err := net.Dial("tcp", s.Addr("https").String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		return c
	}
	c := dial()
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	b, _ := io.ReadAll(c)
	if !strings.HasPrefix(string(b), "HTTP/1.0 400 Bad Request") {
		t.Errorf("plain HTTP on the TLS port: %q, want a 400", b)
	}
	if r := <-failed; r != "other" {
		t.Errorf("plain HTTP on the TLS port counted as %q, want other", r)
	}

	stalled := dial()
	defer stalled.Close()
	start := time.Now()
	if _, err := stalled.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("stalled handshake: read %v, want EOF from the server closing", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("stalled handshake closed after %s, handshake timeout 300ms", d)
	}
	if r := <-failed; r != "timeout" {
		t.Errorf("stalled handshake counted as %q, want timeout", r)
	}
}

// TestRequestTLSOnBothProtocols: requests carry their TLS state over
// HTTP/1.1 (served from the scanning connection) and HTTP/2 (served by
// net/http's HTTP/2 server): the backend is told the client used https.
func TestRequestTLSOnBothProtocols(t *testing.T) {
	a := echoBackend(t, "a")
	s, cl := startProxy(t, fmt.Sprintf(`routes: [{path: /, proxy: {backends: [%q]}}]`, a.URL))
	for _, h1 := range []bool{true, false} {
		tr := cl.Transport.(*http.Transport).Clone()
		if h1 {
			tr.ForceAttemptHTTP2 = false
			tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
		}
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequest("GET", s.url("/tls"), nil)
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if wantProto := map[bool]int{true: 1, false: 2}[h1]; resp.ProtoMajor != wantProto {
			t.Errorf("client spoke HTTP/%d, want HTTP/%d", resp.ProtoMajor, wantProto)
		}
		if !strings.Contains(string(b), `"xfproto":"https"`) || !strings.Contains(string(b), "proto=https") {
			t.Errorf("HTTP/%d: backend saw %s, want X-Forwarded-Proto https and Forwarded proto=https", resp.ProtoMajor, b)
		}
	}
}

// heldBackend answers /held once release is closed (or the request
// ends), signalling each arrival; other paths at once.
func heldBackend(t *testing.T) (srv *httptest.Server, arrived chan struct{}, release chan struct{}) {
	arrived, release = make(chan struct{}, 10), make(chan struct{})
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/held" {
			return
		}
		arrived <- struct{}{}
		select {
		case <-release:
			io.WriteString(w, "done")
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	return srv, arrived, release
}

type getResult struct {
	proto int
	body  string
	err   error
}

// getAsync GETs url in a goroutine that delivers its result.
func getAsync(cl *http.Client, url string) <-chan getResult {
	done := make(chan getResult, 1)
	go func() {
		resp, err := cl.Get(url)
		if err != nil {
			done <- getResult{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- getResult{resp.ProtoMajor, string(b), err}
	}()
	return done
}

// TestShutdownDrainsHTTP2: Shutdown lets an HTTP/2 request in flight
// finish (GOAWAY, then the connection ends), stops accepting, and returns
// without error; with a deadline that passes first, the HTTP/2 connection
// is closed and Shutdown reports it.
func TestShutdownDrainsHTTP2(t *testing.T) {
	t.Run("drained", func(t *testing.T) {
		be, arrived, release := heldBackend(t)
		s, cl := startProxy(t, fmt.Sprintf(`routes: [{path: /, proxy: {backends: [%q]}}]`, be.URL))
		done := getAsync(cl, s.url("/held"))
		<-arrived
		shut := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			shut <- s.Shutdown(ctx)
		}()
		close(release)
		if r := <-done; r.err != nil || r.proto != 2 || r.body != "done" {
			t.Errorf("in-flight HTTP/2 request across Shutdown: proto %d body %q err %v, want HTTP/2 done", r.proto, r.body, r.err)
		}
		if err := <-shut; err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if c, err := net.Dial("tcp", s.Addr("https").String()); err == nil {
			c.Close()
			t.Error("still accepting after Shutdown")
		}
	})
	t.Run("deadline", func(t *testing.T) {
		be, arrived, _ := heldBackend(t)
		s, cl := startProxy(t, fmt.Sprintf(`routes: [{path: /, proxy: {backends: [%q]}}]`, be.URL))
		done := getAsync(cl, s.url("/held"))
		<-arrived
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Shutdown past its deadline: %v, want DeadlineExceeded", err)
		}
		if r := <-done; r.err == nil {
			t.Error("request held past the deadline completed; want its connection closed")
		}
	})
}

// TestCloseEndsEveryConnection: Close ends HTTP/1.1 and HTTP/2
// connections at once, in flight or idle.
func TestCloseEndsEveryConnection(t *testing.T) {
	be, arrived, _ := heldBackend(t)
	s, cl := startProxy(t, fmt.Sprintf(`routes: [{path: /, proxy: {backends: [%q]}}]`, be.URL))
	h2done := getAsync(cl, s.url("/held"))
	<-arrived
	idle := dialRawTLS(t, s, "GET /quick HTTP/1.1\r\nHost: x\r\n\r\n")
	defer idle.Close()
	br := bufio.NewReader(idle)
	if _, err := http.ReadResponse(br, nil); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if r := <-h2done; r.err == nil {
		t.Error("HTTP/2 request in flight completed across Close")
	}
	if _, err := br.ReadByte(); err == nil {
		t.Error("idle HTTP/1.1 connection still open after Close")
	}
}
