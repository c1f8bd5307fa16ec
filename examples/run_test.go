package examples

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// readmeBlock returns the first fenced block of the given language in an
// example's README: the files the README tells the operator to write.
func readmeBlock(t *testing.T, example, lang string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(example, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```" + lang + "\n(.*?)```").FindStringSubmatch(string(data))
	if m == nil {
		t.Fatalf("%s/README.md has no %s block", example, lang)
	}
	return m[1]
}

func do(t *testing.T, c *http.Client, method, url, token, body string) (int, http.Header, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// TestExamplePollingShim runs examples/polling-shim as its README says:
// the door polls with its token and gets {"updates":[]}, then its
// commands in the same shape (JSON, text, binary payloads), as MQTT
// client door-17; its state POST reaches the telemetry topic.
func TestExamplePollingShim(t *testing.T) {
	pki := newPKI(t)
	m := startMosquitto(t, pki)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "door-tokens.yaml"), []byte(readmeBlock(t, "polling-shim", "yaml")), 0o600)
	os.WriteFile(filepath.Join(dir, "ticket-keys"), []byte(strings.Repeat("ab", 32)+"\n"), 0o600)
	cfg := example(t, "polling-shim",
		`":8443"`, `"127.0.0.1:0"`, `"127.0.0.1:9090"`, `"127.0.0.1:0"`,
		"/etc/edgeshim/edge.crt", pki.path("edge.crt"), "/etc/edgeshim/edge.key", pki.path("edge.key"),
		"/etc/edgeshim/ticket-keys", filepath.Join(dir, "ticket-keys"),
		"/etc/edgeshim/broker-ca.pem", pki.path("ca.pem"),
		"/etc/edgeshim/door-tokens.yaml", filepath.Join(dir, "door-tokens.yaml"),
		"mqtts://broker.internal:8883", "mqtts://127.0.0.1:"+strconv.Itoa(m.tls))
	e := startEdge(t, dir, cfg, []string{"MQTT_PASSWORD=example"}, "https", "admin")
	c := client(t, pki, e.addrs["https"])
	const base = "https://edge.example.com:8443/api/doors/door-17"

	code, h, body := do(t, c, "GET", base+"/updates", "test", "")
	if code != 200 || body != `{"updates":[]}` || h.Get("Content-Type") != "application/json" {
		t.Fatalf("empty poll: %d %q %q, want 200 {\"updates\":[]}", code, h.Get("Content-Type"), body)
	}
	if code, _, _ := do(t, c, "GET", base+"/updates", "wrong", ""); code != 401 {
		t.Errorf("wrong token: %d, want 401", code)
	}
	// The README's client id: the device id itself.
	m.logs.wait(t, regexp.MustCompile(`New client connected from \S+ as door-17 \(`), 10*time.Second)

	m.pub(t, "devices/door-17/commands", []byte(`{"action":"open"}`))
	m.pub(t, "devices/door-17/commands", []byte("close"))
	m.pub(t, "devices/door-17/commands", []byte{0xff, 0x00, 0x7f})
	type update struct {
		ID       string          `json:"id"`
		Data     json.RawMessage `json:"data"`
		Encoding string          `json:"encoding"`
	}
	var got []update
	for i := 0; len(got) < 3 && i < 10; i++ {
		code, _, body := do(t, c, "GET", base+"/updates?wait=55", "test", "")
		var u struct{ Updates []update }
		if err := json.Unmarshal([]byte(body), &u); code != 200 || err != nil {
			t.Fatalf("poll: %d %q: %v", code, body, err)
		}
		got = append(got, u.Updates...)
	}
	want := []update{{Data: json.RawMessage(`{"action":"open"}`)}, {Data: json.RawMessage(`"close"`)},
		{Data: json.RawMessage(`"` + base64.StdEncoding.EncodeToString([]byte{0xff, 0, 0x7f}) + `"`), Encoding: "base64"}}
	if len(got) != 3 {
		t.Fatalf("updates %+v, want 3", got)
	}
	for i, w := range want {
		if got[i].ID == "" || string(got[i].Data) != string(w.Data) || got[i].Encoding != w.Encoding {
			t.Errorf("update %d = %s %s %q, want data %s encoding %q", i, got[i].ID, got[i].Data, got[i].Encoding, w.Data, w.Encoding)
		}
	}

	telemetry := m.sub(t, "devices/door-17/telemetry")
	if code, _, body := do(t, c, "POST", base+"/state", "test", `{"closed":true}`); code != 202 {
		t.Fatalf("state: %d %s, want 202", code, body)
	}
	if got := telemetry(); got != `{"closed":true}` {
		t.Errorf("telemetry = %q", got)
	}
}
