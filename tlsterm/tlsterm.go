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
	clients *x509.CertPool              // the CA pool at start (base config)
	trust   atomic.Pointer[clientTrust] // nil without client_auth
	gen     atomic.Pointer[tls.Config]  // the live config with the current CA pool; nil without client_auth
	acme    *acmeManager                // nil without tls.acme
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
	var trust *clientTrust
	if ca := opts.TLS.ClientAuth; ca != nil {
		ct, stale, err := loadClientTrust(*ca, time.Now())
		if err != nil {
			t.closeACME()
			return nil, err
		}
		t.logStale(stale)
		trust, t.clients = ct, ct.pool
	}
	t.base = t.buildConfig()
	if err := t.startTickets(); err != nil {
		t.closeACME()
		return nil, err
	}
	if trust != nil {
		t.installClientTrust(trust)
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
	set, err := t.readCerts(t.opts.TLS.Certs)
	if err != nil {
		return err
	}
	t.certs.Store(set)
	return nil
}

func (t *Terminator) readCerts(certs []config.CertFile) (*certSet, error) {
	var set certSet
	for i, cf := range certs {
		c, err := tls.LoadX509KeyPair(cf.Cert, cf.Key)
		if err != nil {
			return nil, fmt.Errorf("tls.certs[%d]: %w", i, err)
		}
		set.files = append(set.files, c)
	}
	if len(set.files) == 0 {
		// Also beside ACME: its names (localhost by default) stay served
		// while the CA is unreachable.
		c, err := selfSigned(t.opts.DataDir, t.opts.TLS.SelfSigned.Hosts, t.log)
		if err != nil {
			return nil, fmt.Errorf("self-signed certificate: %w", err)
		}
		set.dev = &c
	}
	return &set, nil
}

func (t *Terminator) logStale(stale []string) {
	for _, s := range stale {
		t.log.Warn("client certificate CRL is stale; still enforced", "crl", s)
	}
}

// Reload re-reads the files of the current configuration: see
// PrepareReload.
func (t *Terminator) Reload() error {
	p, err := t.PrepareReload(t.opts.TLS)
	if err != nil {
		return err
	}
	p.Commit()
	return nil
}

// Pending is a TLS reload whose files were all read and checked; Commit
// puts it in force.
type Pending struct {
	t     *Terminator
	c     config.TLS
	certs *certSet
	keys  [][32]byte   // nil: the ticket keys stay
	trust *clientTrust // nil without client_auth
	stale []string
}

// PrepareReload reads every file c names that can change while running:
// the certificates, the session ticket key file and the client CA and CRL
// files. Nothing changes until Commit; on an error nothing does. Whether
// client_auth, a key file and ACME are used at all is fixed at start:
// those parts of c are read only when they were configured at start.
func (t *Terminator) PrepareReload(c config.TLS) (*Pending, error) {
	p := &Pending{t: t, c: c}
	var errs []error
	var err error
	if p.certs, err = t.readCerts(c.Certs); err != nil {
		errs = append(errs, err)
	}
	if t.tickets != nil && t.opts.TLS.SessionTickets.KeyFile != "" && c.SessionTickets.KeyFile != "" {
		if p.keys, err = readKeyFile(c.SessionTickets.KeyFile); err != nil {
			errs = append(errs, err)
		}
	}
	if t.opts.TLS.ClientAuth != nil && c.ClientAuth != nil {
		if p.trust, p.stale, err = loadClientTrust(*c.ClientAuth, time.Now()); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return p, nil
}

// Commit puts a prepared reload in force for new handshakes. Open
// connections keep what they negotiated; sessions resume across it.
func (p *Pending) Commit() {
	t := p.t
	t.certs.Store(p.certs)
	t.opts.TLS.Certs = p.c.Certs
	if p.keys != nil {
		t.opts.TLS.SessionTickets.KeyFile = p.c.SessionTickets.KeyFile
		t.tickets.set(p.keys)
		t.log.Info("session ticket keys loaded", "file", p.c.SessionTickets.KeyFile, "ticket_key_id", keyID(p.keys[0]), "keys", len(p.keys))
	}
	if p.trust != nil {
		ca := *p.c.ClientAuth
		ca.Mode = t.opts.TLS.ClientAuth.Mode // the mode is fixed at start
		t.opts.TLS.ClientAuth = &ca
		t.installClientTrust(p.trust)
		t.logStale(p.stale)
		t.log.Info("client certificate trust loaded", "ca", ca.CA, "crl", ca.CRL, "revoked", len(p.trust.revoked))
	}
	t.log.Info("tls reloaded", "certs", len(p.certs.files))
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
	}
	if t.acme != nil && t.acme.alpn != nil || t.clients != nil {
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
// TLS-ALPN-01 handshakes, the current client-auth generation with
// client_auth, and nil (the live configuration) otherwise.
func (t *Terminator) configForHello(hello *tls.ClientHelloInfo) (*tls.Config, error) {
	if t.acme != nil && t.acme.alpn != nil && isChallengeHello(hello) && hello.ServerName != "" {
		return t.acme.alpn, nil
	}
	// With client_auth: the generation with the current CA pool (nil
	// before the first is installed, and without client_auth).
	return t.gen.Load(), nil
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
	if err := t.trust.Load().check(&cs); err != nil {
		reason := "revoked"
		if errors.Is(err, ErrUntrustedCA) {
			reason = "untrusted_ca"
		}
		t.m.clientRefused.WithLabelValues(reason).Inc()
		return err
	}
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
