package proxy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"
)

// fullBacklogAddr returns a loopback address whose listener never accepts
// and whose accept queue is full: a connect to it gets no SYN-ACK (Linux
// drops the SYN), so dialing it hangs until the dialer's timeout.
func fullBacklogAddr(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	// Fill the queue (backlog 0 holds one connection), then make sure the
	// next dial really hangs.
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			break
		}
		t.Cleanup(func() { c.Close() })
		if i == 8 {
			t.Skip("this kernel completes connections beyond the accept queue")
		}
	}
	return addr
}

// TestRouteTimeouts: each per-route backend timeout ends the request with
// 504 close to its bound: dial (a backend that never completes the TCP
// handshake), response_header (a backend that never answers) and request
// (the whole exchange: headers late, or a body that stalls after them).
func TestRouteTimeouts(t *testing.T) {
	slowHeaders := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	}))
	t.Cleanup(slowHeaders.Close)
	stalledBody := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "partial")
		http.NewResponseController(w).Flush()
		<-r.Context().Done()
	}))
	t.Cleanup(stalledBody.Close)
	s, cl := startProxy(t, fmt.Sprintf(`
routes:
  - {path: /dial, proxy: {backends: ["http://%s"], retries: 0, timeouts: {dial: 300ms}}}
  - {path: /header, proxy: {backends: [%q], timeouts: {response_header: 300ms}}}
  - {path: /request/headers, proxy: {backends: [%q], timeouts: {request: 300ms, response_header: 1m}}}
  - {path: /request/body, proxy: {backends: [%q], timeouts: {request: 300ms}}}
`, fullBacklogAddr(t), slowHeaders.URL, slowHeaders.URL, stalledBody.URL))
	for _, path := range []string{"/dial", "/header", "/request/headers"} {
		start := time.Now()
		resp, err := cl.Get(s.url(path))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		took := time.Since(start)
		if resp.StatusCode != 504 || resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s: %d %s, want 504 JSON", path, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		if took < 300*time.Millisecond || took > 5*time.Second {
			t.Errorf("%s: answered after %s, bound 300ms", path, took)
		}
	}
	// Headers came in time: the client has its 200, and the stalled body
	// is cut at the request bound.
	start := time.Now()
	resp, err := cl.Get(s.url("/request/body"))
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "partial" || err == nil {
		t.Errorf("stalled body: %d %q err %v, want 200 \"partial\" then an error", resp.StatusCode, body, err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("stalled body cut after %s, bound 300ms", took)
	}
}
