package tlsterm

import (
	"crypto/tls"
	"crypto/x509"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	handshakes *prometheus.CounterVec
	errors     prometheus.Counter // failures{reason="other"}
	failures   *prometheus.CounterVec
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
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeshim_tls_handshake_errors_total",
			Help: "TLS handshakes on TCP that failed or timed out, by reason (protocol_version, no_shared_cipher, bad_certificate, unknown_ca, timeout, eof, other).",
		}, []string{"reason"}),
	}
	m.clientRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "edgeshim_tls_client_certs_refused_total",
		Help: "Handshakes refused for their client certificate after chain verification, by reason (revoked, untrusted_ca).",
	}, []string{"reason"})
	for _, r := range FailureReasons {
		m.failures.WithLabelValues(r)
	}
	m.errors = m.failures.WithLabelValues(FailOther)
	reg.MustRegister(m.handshakes, m.failures, m.clientRefused)
	return m
}

func (m *metrics) handshake(cs tls.ConnectionState) {
	m.handshakes.WithLabelValues(strconv.FormatBool(cs.DidResume), tls.VersionName(cs.Version)).Inc()
}

// HandshakeFailed counts a failed handshake; the server calls it when
// Handshake returns an error.
func (t *Terminator) HandshakeFailed() { t.m.errors.Inc() }

// certExpiry reports, at scrape time, the seconds until every certificate
// edgeshim serves expires: edgeshim_certificate_expiry_seconds{name,source}
// with source "file" (tls.certs), "self_signed" (the development
// certificate) or "acme". name is the certificate's first DNS name (else
// its first IP address, else its subject CN); where two certificates of
// one source share a name, the one expiring first is reported. The ACME
// names also keep their edgeshim_acme_certificate_expiry_seconds{name}.
type certExpiry struct {
	t    *Terminator
	now  func() time.Time
	desc *prometheus.Desc
}

var _ prometheus.Collector = (*certExpiry)(nil)

func newCertExpiry(t *Terminator, now func() time.Time) *certExpiry {
	return &certExpiry{t: t, now: now, desc: prometheus.NewDesc("edgeshim_certificate_expiry_seconds",
		"Seconds until a served certificate expires (negative: expired), by name and source (file, self_signed, acme).",
		[]string{"name", "source"}, nil)}
}

func (ce *certExpiry) Describe(ch chan<- *prometheus.Desc) { ch <- ce.desc }

func (ce *certExpiry) Collect(ch chan<- prometheus.Metric) {
	type key struct{ name, source string }
	soonest := map[key]time.Time{}
	add := func(name, source string, notAfter time.Time) {
		k := key{name, source}
		if t, ok := soonest[k]; !ok || notAfter.Before(t) {
			soonest[k] = notAfter
		}
	}
	if set := ce.t.certs.Load(); set != nil {
		for _, c := range set.files {
			if leaf := leafOf(c); leaf != nil {
				add(certName(leaf), "file", leaf.NotAfter)
			}
		}
		if set.dev != nil {
			if leaf := leafOf(*set.dev); leaf != nil {
				add(certName(leaf), "self_signed", leaf.NotAfter)
			}
		}
	}
	if ce.t.acme != nil {
		exp, _ := ce.t.acme.expiries()
		for name, notAfter := range exp {
			add(name, "acme", notAfter)
		}
	}
	now := ce.now()
	for k, notAfter := range soonest {
		ch <- prometheus.MustNewConstMetric(ce.desc, prometheus.GaugeValue, notAfter.Sub(now).Seconds(), k.name, k.source)
	}
}

// leafOf returns c's parsed leaf certificate, or nil.
func leafOf(c tls.Certificate) *x509.Certificate {
	if c.Leaf != nil {
		return c.Leaf
	}
	if len(c.Certificate) == 0 {
		return nil
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		return nil
	}
	return leaf
}

// certName is the name a certificate is reported under.
func certName(leaf *x509.Certificate) string {
	switch {
	case len(leaf.DNSNames) > 0:
		return leaf.DNSNames[0]
	case len(leaf.IPAddresses) > 0:
		return leaf.IPAddresses[0].String()
	case leaf.Subject.CommonName != "":
		return leaf.Subject.CommonName
	}
	return "unnamed"
}
