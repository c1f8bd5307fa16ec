package integration

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/edgeshim/edgeshim/limits/wsnet"
	"github.com/gorilla/websocket"
)

func mqttWSConfig(broker string, extra string) string {
	return fmt.Sprintf(`
listen: {https: "127.0.0.1:0", admin: "127.0.0.1:0"}
routes: [{path: /mqtt, mqtt_ws: {broker: %q}}]
%s`, broker, extra)
}

func dialMQTTWS(t *testing.T, e *Edge) *websocket.Conn {
	t.Helper()
	d := websocket.Dialer{TLSClientConfig: e.TLSConfig(), Subprotocols: []string{"mqtt"}}
	c, resp, err := d.Dial("wss://"+e.Addr("https")+"/mqtt", nil)
	if err != nil {
		t.Fatalf("dial: %v %v", err, resp)
	}
	if c.Subprotocol() != "mqtt" {
		t.Fatalf("subprotocol %q", c.Subprotocol())
	}
	return c
}

// closeCode reads until the connection ends and returns the close code the
// server sent (0 if none).
func closeCode(c *websocket.Conn, within time.Duration) int {
	c.SetReadDeadline(time.Now().Add(within))
	for {
		if _, _, err := c.ReadMessage(); err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				return ce.Code
			}
			return 0
		}
	}
}

