package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

const monitoringDir = "../examples/monitoring"

// TestMonitoringRules: the example alert rules load (`promtool check
// rules`) and behave as their unit tests say (`promtool test rules`).
func TestMonitoringRules(t *testing.T) {
	promtool := requireTool(t, "promtool")
	for _, args := range [][]string{
		{"check", "rules", "edgeshim-alerts.yaml"},
		{"test", "rules", "edgeshim-alerts_test.yaml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = monitoringDir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestMetricsForDashboards scrapes a real edgeshim (a bridge on a real
// mosquitto, a reverse-proxy route, traffic on both) and checks that
// /metrics passes `promtool check metrics`, that the series dashboards
// stand on are there (build info, certificate expiry, refusal counters at
// 0, a refused request under its route's name), and that every metric the
// example dashboard and alert rules query is one edgeshim exports.
func TestMetricsForDashboards(t *testing.T) {
	promtool := requireTool(t, "promtool")
	m := startMosquitto(t, "")
	app := newMQTTPeer(t, m.Addr(), "app", true)
	status := app.subscribe("devices/d1/status")
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
	defer backend.Close()
	e := startEdgeshim(t, fmt.Sprintf(`
listen: {https: "127.0.0.1:0", admin: "127.0.0.1:0"}
limits: {max_body: 1KiB}
routes:
  - {name: devices, path: /devices/, bridge: fleet}
  - {path: /api/, proxy: {backends: [%q]}}
bridges:
  fleet:
    upstream: {url: %q, publish_timeout: 5s}
    identity: {from: path, allow_unauthenticated: true}
    poll: {path: "/devices/{device}/commands", max_wait: 30s}
    telemetry: {path: "/devices/{device}/telemetry", topic: "devices/{device}/telemetry"}
    commands: {topic: "devices/{device}/commands"}
    presence: {topic: "devices/{device}/status"}
`, backend.URL, m.URL()))
	c := e.Client()

	// A command delivered to a long-poll, telemetry accepted, a body over
	// limits.max_body refused, a proxied request.
	res := make(chan pollResult, 1)
	go func() { res <- poll(c, e.URL("/devices/d1/commands?wait=25")) }()
	await(t, status, "online", 15*time.Second)
	app.publish("devices/d1/commands", "open")
	select {
	case r := <-res:
		if r.err != nil || r.code != 200 || r.body != "open" {
			t.Fatalf("poll = %+v, want 200 open", r)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("held poll did not receive the command")
	}
	post := func(path string, n int) int {
		t.Helper()
		resp, err := c.Post(e.URL(path), "text/plain", strings.NewReader(strings.Repeat("x", n)))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post("/devices/d1/telemetry", 10); code != 202 {
		t.Fatalf("telemetry: %d, want 202", code)
	}
	if code := post("/devices/d1/telemetry", 4096); code != 413 {
		t.Fatalf("telemetry over max_body: %d, want 413", code)
	}
	if r := poll(c, e.URL("/api/x")); r.code != 200 {
		t.Fatalf("proxied GET: %+v", r)
	}

	resp, err := http.Get("http://" + e.Addr("admin") + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	scrape, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	check := exec.Command(promtool, "check", "metrics")
	check.Stdin = bytes.NewReader(scrape)
	if out, err := check.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}

	samples := parseSamples(scrape)
	for _, want := range []string{
		`edgeshim_build_info{`,
		`edgeshim_certificate_expiry_seconds{name="localhost",source="self_signed"}`,
		`edgeshim_conns_refused_total{reason="per_ip_rate"} 0`,
		`edgeshim_tls_handshakes_refused_total{reason="queue_full"} 0`,
		`edgeshim_http_requests_total{code="413",route="devices"} 1`,
		`edgeshim_http_requests_total{code="202",route="devices"} 1`,
		`edgeshim_http_requests_total{code="200",route="/api/"} 1`,
		`edgeshim_http_requests_total{code="429",route="/api/"} 0`,
	} {
		if !bytes.Contains(scrape, []byte(want)) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if bytes.Contains(scrape, []byte(`route="none"`)) || bytes.Contains(scrape, []byte(`route="routes[`)) {
		t.Errorf("/metrics counts requests under route none or a config index")
	}

	dashboard := dashboardQueries(t, filepath.Join(monitoringDir, "edgeshim-dashboard.json"))
	rules := ruleQueries(t, filepath.Join(monitoringDir, "edgeshim-alerts.yaml"))
	queries := append(dashboard, rules...)
	checkPromQL(t, promtool, queries)
	for i, q := range queries {
		names := metricNames(q)
		if len(names) == 0 && i < len(dashboard) {
			// Rules may select only recording rules or up.
			t.Errorf("dashboard query names no edgeshim, go_ or process_ metric: %s", q)
		}
		for _, n := range names {
			if !samples[n] {
				t.Errorf("query uses %s, which edgeshim does not export: %s", n, q)
			}
		}
	}
}

// parseSamples returns the sample names of a text exposition.
func parseSamples(b []byte) map[string]bool {
	names := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			names[line[:i]] = true
		}
	}
	return names
}

var metricRe = regexp.MustCompile(`\b(?:edgeshim|go|process)_[a-zA-Z0-9_]+\b`)

// metricNames are the metric names a PromQL query selects (those with
// edgeshim's, Go's and the process collector's prefixes; recording rules
// have colons and are not metrics).
func metricNames(q string) []string {
	seen := map[string]bool{}
	var out []string
	for _, n := range metricRe.FindAllString(q, -1) {
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

type grafanaPanel struct {
	Title   string         `json:"title"`
	Type    string         `json:"type"`
	Panels  []grafanaPanel `json:"panels"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
	GridPos *struct{ X, Y, W, H int } `json:"gridPos"`
}

// dashboardQueries returns every query of a Grafana dashboard (panels,
// rows' panels, template variables), its variables substituted, after
// checking each panel's shape.
func dashboardQueries(t *testing.T, file string) []string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title, UID    string
		Panels        []grafanaPanel
		SchemaVersion int `json:"schemaVersion"`
		Templating    struct {
			List []struct {
				Name  string
				Type  string
				Query any
			}
		}
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if d.Title == "" || d.UID == "" || d.SchemaVersion == 0 {
		t.Errorf("%s: title, uid and schemaVersion are required", file)
	}
	subst := strings.NewReplacer("$__rate_interval", "5m", "$instance", ".*", "${instance}", ".*")
	var out []string
	var walk func([]grafanaPanel)
	walk = func(ps []grafanaPanel) {
		for _, p := range ps {
			if p.GridPos == nil || p.GridPos.W <= 0 || p.GridPos.H <= 0 {
				t.Errorf("panel %q has no gridPos", p.Title)
			}
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			refs := map[string]bool{}
			for _, tg := range p.Targets {
				if tg.Expr == "" || refs[tg.RefID] {
					t.Errorf("panel %q: a query is empty or its refId %q repeats", p.Title, tg.RefID)
				}
				refs[tg.RefID] = true
				out = append(out, subst.Replace(tg.Expr))
			}
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		if q, ok := v.Query.(map[string]any); ok && v.Type == "query" {
			// label_values(METRIC, label) names a metric too.
			if s, _ := q["query"].(string); strings.HasPrefix(s, "label_values(") {
				out = append(out, strings.TrimSuffix(strings.SplitN(strings.TrimPrefix(s, "label_values("), ",", 2)[0], ")"))
			}
		}
	}
	return out
}

// ruleQueries returns the expressions of a Prometheus rules file.
func ruleQueries(t *testing.T, file string) []string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var rf struct {
		Groups []struct {
			Rules []struct{ Expr string }
		}
	}
	if err := yaml.Unmarshal(data, &rf); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var out []string
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			out = append(out, r.Expr)
		}
	}
	return out
}

// checkPromQL parses each query with promtool (as recording rules, the
// one way promtool parses a bare expression).
func checkPromQL(t *testing.T, promtool string, queries []string) {
	t.Helper()
	type rule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var rules []rule
	for i, q := range queries {
		rules = append(rules, rule{Record: fmt.Sprintf("dashboard:query_%d", i), Expr: q})
	}
	doc, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "queries", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "queries.yaml")
	if err := os.WriteFile(f, doc, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", f).CombinedOutput(); err != nil {
		t.Errorf("a dashboard or rule query does not parse: %v\n%s", err, out)
	}
}
