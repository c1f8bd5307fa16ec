package tlsterm

import (
	"crypto/tls"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	handshakes *prometheus.CounterVec
	errors     prometheus.Counter // failures{reason="other"}
	failures   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeshim_tls_handshakes_total",
			Help: "Completed TLS handshakes (TCP and QUIC), by resumption and version.",
		}, []string{"resumed", "version"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeshim_tls_handshake_errors_total",
			Help: "TLS handshakes on TCP that failed or timed out, by reason (protocol_version, no_shared_cipher, bad_certificate, unknown_ca, timeout, eof, other).",
		}, []string{"reason"}),
	}
	for _, r := range FailureReasons {
		m.failures.WithLabelValues(r)
	}
	m.errors = m.failures.WithLabelValues(FailOther)
	reg.MustRegister(m.handshakes, m.failures)
	return m
}

func (m *metrics) handshake(cs tls.ConnectionState) {
	m.handshakes.WithLabelValues(strconv.FormatBool(cs.DidResume), tls.VersionName(cs.Version)).Inc()
}

// HandshakeFailed counts a failed handshake; the server calls it when
// Handshake returns an error.
func (t *Terminator) HandshakeFailed() { t.m.errors.Inc() }