// TestMQTTOverWebSocketPassThrough: an MQTT client over WebSocket through
// edgeshim's TLS publishes and subscribes on a real mosquitto.
func TestMQTTOverWebSocketPassThrough(t *testing.T) {
	m := startMosquitto(t, "")
	app := newMQTTPeer(t, m.Addr(), "app", true)
	fromWS := app.subscribe("dash/out")
	e := startEdgeshim(t, mqttWSConfig("tcp://"+m.Addr(), ""))
	ws := dialMQTTWS(t, e)
	got := make(chan string, 4)
	cl := paho.NewClient(paho.ClientConfig{ClientID: "dashboard", Conn: wsnet.New(ws),
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			got <- string(pr.Packet.Payload)
			return true, nil
		}}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cl.Connect(ctx, &paho.Connect{ClientID: "dashboard", KeepAlive: 30, CleanStart: true}); err != nil {
		t.Fatalf("connect over websocket: %v", err)
	}
	defer cl.Disconnect(&paho.Disconnect{})
	if _, err := cl.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "dash/in", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	app.publish("dash/in", "to-dashboard")
	select {
	case p := <-got:
		if p != "to-dashboard" {
			t.Errorf("got %q", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("subscription over websocket received nothing")
	}
	if _, err := cl.Publish(ctx, &paho.Publish{Topic: "dash/out", QoS: 1, Payload: []byte("from-dashboard")}); err != nil {
		t.Fatal(err)
	}
	await(t, fromWS, "from-dashboard", 10*time.Second)
	if e.Metric("edgeshim_mqtt_ws_sockets_open") != 1 || e.Metric("edgeshim_mqtt_ws_messages_total", `direction="to_broker"`) < 3 ||
		e.Metric("edgeshim_mqtt_ws_messages_total", `direction="to_client"`) < 3 {
		t.Errorf("relay metrics: open %v, to_broker %v, to_client %v", e.Metric("edgeshim_mqtt_ws_sockets_open"),
			e.Metric("edgeshim_mqtt_ws_messages_total", `direction="to_broker"`), e.Metric("edgeshim_mqtt_ws_messages_total", `direction="to_client"`))
	}
}

// TestMQTTWSRefusals: no subprotocol → 400; oversize message → 1009; a peer
// that never answers pings is closed within ping + pong_timeout; SIGTERM
// closes sockets with 1001.
func TestMQTTWSRefusals(t *testing.T) {
	m := startMosquitto(t, "")
	e := startEdgeshim(t, mqttWSConfig("tcp://"+m.Addr(), "limits: {websocket: {max_message: 1KiB, ping: 1s, pong_timeout: 1s}}\n"))
	d := websocket.Dialer{TLSClientConfig: e.TLSConfig()}
	if _, resp, err := d.Dial("wss://"+e.Addr("https")+"/mqtt", nil); err == nil || resp == nil || resp.StatusCode != 400 {
		t.Errorf("without subprotocol mqtt: %v %v, want 400", err, resp)
	}

	big := dialMQTTWS(t, e)
	big.WriteMessage(websocket.BinaryMessage, make([]byte, 4096))
	if code := closeCode(big, 5*time.Second); code != websocket.CloseMessageTooBig {
		t.Errorf("oversize message: close %d, want 1009", code)
	}
	if got := e.WaitMetric("edgeshim_mqtt_ws_closes_total", 1, 5*time.Second, `code="1009"`); got != 1 {
		t.Errorf("closes by code 1009 = %v, want 1", got)
	}

	dead := dialMQTTWS(t, e)
	dead.SetPingHandler(func(string) error { return nil }) // never answers
	start := time.Now()
	closeCode(dead, 10*time.Second)
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("dead peer closed after %s, want within ping+pong_timeout (2s) plus slack", took)
	} else {
		t.Logf("dead peer closed after %s", took.Round(time.Millisecond))
	}

	live := dialMQTTWS(t, e)
	codec := make(chan int, 1)
	go func() { codec <- closeCode(live, 15*time.Second) }()
	e.Signal(syscall.SIGTERM)
	if code := <-codec; code != websocket.CloseGoingAway {
		t.Errorf("on SIGTERM: close %d, want 1001", code)
	}
	if err := e.Wait(15 * time.Second); err != nil {
		t.Errorf("exit: %v", err)
	}
}

// TestBridgeWSSUpstream: a bridge reaches its broker over MQTT-over-
// WebSocket (wss://) — here through a second edgeshim relaying to mosquitto,
// as a broker that only faces 443 would be reached.
func TestBridgeWSSUpstream(t *testing.T) {
	m := startMosquitto(t, "")
	relay := startEdgeshim(t, mqttWSConfig("tcp://"+m.Addr(), ""))
	app := newMQTTPeer(t, m.Addr(), "app", true)
	status := app.subscribe("devices/w1/status")
	cfg := bridgeConfig("wss://"+relay.Addr("https")+"/mqtt", "", "")
	caFile := filepath.Join(relay.Dir, ".edgeshim", "selfsigned-cert.pem")
	cfg = strings.Replace(cfg, "publish_timeout: 2s}", fmt.Sprintf("publish_timeout: 2s, tls: {ca: %q, server_name: localhost}}", caFile), 1)
	e := startEdgeshim(t, cfg)
	res := make(chan pollResult, 1)
	go func() { res <- poll(e.Client(), e.URL("/devices/w1/commands?wait=20")) }()
	await(t, status, "online", 10*time.Second)
	app.publish("devices/w1/commands", "via-websocket")
	if r := <-res; r.code != 200 || r.body != "via-websocket" {
		t.Fatalf("poll through a wss:// upstream: %+v", r)
	}
}

// TestDeviceWebSocket: a device that polled switches to a WebSocket and
// gets the command queued meanwhile, then live ones; its frames are
// telemetry; when it stops answering pings it is closed and its will fires.
func TestDeviceWebSocket(t *testing.T) {
	m := startMosquitto(t, "")
	app := newMQTTPeer(t, m.Addr(), "app", true)
	status := app.subscribe("devices/ws1/status")
	telemetry := app.subscribe("devices/ws1/telemetry")
	cfg := bridgeConfig(m.URL(), "", "    websocket: {path: \"/devices/{device}/ws\", format: json}\n")
	cfg = strings.Replace(cfg, "limits: {", "limits: {websocket: {ping: 1s, pong_timeout: 1s}, ", 1)
	e := startEdgeshim(t, cfg)
	if r := poll(e.Client(), e.URL("/devices/ws1/commands")); r.code != 204 {
		t.Fatalf("poll: %+v", r)
	}
	await(t, status, "online", 10*time.Second)
	app.publish("devices/ws1/commands", "queued-while-polling")

	d := websocket.Dialer{TLSClientConfig: e.TLSConfig()}
	c, resp, err := d.Dial("wss://"+e.Addr("https")+"/devices/ws1/ws", nil)
	if err != nil {
		t.Fatalf("dial: %v %v", err, resp)
	}
	defer c.Close()
	read := func() map[string]string {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		var f map[string]string
		if err := c.ReadJSON(&f); err != nil {
			t.Fatalf("read frame: %v", err)
		}
		return f
	}
	if f := read(); f["payload"] != "queued-while-polling" || f["id"] == "" || f["topic"] != "devices/ws1/commands" {
		t.Errorf("first frame: %v", f)
	}
	app.publish("devices/ws1/commands", "live")
	if f := read(); f["payload"] != "live" {
		t.Errorf("second frame: %v", f)
	}
	if err := c.WriteJSON(map[string]string{"payload": "temp=20"}); err != nil {
		t.Fatal(err)
	}
	await(t, telemetry, "temp=20", 10*time.Second)

	// Stop answering pings (and reading): dead within ping+pong_timeout.
	c.SetPingHandler(func(string) error { return nil })
	start := time.Now()
	await(t, status, "offline", 10*time.Second)
	t.Logf("dead device WebSocket detected and will fired after %s", time.Since(start).Round(time.Millisecond))
}
