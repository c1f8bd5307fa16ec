package integration

import (
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// wsBackend is a real WebSocket backend (gorilla) that edgeshim's
// upstream.driver websocket connects each device to. Every accepted
// socket arrives on conns; the test drives it.
type wsBackend struct {
	srv    *httptest.Server
	caFile string // trusts srv, for upstream.tls.ca
	conns  chan *backendConn
	silent bool // accepted sockets are never read: pings go unanswered
}

type backendConn struct {
	device string
	c      *websocket.Conn
	frames chan map[string]string // frames read from edgeshim
	closed chan error             // the read error that ended the socket
}

func newWSBackend(t *testing.T, silent bool) *wsBackend {
	b := &wsBackend{conns: make(chan *backendConn, 16), silent: silent}
	up := websocket.Upgrader{}
	b.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		bc := &backendConn{device: strings.TrimPrefix(r.URL.Path, "/devices/"), c: c, frames: make(chan map[string]string, 64), closed: make(chan error, 1)}
		b.conns <- bc
		if b.silent {
			return // the socket stays open, unread
		}
		for {
			_, data, err := c.ReadMessage()
			if err != nil {
				bc.closed <- err
				return
			}
			var f map[string]string
			json.Unmarshal(data, &f)
			bc.frames <- f
		}
	}))
	t.Cleanup(func() {
		b.srv.CloseClientConnections()
		b.srv.Close()
	})
	b.caFile = filepath.Join(t.TempDir(), "backend-ca.pem")
	if err := os.WriteFile(b.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: b.srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

// wsUpstreamConfig is a bridge "fleet" on /devices/ whose upstream is the
// backend, over wss. limits and poll extend those flow maps; extra is YAML
// lines for the bridge.
func wsUpstreamConfig(be *wsBackend, limits, poll, extra string) string {
	return fmt.Sprintf(`
listen: {https: "127.0.0.1:0", admin: "127.0.0.1:0"}
limits: {websocket: {max_message: 1KiB%s}}
routes: [{path: /devices/, bridge: fleet}]
bridges:
  fleet:
    upstream: {driver: websocket, url: "wss://%s/devices/{device}", tls: {ca: %q}, backoff_min: 50ms, backoff_max: 200ms, publish_timeout: 2s}
    identity: {from: path, allow_unauthenticated: true}
    poll: {path: "/devices/{device}/commands", max_wait: 30s%s}
    telemetry: {path: "/devices/{device}/telemetry", topic: "devices/{device}/telemetry"}
    commands: {topic: "devices/{device}/commands"}
%s`, limits, be.srv.Listener.Addr(), be.caFile, poll, extra)
}

func (b *wsBackend) accept(t *testing.T) *backendConn {
	t.Helper()
	select {
	case c := <-b.conns:
		t.Cleanup(func() { c.c.Close() })
		return c
	case <-time.After(15 * time.Second):
		t.Fatal("edgeshim did not connect to the WebSocket backend")
	}
	return nil
}

func (bc *backendConn) send(t *testing.T, frame string) {
	t.Helper()
	if err := bc.c.WriteMessage(websocket.TextMessage, []byte(frame)); err != nil {
		t.Fatal(err)
	}
}

func (bc *backendConn) next(t *testing.T) map[string]string {
	t.Helper()
	select {
	case f := <-bc.frames:
		return f
	case <-time.After(15 * time.Second):
		t.Fatal("no frame from edgeshim")
	}
	return nil
}

// awaitClose waits for edgeshim to close the socket with code.
func (bc *backendConn) awaitClose(t *testing.T, code int, what string) {
	t.Helper()
	select {
	case err := <-bc.closed:
		if !websocket.IsCloseError(err, code) {
			t.Errorf("%s: backend saw %v, want close %d", what, err, code)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: socket not closed", what)
	}
}

// TestBridgeWebSocketUpstream: with upstream.driver websocket a polling
// device has a persistent WebSocket session to the backend: a backend
// frame reaches the device's long-poll and is acked back once delivered,
// telemetry arrives as a frame, a backend that closes is reconnected, an
// oversize backend frame is refused with 1009 and the session reconnects,
// and a command resent after a reconnect is delivered once.
func TestBridgeWebSocketUpstream(t *testing.T) {
	be := newWSBackend(t, false)
	e := startEdgeshim(t, wsUpstreamConfig(be, "", "", ""))
	c := e.Client()

	// First contact opens the session; a command frame answers the held poll.
	res := make(chan pollResult, 1)
	go func() { res <- poll(c, e.URL("/devices/d1/commands?wait=25")) }()
	bc := be.accept(t)
	if bc.device != "d1" {
		t.Fatalf("backend URL device = %q, want d1", bc.device)
	}
	bc.send(t, `{"id":"c1","topic":"cmd","payload":"open"}`)
	select {
	case r := <-res:
		if r.err != nil || r.code != 200 || r.body != "open" || r.id != "c1" {
			t.Fatalf("poll = %+v, want 200 open with id c1", r)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("held poll did not receive the backend's command")
	}
	if f := bc.next(t); f["ack"] != "c1" {
		t.Errorf("frame after delivery = %v, want ack c1", f)
	}

	// Telemetry is a frame to the backend.
	resp, err := c.Post(e.URL("/devices/d1/telemetry"), "text/plain", strings.NewReader("temp=21"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("telemetry status %d, want 202", resp.StatusCode)
	}
	if f := bc.next(t); f["payload"] != "temp=21" || f["topic"] != "devices/d1/telemetry" {
		t.Errorf("telemetry frame = %v", f)
	}

	// The backend closes: the session reconnects and the next command arrives.
	bc.c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, "backend restart"), time.Now().Add(time.Second))
	bc.c.Close()
	bc2 := be.accept(t)
	bc2.send(t, `{"id":"c2","payload":"close"}`)
	if r := poll(c, e.URL("/devices/d1/commands?wait=10")); r.code != 200 || r.body != "close" || r.id != "c2" {
		t.Fatalf("poll after reconnect = %+v, want close c2", r)
	}
	if f := bc2.next(t); f["ack"] != "c2" {
		t.Errorf("ack after reconnect = %v", f)
	}

	// A frame over limits.websocket.max_message: 1009, then a new session.
	bc2.send(t, `{"id":"big","payload":"`+strings.Repeat("x", 2048)+`"}`)
	bc2.awaitClose(t, websocket.CloseMessageTooBig, "oversize frame")
	bc3 := be.accept(t)

	// A bad frame (no id) is refused with 1008.
	bc3.send(t, `{"payload":"orphan"}`)
	bc3.awaitClose(t, websocket.ClosePolicyViolation, "frame without id")
	bc4 := be.accept(t)

	// Resent after a reconnect: delivered once. The polls start once
	// edgeshim has read all three frames.
	in := e.Metric("edgeshim_bridge_websocket_messages_total", `socket="upstream"`, `direction="in"`)
	bc4.send(t, `{"id":"c3","payload":"a"}`)
	bc4.send(t, `{"id":"c3","payload":"a"}`)
	bc4.send(t, `{"id":"c4","payload":"b"}`)
	e.WaitMetric("edgeshim_bridge_websocket_messages_total", in+3, 10*time.Second, `socket="upstream"`, `direction="in"`)
	var got []string
	for len(got) < 2 {
		r := poll(c, e.URL("/devices/d1/commands?wait=5"))
		if r.code != 200 {
			t.Fatalf("poll = %+v, want the commands c3 and c4", r)
		}
		got = append(got, r.id)
	}
	if got[0] != "c3" || got[1] != "c4" {
		t.Errorf("delivered %v, want [c3 c4]", got)
	}
	if r := poll(c, e.URL("/devices/d1/commands")); r.code != http.StatusNoContent {
		t.Errorf("poll after = %+v, want 204 (the resent c3 delivered once)", r)
	}
	if got := e.Metric("edgeshim_bridge_upstream_websocket_closes_total", `code="1009"`); got != 1 {
		t.Errorf("closes{1009} = %v, want 1", got)
	}
	if got := e.Metric("edgeshim_bridge_upstream_websocket_closes_total", `code="1008"`); got != 1 {
		t.Errorf("closes{1008} = %v, want 1", got)
	}

	// SIGTERM: the backend socket is closed with 1001.
	e.Stop(10 * time.Second)
	bc4.awaitClose(t, websocket.CloseGoingAway, "SIGTERM")
}

// TestBridgeWebSocketUpstreamExplicitAck: with poll.ack explicit the ack
// frame goes to the backend only when the device acknowledges; a binary
// (base64) command reaches the device as raw bytes.
func TestBridgeWebSocketUpstreamExplicitAck(t *testing.T) {
	be := newWSBackend(t, false)
	e := startEdgeshim(t, wsUpstreamConfig(be, "", ", ack: explicit, ack_timeout: 1h", ""))
	c := e.Client()
	res := make(chan pollResult, 1)
	go func() { res <- poll(c, e.URL("/devices/x1/commands?wait=20")) }()
	bc := be.accept(t)
	bc.send(t, `{"id":"k1","payload":"AP8=","encoding":"base64"}`)
	r := <-res
	if r.code != 200 || r.body != "\x00\xff" || r.id != "k1" {
		t.Fatalf("poll = %+v, want the binary command k1", r)
	}
	resp, err := c.Post(e.URL("/devices/x1/telemetry"), "text/plain", strings.NewReader("t"))
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("telemetry: %v %v", err, resp)
	}
	resp.Body.Close()
	if f := bc.next(t); f["payload"] != "t" {
		t.Fatalf("frame after the poll = %v, want the telemetry (no ack before the device's)", f)
	}
	resp, err = c.Post(e.URL("/devices/x1/commands/k1/ack"), "", nil)
	if err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("device ack: %v %v", err, resp)
	}
	resp.Body.Close()
	if f := bc.next(t); f["ack"] != "k1" {
		t.Errorf("frame after the device's ack = %v, want ack k1", f)
	}
}

