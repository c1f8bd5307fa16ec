package sim

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// ErrIdentity is wrapped by failures to load or make device credentials.
var ErrIdentity = errors.New("device identity")

// DeviceID is the id of device i.
func DeviceID(prefix string, i int) string { return fmt.Sprintf("%s%d", prefix, i) }

// Token is device's bearer token: hex(HMAC-SHA256(secret, device)), so the
// tokens file and the running devices agree without storing tokens.
func Token(secret, device string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(device))
	return hex.EncodeToString(m.Sum(nil))
}

// WriteTokens writes the bridge's tokens file (YAML map device → hex
// SHA-256 of its token) for count devices.
func WriteTokens(w io.Writer, prefix, secret string, count int) error {
	bw := bufio.NewWriter(w)
	for i := range count {
		dev := DeviceID(prefix, i)
		sum := sha256.Sum256([]byte(Token(secret, dev)))
		fmt.Fprintf(bw, "%s: %s\n", dev, hex.EncodeToString(sum[:]))
	}
	return bw.Flush()
}

// GenCA writes a new device CA (ca.pem, ca-key.pem) into dir, for
// tls.client_auth.ca on the server and Identity.CertCA on the simulator.
func GenCA(dir string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrIdentity, err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "edgeshim-sim device CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(5 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrIdentity, err)
	}
	kd, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrIdentity, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("%w: %w", ErrIdentity, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return fmt.Errorf("%w: %w", ErrIdentity, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca-key.pem"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}), 0o600); err != nil {
		return fmt.Errorf("%w: %w", ErrIdentity, err)
	}
	return nil
}

// certIssuer issues device certificates from a CA written by GenCA. All
// devices share one key (issuing is then only a signature).
type certIssuer struct {
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	devKey *ecdsa.PrivateKey
}

func loadIssuer(dir string) (*certIssuer, error) {
	cp, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrIdentity, err)
	}
	kp, err := os.ReadFile(filepath.Join(dir, "ca-key.pem"))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrIdentity, err)
	}
	cb, _ := pem.Decode(cp)
	kb, _ := pem.Decode(kp)
	if cb == nil || kb == nil {
		return nil, fmt.Errorf("%w: %s: no PEM block", ErrIdentity, dir)
	}
	ca, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrIdentity, err)
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrIdentity, err)
	}
	dk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrIdentity, err)
	}
	return &certIssuer{ca: ca, caKey: key, devKey: dk}, nil
}

func (ci *certIssuer) issue(device string, serial int64) (tls.Certificate, error) {
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial + 2), Subject: pkix.Name{CommonName: device},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(30 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ci.ca, &ci.devKey.PublicKey, ci.caKey)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%w: %w", ErrIdentity, err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: ci.devKey}, nil
}
