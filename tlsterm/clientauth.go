package tlsterm

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/edgeshim/edgeshim/config"
)

// Client certificate refusals: VerifyConnection returns them (wrapped),
// and the handshake fails with a bad_certificate alert.
var (
	// ErrRevoked: a certificate of the chain is on a CRL.
	ErrRevoked = errors.New("client certificate revoked")
	// ErrUntrustedCA: a resumed session's chain ends at a CA no longer in
	// tls.client_auth.ca.
	ErrUntrustedCA = errors.New("client certificate from a CA no longer trusted")
	// ErrCRL is wrapped by every error about the CRL file.
	ErrCRL = errors.New("bad CRL file")
)

// clientTrust is what device certificates are verified against: the CA
// pool and the revoked serials. It is immutable; a reload builds a new
// one.
type clientTrust struct {
	pool    *x509.CertPool
	roots   map[string]bool     // Raw of every CA certificate
	revoked map[string]struct{} // issuer RawSubject + serial bytes
}

// loadClientTrust reads the CA file and, if set, the CRL file. Every CRL
// must be signed by a CA of the CA file. A CRL past its next update is
// still used (failing open would let revoked devices in; failing closed
// would lock the fleet out), and reported in stale.
func loadClientTrust(ca config.ClientAuth, now time.Time) (ct *clientTrust, stale []string, err error) {
	data, err := os.ReadFile(ca.CA)
	if err != nil {
		return nil, nil, fmt.Errorf("tls.client_auth.ca: %w", err)
	}
	ct = &clientTrust{pool: x509.NewCertPool(), roots: map[string]bool{}, revoked: map[string]struct{}{}}
	var cas []*x509.Certificate
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("tls.client_auth.ca %s: %w", ca.CA, err)
		}
		cas = append(cas, c)
		ct.pool.AddCert(c)
		ct.roots[string(c.Raw)] = true
	}
	if len(cas) == 0 {
		return nil, nil, fmt.Errorf("tls.client_auth.ca: no PEM certificates in %s", ca.CA)
	}
	if ca.CRL == "" {
		return ct, nil, nil
	}
	data, err = os.ReadFile(ca.CRL)
	if err != nil {
		return nil, nil, fmt.Errorf("tls.client_auth.crl: %w", err)
	}
	ders, err := crlBlocks(data)
	if err != nil {
		return nil, nil, fmt.Errorf("tls.client_auth.crl %s: %w", ca.CRL, err)
	}
	for i, der := range ders {
		rl, err := x509.ParseRevocationList(der)
		if err != nil {
			return nil, nil, fmt.Errorf("tls.client_auth.crl %s: CRL %d: %w: %w", ca.CRL, i+1, ErrCRL, err)
		}
		var issuer *x509.Certificate
		for _, c := range cas {
			if bytes.Equal(c.RawSubject, rl.RawIssuer) && rl.CheckSignatureFrom(c) == nil {
				issuer = c
				break
			}
		}
		if issuer == nil {
			return nil, nil, fmt.Errorf("tls.client_auth.crl %s: CRL %d (issuer %q): %w: not signed by a CA in tls.client_auth.ca", ca.CRL, i+1, rl.Issuer.String(), ErrCRL)
		}
		if !rl.NextUpdate.IsZero() && now.After(rl.NextUpdate) {
			stale = append(stale, fmt.Sprintf("CRL %d of %s (issuer %q) was due for update at %s", i+1, ca.CRL, rl.Issuer.String(), rl.NextUpdate.UTC().Format(time.RFC3339)))
		}
		for _, e := range rl.RevokedCertificateEntries {
			ct.revoked[revokedKey(issuer.RawSubject, e.SerialNumber.Bytes())] = struct{}{}
		}
	}
	return ct, stale, nil
}

// crlBlocks returns the DER CRLs of a file: every "X509 CRL" PEM block,
// or the whole file as one DER CRL.
func crlBlocks(data []byte) ([][]byte, error) {
	if !bytes.Contains(data, []byte("-----BEGIN")) {
		return [][]byte{data}, nil
	}
	var out [][]byte
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type == "X509 CRL" {
			out = append(out, b.Bytes)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no X509 CRL PEM block", ErrCRL)
	}
	return out, nil
}

func revokedKey(issuerSubject, serial []byte) string {
	return string(issuerSubject) + "\x00" + string(serial)
}

// check accepts a connection whose verified chains include one with no
// revoked certificate that ends at a CA still trusted. It runs on every
// handshake, resumed ones included: a resumed session carries the chain
// verified when it began, possibly before a revocation or a CA change.
func (ct *clientTrust) check(cs *tls.ConnectionState) error {
	if ct == nil || len(cs.VerifiedChains) == 0 {
		return nil
	}
	err := ErrUntrustedCA
	for _, chain := range cs.VerifiedChains {
		if len(chain) == 0 || !ct.roots[string(chain[len(chain)-1].Raw)] {
			continue
		}
		revoked := false
		for i := 0; i+1 < len(chain); i++ {
			c := chain[i]
			if _, ok := ct.revoked[revokedKey(c.RawIssuer, c.SerialNumber.Bytes())]; ok {
				revoked = true
				break
			}
		}
		if !revoked {
			return nil
		}
		err = ErrRevoked
	}
	leaf := cs.VerifiedChains[0][0]
	return fmt.Errorf("%w: subject %q serial %s", err, leaf.Subject.CommonName, leaf.SerialNumber)
}

// CheckClientCert checks a connection's verified client certificate
// against the CA and CRL now in force: a connection opened before a
// reload that revoked its certificate fails it (the bridge answers 401),
// without being closed. Nil without a certificate or without client_auth.
func (t *Terminator) CheckClientCert(cs *tls.ConnectionState) error {
	if cs == nil {
		return nil
	}
	return t.trust.Load().check(cs)
}

// installClientTrust makes ct the trust of new handshakes: a new
// generation of the server configuration with its CA pool, handed out by
// GetConfigForClient, carrying the current ticket keys so that sessions
// resume across the change.
func (t *Terminator) installClientTrust(ct *clientTrust) {
	g := t.base.Clone()
	g.GetConfigForClient = nil
	g.ClientCAs = ct.pool
	if tk := t.tickets; tk != nil {
		tk.mu.Lock()
		defer tk.mu.Unlock()
		if len(tk.keys) > 0 {
			g.SetSessionTicketKeys(tk.keys)
		}
	}
	t.trust.Store(ct)
	t.gen.Store(g)
}
