package integration

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// bridgeConfig is an edgeshim config with one bridge "fleet" on /devices/
// toward broker; extra is YAML merged into the bridge (indented 4).
func bridgeConfig(broker, identity, extra string) string {
	if identity == "" {
		identity = "{from: path, allow_unauthenticated: true}"
	}
	return fmt.Sprintf(`
listen: {https: "127.0.0.1:0", admin: "127.0.0.1:0"}
log: {level: debug}
limits: {per_ip: {max_conns: 5000, rate: 100000, burst: 100000}, max_conns: 10000}
routes: [{path: /devices/, bridge: fleet}]
bridges:
  fleet:
    upstream: {url: %q, session_expiry: 1h, keepalive: 30s, reconnect_rate: 5000, backoff_min: 100ms, backoff_max: 1s, publish_timeout: 2s}
    identity: %s
    poll: {path: "/devices/{device}/commands", max_wait: 30s}
    telemetry: {path: "/devices/{device}/telemetry", topic: "devices/{device}/telemetry"}
    commands: {topic: "devices/{device}/commands"}
    presence: {topic: "devices/{device}/status"}
%s`, broker, identity, extra)
}

type pollResult struct {
	code    int
	body    string
	id      string
	retryAt string
	err     error
}

func poll(c *http.Client, url string) pollResult {
	resp, err := c.Get(url)
	if err != nil {
		return pollResult{err: err}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return pollResult{code: resp.StatusCode, body: string(b), id: resp.Header.Get("X-Command-Id"), retryAt: resp.Header.Get("Retry-After")}
}

// TestBridgeLongPollReceivesCommand: a held long-poll answers as soon as a
// backend publishes a command, with the command; presence is online.
func TestBridgeLongPollReceivesCommand(t *testing.T) {
	m := startMosquitto(t, "")
	app := newMQTTPeer(t, m.Addr(), "app", true)
	status := app.subscribe("devices/d1/status")
	e := startEdgeshim(t, bridgeConfig(m.URL(), "", ""))
	c := e.Client()
	res := make(chan pollResult, 1)
	go func() { res <- poll(c, e.URL("/devices/d1/commands?wait=25")) }()
	await(t, status, "online", 10*time.Second) // the session is live
	start := time.Now()
	app.publish("devices/d1/commands", "open")
	select {
	case r := <-res:
		if r.err != nil || r.code != 200 || r.body != "open" || r.id == "" {
			t.Fatalf("poll = %+v, want 200 open with an id", r)
		}
		t.Logf("publish → long-poll answered in %s", time.Since(start))
	case <-time.After(20 * time.Second):
		t.Fatal("held poll did not receive the command")
	}
	// Delivered once: the next short poll is empty.
	if r := poll(c, e.URL("/devices/d1/commands")); r.code != 204 {
		t.Errorf("second poll = %+v, want 204", r)
	}
	if got := e.Metric("edgeshim_bridge_commands_delivered_total"); got != 1 {
		t.Errorf("commands delivered metric = %v, want 1", got)
	}
}

// TestBridgePresenceAndQueuedWhileAway: online (retained) on first poll,
// offline (the will) after session.idle without polls; a command published
// while the device is away is queued by the broker and delivered on its
// next poll.
func TestBridgePresenceAndQueuedWhileAway(t *testing.T) {
	m := startMosquitto(t, "")
	e := startEdgeshim(t, bridgeConfig(m.URL(), "", "    session: {idle: 1s}\n"))
	c := e.Client()
	if r := poll(c, e.URL("/devices/d2/commands")); r.code != 204 {
		t.Fatalf("first poll = %+v", r)
	}
	late := newMQTTPeer(t, m.Addr(), "late", true)
	status := late.subscribe("devices/d2/status")
	m1 := await(t, status, "online", 10*time.Second)
	if !m1.Retain {
		t.Error("online presence is not retained")
	}
	await(t, status, "offline", 10*time.Second) // idle 1s → session ended, will fired
	late.publish("devices/d2/commands", "while-away")
	if r := poll(c, e.URL("/devices/d2/commands?wait=10")); r.code != 200 || r.body != "while-away" {
		t.Fatalf("poll after return = %+v, want the queued command", r)
	}
	await(t, status, "online", 10*time.Second)
}

// TestBridgeExplicitAckSurvivesKill: a command written but not acked is
// delivered again after edgeshim is killed with SIGKILL and restarted
// (will_delay 0s, so the kill shows as offline at once).
func TestBridgeExplicitAckSurvivesKill(t *testing.T) {
	m := startMosquitto(t, "")
	app := newMQTTPeer(t, m.Addr(), "app", true)
	status := app.subscribe("devices/d3/status")
	cfg := bridgeConfig(m.URL(), "", "    poll: {path: \"/devices/{device}/commands\", ack: explicit, ack_timeout: 1h}\n")
	cfg = strings.Replace(cfg, "    poll: {path: \"/devices/{device}/commands\", max_wait: 30s}\n", "", 1)
	cfg = willAtOnce(cfg)
	e := startEdgeshim(t, cfg)
	c := e.Client()
	res := make(chan pollResult, 1)
	go func() { res <- poll(c, e.URL("/devices/d3/commands?wait=20")) }()
	await(t, status, "online", 10*time.Second)
	app.publish("devices/d3/commands", "unlock")
	r := <-res
	if r.code != 200 || r.body != "unlock" {
		t.Fatalf("poll = %+v", r)
	}
	e.Kill() // written, never acked
	await(t, status, "offline", 10*time.Second)

	e2 := startEdgeshim(t, cfg, EdgeOptions{Dir: e.Dir})
	c2 := e2.Client()
	r = poll(c2, e2.URL("/devices/d3/commands?wait=10"))
	if r.code != 200 || r.body != "unlock" {
		t.Fatalf("after SIGKILL and restart: %+v, want unlock again", r)
	}
	req, _ := http.NewRequest("POST", e2.URL("/devices/d3/commands/"+r.id+"/ack"), nil)
	resp, err := c2.Do(req)
	if err != nil || resp.StatusCode != 204 {
		t.Fatalf("ack: %v %v", err, resp)
	}
	resp.Body.Close()
	req, _ = http.NewRequest("POST", e2.URL("/devices/d3/commands/nope/ack"), nil)
	if resp, _ := c2.Do(req); resp.StatusCode != 404 {
		t.Errorf("unknown ack id: %d, want 404", resp.StatusCode)
	}
	if r := poll(c2, e2.URL("/devices/d3/commands?wait=1")); r.code != 204 {
		t.Errorf("after ack: %+v, want 204", r)
	}
}

// TestBridgeTelemetryBrokerRestart: 202 only after PUBACK; broker down →
// 503 with Retry-After; back up → 202 again; every 202'd message arrived.
func TestBridgeTelemetryBrokerRestart(t *testing.T) {
	m := startMosquitto(t, "")
	sub := newMQTTPeer(t, m.Addr(), "telemetry-sink", true)
	got := sub.subscribe("devices/+/telemetry")
	e := startEdgeshim(t, bridgeConfig(m.URL(), "", ""))
	c := e.Client()
	post := func(body string) *http.Response {
		resp, err := c.Post(e.URL("/devices/d4/telemetry"), "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	var accepted []string
	for i := range 3 {
		body := fmt.Sprintf("before-%d", i)
		if r := post(body); r.StatusCode != 202 {
			t.Fatalf("telemetry with broker up: %d", r.StatusCode)
		}
		accepted = append(accepted, body)
	}
	for _, a := range accepted {
		await(t, got, a, 5*time.Second)
	}
	m.Stop()
	r := post("during")
	ra, _ := strconv.Atoi(r.Header.Get("Retry-After"))
	if r.StatusCode != 503 || ra < 5 || ra > 60 {
		t.Fatalf("telemetry with broker down: %d Retry-After %q, want 503 with 5-60", r.StatusCode, r.Header.Get("Retry-After"))
	}
	m.Restart()
	sub2 := newMQTTPeer(t, m.Addr(), "telemetry-sink-2", true)
	got2 := sub2.subscribe("devices/+/telemetry")
	// edgeshim reconnects with backoff: the 503s end when it is back.
	deadline := time.Now().Add(20 * time.Second)
	var after []string
	for i := 0; len(after) < 3; i++ {
		body := fmt.Sprintf("after-%d", i)
		switch r := post(body); r.StatusCode {
		case 202:
			after = append(after, body)
		case 503:
			if time.Now().After(deadline) {
				t.Fatal("telemetry still 503 20s after the broker came back")
			}
			time.Sleep(100 * time.Millisecond) // no signal to await: the device's own retry
		default:
			t.Fatalf("telemetry after restart: %d", r.StatusCode)
		}
	}
	for _, a := range after {
		await(t, got2, a, 10*time.Second)
	}
}

// TestBridgeEviction: at session.max the least recently polled session
// ends and its will fires (here at once: will_delay 0s).
func TestBridgeEviction(t *testing.T) {
	m := startMosquitto(t, "")
	app := newMQTTPeer(t, m.Addr(), "app", true)
	status := app.subscribe("devices/+/status")
	e := startEdgeshim(t, willAtOnce(bridgeConfig(m.URL(), "", "    session: {max: 2}\n")))
	c := e.Client()
	for _, d := range []string{"e1", "e2", "e3"} {
		if r := poll(c, e.URL("/devices/"+d+"/commands")); r.code != 204 {
			t.Fatalf("poll %s: %+v", d, r)
		}
	}
	deadline := time.After(10 * time.Second)
	for {
		select {
		case msg := <-status:
			if string(msg.Payload) == "offline" {
				if msg.Topic != "devices/e1/status" {
					t.Fatalf("%s went offline, want e1 (least recently polled)", msg.Topic)
				}
				return
			}
		case <-deadline:
			t.Fatal("no session evicted at session.max")
		}
	}
}

// TestBridgeIdentity: token identity — none, wrong or another device's
// 401 (a token is checked against the path's device only), malformed ids
// 400 (they never reach a topic).
func TestBridgeIdentity(t *testing.T) {
	m := startMosquitto(t, "")
	dir := t.TempDir()
	sum := sha256.Sum256([]byte("s3cret-door-1"))
	tokens := filepath.Join(dir, "tokens.yaml")
	os.WriteFile(tokens, []byte("door-1: "+hex.EncodeToString(sum[:])+"\n"), 0o600)
	e := startEdgeshim(t, bridgeConfig(m.URL(), fmt.Sprintf("{from: token, tokens: %q}", tokens), ""))
	c := e.Client()
	for _, tc := range []struct {
		name, path, token string
		code              int
	}{
		{"right token", "/devices/door-1/commands", "s3cret-door-1", 204},
		{"no token", "/devices/door-1/commands", "", 401},
		{"wrong token", "/devices/door-1/commands", "guess", 401},
		{"another device", "/devices/door-2/commands", "s3cret-door-1", 401},
		{"wildcard id", "/devices/door+1/commands", "s3cret-door-1", 400},
		{"hash id", "/devices/%23/commands", "s3cret-door-1", 400},
		{"long id", "/devices/" + strings.Repeat("x", 129) + "/commands", "s3cret-door-1", 400},
	} {
		req, _ := http.NewRequest("GET", e.URL(tc.path), nil)
		if tc.token != "" {
			req.Header.Set("Authorization", "Bearer "+tc.token)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.code {
			t.Errorf("%s: %d, want %d", tc.name, resp.StatusCode, tc.code)
		}
	}
	if strings.Contains(e.Logs.String(), "s3cret") {
		t.Error("a token appeared in the logs")
	}
}

// TestBridgeThousandDevices: 1,000 devices hold long-polls at once; one
// command each reaches exactly its device, once.
func TestBridgeThousandDevices(t *testing.T) {
	const n = 1000
	m := startMosquitto(t, "")
	app := newMQTTPeer(t, m.Addr(), "app", true)
	status := app.subscribe("devices/+/status")
	e := startEdgeshim(t, bridgeConfig(m.URL(), "", ""))
	tr := &http.Transport{TLSClientConfig: e.TLSConfig(), MaxIdleConnsPerHost: n, MaxConnsPerHost: 0}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: time.Minute}
	results := make([]pollResult, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = poll(c, e.URL(fmt.Sprintf("/devices/dev-%d/commands?wait=30", i)))
		}()
	}
	online := 0
	timeout := time.After(30 * time.Second)
	for online < n {
		select {
		case msg := <-status:
			if string(msg.Payload) == "online" {
				online++
			}
		case <-timeout:
			t.Fatalf("%d of %d sessions online", online, n)
		}
	}
	for i := range n {
		app.publish(fmt.Sprintf("devices/dev-%d/commands", i), fmt.Sprintf("cmd-%d", i))
	}
	wg.Wait()
	for i, r := range results {
		if r.code != 200 || r.body != fmt.Sprintf("cmd-%d", i) {
			t.Fatalf("device %d: %+v", i, r)
		}
	}
	// None twice: a second round of polls finds nothing.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var dup sync.Map
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, "GET", e.URL(fmt.Sprintf("/devices/dev-%d/commands", i)), nil)
			resp, err := c.Do(req)
			if err == nil {
				if resp.StatusCode != 204 {
					dup.Store(i, resp.StatusCode)
				}
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	dup.Range(func(k, v any) bool {
		t.Errorf("device %v: second poll %v, want 204 (delivered twice?)", k, v)
		return true
	})
	if got := e.Metric("edgeshim_bridge_commands_delivered_total"); got != n {
		t.Errorf("delivered metric %v, want %d", got, n)
	}
}

// TestBridgeClientCertIdentity: the verified client certificate's CN is the
// device identity that reaches the bridge handler.
func TestBridgeClientCertIdentity(t *testing.T) {
	m := startMosquitto(t, "")
	ca := newTestCA(t)
	cfg := bridgeConfig(m.URL(), "{from: cert}", "") +
		fmt.Sprintf("tls: {client_auth: {ca: %q, mode: verify_if_given}}\n", ca.File)
	e := startEdgeshim(t, cfg)
	withCert := func(cn string) *http.Client {
		tc := e.TLSConfig()
		if cn != "" {
			tc.Certificates = []tls.Certificate{ca.client(t, cn)}
		}
		tr := &http.Transport{TLSClientConfig: tc}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 20 * time.Second}
	}
	for _, tc := range []struct {
		name, cn, path string
		code           int
	}{
		{"own id", "door-9", "/devices/door-9/commands", 204},
		{"another device", "door-9", "/devices/door-8/commands", 403},
		{"no certificate", "", "/devices/door-9/commands", 401},
	} {
		if r := poll(withCert(tc.cn), e.URL(tc.path)); r.code != tc.code {
			t.Errorf("%s: %+v, want %d", tc.name, r, tc.code)
		}
	}
}

// TestBridgeMQTTSUpstream: the bridge reaches a broker over mqtts://,
// verifying it against a configured CA.
func TestBridgeMQTTSUpstream(t *testing.T) {
	ca := newTestCA(t)
	certFile, keyFile := ca.serverFiles(t)
	tlsPort := freePort(t)
	m := startMosquitto(t, fmt.Sprintf("listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\n", tlsPort, ca.File, certFile, keyFile))
	app := newMQTTPeer(t, m.Addr(), "app", true)
	status := app.subscribe("devices/s1/status")
	cfg := bridgeConfig(fmt.Sprintf("mqtts://127.0.0.1:%d", tlsPort), "", "")
	cfg = strings.Replace(cfg, "publish_timeout: 2s}", fmt.Sprintf("publish_timeout: 2s, tls: {ca: %q}}", ca.File), 1)
	e := startEdgeshim(t, cfg)
	res := make(chan pollResult, 1)
	go func() { res <- poll(e.Client(), e.URL("/devices/s1/commands?wait=20")) }()
	await(t, status, "online", 10*time.Second)
	app.publish("devices/s1/commands", "over-tls")
	if r := <-res; r.code != 200 || r.body != "over-tls" {
		t.Fatalf("poll over mqtts upstream: %+v", r)
	}
}

// TestBridgeLegacyShapes: a legacy fleet's shapes — a fixed 200
// {"updates":[]} when empty, json batches of {id, topic, payload} (binary
// payloads base64), "Prefer: wait=N", and identity from a trusted header on
// a fixed poll path without {device}.
func TestBridgeLegacyShapes(t *testing.T) {
	m := startMosquitto(t, "")
	app := newMQTTPeer(t, m.Addr(), "app", true)
	status := app.subscribe("devices/+/status")
	cfg := bridgeConfig(m.URL(), "{from: header, header: X-Device-Id}", "trusted_proxies: [127.0.0.1]\n")
	cfg = strings.Replace(cfg, `poll: {path: "/devices/{device}/commands", max_wait: 30s}`,
		`poll: {path: "/devices/updates", max_wait: 30s, empty_status: 200, empty_body: '{"updates":[]}', format: json, max_batch: 5}`, 1)
	e := startEdgeshim(t, cfg)
	c := e.Client()
	get := func(hdr map[string]string) (int, string, http.Header) {
		req, _ := http.NewRequest("GET", e.URL("/devices/updates"), nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header
	}
	if code, body, h := get(map[string]string{"X-Device-Id": "gd-1"}); code != 200 || body != `{"updates":[]}` || h.Get("Content-Type") != "application/json" {
		t.Fatalf("empty poll: %d %q %q", code, body, h.Get("Content-Type"))
	}
	if code, _, _ := get(nil); code != 401 {
		t.Errorf("no identity header: %d, want 401", code)
	}
	if code, _, _ := get(map[string]string{"X-Device-Id": "gd/1"}); code != 400 {
		t.Errorf("bad id in header: %d, want 400", code)
	}
	await(t, status, "online", 10*time.Second)
	app.publish("devices/gd-1/commands", "first")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	app.cl.Publish(ctx, &paho.Publish{Topic: "devices/gd-1/commands", QoS: 1, Payload: []byte{0xff, 0x00, 0xfe}})
	cancel()
	// Both are queued in the session by now or soon: a long-poll (Prefer)
	// returns as soon as there is at least one.
	var got []map[string]string
	for len(got) < 2 {
		code, body, _ := get(map[string]string{"X-Device-Id": "gd-1", "Prefer": "wait=10"})
		var batch []map[string]string
		if code != 200 || json.Unmarshal([]byte(body), &batch) != nil || len(batch) == 0 {
			t.Fatalf("json poll: %d %q", code, body)
		}
		got = append(got, batch...)
	}
	if got[0]["payload"] != "first" || got[0]["topic"] != "devices/gd-1/commands" || got[0]["id"] == "" {
		t.Errorf("first command: %v", got[0])
	}
	if got[1]["encoding"] != "base64" || got[1]["payload"] != base64.StdEncoding.EncodeToString([]byte{0xff, 0x00, 0xfe}) {
		t.Errorf("binary command: %v", got[1])
	}
}

// willAtOnce sets presence.will_delay 0s in a bridgeConfig: the will fires
// as soon as the session's connection is gone.
func willAtOnce(cfg string) string {
	return strings.Replace(cfg, `presence: {topic: "devices/{device}/status"}`, `presence: {topic: "devices/{device}/status", will_delay: 0s}`, 1)
}
