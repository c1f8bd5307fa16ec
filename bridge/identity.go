package bridge

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/edgeshim/edgeshim/config"
	"github.com/edgeshim/edgeshim/tlsterm"
	"go.yaml.in/yaml/v3"
)

// identifier says which device sent a request.
type identifier struct {
	cfg    config.Identity
	byHash map[string]string // hex sha256(token) → device id
}

func newIdentifier(c config.Identity) (*identifier, error) {
	id := &identifier{cfg: c}
	if c.From == "token" {
		data, err := os.ReadFile(c.Tokens)
		if err != nil {
			return nil, fmt.Errorf("identity.tokens: %w", err)
		}
		var m map[string]string
		if err := yaml.Unmarshal(data, &m); err != nil {
			return nil, fmt.Errorf("identity.tokens: %w", err)
		}
		id.byHash = make(map[string]string, len(m))
		for dev, h := range m {
			h = strings.ToLower(strings.TrimSpace(h))
			if b, err := hex.DecodeString(h); err != nil || len(b) != sha256.Size {
				return nil, fmt.Errorf("identity.tokens: device %q: want the hex SHA-256 of its token", dev)
			}
			if !ValidDeviceID(dev) {
				return nil, fmt.Errorf("identity.tokens: invalid device id %q", dev)
			}
			id.byHash[h] = dev
		}
	}
	return id, nil
}

// authError is an identification failure with its HTTP status.
type authError struct {
	code   int
	reason string
}

func (e *authError) Error() string { return e.reason }

// identify returns the device the request is from. pathDevice is the
// {device} of the URL ("" when the template has none). Failures: 400 bad
// id, 401 no or bad credentials, 403 credentials of another device.
func (id *identifier) identify(r *http.Request, pathDevice string, hasPathDevice bool) (string, *authError) {
	if hasPathDevice && !ValidDeviceID(pathDevice) {
		return "", &authError{http.StatusBadRequest, "invalid device id"}
	}
	var dev string
	switch id.cfg.From {
	case "path":
		return pathDevice, nil
	case "token":
		tok := r.Header.Get(id.cfg.Header)
		if strings.EqualFold(id.cfg.Header, "Authorization") {
			scheme, rest, ok := strings.Cut(tok, " ")
			if !ok || !strings.EqualFold(scheme, "Bearer") {
				return "", &authError{http.StatusUnauthorized, "bearer token required"}
			}
			tok = strings.TrimSpace(rest)
		}
		if tok == "" {
			return "", &authError{http.StatusUnauthorized, "token required"}
		}
		sum := sha256.Sum256([]byte(tok))
		d, ok := id.byHash[hex.EncodeToString(sum[:])]
		if !ok {
			return "", &authError{http.StatusUnauthorized, "unknown token"}
		}
		dev = d
	case "header":
		dev = r.Header.Get(id.cfg.Header)
		if dev == "" {
			return "", &authError{http.StatusUnauthorized, "identity header missing"}
		}
	case "cert":
		pi, ok := tlsterm.PeerIdentity(r.TLS)
		if !ok {
			return "", &authError{http.StatusUnauthorized, "client certificate required"}
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
		return "", &authError{http.StatusBadRequest, "credential names an invalid device id"}
	}
	if hasPathDevice && dev != pathDevice {
		return "", &authError{http.StatusForbidden, "credentials are for another device"}
	}
	return dev, nil
}
