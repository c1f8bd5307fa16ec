package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"
)

// startHAProxy runs HAProxy in TCP mode on a free 127.0.0.1 port in front
// of upstream, sending PROXY protocol v2 to it (and its health checks
// with a v2 LOCAL header). It returns the address devices connect to.
func startHAProxy(t *testing.T, upstream string) string {
	t.Helper()
	bin := requireTool(t, "haproxy")
	front := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global
  maxconn 2000
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend devices
  bind %s
  default_backend edge
backend edge
  server edge %s send-proxy-v2 check check-send-proxy inter 200ms
`, front, upstream)
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "-db", "-f", path)
	out := newLogBuffer()
	stderr, _ := cmd.StderrPipe()
	cmd.Stdout = cmd.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go out.consume(stderr, nil)
	t.Cleanup(func() {
		cancel()
		cmd.Wait()
		if t.Failed() {
			t.Logf("haproxy output:\n%s", out.String())
		}
	})
	waitTCP(t, front, 10*time.Second)
	return front
}

// TestHAProxySendProxyV2: edgeshim behind a real HAProxy (TCP mode,
// send-proxy-v2), per-IP max_conns 1. Two devices (127.0.0.2 and
// 127.0.0.3, both reaching edgeshim from HAProxy's 127.0.0.1) each hold a
// connection and are served; the backend sees each one's address in
// X-Forwarded-For; device 2's second connection is refused by its own
// cap; HAProxy's health checks (v2 LOCAL) are not refused; a direct
// connection without a header is refused as missing, counted and logged.
func TestHAProxySendProxyV2(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Header.Get("X-Forwarded-For"))
	}))
	defer backend.Close()
	e := startEdgeshim(t, fmt.Sprintf(`
listen: {https: "127.0.0.1:0", admin: "127.0.0.1:0", proxy_protocol: {trusted: ["127.0.0.1"], timeout: 2s}}
limits: {per_ip: {max_conns: 1}}
routes: [{path: /, proxy: {backends: [%q]}}]
`, backend.URL))
	front := startHAProxy(t, e.Addr("https"))

	device := func(src string) *http.Client {
		d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", front)
		}, TLSClientConfig: e.TLSConfig()}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 10 * time.Second}
	}
	get := func(c *http.Client) (string, error) {
		resp, err := c.Get(e.URL("/who"))
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return fmt.Sprintf("%d %s", resp.StatusCode, b), nil
	}
	d2, d3 := device("127.0.0.2"), device("127.0.0.3")
	for range 2 { // the second round reuses the connections held
		for c, want := range map[*http.Client]string{d2: "200 127.0.0.2", d3: "200 127.0.0.3"} {
			if got, err := get(c); err != nil || got != want {
				t.Fatalf("through HAProxy: %q, %v; want %q", got, err, want)
			}
		}
	}
	if got, err := get(device("127.0.0.2")); err == nil {
		t.Errorf("device 2's second connection: %q, want refused (per-IP max 1 by its own address)", got)
	}
	// At least 1: the refused device's connection (HAProxy or the client
	// may try once more on a loaded machine; each is refused the same).
	if n := e.WaitMetric("edgeshim_conns_refused_total", 1, 10*time.Second, `reason="per_ip_max_conns"`); n < 1 {
		t.Errorf("per_ip_max_conns refusals %v, want 1", n)
	}

	direct, err := net.Dial("tcp", e.Addr("https"))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	direct.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(direct, "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03")
	if n, _ := bufio.NewReader(direct).Read(make([]byte, 1)); n != 0 {
		t.Error("a direct connection without a PROXY header was answered")
	}
	if n := e.WaitMetric("edgeshim_proxy_protocol_refused_total", 1, 10*time.Second, `reason="missing"`); n != 1 {
		t.Errorf("missing-header refusals %v, want 1", n)
	}
	e.Logs.waitLine(t, regexp.MustCompile(`msg="PROXY protocol header refused" reason=missing count=1 addr=127.0.0.1`), 10*time.Second)
	// HAProxy has been checking all along (every 200 ms, v2 LOCAL).
	if n := e.Metric("edgeshim_proxy_protocol_refused_total"); n != 1 {
		t.Errorf("%v PROXY refusals in all, want only the direct one (HAProxy's checks are LOCAL)", n)
	}
}

// TestFleetLongPollsBehindHAProxy is the case of issue 12: 300 devices
// long-poll at once through one balancer address. With PROXY protocol
// each is limited by its own address (default per_ip: 200 open, 20/s,
// burst 40) and all 300 are served. The same 300 polls sent straight from
// one untrusted address are refused beyond the per-IP burst, and the
// refusals are logged, a few lines whose counts add up to the refusals.
func TestFleetLongPollsBehindHAProxy(t *testing.T) {
	m := startMosquitto(t, "")
	e := startEdgeshim(t, fmt.Sprintf(`
listen: {https: "127.0.0.1:0", admin: "127.0.0.1:0", proxy_protocol: {trusted: ["127.0.0.1"]}}
routes: [{path: /devices/, bridge: fleet}]
bridges:
  fleet:
    upstream: {url: %q, reconnect_rate: 5000}
    identity: {from: path, allow_unauthenticated: true}
    poll: {path: "/devices/{device}/commands", max_wait: 30s}
    commands: {topic: "devices/{device}/commands"}
`, m.URL()))
	front := startHAProxy(t, e.Addr("https"))
	const n = 300
	poll := func(i int, src, addr string) int {
		d := &net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		}, TLSClientConfig: e.TLSConfig(), DisableKeepAlives: true}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Get(e.URL(fmt.Sprintf("/devices/door-%d/commands?wait=2", i)))
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	fleet := func(src func(i int) string, addr string) map[int]int {
		codes := make(chan int, n)
		for i := range n {
			go func() { codes <- poll(i, src(i), addr) }()
		}
		got := map[int]int{}
		for range n {
			got[<-codes]++
		}
		return got
	}
	behind := fleet(func(i int) string { return fmt.Sprintf("127.1.%d.%d", i/200, 1+i%200) }, front)
	if behind[204] != n {
		t.Errorf("through HAProxy: %v, want all %d polls answered 204", behind, n)
	}

	direct := fleet(func(int) string { return "127.0.0.5" }, e.Addr("https"))
	refused := direct[0]
	if refused == 0 || direct[204]+refused != n {
		t.Fatalf("straight from one address: %v, want some refused by the per-IP limits", direct)
	}
	metric := e.WaitMetric("edgeshim_conns_refused_total", float64(refused), 10*time.Second)
	// One line at once, then one per second per reason with the count.
	lineRe := regexp.MustCompile(`msg="connection refused" reason=per_ip_\w+ count=(\d+)`)
	var sum int
	var lines [][]string
	deadline := time.Now().Add(10 * time.Second)
	for { // the aggregate line comes a second after the first
		sum = 0
		lines = lineRe.FindAllStringSubmatch(e.Logs.String(), -1)
		for _, l := range lines {
			var c int
			fmt.Sscan(l[1], &c)
			sum += c
		}
		if float64(sum) >= metric || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("straight from one address: %v; %v refusals counted, %d log lines carrying %d", direct, metric, len(lines), sum)
	if float64(sum) != metric {
		t.Errorf("the log carries %d refusals, the counter %v", sum, metric)
	}
	if len(lines) > 10 {
		t.Errorf("%d log lines for one burst of refusals, want a few (one per reason per second)", len(lines))
	}
}
