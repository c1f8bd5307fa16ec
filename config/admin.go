package config

import (
	"net"
	"net/netip"
)

// AdminAPI configures the fleet admin API on the admin listener:
// GET /v1/devices/{id}, GET /v1/devices?state=&limit=&bridge=,
// DELETE /v1/devices/{id}/session and GET /v1/config (secrets redacted).
type AdminAPI struct {
	// Enabled serves the API. Default: false.
	Enabled bool `yaml:"enabled"`
	// TokenFile holds the bearer token every request must carry
	// (Authorization: Bearer TOKEN; surrounding whitespace ignored).
	// Required unless listen.admin is a loopback address. Default: "".
	TokenFile string `yaml:"token_file"`
}

func (a AdminAPI) validate(e *errs, admin string) {
	if !a.Enabled {
		return
	}
	if admin == "off" || admin == "" {
		e.add("admin_api.enabled", "needs listen.admin")
		return
	}
	if a.TokenFile == "" && !loopbackAddr(admin) {
		e.add("admin_api.token_file", "is required when listen.admin is not a loopback address (got %q): the API can end device sessions", admin)
	}
}

// loopbackAddr reports whether host:port names only a loopback host.
func loopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}
