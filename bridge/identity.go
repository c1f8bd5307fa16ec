package bridge

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgeshim/edgeshim/config"
	"github.com/edgeshim/edgeshim/limits"
	"github.com/edgeshim/edgeshim/tlsterm"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// Reasons of edgeshim_bridge_auth_failures_total.
const (
	authUntrustedPeer = "untrusted_peer" // identity header from a peer not in trusted_proxies
	authNoCredentials = "no_credentials" // no token, header or certificate
	authBadToken      = "bad_token"      // a token that is not the device's
	authWrongDevice   = "wrong_device"   // a certificate or header of another device
	authBadID         = "bad_id"         // a malformed device id in the path or credential
	authRevoked       = "revoked"        // a certificate revoked after its connection began
)

// identifier says which device sent a request. Its tokens are swapped
// whole by a reload.
type identifier struct {
	cfg     config.Identity
	trusted []netip.Prefix
	tokens  atomic.Pointer[tokenStore]
	// checkCert rechecks a verified certificate against the CRL in force
	// (tlsterm.Terminator.CheckClientCert); nil: none.
	checkCert func(*tls.ConnectionState) error
}

func newIdentifier(c config.Identity, trusted []string) (*identifier, error) {
	id := &identifier{cfg: c}
	for _, s := range trusted {
		p, err := parsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("trusted_proxies: %w", err)
		}
		id.trusted = append(id.trusted, p)
	}
	if c.From == "token" {
		s, err := loadTokens(c.Tokens)
		if err != nil {
			return nil, fmt.Errorf("identity.tokens: %w", err)
		}
		id.tokens.Store(s)
	}
	return id, nil
}

// parsePrefix reads a CIDR or a single IP.
func parsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP or CIDR", s)
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}

// Credentials are what a front knows of a request's sender: its header
// fields (token or identity header), its address and its TLS state.
type Credentials struct {
	// Header holds the request's header fields.
	Header http.Header
	// RemoteAddr is the peer (the real client after PROXY protocol).
	RemoteAddr string
	// TLS is the connection's state: the verified client certificate.
	TLS *tls.ConnectionState
}

// credentialsOf are r's credentials.
func credentialsOf(r *http.Request) Credentials {
	return Credentials{Header: r.Header, RemoteAddr: r.RemoteAddr, TLS: r.TLS}
}

// trustedPeer reports whether the peer (RemoteAddr: the real client
// after PROXY protocol) is a trusted proxy.
func (id *identifier) trustedPeer(remote string) bool {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return false
	}
	a := ap.Addr().Unmap()
	for _, p := range id.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// authError is an identification failure with its HTTP status.
type authError struct {
	code   int
	reason string // the client's message
	metric string // the auth failure reason label
}

func (e *authError) Error() string { return e.reason }

