package tlsterm

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"reflect"
	"slices"
	"strings"
	"syscall"
)

// Reasons a server-side TLS handshake fails: label values of
// edgeshim_tls_handshake_errors_total.
const (
	// FailProtocolVersion: the client offered no version edgeshim accepts
	// (a TLS 1.0/1.1 device against min_version 1.2), or told us so.
	FailProtocolVersion = "protocol_version"
	// FailNoSharedCipher: no cipher suite in common.
	FailNoSharedCipher = "no_shared_cipher"
	// FailBadCertificate: the client's certificate did not verify, or the
	// client refused ours.
	FailBadCertificate = "bad_certificate"
	// FailUnknownCA: the client's certificate is from a CA not in
	// tls.client_auth.ca, or the client does not know our CA.
	FailUnknownCA = "unknown_ca"
	// FailTimeout: the handshake did not finish within
	// limits.timeouts.handshake.
	FailTimeout = "timeout"
	// FailEOF: the client closed (or reset) the connection.
	FailEOF = "eof"
	// FailOther: anything else (the error is logged).
	FailOther = "other"
)

// FailureReasons lists every reason, to initialise their counters at 0.
var FailureReasons = []string{FailProtocolVersion, FailNoSharedCipher, FailBadCertificate, FailUnknownCA, FailTimeout, FailEOF, FailOther}

// FailureReason derives why a server handshake failed. err is what
// Handshake returned; hello is the ClientHello, if it was read, and served
// the configuration GetConfigForClient chose for it (nil: none).
//
// crypto/tls (Go 1.26) returns typed errors for most cases on the server:
// *tls.CertificateVerificationError (wrapping x509.UnknownAuthorityError
// for an unknown CA), a *net.OpError "remote error" for an alert the
// client sent, net timeouts and io.EOF. It returns untyped errors for a
// version or cipher suite mismatch (and sends the alert itself), so those
// two are derived from the ClientHello against the served configuration,
// never from the message text.
func FailureReason(err error, hello *tls.ClientHelloInfo, served *tls.Config) string {
	var (
		unknownCA x509.UnknownAuthorityError
		verify    *tls.CertificateVerificationError
		op        *net.OpError
		ne        net.Error
	)
	switch {
	case err == nil:
		return FailOther
	case errors.As(err, &unknownCA):
		return FailUnknownCA
	case errors.As(err, &verify):
		return FailBadCertificate
	case errors.As(err, &op) && op.Op == "remote error":
		return alertReason(op.Err)
	case errors.As(err, &ne) && ne.Timeout():
		return FailTimeout
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET):
		return FailEOF
	case hello == nil || served == nil:
		return FailOther
	case !versionOverlap(hello, served):
		return FailProtocolVersion
	case !cipherOverlap(hello, served):
		return FailNoSharedCipher
	}
	return FailOther
}

// alertReason maps an alert the client sent (crypto/tls's unexported
// alert type, a uint8, inside the *net.OpError) to a reason.
func alertReason(a error) string {
	v := reflect.ValueOf(a)
	if v.Kind() != reflect.Uint8 {
		return FailOther
	}
	switch v.Uint() {
	case 70: // protocol_version
		return FailProtocolVersion
	case 40, 71: // handshake_failure, insufficient_security
		return FailNoSharedCipher
	case 42, 43, 44, 45, 46, 116: // bad/unsupported/revoked/expired/unknown certificate, certificate_required
		return FailBadCertificate
	case 48: // unknown_ca
		return FailUnknownCA
	}
	return FailOther
}

// bounds returns the versions a server configuration accepts (crypto/tls
// defaults for zero values).
func bounds(c *tls.Config) (lo, hi uint16) {
	lo, hi = c.MinVersion, c.MaxVersion
	if lo == 0 {
		lo = tls.VersionTLS12
	}
	if hi == 0 {
		hi = tls.VersionTLS13
	}
	return lo, hi
}

func versionOverlap(hello *tls.ClientHelloInfo, c *tls.Config) bool {
	lo, hi := bounds(c)
	return slices.ContainsFunc(hello.SupportedVersions, func(v uint16) bool { return v >= lo && v <= hi })
}

// cipherOverlap reports whether a suite of the version that would be
// negotiated is shared: TLS 1.3's three, or the configured ones (by
// default crypto/tls's secure suites without RSA key exchange).
func cipherOverlap(hello *tls.ClientHelloInfo, c *tls.Config) bool {
	lo, hi := bounds(c)
	var best uint16
	for _, v := range hello.SupportedVersions {
		if v >= lo && v <= hi && v > best {
			best = v
		}
	}
	var ours []uint16
	switch {
	case best >= tls.VersionTLS13:
		ours = []uint16{tls.TLS_AES_128_GCM_SHA256, tls.TLS_AES_256_GCM_SHA384, tls.TLS_CHACHA20_POLY1305_SHA256}
	case c.CipherSuites != nil:
		ours = c.CipherSuites
	default:
		for _, s := range tls.CipherSuites() {
			if !strings.HasPrefix(s.Name, "TLS_RSA_") && slices.Contains(s.SupportedVersions, best) {
				ours = append(ours, s.ID)
			}
		}
	}
	return slices.ContainsFunc(hello.CipherSuites, func(id uint16) bool { return slices.Contains(ours, id) })
}

// HandshakeFailedFor counts a failed handshake by its reason (one of
// FailureReasons, see FailureReason; anything else counts as "other");
// the server calls it when Handshake returns an error. (HandshakeFailed,
// without a reason, counts "other".)
func (t *Terminator) HandshakeFailedFor(reason string) {
	if !slices.Contains(FailureReasons, reason) {
		reason = FailOther
	}
	t.m.failures.WithLabelValues(reason).Inc()
}
