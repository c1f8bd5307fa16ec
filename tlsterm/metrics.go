package tlsterm

import (
	"crypto/tls"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	handshakes *prometheus.CounterVec
	errors     prometheus.Counter
	// clientRefused counts client certificates refused after chain
	// verification (revoked, untrusted_ca).
	clientRefused *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeshim_tls_handshakes_total",
			Help: "Completed TLS handshakes (TCP and QUIC), by resumption and version.",
		}, []string{"resumed", "version"}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgeshim_tls_handshake_errors_total",
			Help: "TLS handshakes that failed or timed out.",
		}),
	}
	m.clientRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "edgeshim_tls_client_certs_refused_total",
		Help: "Handshakes refused for their client certificate after chain verification, by reason (revoked, untrusted_ca).",
	}, []string{"reason"})
	reg.MustRegister(m.handshakes, m.errors, m.clientRefused)
	return m
}

func (m *metrics) handshake(cs tls.ConnectionState) {
	m.handshakes.WithLabelValues(strconv.FormatBool(cs.DidResume), tls.VersionName(cs.Version)).Inc()
}

// HandshakeFailed counts a failed handshake; the server calls it when
// Handshake returns an error.
func (t *Terminator) HandshakeFailed() { t.m.errors.Inc() }