// identify returns the device the request is from. pathDevice is the
// {device} of the URL ("" when the template has none). Failures: 400 bad
// id, 401 no or bad credentials (a token is checked against the path's
// device only, so another device's token is simply wrong), 403 a
// certificate or trusted header of another device.
func (id *identifier) identify(r Credentials, pathDevice string, hasPathDevice bool) (string, *authError) {
	if hasPathDevice && !ValidDeviceID(pathDevice) {
		return "", &authError{http.StatusBadRequest, "invalid device id", authBadID}
	}
	var dev string
	switch id.cfg.From {
	case "path":
		// allow_unauthenticated: anyone may poll any id.
		return pathDevice, nil
	case "token":
		tok := r.Header.Get(id.cfg.Header)
		if strings.EqualFold(id.cfg.Header, "Authorization") {
			scheme, rest, ok := strings.Cut(tok, " ")
			if !ok || !strings.EqualFold(scheme, "Bearer") {
				return "", &authError{http.StatusUnauthorized, "bearer token required", authNoCredentials}
			}
			tok = strings.TrimSpace(rest)
		}
		if tok == "" {
			return "", &authError{http.StatusUnauthorized, "token required", authNoCredentials}
		}
		s := id.tokens.Load()
		if hasPathDevice {
			if !s.check(pathDevice, tok) {
				return "", &authError{http.StatusUnauthorized, "invalid token", authBadToken}
			}
			return pathDevice, nil
		}
		d, ok := s.lookup(tok)
		if !ok {
			return "", &authError{http.StatusUnauthorized, "invalid token", authBadToken}
		}
		return d, nil
	case "header":
		// Only a trusted proxy may say who the device is; from anyone else
		// the header is a claim, ignored.
		if !id.trustedPeer(r.RemoteAddr) {
			return "", &authError{http.StatusUnauthorized, "identity header accepted only from trusted proxies", authUntrustedPeer}
		}
		dev = r.Header.Get(id.cfg.Header)
		if dev == "" {
			return "", &authError{http.StatusUnauthorized, "identity header missing", authNoCredentials}
		}
	case "cert":
		// The handshake verified the chain and its revocation (tlsterm).
		pi, ok := tlsterm.PeerIdentity(r.TLS)
		if !ok {
			return "", &authError{http.StatusUnauthorized, "client certificate required", authNoCredentials}
		}
		if id.checkCert != nil && id.checkCert(r.TLS) != nil {
			// Revoked (or its CA removed) since this connection began.
			return "", &authError{http.StatusUnauthorized, "client certificate revoked", authRevoked}
		}
		dev = pi.CommonName
		if id.cfg.CertField == "uri" {
			dev = ""
			if len(pi.URIs) > 0 {
				// The last path segment of the URI SAN, e.g.
				// spiffe://fleet/devices/door-17 → door-17.
				u := pi.URIs[0]
				dev = u[strings.LastIndexByte(u, '/')+1:]
			}
		}
	}
	if !ValidDeviceID(dev) {
		return "", &authError{http.StatusBadRequest, "credential names an invalid device id", authBadID}
	}
	if hasPathDevice && dev != pathDevice {
		return "", &authError{http.StatusForbidden, "credentials are for another device", authWrongDevice}
	}
	return dev, nil
}

// authLog counts identification failures and logs them at most a few
// lines per second: a flood of bad credentials must not become a flood of
// log lines. Lines skipped are counted in the next line written.
type authLog struct {
	log      *slog.Logger
	now      func() time.Time
	failures *prometheus.CounterVec

	mu         sync.Mutex
	lim        *rate.Limiter
	suppressed int
}

func newAuthLog(log *slog.Logger, now func() time.Time, reg prometheus.Registerer) *authLog {
	a := &authLog{log: log, now: now, lim: rate.NewLimiter(rate.Limit(2), 10),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgeshim_bridge_auth_failures_total",
			Help: "Device requests refused by identification, by reason (untrusted_peer, no_credentials, bad_token, wrong_device, bad_id, revoked)."},
			[]string{"reason"})}
	for _, r := range []string{authUntrustedPeer, authNoCredentials, authBadToken, authWrongDevice, authBadID, authRevoked} {
		a.failures.WithLabelValues(r)
	}
	reg.MustRegister(a.failures)
	return a
}

// refuse answers an identification failure: counted, logged (rate
// limited, never the credential) and answered with its status.
func (a *authLog) refuse(w http.ResponseWriter, path, remote string, e *authError) {
	a.failures.WithLabelValues(e.metric).Inc()
	a.mu.Lock()
	ok := a.lim.AllowN(a.now(), 1)
	n := a.suppressed
	if ok {
		a.suppressed = 0
	} else {
		a.suppressed++
	}
	a.mu.Unlock()
	if ok {
		a.log.Info("device request refused", "code", e.code, "reason", e.metric, "path", path, "remote", remote, "suppressed", n)
	}
	if e.code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="edgeshim"`)
	}
	limits.WriteError(w, e.code, e.reason)
}
