package tlsterm

import (
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/edgeshim/edgeshim/config"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestHandshakeErrorsByReason: every reason's series exists at 0 from the
// start; HandshakeFailedFor counts under its reason and an unknown one
// under "other", as HandshakeFailed does.
func TestHandshakeErrorsByReason(t *testing.T) {
	reg := prometheus.NewRegistry()
	tc := (&config.Config{}).WithDefaults().TLS
	term, err := New(Options{TLS: tc, DataDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer term.Close()
	if n := testutil.CollectAndCount(term.m.failures); n != len(FailureReasons) {
		t.Fatalf("%d series before any failure, want one per reason (%d)", n, len(FailureReasons))
	}
	term.HandshakeFailedFor(FailProtocolVersion)
	term.HandshakeFailedFor("no such reason")
	term.HandshakeFailed()
	want := `
# HELP edgeshim_tls_handshake_errors_total TLS handshakes on TCP that failed or timed out, by reason (protocol_version, no_shared_cipher, bad_certificate, unknown_ca, timeout, eof, other).
# TYPE edgeshim_tls_handshake_errors_total counter
edgeshim_tls_handshake_errors_total{reason="bad_certificate"} 0
edgeshim_tls_handshake_errors_total{reason="eof"} 0
edgeshim_tls_handshake_errors_total{reason="no_shared_cipher"} 0
edgeshim_tls_handshake_errors_total{reason="other"} 2
edgeshim_tls_handshake_errors_total{reason="protocol_version"} 1
edgeshim_tls_handshake_errors_total{reason="timeout"} 0
edgeshim_tls_handshake_errors_total{reason="unknown_ca"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "edgeshim_tls_handshake_errors_total"); err != nil {
		t.Error(err)
	}
}
