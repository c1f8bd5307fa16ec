package proxy

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// healthBackend answers its health path with a status the test sets and
// records what it answered; other paths answer with its name.
type healthBackend struct {
	*httptest.Server
	status atomic.Int32
	mu     sync.Mutex
	checks []int // statuses answered to health checks, in order
	note   chan struct{}
}

func newHealthBackend(t *testing.T, name string, status int) *healthBackend {
	h := &healthBackend{note: make(chan struct{}, 1)}
	h.status.Store(int32(status))
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			io.WriteString(w, name)
			return
		}
		code := int(h.status.Load())
		h.mu.Lock()
		h.checks = append(h.checks, code)
		h.mu.Unlock()
		select {
		case h.note <- struct{}{}:
		default:
		}
		w.WriteHeader(code)
	}))
	t.Cleanup(h.Close)
	return h
}

// setStatus changes the health answer and waits until the health loop has
// recorded it: a check answered with it and a later check arrived (the
// loop records a result before it sends the next check).
func (h *healthBackend) setStatus(t *testing.T, code int) {
	t.Helper()
	h.status.Store(int32(code))
	h.mu.Lock()
	from := len(h.checks)
	h.mu.Unlock()
	timeout := time.After(10 * time.Second)
	for {
		h.mu.Lock()
		i := slices.Index(h.checks[from:], code)
		done := i >= 0 && from+i < len(h.checks)-1
		h.mu.Unlock()
		if done {
			return
		}
		select {
		case <-h.note:
		case <-timeout:
			t.Fatalf("health check answering %d not recorded within 10s", code)
		}
	}
}

// TestActiveHealthCheck: a backend whose health path answers other than
// expect_status leaves the rotation (and its edgeshim_backend_healthy
// gauge drops to 0), with every backend failing the route answers 503
// with Retry-After, and a backend that answers expect_status again is
// back in rotation.
func TestActiveHealthCheck(t *testing.T) {
	a, b := newHealthBackend(t, "a", 204), newHealthBackend(t, "b", 204)
	s, cl := startProxy(t, fmt.Sprintf(`routes: [{path: /, proxy: {backends: [%q, %q], lb: first,
  health_check: {path: /healthz, interval: 10ms, expect_status: 204}}}]`, a.URL, b.URL))
	get := func() (int, string) {
		t.Helper()
		resp, err := cl.Get(s.url("/x"))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 503 && resp.Header.Get("Retry-After") == "" {
			t.Error("503 without Retry-After")
		}
		return resp.StatusCode, string(body)
	}
	healthy := func(h *healthBackend) float64 {
		var m dto.Metric
		s.m.backendHealthy.WithLabelValues("/", h.URL).Write(&m)
		return m.GetGauge().GetValue()
	}
	a.setStatus(t, 204)
	if code, body := get(); code != 200 || body != "a" {
		t.Fatalf("both healthy: %d %q, want a (lb first)", code, body)
	}
	a.setStatus(t, 500)
	if code, body := get(); code != 200 || body != "b" {
		t.Errorf("a failing its check: %d %q, want b", code, body)
	}
	if healthy(a) != 0 || healthy(b) != 1 {
		t.Errorf("healthy gauges a=%v b=%v, want 0 1", healthy(a), healthy(b))
	}
	b.setStatus(t, 200) // a 2xx, but not expect_status
	if code, _ := get(); code != 503 {
		t.Errorf("every backend failing: %d, want 503", code)
	}
	a.setStatus(t, 204)
	if code, body := get(); code != 200 || body != "a" {
		t.Errorf("a healthy again: %d %q, want a", code, body)
	}
	if healthy(a) != 1 {
		t.Errorf("healthy gauge of a = %v after recovery, want 1", healthy(a))
	}
}
