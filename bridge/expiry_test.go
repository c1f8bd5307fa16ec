package bridge

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/edgeshim/edgeshim/config"
	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeClock is time.Now shifted by an offset the test advances.
type fakeClock struct{ off atomic.Int64 }

func (c *fakeClock) now() time.Time          { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *fakeClock) advance(d time.Duration) { c.off.Add(int64(d)) }

// testBridge is a bridge on broker addr (the default fleet bridge, path
// identity, json format unless changed) served by an httptest server.
func testBridge(t *testing.T, addr string, now func() time.Time, change func(*config.Bridge)) (*Bridge, *httptest.Server) {
	t.Helper()
	cfg := config.Default()
	bc := cfg.Bridges["fleet"]
	bc.Upstream.URL = "mqtt://" + addr
	bc.Poll.Format = "json"
	bc.Session.Idle = config.Duration(time.Hour)
	if change != nil {
		change(&bc)
	}
	cfg.Bridges["fleet"] = bc
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	b, err := New(Options{Name: "fleet", Config: cfg.Bridges["fleet"], Limits: cfg.Limits, Now: now,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(b)
	t.Cleanup(func() {
		srv.Client().CloseIdleConnections()
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		b.Shutdown(ctx)
	})
	return b, srv
}

// pollJSON polls dev (json format) and returns the status and commands.
func pollJSON(t *testing.T, srv *httptest.Server, dev, query string) (int, []jsonCommand) {
	t.Helper()
	resp, err := srv.Client().Get(srv.URL + "/devices/" + dev + "/commands" + query)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var cmds []jsonCommand
	if resp.StatusCode == 200 {
		if err := json.Unmarshal(body, &cmds); err != nil {
			t.Fatalf("poll %s: %q: %v", dev, body, err)
		}
	}
	return resp.StatusCode, cmds
}

func publishExpiring(t *testing.T, c *mqttConn, topic, payload string, expiry uint32) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p := &packets.Publish{Topic: topic, QoS: 1, Payload: []byte(payload), Properties: &packets.Properties{}}
	if expiry > 0 {
		p.Properties.MessageExpiry = &expiry
	}
	if err := c.pub(ctx, p); err != nil {
		t.Fatal(err)
	}
}

// TestCommandExpiresInEdgeshim: a command that waits in edgeshim's buffer
// (the device's session exists, the device does not poll) past its MQTT 5
// message expiry is never delivered, is counted, and is acknowledged to
// the broker: a new session does not get it again. A command without
// expiry published with it is delivered, and the remaining expiry is shown.
func TestCommandExpiresInEdgeshim(t *testing.T) {
	addr, _ := mosquitto(t, "")
	clock := &fakeClock{}
	b, srv := testBridge(t, addr, clock.now, nil)
	if code, _ := pollJSON(t, srv, "d1", ""); code != 204 {
		t.Fatalf("first poll %d", code)
	}
	pub := backendClient(t, addr, "backend")
	publishExpiring(t, pub, "devices/d1/commands", "open", 60) // broker-side it is still fresh
	publishExpiring(t, pub, "devices/d1/commands", "keep", 0)
	publishExpiring(t, pub, "devices/d1/commands", "soon", 100)
	s, _ := b.sessions.Peek("d1")
	for !func() bool { s.mu.Lock(); defer s.mu.Unlock(); return len(s.pending) == 3 }() {
		time.Sleep(5 * time.Millisecond) // the buffer has no arrival signal
	}
	clock.advance(61 * time.Second) // the device stayed away; "open" expired in the buffer
	code, cmds := pollJSON(t, srv, "d1", "")
	if code != 200 || len(cmds) != 2 || cmds[0].Payload != "keep" || cmds[1].Payload != "soon" {
		t.Fatalf("poll after expiry: %d %+v, want keep and soon", code, cmds)
	}
	if cmds[0].ExpiresIn != nil || cmds[1].ExpiresIn == nil || *cmds[1].ExpiresIn < 38 || *cmds[1].ExpiresIn > 40 {
		t.Errorf("expires_in = %v, %v; want none and ~39", cmds[0].ExpiresIn, cmds[1].ExpiresIn)
	}
	if n := testutil.ToFloat64(b.m.expired); n != 1 {
		t.Errorf("expired_total = %v, want 1", n)
	}
	// The answer reaches the device before the PUBACKs go out: wait until
	// none is left to write (the DISCONNECT of Shutdown comes after them).
	ackBy := time.Now().Add(10 * time.Second)
	for !func() bool {
		s.mu.Lock()
		l := s.link.(*mqttConn)
		s.mu.Unlock()
		return l.c().Unacked() == 0
	}() {
		if time.Now().After(ackBy) {
			t.Fatal("PUBACKs not written within 10s: the expired command holds them back unacknowledged")
		}
		time.Sleep(5 * time.Millisecond) // no other signal of the acks
	}
	// Had "open" not been PUBACKed, the broker would send it again to
	// the device's next connection (it is 60 s fresh in real time).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b.Shutdown(ctx)
	_, srv2 := testBridge(t, addr, time.Now, nil)
	// (mosquitto may still redeliver "soon": its PUBACK can be unread on
	// the old connection when the new one takes over. At least once.)
	if code, cmds := pollJSON(t, srv2, "d1", "?wait=2"); code == 200 && cmds[0].Payload == "open" {
		t.Errorf("after reconnect: %+v: the expired command was not acknowledged", cmds)
	}
}

// TestCommandExpiresWhileAway: a device away longer than a command's
// expiry does not get it on return (here the broker drops it), while a
// command without expiry queued with it arrives.
func TestCommandExpiresWhileAway(t *testing.T) {
	addr, _ := mosquitto(t, "")
	b, srv := testBridge(t, addr, time.Now, nil)
	pollJSON(t, srv, "d2", "")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b.Shutdown(ctx) // the device goes away; its broker session stays
	pub := backendClient(t, addr, "backend")
	publishExpiring(t, pub, "devices/d2/commands", "open", 1)
	publishExpiring(t, pub, "devices/d2/commands", "keep", 0)
	time.Sleep(3 * time.Second) // the device is away for 3 s: that is the scenario
	_, srv2 := testBridge(t, addr, time.Now, nil)
	code, cmds := pollJSON(t, srv2, "d2", "?wait=5")
	if code != 200 || len(cmds) != 1 || cmds[0].Payload != "keep" {
		t.Fatalf("poll on return: %d %+v, want only keep", code, cmds)
	}
	if code, cmds := pollJSON(t, srv2, "d2", "?wait=1"); code != 204 {
		t.Errorf("second poll: %d %+v, want 204", code, cmds)
	}
}

// TestCommandMaxAge: commands.max_age discards a command without expiry
// that waited longer in edgeshim, and caps a longer expiry.
func TestCommandMaxAge(t *testing.T) {
	addr, _ := mosquitto(t, "")
	clock := &fakeClock{}
	b, srv := testBridge(t, addr, clock.now, func(bc *config.Bridge) { bc.Commands.MaxAge = config.Duration(30 * time.Second) })
	pollJSON(t, srv, "d3", "")
	pub := backendClient(t, addr, "backend")
	publishExpiring(t, pub, "devices/d3/commands", "old", 0)
	s, _ := b.sessions.Peek("d3")
	for !s.hasPending() {
		time.Sleep(5 * time.Millisecond)
	}
	clock.advance(31 * time.Second)
	publishExpiring(t, pub, "devices/d3/commands", "new", 3600)
	code, cmds := pollJSON(t, srv, "d3", "?wait=5")
	if code != 200 || len(cmds) != 1 || cmds[0].Payload != "new" || cmds[0].ExpiresIn == nil || *cmds[0].ExpiresIn > 30 {
		t.Fatalf("poll: %d %+v, want only new, expiring within max_age", code, cmds)
	}
	if n := testutil.ToFloat64(b.m.expired); n != 1 {
		t.Errorf("expired_total = %v, want 1", n)
	}
}

// TestCommandExpiresBeforeWebSocket: the device WebSocket endpoint
// honours expiry too: a command that expired in the buffer before the
// socket came is never sent; the one behind it is, with expires_in.
func TestCommandExpiresBeforeWebSocket(t *testing.T) {
	addr, _ := mosquitto(t, "")
	clock := &fakeClock{}
	b, srv := testBridge(t, addr, clock.now, func(bc *config.Bridge) {
		bc.WebSocket = &config.DeviceWebSocket{Path: "/devices/{device}/ws"}
	})
	pollJSON(t, srv, "d4", "")
	pub := backendClient(t, addr, "backend")
	publishExpiring(t, pub, "devices/d4/commands", "open", 60)
	publishExpiring(t, pub, "devices/d4/commands", "keep", 600)
	s, _ := b.sessions.Peek("d4")
	for !func() bool { s.mu.Lock(); defer s.mu.Unlock(); return len(s.pending) == 2 }() {
		time.Sleep(5 * time.Millisecond) // the buffer has no arrival signal
	}
	clock.advance(61 * time.Second)
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/devices/d4/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	var f wsFrame
	if err := ws.ReadJSON(&f); err != nil || f.Payload != "keep" || f.ExpiresIn == nil || *f.ExpiresIn > 539 {
		t.Fatalf("first frame %+v (%v), want keep with expires_in ≤ 539", f, err)
	}
	if n := testutil.ToFloat64(b.m.expired); n != 1 {
		t.Errorf("expired_total = %v, want 1", n)
	}
}
