package config

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// listenerConflicts reports two TCP listeners of edgeshim's own (https,
// http, admin, the embedded broker) on one address: the second would fail
// to bind at start. A wildcard host ("", "0.0.0.0", "::") overlaps every
// address of its port, since Go binds it dual-stack. HTTP/3 is UDP and
// shares the https port by design; mqtt_ws brokers are dialled, not bound.
func (c *Config) listenerConflicts(e *errs) {
	type listener struct{ path, addr string }
	ls := []listener{{"listen.https", c.Listen.HTTPS}, {"listen.http", c.Listen.HTTP}}
	if c.Listen.Admin != "off" {
		ls = append(ls, listener{"listen.admin", c.Listen.Admin})
	}
	if c.EmbeddedBroker.Enabled {
		ls = append(ls, listener{"embedded_broker.listen", c.EmbeddedBroker.Listen})
	}
	for i, b := range ls {
		for _, a := range ls[:i] {
			if addrsOverlap(a.addr, b.addr) {
				e.add(b.path, "conflicts with %s: both listen on port %s (%q and %q)", a.path, port(b.addr), a.addr, b.addr)
				break
			}
		}
	}
}

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// addrsOverlap says whether listening on a and on b would collide. Port 0
// (a free port chosen at start) never does; invalid addresses are
// validAddr's to report.
func addrsOverlap(a, b string) bool {
	ha, pa, err := net.SplitHostPort(a)
	if err != nil {
		return false
	}
	hb, pb, err := net.SplitHostPort(b)
	if err != nil {
		return false
	}
	na, err1 := strconv.Atoi(pa)
	nb, err2 := strconv.Atoi(pb)
	if err1 != nil || err2 != nil || na != nb || na == 0 {
		return false
	}
	if wildcard(ha) || wildcard(hb) {
		return true
	}
	for _, x := range hostAddrs(ha) {
		for _, y := range hostAddrs(hb) {
			if x == y {
				return true
			}
		}
	}
	return false
}

func wildcard(host string) bool {
	if host == "" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsUnspecified()
}

// hostAddrs are the addresses a listener host stands for, without DNS:
// an IP, "localhost" (both loopbacks), or a name compared as written.
func hostAddrs(host string) []string {
	if ip, err := netip.ParseAddr(host); err == nil {
		return []string{ip.Unmap().WithZone("").String()}
	}
	if strings.EqualFold(host, "localhost") {
		return []string{"127.0.0.1", "::1"}
	}
	return []string{strings.ToLower(host)}
}
