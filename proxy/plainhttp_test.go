package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestPlainHTTP checks listen.http: a route with allow_http is served, any
// other request is redirected to the bound HTTPS port with 308, path and
// query kept (method and body are the client's to replay).
func TestPlainHTTP(t *testing.T) {
	b := echoBackend(t, "open")
	s, _ := startProxy(t, fmt.Sprintf(`
listen: {http: "127.0.0.1:0"}
routes:
  - {path: /open/, allow_http: true, proxy: {backends: ["%s"]}}
  - {path: /, proxy: {backends: ["%s"]}}
`, b.URL, b.URL))
	plain := "http://" + s.Addr("http").String()
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	defer noFollow.CloseIdleConnections()

	resp, err := noFollow.Get(plain + "/open/x")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "open") {
		t.Errorf("allow_http route: %d %s, want 200 from the backend", resp.StatusCode, body)
	}

	for _, method := range []string{http.MethodGet, http.MethodPost} {
		req, _ := http.NewRequest(method, plain+"/devices/d1/poll?wait=30", strings.NewReader("x"))
		req.Host = "edge.example.com"
		resp, err := noFollow.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		want := fmt.Sprintf("https://edge.example.com:%d/devices/d1/poll?wait=30", s.Addr("https").(*net.TCPAddr).Port)
		if resp.StatusCode != http.StatusPermanentRedirect || resp.Header.Get("Location") != want {
			t.Errorf("%s: %d Location %q, want 308 %q", method, resp.StatusCode, resp.Header.Get("Location"), want)
		}
	}
}

// TestBackendConnectionsGauge: edgeshim_backend_connections_open follows
// the upstream connections a backend pool opens and closes.
func TestBackendConnectionsGauge(t *testing.T) {
	b := echoBackend(t, "one")
	s, cl := startProxy(t, fmt.Sprintf(`routes: [{path: /, proxy: {backends: ["%s"]}}]`, b.URL))
	for range 3 {
		resp, err := cl.Get(s.url("/x"))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	g := s.m.backendConns.WithLabelValues("/", b.URL)
	if got := testutil.ToFloat64(g); got != 1 {
		t.Errorf("connections open after 3 sequential requests = %v, want 1 (kept alive)", got)
	}
	for _, rp := range s.router.proxies {
		rp.closeIdle()
	}
	if got := testutil.ToFloat64(g); got != 0 {
		t.Errorf("connections open after closing idle ones = %v, want 0", got)
	}
}

// TestPlainHTTPSmugglingRefused: listen.http refuses CL+TE like HTTPS.
func TestPlainHTTPSmugglingRefused(t *testing.T) {
	cb := newCountingBackend(t)
	s, _ := startProxy(t, fmt.Sprintf(`
listen: {http: "127.0.0.1:0"}
routes: [{path: /, allow_http: true, proxy: {backends: ["http://%s"]}}]`, cb.ln.Addr()))
	c, err := net.Dial("tcp", s.Addr("http").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("CL+TE on listen.http: %d, want 400", resp.StatusCode)
	}
	if n := cb.requests.Load(); n != 0 {
		t.Errorf("%d requests reached the backend, want 0", n)
	}
}