// TestBridgeWebSocketUpstreamToDeviceWebSocket: a device on the device
// WebSocket endpoint gets the backend's commands as frames (acked once
// written) and its frames reach the backend as telemetry.
func TestBridgeWebSocketUpstreamToDeviceWebSocket(t *testing.T) {
	be := newWSBackend(t, false)
	e := startEdgeshim(t, wsUpstreamConfig(be, "", "", "    websocket: {path: \"/devices/{device}/ws\", format: json}\n"))
	d := websocket.Dialer{TLSClientConfig: e.TLSConfig()}
	dev, resp, err := d.Dial("wss://"+e.Addr("https")+"/devices/w1/ws", nil)
	if err != nil {
		t.Fatalf("dial: %v %v", err, resp)
	}
	defer dev.Close()
	bc := be.accept(t)
	bc.send(t, `{"id":"k1","payload":"open"}`)
	dev.SetReadDeadline(time.Now().Add(10 * time.Second))
	var f map[string]string
	if err := dev.ReadJSON(&f); err != nil || f["payload"] != "open" || f["topic"] != "devices/w1/commands" || f["id"] != "k1" {
		t.Fatalf("device frame %v, %v", f, err)
	}
	if f := bc.next(t); f["ack"] != "k1" {
		t.Errorf("backend got %v, want ack k1", f)
	}
	if err := dev.WriteJSON(map[string]string{"payload": "temp=21"}); err != nil {
		t.Fatal(err)
	}
	if f := bc.next(t); f["payload"] != "temp=21" || f["topic"] != "devices/w1/telemetry" {
		t.Errorf("backend got %v, want the device's telemetry", f)
	}
}

// TestBridgeWebSocketUpstreamHeartbeat: a backend that stops answering
// pings is closed (1011) within ping + pong_timeout and the session dials
// again.
func TestBridgeWebSocketUpstreamHeartbeat(t *testing.T) {
	be := newWSBackend(t, true)
	e := startEdgeshim(t, wsUpstreamConfig(be, ", ping: 1s, pong_timeout: 1s", "", ""))
	go poll(e.Client(), e.URL("/devices/h1/commands"))
	be.accept(t)
	start := time.Now()
	be.accept(t)                                   // the second connection: the first was given up
	if d := time.Since(start); d > 6*time.Second { // 2s, with slack for a loaded machine
		t.Errorf("silent backend replaced after %s, want within ping + pong_timeout (2s) plus backoff", d)
	}
	if got := e.WaitMetric("edgeshim_bridge_upstream_websocket_closes_total", 1, 5*time.Second, `code="1011"`); got < 1 {
		t.Errorf("closes{1011} = %v, want ≥ 1", got)
	}
}
