package integration

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// accessLog reads the JSON access log file until pred holds for its
// lines (or fails after within) and returns them.
func accessLog(t *testing.T, path string, within time.Duration, pred func([]map[string]any) bool) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var lines []map[string]any
		data, _ := os.ReadFile(path)
		sc := bufio.NewScanner(strings.NewReader(string(data)))
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				t.Fatalf("access log line not JSON: %q", sc.Text())
			}
			lines = append(lines, m)
		}
		if pred(lines) {
			return lines
		}
		if time.Now().After(deadline) {
			t.Fatalf("access log after %s:\n%s", within, data)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func find(lines []map[string]any, kv map[string]any) map[string]any {
	for _, m := range lines {
		ok := true
		for k, v := range kv {
			if m[k] != v {
				ok = false
				break
			}
		}
		if ok {
			return m
		}
	}
	return nil
}

// TestAccessLogBridgeAndWebSockets: the real binary writes its access log
// to access_log.file: a poll over HTTP/1.1 that got a command (device,
// commands delivered, upstream), a poll over HTTP/2, a device WebSocket
// and an MQTT-over-WebSocket socket when they end (close code and
// reason); the query's token and the Authorization header never appear.
func TestAccessLogBridgeAndWebSockets(t *testing.T) {
	m := startMosquitto(t, "")
	app := newMQTTPeer(t, m.Addr(), "app", true)
	status := app.subscribe("devices/al1/status")
	cfg := bridgeConfig(m.URL(), "", "    websocket: {path: \"/devices/{device}/ws\", format: json}\n")
	cfg = strings.Replace(cfg, "routes: [{path: /devices/, bridge: fleet}]",
		fmt.Sprintf("routes: [{path: /devices/, bridge: fleet}, {path: /mqtt, mqtt_ws: {broker: %q}}]\naccess_log: {file: access.log, format: json, sample: 1}", "tcp://"+m.Addr()), 1)
	e := startEdgeshim(t, cfg)
	path := filepath.Join(e.Dir, "access.log")

	h2 := e.Client()
	tr := &http.Transport{TLSClientConfig: e.TLSConfig(), TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}
	defer tr.CloseIdleConnections()
	h1 := &http.Client{Transport: tr, Timeout: time.Minute}
	res := make(chan pollResult, 1)
	go func() {
		req, _ := http.NewRequest("GET", e.URL("/devices/al1/commands?wait=20&token=QUERYSECRET"), nil)
		req.Header.Set("Authorization", "Bearer HEADERSECRET")
		resp, err := h1.Do(req)
		if err != nil {
			res <- pollResult{err: err}
			return
		}
		body, _ := io.ReadAll(resp.Body) // all of it: closing it unread would close the connection
		resp.Body.Close()
		res <- pollResult{code: resp.StatusCode, body: string(body)}
	}()
	await(t, status, "online", 10*time.Second)
	app.publish("devices/al1/commands", "open")
	if r := <-res; r.err != nil || r.code != 200 || r.body != "open" {
		t.Fatalf("long-poll: %+v", r)
	}
	if r := poll(h2, e.URL("/devices/al2/commands")); r.code != 204 {
		t.Fatalf("h2 poll: %+v", r)
	}
	// A device WebSocket and an MQTT-over-WebSocket socket, closed by
	// their clients.
	d := websocket.Dialer{TLSClientConfig: e.TLSConfig()}
	ws, _, err := d.Dial("wss://"+e.Addr("https")+"/devices/al3/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))
	closeCode(ws, 10*time.Second)
	ws.Close()
	mq := dialMQTTWS(t, e)
	mq.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))
	closeCode(mq, 10*time.Second)
	mq.Close()

	lines := accessLog(t, path, 20*time.Second, func(ls []map[string]any) bool {
		return find(ls, map[string]any{"device": "al1"}) != nil && find(ls, map[string]any{"device": "al2"}) != nil &&
			find(ls, map[string]any{"device": "al3"}) != nil && find(ls, map[string]any{"path": "/mqtt"}) != nil
	})
	data, _ := os.ReadFile(path)
	for _, s := range []string{"QUERYSECRET", "HEADERSECRET", "token"} {
		if strings.Contains(string(data), s) {
			t.Errorf("%s in the access log:\n%s", s, data)
		}
	}
	checks := []struct {
		match, want map[string]any
	}{
		{map[string]any{"device": "al1"}, map[string]any{"proto": "HTTP/1.1", "route": "/devices/", "bridge": "fleet", "method": "GET",
			"path": "/devices/al1/commands", "wait": "20", "status": 200.0, "bytes": 4.0, "commands": 1.0, "upstream": m.URL(), "tls": "1.3"}},
		{map[string]any{"device": "al2"}, map[string]any{"proto": "HTTP/2.0", "status": 204.0, "commands": 0.0, "bridge": "fleet"}},
		{map[string]any{"device": "al3"}, map[string]any{"path": "/devices/al3/ws", "status": 101.0, "close_code": 1000.0, "close_reason": "peer_closed"}},
		{map[string]any{"path": "/mqtt"}, map[string]any{"status": 101.0, "close_code": 1000.0, "upstream": m.Addr()}},
	}
	for _, c := range checks {
		got := find(lines, c.match)
		for k, v := range c.want {
			if got[k] != v {
				t.Errorf("line %v: %s = %v, want %v (%v)", c.match, k, got[k], v, got)
			}
		}
		if cl, _ := got["client"].(string); !strings.HasPrefix(cl, "127.0.0.1:") {
			t.Errorf("line %v: client %v", c.match, got["client"])
		}
	}
}

