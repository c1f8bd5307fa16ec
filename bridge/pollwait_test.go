package bridge

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/edgeshim/edgeshim/config"
	"github.com/prometheus/client_golang/prometheus"
)

// TestDotDeviceIDsRefused: ids of dots only are refused everywhere an id
// is read (ValidDeviceID guards path, header, token keys and cert CN), and
// on the wire, percent-encoded too, with 400.
func TestDotDeviceIDsRefused(t *testing.T) {
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{".", false}, {"..", false}, {"...", false}, {"....", false},
		{".a", true}, {"a.", true}, {"a..b", true}, {"..a", true}, {"door-17", true},
	} {
		if got := ValidDeviceID(tc.id); got != tc.ok {
			t.Errorf("ValidDeviceID(%q) = %v, want %v", tc.id, got, tc.ok)
		}
	}
	cfg := config.Default().WithDefaults()
	bc := cfg.Bridges["fleet"]
	bc.Upstream.URL = "mqtt://127.0.0.1:1" // never reached: every request is refused first
	b, err := New(Options{Name: "fleet", Config: bc, Limits: cfg.Limits, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Shutdown(t.Context())
	srv := httptest.NewServer(b)
	defer srv.Close()
	defer srv.Client().CloseIdleConnections()
	for _, seg := range []string{".", "..", "...", "%2E", "%2E%2E", "%2e%2e%2e", ".%2E"} {
		for _, path := range []string{"/devices/" + seg + "/commands", "/devices/" + seg + "/telemetry"} {
			req, _ := http.NewRequest(http.MethodGet, srv.URL+path, nil)
			if path[len(path)-1] == 'y' {
				req.Method = http.MethodPost
			}
			req.URL.Opaque = "//" + req.URL.Host + path // sent as is: no client-side cleaning
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("%s %s: %d, want 400", req.Method, path, resp.StatusCode)
			}
		}
	}
	if n := testutilGauge(b.m.sessionsOpen); n != 0 {
		t.Errorf("%v sessions opened for refused ids", n)
	}
}

// TestPollWaitCapped: any run of digits is a wait capped at max_wait,
// however long (no overflow to an immediate answer); anything else is
// refused.
func TestPollWaitCapped(t *testing.T) {
	const max = 55 * time.Second
	for _, tc := range []struct {
		in   string
		want time.Duration
		bad  bool
	}{
		{"", 0, false}, {"0", 0, false}, {"30", 30 * time.Second, false}, {"055", 55 * time.Second, false},
		{"56", max, false}, {"9223372037", max, false}, {"9223372036854775807", max, false},
		{"99999999999999999999999999999", max, false}, {"0000000000000000000000000000000000000001", time.Second, false},
		{"-1", 0, true}, {"+5", 0, true}, {"1.5", 0, true}, {"5s", 0, true}, {" 5", 0, true}, {"0x10", 0, true},
		{string(make([]byte, 100)), 0, true},
	} {
		got, err := parseWait(tc.in, max)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("parseWait(%q) = %v, %v; want %v, bad=%v", tc.in, got, err, tc.want, tc.bad)
		}
	}
}
