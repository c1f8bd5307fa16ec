package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/gorilla/websocket"
)

// reqrespExtra enables request/response for replies/# on bridgeConfig.
const reqrespExtra = "    commands: {topic: \"devices/{device}/commands\", response_topics: [\"replies/#\"], response_timeout: %s}\n"

func reqrespConfig(broker, timeout, poll string) string {
	cfg := bridgeConfig(broker, "", strings.Replace(reqrespExtra, "%s", timeout, 1)+poll)
	cfg = strings.Replace(cfg, "    commands: {topic: \"devices/{device}/commands\"}\n", "", 1)
	if poll != "" {
		cfg = strings.Replace(cfg, "    poll: {path: \"/devices/{device}/commands\", max_wait: 30s}\n", "", 1)
	}
	return cfg
}

// request publishes a command with MQTT 5 request properties.
func (p *mqttPeer) request(topic string, payload []byte, respTopic string, corr []byte, expiry uint32, props ...string) {
	p.t.Helper()
	pp := &paho.PublishProperties{ResponseTopic: respTopic, CorrelationData: corr}
	if expiry > 0 {
		pp.MessageExpiry = &expiry
	}
	for i := 0; i+1 < len(props); i += 2 {
		pp.User = append(pp.User, paho.UserProperty{Key: props[i], Value: props[i+1]})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := p.cl.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: payload, Properties: pp}); err != nil {
		p.t.Fatalf("publish request %s: %v", topic, err)
	}
}

// next returns the next message on ch.
func next(t *testing.T, ch <-chan *paho.Publish, within time.Duration) *paho.Publish {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(within):
		t.Fatalf("no message within %s", within)
	}
	return nil
}

func statusProp(m *paho.Publish) string {
	if m.Properties == nil {
		return ""
	}
	return m.Properties.User.Get("status")
}

