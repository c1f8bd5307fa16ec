package bridge

import (
	"net/http"
	"testing"

	"github.com/edgeshim/edgeshim/config"
)

// TestMethodNotAllowedSaysAllow: every 405 of the device endpoints names
// the method the endpoint takes (RFC 9110 §15.5.6). HEAD on a poll is
// refused too: it would take a command off the queue and deliver no body.
func TestMethodNotAllowedSaysAllow(t *testing.T) {
	b, srv := newEmbeddedBridge(t, func(bc *config.Bridge) {
		bc.Poll.Ack = "explicit"
	})
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
