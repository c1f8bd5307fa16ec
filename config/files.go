package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"reflect"
	"strings"
)

// maxPEMSize bounds a certificate, key, CA or CRL file.
const maxPEMSize = 8 << 20

// Sentinel errors of CheckFiles, wrapped in the *FieldError of the field
// that names the file.
var (
	// ErrNoCertificates: a CA file holds no PEM certificate.
	ErrNoCertificates = errors.New("no PEM certificates")
	// ErrBadCRL: a CRL file is neither a PEM "X509 CRL" nor a DER CRL.
	ErrBadCRL = errors.New("not a certificate revocation list")
)

// CheckFiles opens every file c names and reports each problem as a
// *FieldError with the field's path: certificate and key files (they must
// parse and belong together), CA files (at least one PEM certificate), the
// client-certificate CRL (it must parse), the ACME ca_root, the ticket key
// file and the bridges' tokens files (readable; their contents are checked
// by the packages that read them). Empty fields are skipped: what is
// required is Validate's to say. Validate does no I/O; this does.
func (c *Config) CheckFiles() error {
	var e errs
	for i, cf := range c.TLS.Certs {
		checkKeyPair(&e, fmt.Sprintf("tls.certs[%d]", i), cf.Cert, cf.Key)
	}
	if ca := c.TLS.ClientAuth; ca != nil {
		checkCAFile(&e, "tls.client_auth.ca", ca.CA)
		checkCRLFile(&e, "tls.client_auth.crl", stringField(ca, "crl"))
	}
	checkReadable(&e, "tls.session_tickets.key_file", c.TLS.SessionTickets.KeyFile)
	if a := c.TLS.ACME; a != nil {
		checkCAFile(&e, "tls.acme.ca_root", a.CARoot)
	}
	for i, r := range c.Routes {
		if r.Proxy != nil {
			checkBackendTLS(&e, fmt.Sprintf("routes[%d].proxy.tls", i), r.Proxy.TLS)
		}
	}
	for _, name := range sortedKeys(c.Bridges) {
		b := c.Bridges[name]
		p := "bridges." + name
		checkReadable(&e, p+".identity.tokens", b.Identity.Tokens)
		checkBackendTLS(&e, p+".upstream.tls", b.Upstream.TLS)
	}
	return errors.Join(e...)
}

func (e *errs) addErr(path string, err error) {
	*e = append(*e, &FieldError{Path: path, Msg: err.Error(), Err: err})
}

func checkBackendTLS(e *errs, p string, t BackendTLS) {
	checkCAFile(e, p+".ca", t.CA)
	checkKeyPair(e, p, t.Cert, t.Key)
}

// checkKeyPair reads a certificate and its key (path.cert, path.key) and
// checks that they parse and match.
func checkKeyPair(e *errs, p, certFile, keyFile string) {
	var certPEM, keyPEM []byte
	var err error
	if certFile != "" {
		if certPEM, err = readBounded(certFile, maxPEMSize); err != nil {
			e.addErr(p+".cert", err)
		}
	}
	if keyFile != "" {
		if keyPEM, err = readBounded(keyFile, maxPEMSize); err != nil {
			e.addErr(p+".key", err)
		}
	}
	if certPEM == nil || keyPEM == nil {
		return
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		e.addErr(p, fmt.Errorf("%s and %s: %w", certFile, keyFile, err))
	}
}

// readNamed reads the file named by field p, reporting a failure; false
// when there is no file or it cannot be read.
func readNamed(e *errs, p, file string) ([]byte, bool) {
	if file == "" {
		return nil, false
	}
	data, err := readBounded(file, maxPEMSize)
	if err != nil {
		e.addErr(p, err)
		return nil, false
	}
	return data, true
}

func checkCAFile(e *errs, p, file string) {
	data, ok := readNamed(e, p, file)
	if !ok {
		return
	}
	if !x509.NewCertPool().AppendCertsFromPEM(data) {
		e.addErr(p, fmt.Errorf("%s: %w", file, ErrNoCertificates))
	}
}

// checkCRLFile parses a CRL, PEM ("X509 CRL") or DER.
func checkCRLFile(e *errs, p, file string) {
	data, ok := readNamed(e, p, file)
	if !ok {
		return
	}
	if b, _ := pem.Decode(data); b != nil {
		if b.Type != "X509 CRL" {
			e.addErr(p, fmt.Errorf("%s: %w (PEM block %q)", file, ErrBadCRL, b.Type))
			return
		}
		data = b.Bytes
	}
	if _, err := x509.ParseRevocationList(data); err != nil {
		e.addErr(p, fmt.Errorf("%s: %w: %w", file, ErrBadCRL, err))
	}
}

func checkReadable(e *errs, p, file string) {
	if file == "" {
		return
	}
	f, err := openRegular(file)
	if err != nil {
		e.addErr(p, err)
		return
	}
	f.Close()
}

// stringField returns the string field of the struct *v whose YAML key is
// key, "" when there is none. It keeps CheckFiles checking a file field that
// is being added beside it (tls.client_auth.crl) as soon as it exists.
func stringField(v any, key string) string {
	rv := reflect.Indirect(reflect.ValueOf(v))
	for i := range rv.NumField() {
		f := rv.Type().Field(i)
		if name, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); name == key && f.Type.Kind() == reflect.String {
			return rv.Field(i).String()
		}
	}
	return ""
}
