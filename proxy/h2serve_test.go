package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestHTTP2Servers: both HTTP/2 servers of listen.http2_server (edgeshim's
// h2front, the default, and net/http's) proxy a GET and a POST body over
// h2 with the forwarded headers, and answer a header list over
// limits.max_header_bytes 431.
func TestHTTP2Servers(t *testing.T) {
	a := echoBackend(t, "a")
	for _, server := range []string{"", "edgeshim", "net/http"} {
		t.Run("server="+server, func(t *testing.T) {
			sel := ""
			if server != "" {
				sel = fmt.Sprintf("listen: {http2_server: %q}", server)
			}
			s, cl := startProxy(t, fmt.Sprintf(`%s
limits: {max_header_bytes: 2KiB, max_body: 4MiB}
routes: [{path: /, proxy: {backends: [%q]}}]
`, sel, a.URL))
			tr := cl.Transport.(*http.Transport).Clone()
			tr.ForceAttemptHTTP2 = true
			defer tr.CloseIdleConnections()
			h2 := &http.Client{Transport: tr}
			req, _ := http.NewRequest("POST", s.url("/x?q=1"), bytes.NewBufferString("body"))
			code, e, _ := doJSON(t, h2, req)
			if code != 200 || e.Proto != 1 || e.Xff != "127.0.0.1" || e.Body != "body" {
				t.Errorf("POST over h2: %d %+v", code, e)
			}
			// Past the stream's (256 KiB) and connection's (1 MiB)
			// receive windows: both must be given back as it is read.
			big := strings.Repeat("0123456789abcdef", 80<<10)
			for range 2 {
				req, _ = http.NewRequest("POST", s.url("/big"), strings.NewReader(big))
				if code, e, _ = doJSON(t, h2, req); code != 200 || e.Body != big {
					t.Errorf("1.25 MiB POST over h2: %d, body %d bytes back", code, len(e.Body))
				}
			}
			req, _ = http.NewRequest("GET", s.url("/x"), nil)
			req.Header.Set("X-Big", strings.Repeat("v", 2100))
			resp, err := h2.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 431 || resp.ProtoMajor != 2 {
				t.Errorf("oversized header list: %d over %s, want 431 over HTTP/2", resp.StatusCode, resp.Proto)
			}
			if got := s.h2f != nil; got != (server != "net/http") {
				t.Errorf("h2front in use: %v", got)
			}
		})
	}
}

// BenchmarkProxyH2 measures a GET through the proxy over one HTTP/2
// connection (16 streams at a time) to a loopback backend, with each
// HTTP/2 server. The client runs in the same process: compare the two
// servers, not with nginx (integration/bench_proxy.sh does that).
// Profile with -cpuprofile.
func BenchmarkProxyH2(b *testing.B) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n")
	}))
	defer backend.Close()
	for _, server := range []string{"edgeshim", "net/http"} {
		b.Run("server="+server, func(b *testing.B) {
			s, cl := startProxy(b, fmt.Sprintf(`
listen: {http2_server: %q}
limits: {per_ip: {max_conns: 10000, rate: 100000, burst: 100000}}
routes: [{path: /, proxy: {backends: ["%s"], max_idle_conns: 256}}]`, server, backend.URL))
			tr := cl.Transport.(*http.Transport).Clone()
			tr.ForceAttemptHTTP2 = true
			defer tr.CloseIdleConnections()
			benchGets(b, &http.Client{Transport: tr}, s.url("/x"), 2)
		})
	}
}

// TestHTTP2LongPollOutlivesWriteTimeout: a handler behind the whole
// middleware chain that extends its write deadline (the bridge's
// long-poll) is answered past limits.timeouts.write over HTTP/2; one that
// does not is reset at it.
func TestHTTP2LongPollOutlivesWriteTimeout(t *testing.T) {
	bridge := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/devices/long" {
			http.NewResponseController(w).SetWriteDeadline(time.Now().Add(10 * time.Second))
		}
		select {
		case <-time.After(1500 * time.Millisecond): // past timeouts.write
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "command")
	})
	s, cl := startProxy(t, `
limits: {timeouts: {write: 1s}}
bridges: {fleet: {upstream: {url: "mqtt://127.0.0.1:1"}, identity: {from: path, allow_unauthenticated: true}, poll: {path: "/devices/{device}"}, commands: {topic: "d/{device}/c"}}}
routes: [{path: /devices/, bridge: fleet}]`,
		func(o *Options) { o.Bridges = map[string]http.Handler{"fleet": bridge} })
	tr := cl.Transport.(*http.Transport).Clone()
	tr.ForceAttemptHTTP2 = true
	defer tr.CloseIdleConnections()
	h2 := &http.Client{Transport: tr}
	resp, err := h2.Get(s.url("/devices/long"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(b) != "command" || resp.ProtoMajor != 2 {
		t.Errorf("extended long-poll: %q %v over %s", b, err, resp.Proto)
	}
	resp, err = h2.Get(s.url("/devices/short"))
	if err == nil {
		b, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err == nil {
		t.Errorf("a response past timeouts.write without an extension: %q, want the stream reset", b)
	}
}
