package bridge

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/edgeshim/edgeshim/bridge/embedded"
	"github.com/edgeshim/edgeshim/config"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// replica is one Bridge with its HTTP server, as a replica of edgeshim.
type replica struct {
	b   *Bridge
	srv *httptest.Server
}

func newReplica(t *testing.T, broker string) *replica {
	t.Helper()
	cfg := config.Default().WithDefaults()
	bc := cfg.Bridges["fleet"]
	bc.Upstream.URL = "mqtt://" + broker
	bc.Upstream.BackoffMin = config.Duration(10 * time.Millisecond)
	bc.Upstream.BackoffMax = config.Duration(20 * time.Millisecond)
	b, err := New(Options{Name: "fleet", Config: bc, Limits: cfg.Limits,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	r := &replica{b: b, srv: httptest.NewServer(b)}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		r.srv.Close()
	})
	return r
}

type pollAnswer struct {
	code int
	body string
	took time.Duration
}

func (r *replica) poll(t *testing.T, dev string, wait string) pollAnswer {
	start := time.Now()
	resp, err := http.Get(r.srv.URL + "/devices/" + dev + "/commands?wait=" + wait)
	if err != nil {
		t.Errorf("poll: %v", err)
		return pollAnswer{}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return pollAnswer{resp.StatusCode, string(b), time.Since(start)}
}

func (r *replica) metric(reason string) float64 {
	return testutil.ToFloat64(r.b.m.disconnects.WithLabelValues(reason))
}

// waitFor polls cond (state with no signal of its own: another process's
// session, a metric) until it holds or the test's patience ends.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestTakeoverHandsOver: two replicas on one real broker (the embedded
// mochi-mqtt, which sends DISCONNECT 0x8E on takeover). The device's poll
// at B takes its session over from A: A ends its session without
// reconnecting (it would take it back) and without acking the command it
// held, which the broker redelivers to B; a poll held at B is answered
// at once when A takes the session back.
func TestTakeoverHandsOver(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	mb, err := embedded.Start("127.0.0.1:0", log)
	if err != nil {
		t.Fatal(err)
	}
	defer mb.Close()
	broker := mb.Addr().String()
	a, b := newReplica(t, broker), newReplica(t, broker)
	app := appClient(t, broker)
	defer app.close()

	if got := a.poll(t, "d1", "0"); got.code != 204 {
		t.Fatalf("first poll at A = %+v", got)
	}
	// A command reaches A's session; no poll at A takes it.
	if err := app.pub(context.Background(), &packets.Publish{Topic: "devices/d1/commands", QoS: 1, Payload: []byte("open")}); err != nil {
		t.Fatal(err)
	}
	sa := a.b.held("d1")
	waitFor(t, "the command at A", sa.hasPending)

	// The device's next poll lands at B: B takes the session over and
	// gets the command from the broker.
	if got := b.poll(t, "d1", "5"); got.code != 200 || got.body != "open" {
		t.Fatalf("poll at B = %+v, want the command A held", got)
	}
	waitFor(t, "A's handover", func() bool { return a.metric(reasonTakenOver) == 1 })
	if s := a.b.held("d1"); s != nil {
		t.Error("A still holds the taken-over session")
	}
	if n := a.metric(reasonLost); n != 0 {
		t.Errorf("A counted the takeover as %v connection losses", n)
	}
	// A does not come back for it (a reconnect would be due within
	// backoff_max, 20ms).
	time.Sleep(200 * time.Millisecond)
	if n := testutil.ToFloat64(a.b.m.connects.WithLabelValues("ok")); n != 1 {
		t.Errorf("A connected %v times, want 1 (no reconnect after the takeover)", n)
	}

	// A poll held at B is answered at once when the device's session
	// moves back to A (a fresh session there takes it legitimately).
	held := make(chan pollAnswer, 1)
	go func() { held <- b.poll(t, "d1", "30") }()
	waitFor(t, "the held poll at B", func() bool { return testutilGauge(b.b.m.held) == 1 })
	if got := a.poll(t, "d1", "0"); got.code != 204 {
		t.Fatalf("poll back at A = %+v", got)
	}
	select {
	case got := <-held:
		if got.code != 204 || got.took > 20*time.Second {
			t.Errorf("held poll at B = %+v, want 204 at once", got)
		}
	case <-time.After(25 * time.Second):
		t.Fatal("the held poll at B was not answered after the takeover")
	}
	waitFor(t, "B's handover", func() bool { return b.metric(reasonTakenOver) == 1 })
	if n := testutil.ToFloat64(a.b.m.connects.WithLabelValues("ok")); n != 2 {
		t.Errorf("A connected %v times, want 2", n)
	}
}

// appClient is a backend application's MQTT connection (our client).
func appClient(t *testing.T, broker string) *mqttConn { return backendClient(t, broker, "app") }

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) { w.t.Log(string(b)); return len(b), nil }
