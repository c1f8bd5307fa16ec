package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// testCA returns a CA certificate and a client certificate it signed.
func testCA(t *testing.T, name string) (caPEM []byte, client tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ = x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "device-" + name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// lockedLog is an io.Writer for a slog handler shared by goroutines.
type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestHandshakeFailureReasons: real clients on loopback fail their
// handshake in each way an operator must tell apart, and each is counted
// under its own reason and logged with it.
func TestHandshakeFailureReasons(t *testing.T) {
	dir := t.TempDir()
	caPEM, _ := testCA(t, "fleet")
	_, stranger := testCA(t, "stranger")
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	failed := make(chan string, 10)
	logs := &lockedLog{}
	s, cl := startProxy(t, fmt.Sprintf(`{limits: {timeouts: {handshake: 2s}}, tls: {client_auth: {ca: %q, mode: verify_if_given}}}`, caFile), func(o *Options) {
		o.HandshakeFailed = func(reason string) { failed <- reason }
		o.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})
	addr := s.Addr("https").String()
	trusted := cl.Transport.(*http.Transport).TLSClientConfig.RootCAs
	tlsClient := func(c *tls.Config) func(net.Conn) {
		return func(raw net.Conn) {
			c.ServerName = "localhost"
			tc := tls.Client(raw, c)
			if err := tc.Handshake(); err == nil {
				tc.Read(make([]byte, 1)) // TLS 1.3: the server's verdict on our certificate comes after
			}
		}
	}
	cases := []struct {
		reason string
		client func(net.Conn)
	}{
		{"protocol_version", tlsClient(&tls.Config{RootCAs: trusted, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS10})},
		{"no_shared_cipher", tlsClient(&tls.Config{RootCAs: trusted, MaxVersion: tls.VersionTLS12,
			CipherSuites: []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256}})},
		// Sent even though the server asks for the fleet's CA (Go's client
		// would otherwise send none, which verify_if_given accepts).
		{"unknown_ca", tlsClient(&tls.Config{RootCAs: trusted,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &stranger, nil }})},
		{"bad_certificate", tlsClient(&tls.Config{})}, // the client does not trust our certificate
		{"timeout", func(net.Conn) {}},
		{"eof", func(c net.Conn) { c.Close() }},
		{"other", func(c net.Conn) { c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")) }},
	}
	for _, c := range cases {
		raw, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		raw.SetDeadline(time.Now().Add(10 * time.Second))
		c.client(raw)
		if c.reason == "timeout" {
			raw.Read(make([]byte, 1)) // until the server gives up
		}
		select {
		case got := <-failed:
			if got != c.reason {
				t.Errorf("counted as %q, want %q", got, c.reason)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no handshake failure counted", c.reason)
		}
		raw.Close()
	}
	for _, c := range cases {
		if !strings.Contains(logs.String(), `msg="TLS handshake failed" reason=`+c.reason+" count=1 addr=127.0.0.1") {
			t.Errorf("no log line for %s in\n%s", c.reason, logs)
		}
	}
}