// TestBrokerOutageLogsBounded: a broker outage with N sessions reconnecting
// every second gives a bounded number of WARN lines (not one per attempt)
// and one "upstream reconnected" line with how long and how many sessions.
func TestBrokerOutageLogsBounded(t *testing.T) {
	const n = 20
	m := startMosquitto(t, "")
	e := startEdgeshim(t, strings.Replace(bridgeConfig(m.URL(), "", ""), "log: {level: debug}", "log: {level: info}\naccess_log: {enabled: false}", 1))
	c := e.Client()
	for i := range n {
		if r := poll(c, e.URL(fmt.Sprintf("/devices/out%d/commands", i))); r.code != 204 {
			t.Fatalf("poll: %+v", r)
		}
	}
	e.WaitMetric("edgeshim_bridge_session_connects_total", n, 20*time.Second, `result="ok"`)
	// Devices keep long-polling through the outage: a session that a
	// device waits on reconnects with backoff (one nobody waits on stays
	// dormant until its device's next request).
	ctx, cancel := context.WithCancel(context.Background())
	var pollers sync.WaitGroup
	defer pollers.Wait()
	defer cancel()
	for i := range n {
		pollers.Add(1)
		go func() {
			defer pollers.Done()
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, "GET", e.URL(fmt.Sprintf("/devices/out%d/commands?wait=20", i)), nil)
				if resp, err := c.Do(req); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				} else if ctx.Err() == nil {
					select { // the edge answered nothing: a device's pause before it retries
					case <-ctx.Done():
					case <-time.After(200 * time.Millisecond):
					}
				}
			}
		}()
	}
	e.WaitMetric("edgeshim_bridge_polls_held", n, 20*time.Second)
	m.Stop()
	// backoff 100ms..1s: each session fails several times a second.
	if got := e.WaitMetric("edgeshim_bridge_session_connects_total", 5*n, 60*time.Second, `result="error"`); got < 5*n {
		t.Fatalf("%v connect failures, want %d", got, 5*n)
	}
	e.Logs.waitLine(t, regexp.MustCompile(`msg="upstream: \d+ more failures in the last 10s"`), 30*time.Second)
	m.start()
	rec := e.Logs.waitLine(t, regexp.MustCompile(`msg="upstream reconnected".* down_for=(\S+) failures=(\d+)`), 60*time.Second)
	fails := e.Metric("edgeshim_bridge_session_connects_total", `result="error"`)
	var warns []string
	for _, l := range strings.Split(e.Logs.String(), "\n") {
		if strings.Contains(l, "level=WARN") && strings.Contains(l, "upstream") {
			warns = append(warns, l)
		}
	}
	// The first failure, the first lost connection folded in, and one
	// summary per 10s of outage.
	if len(warns) > 5 {
		t.Errorf("%v connect failures gave %d WARN lines, want at most 5:\n%s", fails, len(warns), strings.Join(warns, "\n"))
	}
	if !strings.Contains(rec[0], fmt.Sprintf("sessions=%d", n)) {
		t.Errorf("reconnected line %q: want sessions=%d", rec[0], n)
	}
	if got := strings.Count(e.Logs.String(), `msg="upstream reconnected"`); got != 1 {
		t.Errorf("%d reconnected lines, want 1", got)
	}
	t.Logf("%v connect failures: %d WARN lines; %s", fails, len(warns), rec[0])
}
