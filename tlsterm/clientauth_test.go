package tlsterm

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgeshim/edgeshim/config"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newCA(t testing.TB, name string) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &testCA{cert: c, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func (ca *testCA) client(t testing.TB, cn string, serial int64) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// crl returns a DER CRL revoking serials.
func (ca *testCA) crl(t testing.TB, next time.Time, serials ...int64) []byte {
	t.Helper()
	var entries []x509.RevocationListEntry
	for _, s := range serials {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: big.NewInt(s), RevocationTime: time.Now()})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(time.Now().UnixNano()),
		ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: next, RevokedCertificateEntries: entries}, ca.cert, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// tryHandshake reports the server's handshake error and whether the
// session resumed, over loopback TCP (a synchronous net.Pipe deadlocks
// when both sides of TLS 1.3 write at once).
func tryHandshake(t testing.TB, server, client *tls.Config) (resumed bool, err error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	errc := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			errc <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		s := tls.Server(c, server)
		err = s.Handshake()
		if err == nil {
			_, err = s.Write([]byte("x"))
		}
		errc <- err
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	c := tls.Client(conn, client)
	if c.Handshake() == nil {
		buf := make([]byte, 1)
		c.Read(buf) // the TLS 1.3 ticket and "x", or the server's alert
		resumed = c.ConnectionState().DidResume
	}
	return resumed, <-errc
}

// TestCRLRevocationAndReload: a revoked certificate fails the handshake
// after a reload, also by resumption (whose chain was verified before the
// revocation); another device's is untouched; a CA removed by a reload
// refuses its sessions' resumptions; a CRL from an unknown CA is refused
// and changes nothing.
func TestCRLRevocationAndReload(t *testing.T) {
	dir := t.TempDir()
	ca, other := newCA(t, "devices"), newCA(t, "other")
	caFile, crlFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "crl.der")
	os.WriteFile(caFile, ca.pem, 0o644)
	os.WriteFile(crlFile, ca.crl(t, time.Now().Add(time.Hour)), 0o644)
	term := newTerm(t, config.TLS{ClientAuth: &config.ClientAuth{CA: caFile, CRL: crlFile, Mode: "verify_if_given"}})
	client := func(c tls.Certificate) *tls.Config {
		cl := clientFor(t, term, tls.VersionTLS13)
		// Sent whatever CAs the server names (Go would withhold a
		// certificate from a CA not named).
		cl.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }
		return cl
	}
	door1, door2 := client(ca.client(t, "door-1", 101)), client(ca.client(t, "door-2", 102))
	for _, cl := range []*tls.Config{door1, door2} {
		if _, err := tryHandshake(t, term.TLSConfig(), cl); err != nil {
			t.Fatalf("before revocation: %v", err)
		}
		if resumed, err := tryHandshake(t, term.TLSConfig(), cl); err != nil || !resumed {
			t.Fatalf("resumption before revocation: resumed %v, %v", resumed, err)
		}
	}
	if _, err := tryHandshake(t, term.TLSConfig(), client(other.client(t, "door-1", 101))); err == nil {
		t.Fatal("a certificate from another CA was accepted")
	}

	// A CRL signed by another CA is refused; the old state stays.
	os.WriteFile(crlFile, other.crl(t, time.Now().Add(time.Hour), 102), 0o644)
	if err := term.Reload(); !errors.Is(err, ErrCRL) {
		t.Fatalf("reload with a foreign CRL: %v, want ErrCRL", err)
	}

	os.WriteFile(crlFile, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: ca.crl(t, time.Now().Add(time.Hour), 101)}), 0o644)
	if err := term.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := tryHandshake(t, term.TLSConfig(), door1); !errors.Is(err, ErrRevoked) {
		t.Fatalf("revoked certificate (resumption): %v, want ErrRevoked", err)
	}
	door1.ClientSessionCache = nil
	if _, err := tryHandshake(t, term.TLSConfig(), door1); !errors.Is(err, ErrRevoked) {
		t.Fatalf("revoked certificate (full handshake): %v, want ErrRevoked", err)
	}
	if resumed, err := tryHandshake(t, term.TLSConfig(), door2); err != nil || !resumed {
		t.Fatalf("another device after the reload: resumed %v, %v (sessions must survive a reload)", resumed, err)
	}

	// The devices CA replaced by another: door-2's old session no longer
	// resumes into trust, and other's devices are let in.
	os.WriteFile(caFile, other.pem, 0o644)
	os.WriteFile(crlFile, other.crl(t, time.Now().Add(-30*time.Second)), 0o644) // stale: used, warned
	if err := term.Reload(); err != nil {
		t.Fatal(err)
	}
	// (Go itself declines to resume into a chain the new pool does not
	// verify; check's roots test is the second line.)
	if resumed, err := tryHandshake(t, term.TLSConfig(), door2); err == nil || resumed {
		t.Fatalf("session of a removed CA: resumed %v, %v; want refused", resumed, err)
	}
	if _, err := tryHandshake(t, term.TLSConfig(), client(other.client(t, "door-3", 7))); err != nil {
		t.Fatalf("new CA after reload: %v", err)
	}
}
