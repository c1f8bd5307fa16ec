package tlsterm

import (
	"crypto/tls"
	"slices"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	handshakes *prometheus.CounterVec
	errors     *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeshim_tls_handshakes_total",
			Help: "Completed TLS handshakes (TCP and QUIC), by resumption and version.",
		}, []string{"resumed", "version"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeshim_tls_handshake_errors_total",
			Help: "TLS handshakes on TCP that failed or timed out, by reason (protocol_version, no_shared_cipher, bad_certificate, unknown_ca, timeout, eof, other).",
		}, []string{"reason"}),
	}
	for _, r := range FailureReasons {
		m.errors.WithLabelValues(r)
	}
	reg.MustRegister(m.handshakes, m.errors)
	return m
}

func (m *metrics) handshake(cs tls.ConnectionState) {
	m.handshakes.WithLabelValues(strconv.FormatBool(cs.DidResume), tls.VersionName(cs.Version)).Inc()
}

// HandshakeFailed counts a failed handshake by its reason (one of
// FailureReasons, see FailureReason; anything else counts as "other");
// the server calls it when Handshake returns an error.
func (t *Terminator) HandshakeFailed(reason string) {
	if !slices.Contains(FailureReasons, reason) {
		reason = FailOther
	}
	t.m.errors.WithLabelValues(reason).Inc()
}
