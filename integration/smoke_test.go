package integration

import (
	"io"
	"net/http"
	"testing"
	"time"
)

// TestSmokeServesHTTPS starts the real binary and checks that it answers
// over TLS (404 with no routes) and that the admin listener serves
// /healthz and /metrics.
func TestSmokeServesHTTPS(t *testing.T) {
	e := startEdgeshim(t, `
listen: {https: "127.0.0.1:0", admin: "127.0.0.1:0"}
log: {format: json}
`)
	resp, err := e.Client().Get(e.URL("/nothing"))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("status = %d, want 404", resp.StatusCode)
	}
	if resp.Proto != "HTTP/2.0" {
		t.Errorf("proto = %s, want HTTP/2.0 (ALPN h2)", resp.Proto)
	}
	h, err := http.Get("http://" + e.Addr("admin") + "/healthz")
	if err != nil || h.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", err, h)
	}
	h.Body.Close()
	if got := e.Metric("edgeshim_http_requests_total", `code="404"`); got != 1 {
		t.Errorf("edgeshim_http_requests_total{code=404} = %v, want 1", got)
	}
	if err := e.Stop(10 * time.Second); err != nil {
		t.Errorf("exit: %v", err)
	}
}
