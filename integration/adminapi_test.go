package integration

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAdminAPI: the fleet admin API on the admin listener shows device
// sessions (one, and lists filtered by state and bounded by limit), ends
// one (its will turns presence offline, the disconnect is counted with
// reason admin), serves the configuration, and refuses requests without
// the bearer token and bad arguments.
func TestAdminAPI(t *testing.T) {
	m := startMosquitto(t, "")
	app := newMQTTPeer(t, m.Addr(), "app", true)
	status := app.subscribe("devices/+/status")
	dir := t.TempDir()
	const token = "0123456789abcdef-admin"
	if err := os.WriteFile(filepath.Join(dir, "admin-token"), []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := startEdgeshim(t, bridgeConfig(m.URL(), "", "")+"admin_api: {enabled: true, token_file: admin-token}\n", EdgeOptions{Dir: dir})
	c := e.Client()
	for _, dev := range []string{"d1", "d2"} {
		if r := poll(c, e.URL("/devices/"+dev+"/commands")); r.code != 204 {
			t.Fatalf("poll %s: %+v", dev, r)
		}
		await(t, status, "online", 10*time.Second)
	}
	e.WaitMetric("edgeshim_bridge_sessions_connected", 2, 10*time.Second, `bridge="fleet"`)

	api := func(method, path, tok string) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://"+e.Addr("admin")+path, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var v map[string]any
		if len(b) > 0 {
			if err := json.Unmarshal(b, &v); err != nil {
				t.Fatalf("%s %s: %d %q: %v", method, path, resp.StatusCode, b, err)
			}
		}
		return resp.StatusCode, v
	}

	for _, tok := range []string{"", "wrong-token-0123456789"} {
		if code, _ := api("GET", "/v1/devices/d1", tok); code != 401 {
			t.Errorf("token %q: %d, want 401", tok, code)
		}
	}
	code, v := api("GET", "/v1/devices/d1", token)
	sessions, _ := v["sessions"].([]any)
	if code != 200 || len(sessions) != 1 {
		t.Fatalf("GET d1: %d %v", code, v)
	}
	if s := sessions[0].(map[string]any); s["bridge"] != "fleet" || s["state"] != "connected" || s["device"] != "d1" {
		t.Errorf("d1's session: %v", s)
	}
	code, v = api("GET", "/v1/devices?state=connected", token)
	if devs, _ := v["devices"].([]any); code != 200 || len(devs) != 2 || v["truncated"] != false {
		t.Errorf("list connected: %d %v", code, v)
	}
	code, v = api("GET", "/v1/devices?limit=1", token)
	if devs, _ := v["devices"].([]any); code != 200 || len(devs) != 1 || v["truncated"] != true {
		t.Errorf("list limit=1: %d %v", code, v)
	}
	if code, v = api("GET", "/v1/devices?state=connecting", token); code != 200 || len(v["devices"].([]any)) != 0 {
		t.Errorf("list connecting: %d %v", code, v)
	}
	for path, want := range map[string]int{
		"/v1/devices?state=gone": 400, "/v1/devices?limit=0": 400, "/v1/devices?limit=1001": 400,
		"/v1/devices/a%20b": 400, "/v1/devices/" + strings.Repeat("x", 129): 400,
		"/v1/devices/nobody": 404, "/v1/devices/d1?bridge=nope": 404,
	} {
		if code, _ := api("GET", path, token); code != want {
			t.Errorf("GET %s: %d, want %d", path, code, want)
		}
	}

	if code, _ := api("DELETE", "/v1/devices/d1/session", ""); code != 401 {
		t.Errorf("DELETE without token: %d, want 401", code)
	}
	if code, _ := api("DELETE", "/v1/devices/d1/session", token); code != 204 {
		t.Fatalf("DELETE d1's session: %d, want 204", code)
	}
	if m := await(t, status, "offline", 10*time.Second); m.Topic != "devices/d1/status" {
		t.Errorf("offline on %s, want devices/d1/status", m.Topic)
	}
	e.WaitMetric("edgeshim_bridge_session_disconnects_total", 1, 10*time.Second, `reason="admin"`)
	if code, _ := api("GET", "/v1/devices/d1", token); code != 404 {
		t.Errorf("GET d1 after DELETE: %d, want 404", code)
	}
	if code, _ := api("DELETE", "/v1/devices/d1/session", token); code != 404 {
		t.Errorf("second DELETE: %d, want 404", code)
	}
	e.WaitMetric("edgeshim_bridge_sessions_connected", 1, 10*time.Second, `bridge="fleet"`)

	code, v = api("GET", "/v1/config", token)
	if code != 200 || v["bridges"] == nil || v["admin_api"] == nil {
		t.Errorf("GET config: %d %v", code, v)
	}
}
