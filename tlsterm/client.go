package tlsterm

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"

	"github.com/edgeshim/edgeshim/config"
)

// ClientConfig builds the TLS configuration edgeshim uses as a client, toward
// backends and brokers: roots from c.CA (system roots if empty), an optional
// client certificate, server name override, TLS 1.2 at least.
func ClientConfig(c config.BackendTLS) (*tls.Config, error) {
	t := &tls.Config{ServerName: c.ServerName, InsecureSkipVerify: c.InsecureSkipVerify, MinVersion: tls.VersionTLS12}
	if c.CA != "" {
		pem, err := os.ReadFile(c.CA)
		if err != nil {
			return nil, fmt.Errorf("ca: %w", err)
		}
		t.RootCAs = x509.NewCertPool()
		if !t.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca: no PEM certificates in %s", c.CA)
		}
	}
	if c.Cert != "" || c.Key != "" {
		cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
		if err != nil {
			return nil, fmt.Errorf("client cert: %w", err)
		}
		t.Certificates = []tls.Certificate{cert}
	}
	return t, nil
}
