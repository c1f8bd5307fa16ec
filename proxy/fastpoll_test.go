package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/edgeshim/edgeshim/bridge"
	"github.com/edgeshim/edgeshim/bridge/embedded"
	"github.com/prometheus/client_golang/prometheus"
)

// startBridgeProxy serves a fleet bridge (path identity) on a real
// in-process broker behind the proxy; h1 dials HTTP/1.1 TLS connections.
func startBridgeProxy(t *testing.T) (s *Server, held func() float64, h1 func() *tls.Conn) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	mb, err := embedded.Start("127.0.0.1:0", log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mb.Close() })
	reg := prometheus.NewRegistry()
	var b *bridge.Bridge
	s, cl := startProxy(t, fmt.Sprintf(`
limits: {per_ip: {max_conns: 5000, rate: 100000, burst: 100000}, max_conns: 10000}
routes: [{path: /devices/, bridge: fleet}]
bridges:
  fleet:
    upstream: {url: "mqtt://%s", reconnect_rate: 5000}
    identity: {from: path, allow_unauthenticated: true}
    poll: {path: "/devices/{device}/commands", max_wait: 60s}
    commands: {topic: "devices/{device}/commands"}
`, mb.Addr()), func(o *Options) {
		b, err = bridge.New(bridge.Options{Name: "fleet", Config: o.Config.Bridges["fleet"], Limits: o.Config.Limits,
			Logger: log, Registerer: reg})
		if err != nil {
			t.Fatal(err)
		}
		o.Bridges = map[string]http.Handler{"fleet": b}
	})
	t.Cleanup(func() { // after the server's Close (cleanups run last first)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		b.Shutdown(ctx)
	})
	cfg := cl.Transport.(*http.Transport).TLSClientConfig
	h1 = func() *tls.Conn {
		c, err := tls.Dial("tcp", s.Addr("https").String(), &tls.Config{RootCAs: cfg.RootCAs, ServerName: "localhost", NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	held = func() float64 {
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "edgeshim_bridge_polls_held" {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		return -1
	}
	return s, held, h1
}

func sendPoll(t *testing.T, c *tls.Conn, dev, query string) {
	t.Helper()
	if _, err := fmt.Fprintf(c, "GET /devices/%s/commands%s HTTP/1.1\r\nHost: localhost\r\n\r\n", dev, query); err != nil {
		t.Fatal(err)
	}
}

// awaitCounter waits until c reaches n (the parked poll has no other
// signal).
func awaitCounter(t *testing.T, what string, get func() float64, n float64) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for get() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v, want %v", what, get(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestHeldPollsParkedWithoutGoroutines: 200 held HTTP/1.1 polls hold no
// goroutine of their own in the proxy and the bridge (each session's
// MQTT reader exists before the baseline: the sessions are created by a
// short poll first). Parking off (park.NewFallback) holds one per poll.
// Closing the clients then cancels every parked poll (peer close).
func TestHeldPollsParkedWithoutGoroutines(t *testing.T) {
	const n = 200
	s, held, h1 := startBridgeProxy(t)
	c := h1()
	br := bufio.NewReader(c)
	for i := range n { // the sessions, on one keep-alive connection
		sendPoll(t, c, fmt.Sprint("g", i), "")
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 204 {
			t.Fatalf("short poll %d: %v %v", i, resp, err)
		}
		resp.Body.Close()
	}
	c.Close()
	// The short polls' connection ends; then the baseline, before dialling.
	base := runtime.NumGoroutine()
	for range 100 {
		time.Sleep(20 * time.Millisecond) // settling: no signal for "nothing more ends"
		base = min(base, runtime.NumGoroutine())
	}
	parked0 := float64(s.fast.Stats().PollsParked) // the short polls parked too, waiting for their sessions
	conns := make([]*tls.Conn, n)
	for i := range conns {
		conns[i] = h1()
		sendPoll(t, conns[i], fmt.Sprint("g", i), "?wait=60")
	}
	awaitCounter(t, "held polls", held, n)
	// The last ones may still be on their way to the parker.
	awaitFewGoroutines(t, base, n, "held polls")
	if p := float64(s.fast.Stats().PollsParked) - parked0; p < n {
		t.Errorf("parked polls = %v, want %d", p, n)
	}
	if h := held(); h != n {
		t.Fatalf("held gauge = %v, want %d", h, n)
	}
	for _, c := range conns {
		c.Close()
	}
	deadline := time.Now().Add(60 * time.Second)
	for held() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("held polls after their clients closed = %v, want 0 (peer close cancels a parked poll)", held())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestParkedPollDeadlineKeepAliveAndRefusal: a parked poll is answered
// at its wait's deadline (204), the connection goes on on the fast path
// for the next poll, and a refusal is the bridge's
// own answer (a malformed wait: 400), served there too.
func TestParkedPollDeadlineKeepAliveAndRefusal(t *testing.T) {
	s, _, h1 := startBridgeProxy(t)
	c := h1()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	read := func() *http.Response {
		t.Helper()
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp
	}
	sendPoll(t, c, "k1", "") // the session
	read()
	parked0 := float64(s.fast.Stats().PollsParked)
	start := time.Now()
	sendPoll(t, c, "k1", "?wait=1")
	if resp := read(); resp.StatusCode != 204 || resp.Close {
		t.Fatalf("held poll at its deadline: %d close=%v, want 204 keep-alive", resp.StatusCode, resp.Close)
	}
	if took := time.Since(start); took < time.Second {
		t.Errorf("answered after %s, before its 1s wait", took)
	}
	if float64(s.fast.Stats().PollsParked) == parked0 {
		t.Error("the held poll was not parked")
	}
	sendPoll(t, c, "k1", "?wait=1s")
	if resp := read(); resp.StatusCode != 400 || resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("malformed wait: %d %q, want 400 JSON", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if got := s.fast.Stats().Polls; got != 3 {
		t.Errorf("polls served on the fast path = %d, want 3", got)
	}
}

// awaitFewGoroutines fails unless the goroutine count comes down to
// fewer than n/20 above base within 20s: n parked connections (what)
// hold no goroutine of their own.
func awaitFewGoroutines(t *testing.T, base, n int, what string) {
	t.Helper()
	extra := runtime.NumGoroutine() - base
	for deadline := time.Now().Add(20 * time.Second); extra >= n/20 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		extra = runtime.NumGoroutine() - base
	}
	t.Logf("%d %s: %d goroutines more than before dialling", n, what, extra)
	if extra >= n/20 {
		t.Fatalf("%d %s hold %d goroutines, want < %d", n, what, extra, n/20)
	}
}
