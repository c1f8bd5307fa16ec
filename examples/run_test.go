package examples

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/gorilla/websocket"
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

// TestExamplePollingShim runs examples/polling-shim as its README says,
// for a fleet of 250,000 doors (the README's door-17 and 249,999 more in
// its tokens file): the door polls with its token and gets
// {"updates":[]}, then its commands in the same shape (JSON, text, binary
// payloads), as MQTT client door-17; its state POST reaches the telemetry
// topic; a door added to the tokens file polls after SIGHUP, without a
// restart, while door-17's session stays.
func TestExamplePollingShim(t *testing.T) {
	pki := newPKI(t)
	m := startMosquitto(t, pki)
	dir := t.TempDir()
	tokens := filepath.Join(dir, "door-tokens.yaml")
	var fleet bytes.Buffer
	fleet.WriteString(readmeBlock(t, "polling-shim", "yaml"))
	for i := 1; i < 250_000; i++ {
		sum := sha256.Sum256([]byte("token-" + strconv.Itoa(i)))
		fmt.Fprintf(&fleet, "door-f%d: %x\n", i, sum)
	}
	os.WriteFile(tokens, fleet.Bytes(), 0o600)
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

	// A door from the generated fleet, then one added while running.
	if code, _, body := do(t, c, "GET", "https://edge.example.com:8443/api/doors/door-f249999/updates", "token-249999", ""); code != 200 || body != `{"updates":[]}` {
		t.Errorf("door-f249999: %d %q, want 200 {\"updates\":[]}", code, body)
	}
	const added = "https://edge.example.com:8443/api/doors/door-new/updates"
	if code, _, _ := do(t, c, "GET", added, "new-token", ""); code != 401 {
		t.Fatalf("door-new before it is added: %d, want 401", code)
	}
	sum := sha256.Sum256([]byte("new-token"))
	f, _ := os.OpenFile(tokens, os.O_APPEND|os.O_WRONLY, 0)
	fmt.Fprintf(f, "door-new: %x\n", sum)
	f.Close()
	e.cmd.Process.Signal(syscall.SIGHUP)
	e.logs.wait(t, regexp.MustCompile(`msg="configuration reloaded"`), 30*time.Second)
	if code, _, body := do(t, c, "GET", added, "new-token", ""); code != 200 || body != `{"updates":[]}` {
		t.Errorf("door-new after SIGHUP: %d %q, want 200 {\"updates\":[]}", code, body)
	}
	// door-17's session was not cut by the reload: one broker connect.
	if n := len(regexp.MustCompile(`New client connected from \S+ as door-17 \(`).FindAllString(m.logs.String(), -1)); n != 1 {
		t.Errorf("door-17 connected %d times to the broker, want 1 (the reload must not end sessions)", n)
	}
}

