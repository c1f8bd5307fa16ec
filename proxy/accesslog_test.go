package proxy

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/edgeshim/edgeshim/limits/accesslog"
)

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// accessLines parses the JSON access log lines in b.
func accessLines(t *testing.T, b *syncBuffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not JSON: %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

func withAccessLog(sink io.Writer, sample, errSample float64) func(*Options) {
	return func(o *Options) {
		o.AccessLog = accesslog.New(accesslog.Options{Writer: sink, JSON: true, Sample: sample, ErrorSample: errSample})
	}
}

func h1Client(c *http.Client) *http.Client {
	tr := c.Transport.(*http.Transport).Clone()
	tr.ForceAttemptHTTP2 = false
	tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	tr.TLSClientConfig = tr.TLSClientConfig.Clone()
	tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
	return &http.Client{Transport: tr}
}

// TestAccessLogLines: a proxy request over HTTP/2 (the direct exchange)
// and over HTTP/1.1 (the fast path) each give one line with the documented
// fields, and neither the query's token nor Authorization or Cookie
// appears in it.
func TestAccessLogLines(t *testing.T) {
	backend := echoBackend(t, "a")
	sink := &syncBuffer{}
	s, c := startProxy(t, fmt.Sprintf(`
routes: [{name: api, path: /, proxy: {backends: ["%s"]}}]`, backend.URL), withAccessLog(sink, 1, 1))
	h1 := h1Client(c)
	defer h1.Transport.(*http.Transport).CloseIdleConnections()
	for _, cl := range []*http.Client{c, h1} {
		req, _ := http.NewRequest("GET", s.url("/x/y?token=QUERYSECRET&wait=7"), nil)
		req.Header.Set("Authorization", "Bearer HEADERSECRET")
		req.Header.Set("Cookie", "session=COOKIESECRET")
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if s.fast.Stats().Served != 1 || s.directServed() != 1 {
		t.Fatalf("fast path served %d requests, the direct exchange %d, want one each", s.fast.Stats().Served, s.directServed())
	}
	// The lines are written once the answers are out: wait for them.
	waitFor(t, func() bool { return strings.Count(sink.String(), "\n") >= 2 })
	out := sink.String()
	for _, secret := range []string{"QUERYSECRET", "HEADERSECRET", "COOKIESECRET", "token"} {
		if strings.Contains(out, secret) {
			t.Errorf("%s is in the access log:\n%s", secret, out)
		}
	}
	lines := accessLines(t, sink)
	if len(lines) != 2 {
		t.Fatalf("%d lines, want 2:\n%s", len(lines), out)
	}
	for i, proto := range []string{"HTTP/2.0", "HTTP/1.1"} {
		m := lines[i]
		want := map[string]any{"msg": "access", "proto": proto, "route": "api", "method": "GET", "path": "/x/y", "wait": "7",
			"status": 200.0, "upstream": backend.URL, "tls": "1.3", "resumed": false}
		for k, v := range want {
			if m[k] != v {
				t.Errorf("%s line: %s = %v, want %v", proto, k, m[k], v)
			}
		}
		if b, _ := m["bytes"].(float64); b < 10 {
			t.Errorf("%s line: bytes = %v", proto, m["bytes"])
		}
		if cl, _ := m["client"].(string); !strings.HasPrefix(cl, "127.0.0.1:") {
			t.Errorf("%s line: client = %v", proto, m["client"])
		}
		if _, ok := m["duration"].(float64); !ok {
			t.Errorf("%s line: no duration", proto)
		}
	}
}

// TestAccessLogSamplingAndRouteOff: with sample 0 successes are not
// logged but errors are, with their reason and backend, on both paths;
// a route with access_log: false logs nothing.
func TestAccessLogSamplingAndRouteOff(t *testing.T) {
	backend := echoBackend(t, "a")
	sink := &syncBuffer{}
	s, c := startProxy(t, fmt.Sprintf(`
routes:
  - {name: ok, path: /ok/, proxy: {backends: ["%s"]}}
  - {name: dead, path: /dead/, proxy: {backends: ["http://127.0.0.1:1"], retries: 0}}
  - {name: quiet, path: /quiet/, access_log: false, proxy: {backends: ["http://127.0.0.1:1"], retries: 0}}`, backend.URL),
		withAccessLog(sink, 0, 1))
	h1 := h1Client(c)
	defer h1.Transport.(*http.Transport).CloseIdleConnections()
	for _, cl := range []*http.Client{c, h1} {
		for _, p := range []string{"/ok/", "/dead/", "/quiet/"} {
			resp, err := cl.Get(s.url(p))
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	waitFor(t, func() bool { return strings.Count(sink.String(), "\n") >= 2 })
	lines := accessLines(t, sink)
	if len(lines) != 2 {
		t.Fatalf("%d lines, want the two 502s:\n%s", len(lines), sink.String())
	}
	for _, m := range lines {
		if m["route"] != "dead" || m["status"] != 502.0 || m["reason"] != "backend unavailable" || m["upstream"] != "http://127.0.0.1:1" {
			t.Errorf("line %v, want route dead, 502, reason and upstream", m)
		}
	}
}

// TestDeadPoolLogsBounded: 50 requests to a dead pool give a few warning
// lines, not one each.
func TestDeadPoolLogsBounded(t *testing.T) {
	logs := &syncBuffer{}
	s, c := startProxy(t, `
routes: [{path: /, proxy: {backends: ["http://127.0.0.1:1", "http://127.0.0.1:2"]}}]`, func(o *Options) {
		o.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})
	h1 := h1Client(c)
	defer h1.Transport.(*http.Transport).CloseIdleConnections()
	for i := range 50 {
		cl := c
		if i%2 == 1 {
			cl = h1 // the fast path too
		}
		resp, err := cl.Get(s.url("/"))
		if err != nil {
			t.Fatal(err, logs.String())
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 502 && resp.StatusCode != 503 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	warns := strings.Count(logs.String(), "level=WARN")
	// Per backend: its first error and its ejection; the route's first
	// "no healthy backend".
	if warns > 6 || !strings.Contains(logs.String(), `msg="no healthy backend"`) {
		t.Errorf("50 requests to a dead pool gave %d WARN lines, want at most 6:\n%s", warns, logs.String())
	}
}
