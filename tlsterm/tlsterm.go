// Package tlsterm owns TLS termination: certificates (files chosen by SNI, a
// self-signed development certificate, ACME via certmagic), session tickets
// and their rotation and sharing across replicas, client-certificate device
// identity, ALPN, and the TLS configuration of the QUIC/HTTP/3 listener.
package tlsterm

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"

	"github.com/edgeshim/edgeshim/config"
	"github.com/prometheus/client_golang/prometheus"
)

// Options configure a Terminator.
type Options struct {
	// TLS is the tls section, defaults filled.
	TLS config.TLS
	// DataDir keeps the self-signed certificate.
	DataDir string
	// Logger receives certificate and ticket events. Required.
	Logger *slog.Logger
	// Registerer receives the TLS metrics. Required.
	Registerer prometheus.Registerer
}

// Terminator builds the server *tls.Config and owns everything that changes
// under it (certificates, ticket keys).
type Terminator struct {
	opts    Options
	log     *slog.Logger
	certs   atomic.Pointer[[]tls.Certificate]
	clients *x509.CertPool
	base    *tls.Config
	m       *metrics
	tickets *ticketKeys
}

// ErrNoCertificate is returned when no certificate matches a handshake.
var ErrNoCertificate = errors.New("no certificate")

// New loads certificates and builds the server TLS configuration.
func New(opts Options) (*Terminator, error) {
	t := &Terminator{opts: opts, log: opts.Logger, m: newMetrics(opts.Registerer)}
	if err := t.loadCerts(); err != nil {
		return nil, err
	}
	if ca := opts.TLS.ClientAuth; ca != nil {
		pem, err := os.ReadFile(ca.CA)
		if err != nil {
			return nil, fmt.Errorf("tls.client_auth.ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls.client_auth.ca: no PEM certificates in %s", ca.CA)
		}
		t.clients = pool
	}
	t.base = t.buildConfig()
	if err := t.startTickets(); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *Terminator) loadCerts() error {
	var certs []tls.Certificate
	for i, cf := range t.opts.TLS.Certs {
		c, err := tls.LoadX509KeyPair(cf.Cert, cf.Key)
		if err != nil {
			return fmt.Errorf("tls.certs[%d]: %w", i, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 && t.opts.TLS.ACME == nil {
		c, err := selfSigned(t.opts.DataDir, t.opts.TLS.SelfSigned.Hosts, t.log)
		if err != nil {
			return fmt.Errorf("self-signed certificate: %w", err)
		}
		certs = append(certs, c)
	}
	t.certs.Store(&certs)
	return nil
}

// Reload re-reads certificate files and the ticket key file. On an error
// the previous certificates and keys stay in force. Existing connections
// are unaffected.
func (t *Terminator) Reload() error {
	if err := t.loadCerts(); err != nil {
		return err
	}
	if t.tickets != nil && t.opts.TLS.SessionTickets.KeyFile != "" {
		if err := t.tickets.loadFile(); err != nil {
			return err
		}
	}
	t.log.Info("tls reloaded")
	return nil
}

func (t *Terminator) buildConfig() *tls.Config {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2", "http/1.1"},
		// ECDHE suites only for TLS 1.2 (TLS 1.3 suites are not
		// configurable and all forward secret).
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
		GetCertificate:   t.getCertificate,
		VerifyConnection: t.verifyConnection,
	}
	if t.opts.TLS.MinVersion == "1.3" {
		cfg.MinVersion = tls.VersionTLS13
	}
	if t.clients != nil {
		cfg.ClientCAs = t.clients
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
		if t.opts.TLS.ClientAuth.Mode == "require" {
			cfg.ClientAuth = tls.RequireAndVerifyClientCert
		}
	}
	return cfg
}

// TLSConfig returns the live server configuration (ALPN h2, http/1.1).
// It is shared, not copied: certificates and ticket keys change under it,
// so listeners must hand it to handshakes (GetConfigForClient) rather than
// Clone it, which would freeze the ticket keys of the moment.
func (t *Terminator) TLSConfig() *tls.Config { return t.base }

func (t *Terminator) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	certs := *t.certs.Load()
	for i := range certs {
		if hello.SupportsCertificate(&certs[i]) == nil {
			return &certs[i], nil
		}
	}
	if len(certs) > 0 {
		return &certs[0], nil // no SNI match: the first certificate, as Go does
	}
	return nil, ErrNoCertificate
}

func (t *Terminator) verifyConnection(cs tls.ConnectionState) error {
	t.m.handshake(cs)
	return nil
}

// Close stops background work (ticket rotation).
func (t *Terminator) Close() error {
	t.tickets.close()
	return nil
}