// TestExampleReverseProxy runs examples/reverse-proxy: api.example.com
// over two HTTP/1.1 backends by least connections, *.dash.example.com to
// an h2c backend, and the documented errors when backends fail.
func TestExampleReverseProxy(t *testing.T) {
	pki := newPKI(t)
	release := make(chan struct{})
	held := make(chan struct{}, 1)
	api := func(name string) *httptest.Server {
		return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				held <- struct{}{}
				<-release
			}
			io.WriteString(w, name+" "+r.Host+r.URL.Path)
		}))
	}
	a, b := api("a"), api("b")
	dash := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "dash "+r.Proto)
	}))
	dash.Config.Protocols = new(http.Protocols)
	dash.Config.Protocols.SetUnencryptedHTTP2(true)
	dash.Start()
	defer dash.Close()
	cfg := example(t, "reverse-proxy",
		`":8443"`, `"127.0.0.1:0"`, `"127.0.0.1:9090"`, `"127.0.0.1:0"`,
		"/etc/edgeshim/api.crt", pki.path("edge.crt"), "/etc/edgeshim/api.key", pki.path("edge.key"),
		"http://10.0.0.5:8080", a.URL, "http://10.0.0.6:8080", b.URL,
		"h2c://10.0.0.7:8081", "h2c://"+strings.TrimPrefix(dash.URL, "http://"))
	e := startEdge(t, t.TempDir(), cfg, nil, "https", "admin")
	c := client(t, pki, e.addrs["https"])

	slow := make(chan string, 1)
	go func() { _, _, body := do(t, c, "GET", "https://api.example.com:8443/slow", "", ""); slow <- body }()
	<-held // backend a holds one request: the next goes to b
	if code, _, body := do(t, c, "GET", "https://api.example.com:8443/x", "", ""); code != 200 || body != "b api.example.com:8443/x" {
		t.Errorf("second request: %d %q, want b (least connections)", code, body)
	}
	close(release)
	if body := <-slow; body != "a api.example.com:8443/slow" {
		t.Errorf("held request: %q, want a", body)
	}
	if code, _, body := do(t, c, "GET", "https://eu.dash.example.com:8443/", "", ""); code != 200 || body != "dash HTTP/2.0" {
		t.Errorf("dashboard: %d %q, want dash over h2c", code, body)
	}
	a.Close()
	b.Close()
	var codes []int
	for i := 0; i < 12 && (len(codes) == 0 || codes[len(codes)-1] != 503); i++ {
		code, h, body := do(t, c, "GET", "https://api.example.com:8443/x", "", "")
		codes = append(codes, code)
		if !strings.HasPrefix(body, `{"error":`) {
			t.Errorf("error body %q is not the short JSON", body)
		}
		if code == 503 && h.Get("Retry-After") == "" {
			t.Error("503 without Retry-After")
		}
	}
	if codes[0] != 502 || codes[len(codes)-1] != 503 {
		t.Errorf("backends gone: %v, want 502 (backend broke) then 503 (no healthy backend, after 3 failures each)", codes)
	}
}

// TestExampleBrokerSidecar runs examples/broker-sidecar (test
// certificates instead of ACME): an MQTT-over-WebSocket client reaches
// the broker through wss://mqtt.example.com/mqtt, subprotocol mqtt.
func TestExampleBrokerSidecar(t *testing.T) {
	pki := newPKI(t)
	m := startMosquitto(t, nil)
	cfg := example(t, "broker-sidecar",
		"  acme:\n    email: ops@example.com\n    domains: [mqtt.example.com]\n    storage: /var/lib/edgeshim/acme\n",
		"  certs:\n    - {cert: "+pki.path("edge.crt")+", key: "+pki.path("edge.key")+"}\n",
		`":443"`, `"127.0.0.1:0"`, `":80"`, `"127.0.0.1:0"`, `"127.0.0.1:9090"`, `"127.0.0.1:0"`,
		"tcp://127.0.0.1:1883", "tcp://127.0.0.1:"+strconv.Itoa(m.plain))
	e := startEdge(t, t.TempDir(), cfg, nil, "https", "admin")
	d := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: pki.pool}, Subprotocols: []string{"mqtt"},
		NetDialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", e.addrs["https"])
		}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ws, resp, err := d.DialContext(ctx, "wss://mqtt.example.com/mqtt", nil)
	if err != nil {
		t.Fatalf("dial: %v (%v)", err, resp)
	}
	defer ws.Close()
	if resp.StatusCode != 101 || ws.Subprotocol() != "mqtt" {
		t.Fatalf("upgrade: %d %q, want 101 mqtt", resp.StatusCode, ws.Subprotocol())
	}
	send := func(p interface {
		WriteTo(io.Writer) (int64, error)
	}) {
		var buf bytes.Buffer
		p.WriteTo(&buf)
		if err := ws.WriteMessage(websocket.BinaryMessage, buf.Bytes()); err != nil {
			t.Fatal(err)
		}
	}
	send(&packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 5, ClientID: "dashboard-1", CleanStart: true, KeepAlive: 30, Properties: &packets.Properties{}})
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, data, err := ws.ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	pkt, err := packets.ReadPacket(bytes.NewReader(data))
	if ca, ok := pkt.Content.(*packets.Connack); err != nil || !ok || ca.ReasonCode != 0 {
		t.Fatalf("CONNACK: %v %+v", err, pkt)
	}
	hello := m.sub(t, "hello")
	send(&packets.Publish{Topic: "hello", QoS: 0, Payload: []byte("world"), Properties: &packets.Properties{}})
	if got := hello(); got != "world" {
		t.Errorf("broker got %q, want world", got)
	}
}
