package proxy

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

type multiCollector []prometheus.Collector

func (m multiCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m {
		c.Describe(ch)
	}
}

func (m multiCollector) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m {
		c.Collect(ch)
	}
}

// TestRouteLabels: requests are counted under the route's name (set, or
// derived from host and path), including those a limit refuses in front of
// the router (413 for limits.max_body, 431), and refusal counters exist
// at 0 before the first refusal.
func TestRouteLabels(t *testing.T) {
	b := echoBackend(t, "b")
	s, c := startProxy(t, fmt.Sprintf(`
limits: {max_body: 16, max_headers: 20}
routes:
  - {name: api, path: /api/, proxy: {backends: [%q]}}
  - {path: /, proxy: {backends: [%q]}}
`, b.URL, b.URL))

	want := `
# HELP edgeshim_conns_refused_total Connections closed at accept, before TLS, by reason (max_conns, per_ip_max_conns, per_ip_rate).
# TYPE edgeshim_conns_refused_total counter
edgeshim_conns_refused_total{reason="max_conns"} 0
edgeshim_conns_refused_total{reason="per_ip_max_conns"} 0
edgeshim_conns_refused_total{reason="per_ip_rate"} 0
# HELP edgeshim_tls_handshakes_refused_total TLS handshakes refused by admission control, by reason (queue_full, queue_timeout).
# TYPE edgeshim_tls_handshakes_refused_total counter
edgeshim_tls_handshakes_refused_total{reason="queue_full"} 0
edgeshim_tls_handshakes_refused_total{reason="queue_timeout"} 0
`
	if err := testutil.CollectAndCompare(multiCollector{s.m.connsRefused, s.m.handshakesRefused}, strings.NewReader(want)); err != nil {
		t.Errorf("refusal counters before any refusal: %v", err)
	}
	for _, route := range []string{"api", "/"} {
		if v := testutil.ToFloat64(s.m.requests.WithLabelValues(route, "413")); v != 0 {
			t.Errorf("route %q 413 = %v before any request", route, v)
		}
	}

	do := func(req *http.Request) int {
		t.Helper()
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	get, _ := http.NewRequest("GET", s.url("/api/x"), nil)
	if code := do(get); code != 200 {
		t.Fatalf("GET /api/x: %d", code)
	}
	big, _ := http.NewRequest("POST", s.url("/api/x"), strings.NewReader(strings.Repeat("x", 100)))
	if code := do(big); code != 413 {
		t.Fatalf("POST over max_body: %d, want 413", code)
	}
	many, _ := http.NewRequest("GET", s.url("/other"), nil)
	for i := range 30 {
		many.Header.Set(fmt.Sprintf("X-H%d", i), "v")
	}
	if code := do(many); code != 431 {
		t.Fatalf("GET with 30 headers: %d, want 431", code)
	}
	for _, tc := range []struct {
		route, code string
	}{{"api", "200"}, {"api", "413"}, {"/", "431"}} {
		if v := testutil.ToFloat64(s.m.requests.WithLabelValues(tc.route, tc.code)); v != 1 {
			t.Errorf("edgeshim_http_requests_total{route=%q,code=%q} = %v, want 1", tc.route, tc.code, v)
		}
	}
	if v := testutil.ToFloat64(s.m.requests.WithLabelValues("none", "413")); v != 0 {
		t.Errorf("a refused request was counted under route none")
	}
}
