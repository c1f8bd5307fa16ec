package bridge

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/edgeshim/edgeshim/bridge/embedded"
	"github.com/edgeshim/edgeshim/config"
	"github.com/prometheus/client_golang/prometheus"
)

// TestMethodNotAllowedSaysAllow: every 405 of the device endpoints names
// the method the endpoint takes (RFC 9110 §15.5.6). HEAD on a poll is
// refused too: it would take a command off the queue and deliver no body.
func TestMethodNotAllowedSaysAllow(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	mb, err := embedded.Start("127.0.0.1:0", log)
	if err != nil {
		t.Fatal(err)
	}
	defer mb.Close()
	cfg := config.Default().WithDefaults()
	bc := cfg.Bridges["fleet"]
	bc.Upstream.URL = "mqtt://" + mb.Addr().String()
	bc.Poll.Ack = "explicit"
	b, err := New(Options{Name: "fleet", Config: bc, Limits: cfg.Limits, Logger: log, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(b)
	defer srv.Close()
	defer b.Shutdown(t.Context())
	for _, tc := range []struct{ method, path, allow string }{
		{http.MethodPost, "/devices/d1/commands", "GET"},
		{http.MethodHead, "/devices/d1/commands", "GET"},
		{http.MethodGet, "/devices/d1/telemetry", "POST"},
		{http.MethodPut, "/devices/d1/telemetry", "POST"},
		{http.MethodGet, "/devices/d1/commands/17/ack", "POST"},
	} {
		req, _ := http.NewRequestWithContext(t.Context(), tc.method, srv.URL+tc.path, nil)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != tc.allow {
			t.Errorf("%s %s: %d, Allow %q; want 405, Allow %q", tc.method, tc.path, resp.StatusCode, resp.Header.Get("Allow"), tc.allow)
		}
	}
	srv.Client().CloseIdleConnections()
}
