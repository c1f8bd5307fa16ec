package integration

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// idleGoroutineSlack is what a process may hold beyond its count before
// idle connections arrived, whatever their number: goroutines that the
// first connection starts once (the parker's poller, the HTTP transport's
// and the like), not one per connection.
const idleGoroutineSlack = 5

// TestManyIdleMQTTSessionsHoldNoGoroutine: sessions whose devices polled
// once and went away keep their MQTT connection to a real mosquitto, and
// hold no goroutine while idle (the reader is parked); a command still
// reaches each device's next poll.
func TestManyIdleMQTTSessionsHoldNoGoroutine(t *testing.T) {
	const n = 300
	m := startMosquitto(t, "max_connections -1\n")
	e := startEdgeshim(t, bridgeConfig(m.URL(), "", ""))
	g0 := e.Metric("go_goroutines") // before any device
	tr := &http.Transport{TLSClientConfig: e.TLSConfig(), DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: time.Minute}
	for i := range n {
		if r := poll(c, e.URL(fmt.Sprintf("/devices/idle-%d/commands", i))); r.err != nil || r.code != http.StatusNoContent {
			t.Fatalf("first poll of idle-%d: %+v", i, r)
		}
	}
	if got := e.WaitMetric("edgeshim_bridge_session_connects_total", n, 30*time.Second, `result="ok"`); got != n {
		t.Fatalf("%v sessions connected, want %d", got, n)
	}
	// The fewest of a few samples: the last polls' connections and the
	// readers' first passes end for a moment after.
	g := e.Metric("go_goroutines")
	for range 10 {
		time.Sleep(100 * time.Millisecond) // a goroutine's end has no signal
		g = min(g, e.Metric("go_goroutines"))
	}
	t.Logf("goroutines: %v before the devices, %v with %d idle sessions", g0, g, n)
	if g-g0 > idleGoroutineSlack {
		t.Errorf("%v goroutines more with %d idle MQTT sessions, want none (%d allowed for the process's own)", g-g0, n, idleGoroutineSlack)
	}
	app := newMQTTPeer(t, m.Addr(), "app", true)
	for _, i := range []int{0, n / 2, n - 1} {
		app.publish(fmt.Sprintf("devices/idle-%d/commands", i), fmt.Sprintf("cmd-%d", i))
		if r := poll(c, e.URL(fmt.Sprintf("/devices/idle-%d/commands?wait=10", i))); r.code != 200 || r.body != fmt.Sprintf("cmd-%d", i) {
			t.Errorf("idle-%d after the idle spell: %+v", i, r)
		}
	}
}
