package bridge

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/edgeshim/edgeshim/bridge/embedded"
	"github.com/edgeshim/edgeshim/config"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// newEmbeddedBridge is the embedded default's fleet bridge on a real
// in-process broker, served by an httptest server; mod adjusts its config.
// The broker and the server close with the test; ending the bridge is the
// caller's.
func newEmbeddedBridge(t *testing.T, mod func(*config.Bridge)) (*Bridge, *httptest.Server) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	mb, err := embedded.Start("127.0.0.1:0", log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mb.Close() })
	cfg := config.Default().WithDefaults()
	bc := cfg.Bridges["fleet"]
	bc.Upstream.URL = "mqtt://" + mb.Addr().String()
	if mod != nil {
		mod(&bc)
	}
	b, err := New(Options{Name: "fleet", Config: bc, Limits: cfg.Limits, Logger: log, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(b)
	t.Cleanup(srv.Close)
	return b, srv
}

// TestShutdownLeavesNothingRunning: sessions, held polls and the idle loop
// all end with Shutdown (checked by goleak at exit), against a real
// in-process broker.
func TestShutdownLeavesNothingRunning(t *testing.T) {
	b, srv := newEmbeddedBridge(t, func(bc *config.Bridge) {
		bc.Session.Idle = config.Duration(time.Hour)
	})
	for _, d := range []string{"a", "b", "c"} {
		resp, err := http.Get(srv.URL + "/devices/" + d + "/commands")
		if err != nil || resp.StatusCode != 204 {
			t.Fatalf("poll %s: %v %v", d, err, resp)
		}
		resp.Body.Close()
	}
	held := make(chan int, 1)
	go func() {
		resp, err := http.Get(srv.URL + "/devices/a/commands?wait=50")
		if err != nil {
			held <- 0
			return
		}
		resp.Body.Close()
		held <- resp.StatusCode
	}()
	for testutilGauge(b.m.held) < 1 {
		time.Sleep(10 * time.Millisecond) // the held poll has no other signal
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if code := <-held; code != 204 {
		t.Errorf("held poll at shutdown answered %d, want 204 at once", code)
	}
	resp, err := http.Get(srv.URL + "/devices/z/commands")
	if err == nil {
		if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
			t.Errorf("poll after shutdown: %d, want 503 with Retry-After", resp.StatusCode)
		}
		resp.Body.Close()
	}
	http.DefaultClient.CloseIdleConnections()
}
