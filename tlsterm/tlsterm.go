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
	"net/http"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"github.com/edgeshim/edgeshim/config"
	"github.com/mholt/acmez/v3"
	"github.com/prometheus/client_golang/prometheus"
)

// Options configure a Terminator.
type Options struct {
	// TLS is the tls section, defaults filled.
	TLS config.TLS
	// DataDir keeps the self-signed certificate and, by default, the ACME
	// storage.
	DataDir string
	// Listen are the listener addresses; ACME challenges are answered on
	// them.
	Listen config.Listen
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
	certs   atomic.Pointer[certSet]
	clients *x509.CertPool
	acme    *acmeManager // nil without tls.acme
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
	if a := opts.TLS.ACME; a != nil {
		m, err := newACME(*a, opts.Listen, opts.DataDir, opts.Logger, opts.Registerer)
		if err != nil {
			return nil, err
		}
		t.acme = m
	}
	opts.Registerer.MustRegister(newCertExpiry(t, time.Now))
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
		t.closeACME()
		return nil, err
	}
	return t, nil
}

// certSet are the certificates served from files, and the self-signed
// development certificate when no file is configured.
type certSet struct {
	files []tls.Certificate
	dev   *tls.Certificate
}

func (t *Terminator) loadCerts() error {
	var set certSet
	for i, cf := range t.opts.TLS.Certs {
		c, err := tls.LoadX509KeyPair(cf.Cert, cf.Key)
		if err != nil {
			return fmt.Errorf("tls.certs[%d]: %w", i, err)
		}
		set.files = append(set.files, c)
	}
	if len(set.files) == 0 {
		// Also beside ACME: its names (localhost by default) stay served
		// while the CA is unreachable.
		c, err := selfSigned(t.opts.DataDir, t.opts.TLS.SelfSigned.Hosts, t.log)
		if err != nil {
			return fmt.Errorf("self-signed certificate: %w", err)
		}
		set.dev = &c
	}
	t.certs.Store(&set)
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
	if t.acme != nil && slices.Contains(t.opts.TLS.ACME.Challenges, "tls-alpn-01") {
		// A validation handshake gets its own configuration: only the
		// acme-tls/1 protocol, no client certificate asked, no tickets.
		t.acme.alpn = &tls.Config{
			MinVersion:             tls.VersionTLS12,
			NextProtos:             []string{acmez.ACMETLS1Protocol},
			GetCertificate:         t.acme.magic.GetCertificate,
			SessionTicketsDisabled: true,
		}
		cfg.GetConfigForClient = t.configForHello
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
// Clone it, which would freeze the ticket keys of the moment. Its own
// GetConfigForClient, when set, must be consulted by whoever hands it out
// (Go calls only the outermost one): it picks the configuration of ACME
// TLS-ALPN-01 validation handshakes.
func (t *Terminator) TLSConfig() *tls.Config { return t.base }

// configForHello returns the ACME validation configuration for
// TLS-ALPN-01 handshakes and nil (the live configuration) otherwise.
func (t *Terminator) configForHello(hello *tls.ClientHelloInfo) (*tls.Config, error) {
	if isChallengeHello(hello) && hello.ServerName != "" {
		return t.acme.alpn, nil
	}
	return nil, nil
}

// getCertificate picks, in order: a certificate file matching the name;
// an ACME certificate (managed, or on demand for an allowed name); the
// self-signed certificate if it matches; without SNI, the first
// certificate. Without ACME an unmatched name gets the first certificate,
// as Go does; with ACME it fails the handshake, so on-demand never serves
// a name it refused.
func (t *Terminator) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	set := t.certs.Load()
	for i := range set.files {
		if hello.SupportsCertificate(&set.files[i]) == nil {
			return &set.files[i], nil
		}
	}
	var acmeErr error
	if t.acme != nil {
		c, err := t.acme.magic.GetCertificate(hello)
		if err == nil {
			return c, nil
		}
		acmeErr = err
	}
	if set.dev != nil && hello.SupportsCertificate(set.dev) == nil {
		return set.dev, nil
	}
	if acmeErr != nil && hello.ServerName != "" {
		return nil, fmt.Errorf("%w for %q: %w", ErrNoCertificate, hello.ServerName, acmeErr)
	}
	if len(set.files) > 0 {
		return &set.files[0], nil // no SNI match: the first certificate, as Go does
	}
	if set.dev != nil {
		return set.dev, nil
	}
	return nil, ErrNoCertificate
}

// StartACME manages the configured ACME domains (from storage, or ordered
// in the background). Call it once the listeners are bound. Without ACME
// it does nothing.
func (t *Terminator) StartACME() {
	if t.acme != nil {
		t.acme.start()
	}
}

// HTTPChallenge wraps next, the plain-HTTP handler, to answer ACME
// HTTP-01 challenges. Without ACME it returns next.
func (t *Terminator) HTTPChallenge(next http.Handler) http.Handler {
	if t.acme == nil || !slices.Contains(t.opts.TLS.ACME.Challenges, "http-01") {
		return next
	}
	return t.acme.httpChallenge(next)
}

func (t *Terminator) closeACME() {
	if t.acme != nil {
		t.acme.close()
	}
}

func (t *Terminator) verifyConnection(cs tls.ConnectionState) error {
	t.m.handshake(cs)
	return nil
}

// Close stops background work (ticket rotation, ACME orders and
// renewals).
func (t *Terminator) Close() error {
	t.tickets.close()
	t.closeACME()
	return nil
}