// answer POSTs a device's answer; it returns the status code.
func answer(t *testing.T, c *http.Client, url, ctype string, body []byte, hdr ...string) int {
	t.Helper()
	req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("answer: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// TestRequestResponseRaw: a request reaches a long-polling device (raw
// format) marked as one, with its user properties; another device's
// answer to it is 403, an unknown id 404; the device's binary answer
// reaches the requester with the same correlation data, its status and
// content type. A command whose response topic is outside
// commands.response_topics is not delivered and nothing is published
// to that topic.
func TestRequestResponseRaw(t *testing.T) {
	m := startMosquitto(t, "")
	app := newMQTTPeer(t, m.Addr(), "app", true)
	status := app.subscribe("devices/r1/status")
	replies := app.subscribe("replies/#")
	elsewhere := app.subscribe("elsewhere/#")
	e := startEdgeshim(t, reqrespConfig(m.URL(), "30s", ""))
	c := e.Client()
	res := make(chan *http.Response, 1)
	go func() {
		resp, err := c.Get(e.URL("/devices/r1/commands?wait=25"))
		if err != nil {
			t.Error(err)
		}
		res <- resp
	}()
	await(t, status, "online", 10*time.Second)
	corr := []byte{0, 1, 2, 0xff, 0xfe}
	cmd := []byte{0x80, 0x00, 0xff, 'o', 'p', 'e', 'n'}
	app.request("devices/r1/commands", cmd, "replies/app", corr, 0, "op", "open door", "who", "a=b")
	resp := <-res
	if resp == nil {
		t.FailNow()
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	id := resp.Header.Get("X-Command-Id")
	if resp.StatusCode != 200 || !bytes.Equal(body, cmd) || id == "" || resp.Header.Get("X-Response-Required") != "true" {
		t.Fatalf("poll = %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if got := resp.Header.Values("X-User-Property"); len(got) != 2 || got[0] != "op=open+door" || got[1] != "who=a%3Db" {
		t.Errorf("user properties: %q", got)
	}
	if code := answer(t, c, e.URL("/devices/r2/commands/"+id+"/response"), "", []byte("hijack")); code != 403 {
		t.Errorf("another device's answer: %d, want 403", code)
	}
	if code := answer(t, c, e.URL("/devices/r1/commands/nope-1/response"), "", []byte("x")); code != 404 {
		t.Errorf("unknown id: %d, want 404", code)
	}
	if code := answer(t, c, e.URL("/devices/r1/commands/"+id+"/response"), "", []byte("x"), "X-Status", "99"); code != 400 {
		t.Errorf("bad status: %d, want 400", code)
	}
	ans := []byte{0xde, 0xad, 0, 0xbe, 0xef}
	if code := answer(t, c, e.URL("/devices/r1/commands/"+id+"/response"), "application/octet-stream", ans, "X-Status", "201"); code != 204 {
		t.Fatalf("answer: %d, want 204", code)
	}
	r := next(t, replies, 10*time.Second)
	if r.Topic != "replies/app" || !bytes.Equal(r.Payload, ans) || r.Properties == nil || !bytes.Equal(r.Properties.CorrelationData, corr) ||
		statusProp(r) != "201" || r.Properties.ContentType != "application/octet-stream" {
		t.Fatalf("response = %s %x %+v", r.Topic, r.Payload, r.Properties)
	}
	if code := answer(t, c, e.URL("/devices/r1/commands/"+id+"/response"), "", []byte("again")); code != 404 {
		t.Errorf("second answer: %d, want 404", code)
	}
	if v := e.Metric("edgeshim_bridge_responses_total", `by="device"`, `status="2xx"`); v != 1 {
		t.Errorf("responses_total{device,2xx} = %v, want 1", v)
	}
	if v := e.Metric("edgeshim_bridge_response_seconds_count"); v != 1 {
		t.Errorf("response_seconds_count = %v, want 1", v)
	}

	// Outside the allowed filters: acknowledged, not delivered, nothing
	// published to the topic; the next command is delivered.
	app.request("devices/r1/commands", []byte("evil"), "elsewhere/x", nil, 0)
	app.request("devices/r1/commands", []byte("evil2"), "devices/r2/commands", nil, 0)
	app.publish("devices/r1/commands", "plain")
	if p := poll(c, e.URL("/devices/r1/commands?wait=10")); p.code != 200 || p.body != "plain" {
		t.Fatalf("after refused requests: %+v, want plain", p)
	}
	if v := e.WaitMetric("edgeshim_bridge_requests_total", 2, 10*time.Second, `result="refused_topic"`); v != 2 {
		t.Errorf("refused_topic = %v, want 2", v)
	}
	if p := poll(c, e.URL("/devices/r1/commands?wait=1")); p.code != 204 {
		t.Errorf("refused commands were delivered: %+v", p)
	}
	select {
	case m := <-elsewhere:
		t.Errorf("published to a refused response topic: %s %q", m.Topic, m.Payload)
	default:
	}
}

// TestRequestResponseJSONAndWebSocket: json poll format carries
// response_required and user_properties; a device WebSocket answers with
// a frame; a request not answered within its Message Expiry gets edgeshim's
// 504.
func TestRequestResponseJSONAndWebSocket(t *testing.T) {
	m := startMosquitto(t, "")
	app := newMQTTPeer(t, m.Addr(), "app", true)
	status := app.subscribe("devices/+/status")
	replies := app.subscribe("replies/#")
	cfg := reqrespConfig(m.URL(), "30s", "    poll: {path: \"/devices/{device}/commands\", max_wait: 30s, format: json}\n    websocket: {path: \"/devices/{device}/ws\", format: json}\n")
	e := startEdgeshim(t, cfg)
	c := e.Client()

	res := make(chan pollResult, 1)
	go func() { res <- poll(c, e.URL("/devices/j1/commands?wait=25")) }()
	await(t, status, "online", 10*time.Second)
	app.request("devices/j1/commands", []byte("status?"), "replies/j1", []byte("corr-j1"), 0, "k", "v")
	p := <-res
	var cmds []struct {
		ID               string            `json:"id"`
		Payload          string            `json:"payload"`
		ResponseRequired bool              `json:"response_required"`
		UserProperties   map[string]string `json:"user_properties"`
	}
	if err := json.Unmarshal([]byte(p.body), &cmds); err != nil || len(cmds) != 1 || !cmds[0].ResponseRequired || cmds[0].Payload != "status?" || cmds[0].UserProperties["k"] != "v" {
		t.Fatalf("poll = %+v (%v)", p, err)
	}
	if code := answer(t, c, e.URL("/devices/j1/commands/"+cmds[0].ID+"/response?status=200"), "text/plain", []byte("all good")); code != 204 {
		t.Fatalf("answer: %d", code)
	}
	r := next(t, replies, 10*time.Second)
	if string(r.Payload) != "all good" || string(r.Properties.CorrelationData) != "corr-j1" || statusProp(r) != "200" || r.Properties.ContentType != "text/plain" {
		t.Fatalf("response = %q %+v", r.Payload, r.Properties)
	}

	// Device WebSocket.
	d := websocket.Dialer{TLSClientConfig: e.TLSConfig()}
	ws, resp, err := d.Dial("wss://"+e.Addr("https")+"/devices/w1/ws", nil)
	if err != nil {
		t.Fatalf("dial: %v %v", err, resp)
	}
	defer ws.Close()
	await(t, status, "online", 10*time.Second)
	app.request("devices/w1/commands", []byte("ping?"), "replies/w1", []byte{9, 9}, 0)
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	var f map[string]any
	if err := ws.ReadJSON(&f); err != nil || f["response_required"] != true || f["payload"] != "ping?" {
		t.Fatalf("frame %v %v", f, err)
	}
	if err := ws.WriteJSON(map[string]any{"id": f["id"], "response": "pong", "status": 202}); err != nil {
		t.Fatal(err)
	}
	r = next(t, replies, 10*time.Second)
	if string(r.Payload) != "pong" || !bytes.Equal(r.Properties.CorrelationData, []byte{9, 9}) || statusProp(r) != "202" {
		t.Fatalf("ws response = %q %+v", r.Payload, r.Properties)
	}

	// Not answered: 504 from edgeshim once the Message Expiry (2s) passed.
	res = make(chan pollResult, 1)
	go func() { res <- poll(c, e.URL("/devices/j1/commands?wait=25")) }()
	app.request("devices/j1/commands", []byte("slow?"), "replies/j1", []byte("corr-slow"), 2)
	if p := <-res; p.code != 200 || !strings.Contains(p.body, "slow?") {
		t.Fatalf("poll = %+v", p)
	}
	r = next(t, replies, 15*time.Second)
	if statusProp(r) != "504" || string(r.Properties.CorrelationData) != "corr-slow" || !strings.Contains(string(r.Payload), "timeout") {
		t.Fatalf("timeout answer = %q %+v", r.Payload, r.Properties)
	}
	if v := e.Metric("edgeshim_bridge_request_timeouts_total"); v != 1 {
		t.Errorf("timeouts = %v, want 1", v)
	}
}

// TestRequestResponseSurvivesKill: explicit ack; edgeshim is killed
// (SIGKILL) after delivering a request and before the answer; the broker
// redelivers the command to the restarted edgeshim, and the device's
// answer to it reaches the requester once (response_timeout 3s: a
// leftover request would answer 504 as well).
func TestRequestResponseSurvivesKill(t *testing.T) {
	m := startMosquitto(t, "")
	app := newMQTTPeer(t, m.Addr(), "app", true)
	status := app.subscribe("devices/k1/status")
	replies := app.subscribe("replies/#")
	cfg := willAtOnce(reqrespConfig(m.URL(), "3s", "    poll: {path: \"/devices/{device}/commands\", ack: explicit, ack_timeout: 1h}\n"))
	e := startEdgeshim(t, cfg)
	res := make(chan pollResult, 1)
	go func() { res <- poll(e.Client(), e.URL("/devices/k1/commands?wait=20")) }()
	await(t, status, "online", 10*time.Second)
	app.request("devices/k1/commands", []byte("unlock?"), "replies/k1", []byte("corr-k1"), 0)
	first := <-res
	if first.code != 200 || first.body != "unlock?" {
		t.Fatalf("poll = %+v", first)
	}
	e.Kill()
	await(t, status, "offline", 10*time.Second)

	e2 := startEdgeshim(t, cfg, EdgeOptions{Dir: e.Dir})
	c2 := e2.Client()
	again := poll(c2, e2.URL("/devices/k1/commands?wait=10"))
	if again.code != 200 || again.body != "unlock?" {
		t.Fatalf("after SIGKILL: %+v, want the request again", again)
	}
	if code := answer(t, c2, e2.URL("/devices/k1/commands/"+first.id+"/response"), "", []byte("x")); code != 404 {
		t.Errorf("answer to the dead process's id: %d, want 404", code)
	}
	if code := answer(t, c2, e2.URL("/devices/k1/commands/"+again.id+"/response"), "", []byte("unlocked")); code != 204 {
		t.Fatalf("answer: %d", code)
	}
	r := next(t, replies, 10*time.Second)
	if string(r.Payload) != "unlocked" || string(r.Properties.CorrelationData) != "corr-k1" {
		t.Fatalf("response = %q %+v", r.Payload, r.Properties)
	}
	// Once: nothing else within response_timeout and then some.
	select {
	case r := <-replies:
		t.Errorf("second answer: %q status %s", r.Payload, statusProp(r))
	case <-time.After(5 * time.Second):
	}
	// The answer acked the command (ack: explicit): delivered, and not
	// offered again.
	if v := e2.Metric("edgeshim_bridge_commands_delivered_total"); v != 1 {
		t.Errorf("commands delivered (acked) after the answer = %v, want 1", v)
	}
	if p := poll(c2, e2.URL("/devices/k1/commands?wait=1")); p.code != 204 {
		t.Errorf("after the answer: %+v, want 204", p)
	}
}

// TestRequestResponseSessionEnded: a request open when edgeshim shuts
// down (SIGTERM ends every session) is answered 503 session_ended, so the
// requester is not left waiting.
func TestRequestResponseSessionEnded(t *testing.T) {
	m := startMosquitto(t, "")
	app := newMQTTPeer(t, m.Addr(), "app", true)
	status := app.subscribe("devices/s1/status")
	replies := app.subscribe("replies/#")
	e := startEdgeshim(t, reqrespConfig(m.URL(), "1h", ""))
	res := make(chan pollResult, 1)
	go func() { res <- poll(e.Client(), e.URL("/devices/s1/commands?wait=20")) }()
	await(t, status, "online", 10*time.Second)
	app.request("devices/s1/commands", []byte("reboot?"), "replies/s1", []byte("corr-s1"), 0)
	if p := <-res; p.code != 200 || p.body != "reboot?" {
		t.Fatalf("poll = %+v", p)
	}
	if err := e.Stop(30 * time.Second); err != nil {
		t.Errorf("stop: %v", err)
	}
	r := next(t, replies, 10*time.Second)
	if statusProp(r) != "503" || string(r.Properties.CorrelationData) != "corr-s1" || !strings.Contains(string(r.Payload), "session_ended") {
		t.Fatalf("answer on shutdown = %q %+v", r.Payload, r.Properties)
	}
}

// TestRequestResponseWebSocketUpstream: with upstream.driver websocket a
// backend command frame with response_required is a request; the device's
// answer goes back to the backend as {"response_to", "status", "payload"};
// an unanswered one gets a timeout answer.
func TestRequestResponseWebSocketUpstream(t *testing.T) {
	be := newWSBackend(t, false)
	cfg := strings.Replace(wsUpstreamConfig(be, "", "", ""), `commands: {topic: "devices/{device}/commands"}`, `commands: {topic: "devices/{device}/commands", response_timeout: 2s}`, 1)
	e := startEdgeshim(t, cfg)
	c := e.Client()
	res := make(chan *http.Response, 1)
	go func() {
		resp, err := c.Get(e.URL("/devices/u1/commands?wait=20"))
		if err != nil {
			t.Error(err)
		}
		res <- resp
	}()
	bc := be.accept(t)
	bc.send(t, `{"id":"q1","payload":"temp?","response_required":true}`)
	resp := <-res
	if resp == nil {
		t.FailNow()
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "temp?" || resp.Header.Get("X-Command-Id") != "q1" || resp.Header.Get("X-Response-Required") != "true" {
		t.Fatalf("poll = %q %v", body, resp.Header)
	}
	if code := answer(t, c, e.URL("/devices/u1/commands/q1/response"), "", []byte("21C")); code != 204 {
		t.Fatalf("answer: %d", code)
	}
	for {
		f := bc.next(t)
		if f["ack"] != "" {
			continue // the delivery ack (ack: write)
		}
		if f["response_to"] != "q1" || f["payload"] != "21C" {
			t.Fatalf("backend frame = %v, want the answer to q1", f)
		}
		break
	}
	go func() {
		resp, err := c.Get(e.URL("/devices/u1/commands?wait=20"))
		if err == nil {
			resp.Body.Close()
		}
	}()
	bc.send(t, `{"id":"q2","payload":"slow?","response_required":true}`)
	for {
		f := bc.next(t)
		if f["ack"] != "" {
			continue
		}
		if f["response_to"] != "q2" || !strings.Contains(f["payload"], "timeout") {
			t.Fatalf("backend frame = %v, want the timeout answer to q2", f)
		}
		break
	}
}
