package integration

import (
	"crypto/tls"
	"net/http"
	"testing"
	"time"
)

// TestTicketResumesAcrossRestart: with generated ticket keys (no
// key_file), a TLS 1.3 ticket issued before a restart resumes after it:
// the keys are kept in data_dir.
func TestTicketResumesAcrossRestart(t *testing.T) {
	cfg := `
listen: {https: "127.0.0.1:0", admin: "127.0.0.1:0"}
shutdown: {drain_delay: 100ms}
routes: [{path: /, proxy: {backends: ["http://127.0.0.1:1"]}}]
`
	dir := t.TempDir()
	e := startEdgeshim(t, cfg, EdgeOptions{Dir: dir})
	tc := e.TLSConfig()
	tc.MinVersion = tls.VersionTLS13
	tc.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	get := func(e *Edge) *tls.ConnectionState {
		t.Helper()
		tr := &http.Transport{TLSClientConfig: tc, DisableKeepAlives: true}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(e.URL("/"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close() // 502: no backend; the handshake is what counts
		return resp.TLS
	}
	if cs := get(e); cs.DidResume {
		t.Fatal("first handshake resumed")
	}
	if cs := get(e); !cs.DidResume {
		t.Fatal("second handshake, same process, did not resume")
	}
	if err := e.Stop(20 * time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	e2 := startEdgeshim(t, cfg, EdgeOptions{Dir: dir})
	if cs := get(e2); !cs.DidResume {
		t.Error("ticket issued before the restart did not resume after it")
	}
}
