package config

import (
	"fmt"
	"net/netip"
)

// ProxyProtocol configures PROXY protocol (v1 and v2) on the https and
// http listeners, for edgeshim behind an L4 load balancer (AWS NLB,
// HAProxy in TCP mode with send-proxy or send-proxy-v2): the header the
// balancer puts in front of each connection carries the client's address,
// which per-IP limits, X-Forwarded-For/Forwarded, the bridges and the logs
// then see. A connection from a trusted peer must carry a header; one
// from any other peer must not. HTTP/3 (UDP) has no PROXY protocol: it
// sees the peer's address.
type ProxyProtocol struct {
	// Trusted lists the balancers' CIDRs or IPs. Default: none, PROXY
	// protocol off.
	Trusted []string `yaml:"trusted"`
	// Timeout bounds reading the header from a trusted peer. Default: 5s.
	Timeout Duration `yaml:"timeout"`
}

func (p ProxyProtocol) withDefaults() ProxyProtocol {
	out := p
	out.Trusted = append([]string(nil), p.Trusted...)
	def(&out.Timeout, Duration(5e9))
	return out
}

func (p ProxyProtocol) validate(e *errs) {
	for i, s := range p.Trusted {
		if !validCIDROrIP(s) {
			e.add(fmt.Sprintf("listen.proxy_protocol.trusted[%d]", i), "must be an IP or CIDR (got %q)", s)
		}
	}
	if p.Timeout.D() <= 0 || p.Timeout.D() > 60e9 {
		e.add("listen.proxy_protocol.timeout", "must be within (0s, 60s] (got %s)", p.Timeout)
	}
}

// Prefixes returns Trusted as prefixes (an IP is a /32 or /128); entries
// that do not parse are left out (Validate reports them).
func (p ProxyProtocol) Prefixes() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range p.Trusted {
		if pf, err := netip.ParsePrefix(s); err == nil {
			out = append(out, pf.Masked())
		} else if a, err := netip.ParseAddr(s); err == nil {
			a = a.Unmap()
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	return out
}
