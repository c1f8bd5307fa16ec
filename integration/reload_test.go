package integration

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// waitCount waits until at least n lines match re (from the start of the
// output), and fails after within.
func (b *logBuffer) waitCount(t testing.TB, re *regexp.Regexp, n int, within time.Duration) {
	t.Helper()
	timer := time.AfterFunc(within, func() {
		b.mu.Lock()
		b.cond.Broadcast()
		b.mu.Unlock()
	})
	defer timer.Stop()
	deadline := time.Now().Add(within)
	b.mu.Lock()
	defer b.mu.Unlock()
	seen := 0
	for i := 0; ; {
		for ; i < len(b.lines); i++ {
			if re.MatchString(b.lines[i]) {
				seen++
			}
		}
		if seen >= n {
			return
		}
		if b.done || time.Now().After(deadline) {
			t.Fatalf("%d log lines matching %q within %s, want %d; output:\n%s", seen, re, within, n, b.buf.String())
		}
		b.cond.Wait()
	}
}

var (
	reloadedRe     = regexp.MustCompile(`msg="configuration reloaded"`)
	reloadFailedRe = regexp.MustCompile(`msg="reload failed; the previous configuration stays in force"`)
)

// reload sends SIGHUP and waits for the nth success (ok) or failure line.
func (e *Edge) reload(t testing.TB, ok bool, nth int) {
	t.Helper()
	e.Signal(syscall.SIGHUP)
	re := reloadFailedRe
	if ok {
		re = reloadedRe
	}
	e.Logs.waitCount(t, re, nth, 30*time.Second)
}

// writeConfig replaces the running instance's config file atomically.
func (e *Edge) writeConfig(t testing.TB, cfg string) {
	t.Helper()
	path := filepath.Join(e.Dir, "edgeshim.yaml")
	if err := os.WriteFile(path+".tmp", []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// brokerConnects counts the MQTT sessions mosquitto saw connect as id.
func (m *Mosquitto) brokerConnects(id string) int {
	return strings.Count(m.logs.String(), " as "+id+" (")
}

func telemetry(t *testing.T, c *http.Client, url, token string, n int) int {
	t.Helper()
	req, _ := http.NewRequest("POST", url, bytes.NewReader(bytes.Repeat([]byte("x"), n)))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("telemetry: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestReloadTokensAndLimits, on a running edgeshim: a device added to the
// tokens file gets in after SIGHUP; a lowered max_body is enforced; a
// change that needs a restart is logged and ignored; a broken config or
// tokens file changes nothing and sets last_reload_successful 0. Across
// all of it a held long-poll stays open (and gets its command) and no
// device session reconnects to the broker.
func TestReloadTokensAndLimits(t *testing.T) {
	m := startMosquitto(t, "")
	app := newMQTTPeer(t, m.Addr(), "app", true)
	status := app.subscribe("devices/door-1/status")
	tokens := filepath.Join(t.TempDir(), "tokens.txt")
	writeTokenFile(t, tokens, map[string]string{"door-1": "tok-door-1"})
	base := bridgeConfig(m.URL(), fmt.Sprintf("{from: token, tokens: %q}", tokens), "")
	base = strings.Replace(base, "max_wait: 30s", "max_wait: 100s", 1)
	e := startEdgeshim(t, base)
	c := e.Client()
	held := e.Client() // its own connection, held across the reloads
	auth := func(tok string) map[string]string { return map[string]string{"Authorization": "Bearer " + tok} }

	res := make(chan pollResult, 1)
	go func() {
		req, _ := http.NewRequest("GET", e.URL("/devices/door-1/commands?wait=90"), nil)
		req.Header.Set("Authorization", "Bearer tok-door-1")
		resp, err := held.Do(req)
		if err != nil {
			res <- pollResult{err: err}
			return
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		res <- pollResult{code: resp.StatusCode, body: b.String()}
	}()
	await(t, status, "online", 20*time.Second)
	e.WaitMetric("edgeshim_bridge_polls_held", 1, 10*time.Second)

	if code := getWith(t, c, e.URL("/devices/door-2/commands"), auth("tok-door-2")); code != 401 {
		t.Fatalf("door-2 before it is added: %d, want 401", code)
	}
	if code := telemetry(t, c, e.URL("/devices/door-1/telemetry"), "tok-door-1", 2000); code != 202 {
		t.Fatalf("2000-byte telemetry at the default max_body: %d, want 202", code)
	}
	connsBefore := e.Metric("edgeshim_connections_open")
	if connsBefore < 2 {
		t.Fatalf("%v connections open, want the held poll's and the client's", connsBefore)
	}

	// Add door-2, lower max_body, and change a field that needs a restart.
	writeTokenFile(t, tokens, map[string]string{"door-1": "tok-door-1", "door-2": "tok-door-2"})
	lowered := strings.Replace(base, "max_conns: 10000}", "max_conns: 10000, max_body: 1000}", 1) + "shutdown: {grace: 7s}\n"
	e.writeConfig(t, lowered)
	e.reload(t, true, 1)
	if got := e.Metric("edgeshim_connections_open"); got < connsBefore {
		t.Errorf("open connections %v after the reload, %v before", got, connsBefore)
	}
	if !strings.Contains(e.Logs.String(), `fields=shutdown.grace`) {
		t.Error("the restart-only change was not logged by its path")
	}
	if code := getWith(t, c, e.URL("/devices/door-2/commands"), auth("tok-door-2")); code != 204 {
		t.Errorf("door-2 after SIGHUP: %d, want 204", code)
	}
	if code := telemetry(t, c, e.URL("/devices/door-1/telemetry"), "tok-door-1", 2000); code != 413 {
		t.Errorf("2000-byte telemetry after max_body 1000: %d, want 413", code)
	}
	if code := telemetry(t, c, e.URL("/devices/door-1/telemetry"), "tok-door-1", 900); code != 202 {
		t.Errorf("900-byte telemetry after max_body 1000: %d, want 202", code)
	}
	if v := e.Metric("edgeshim_config_last_reload_successful"); v != 1 {
		t.Errorf("last_reload_successful %v after a good reload", v)
	}

	// A broken config file: nothing changes.
	e.writeConfig(t, strings.Replace(lowered, "max_body: 1000", "max_body: lots", 1))
	e.reload(t, false, 1)
	if v := e.Metric("edgeshim_config_last_reload_successful"); v != 0 {
		t.Errorf("last_reload_successful %v after a failed reload, want 0", v)
	}
	// A broken tokens file (a duplicate device) with a valid config that
	// would also raise max_body: nothing changes either.
	e.writeConfig(t, base)
	os.WriteFile(tokens, []byte("door-3 "+strings.Repeat("ab", 32)+"\ndoor-3 "+strings.Repeat("cd", 32)+"\n"), 0o600)
	e.reload(t, false, 2)
	if !regexp.MustCompile(`reload problem.*line 2: device \\"door-3\\" is already on line 1`).MatchString(e.Logs.String()) {
		t.Error("the tokens file error was not logged with its lines")
	}
	if code := getWith(t, c, e.URL("/devices/door-2/commands"), auth("tok-door-2")); code != 204 {
		t.Errorf("door-2 after failed reloads: %d, want 204 (old tokens kept)", code)
	}
	if code := telemetry(t, c, e.URL("/devices/door-1/telemetry"), "tok-door-1", 2000); code != 413 {
		t.Errorf("max_body after failed reloads: %d, want 413 (old limit kept)", code)
	}

	// The held poll lived through three reloads and gets its command.
	app.publish("devices/door-1/commands", "open")
	select {
	case r := <-res:
		if r.err != nil || r.code != 200 || r.body != "open" {
			t.Fatalf("held poll after the reloads: %+v", r)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the held poll got no command")
	}
	if n := m.brokerConnects("door-1"); n != 1 {
		t.Errorf("door-1 connected to the broker %d times, want 1 (the session survives reloads)", n)
	}
}

// TestReloadCRL: a certificate revoked by a new CRL fails new handshakes
// after SIGHUP, and its connection opened before is answered 401 (not
// closed); another device's held poll and session survive.
func TestReloadCRL(t *testing.T) {
	m := startMosquitto(t, "")
	app := newMQTTPeer(t, m.Addr(), "app", true)
	status := app.subscribe("devices/door-8/status")
	ca := newTestCA(t)
	crl := filepath.Join(t.TempDir(), "crl.pem")
	ca.writeCRL(t, crl)
	cfg := bridgeConfig(m.URL(), "{from: cert}", "") +
		fmt.Sprintf("tls: {client_auth: {ca: %q, crl: %q, mode: verify_if_given}}\n", ca.File, crl)
	cfg = strings.Replace(cfg, "max_wait: 30s", "max_wait: 100s", 1)
	e := startEdgeshim(t, cfg)
	door8, door9 := ca.client(t, "door-8"), ca.client(t, "door-9")
	c9 := certClient(t, e, &door9)

	res := make(chan pollResult, 1)
	go func() { res <- poll(certClient(t, e, &door8), e.URL("/devices/door-8/commands?wait=90")) }()
	await(t, status, "online", 20*time.Second)
	if r := poll(c9, e.URL("/devices/door-9/commands")); r.code != 204 {
		t.Fatalf("door-9 before revocation: %+v", r)
	}

	ca.writeCRL(t, crl, door9)
	e.reload(t, true, 1)
	if r := poll(c9, e.URL("/devices/door-9/commands")); r.err != nil || r.code != 401 {
		t.Errorf("door-9 on its connection from before the revocation: %+v, want 401", r)
	}
	if r := poll(certClient(t, e, &door9), e.URL("/devices/door-9/commands")); r.err == nil || !strings.Contains(r.err.Error(), "bad certificate") {
		t.Errorf("door-9 on a new connection: %+v, want a failed handshake (bad certificate)", r)
	}
	if r := poll(certClient(t, e, &door8), e.URL("/devices/door-8/commands")); r.code != 204 {
		t.Errorf("door-8 on a new connection after the reload: %+v", r)
	}
	app.publish("devices/door-8/commands", "open")
	select {
	case r := <-res:
		if r.err != nil || r.code != 200 || r.body != "open" {
			t.Fatalf("door-8's held poll after the reload: %+v", r)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("door-8's held poll got no command")
	}
	if n := m.brokerConnects("door-8"); n != 1 {
		t.Errorf("door-8 connected to the broker %d times, want 1", n)
	}
}
