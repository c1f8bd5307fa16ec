package config

import (
	"strings"
	"testing"
)

// TestZeroMeansOff: for each cap and rate of limits, unset is the
// default and an explicit 0 is off (kept as 0, and valid); a burst of 0
// while its rate is on is refused with how to turn the rate off;
// negatives are refused.
func TestZeroMeansOff(t *testing.T) {
	fields := []struct {
		yaml string
		get  func(*Config) float64
		def  float64
	}{
		{"limits: {max_conns: %s}", func(c *Config) float64 { return float64(*c.Limits.MaxConns) }, 50000},
		{"limits: {per_ip: {max_conns: %s}}", func(c *Config) float64 { return float64(*c.Limits.PerIP.MaxConns) }, 200},
		{"limits: {per_ip: {rate: %s}}", func(c *Config) float64 { return *c.Limits.PerIP.Rate }, 20},
		{"limits: {handshake: {rate: %s}}", func(c *Config) float64 { return *c.Limits.Handshake.Rate }, 2000},
	}
	for _, f := range fields {
		unset := parseDefaults(t, "limits: {}")
		if got := f.get(unset); got != f.def {
			t.Errorf("%s unset: %v, want the default %v", f.yaml, got, f.def)
		}
		doc := strings.Replace(f.yaml, "%s", "0", 1)
		if p := problems(t, doc); len(p) != 0 {
			t.Errorf("%s: %q, want valid (0 is off)", doc, p)
		}
		if got := f.get(parseDefaults(t, doc)); got != 0 {
			t.Errorf("%s: %v after defaults, want 0 (off)", doc, got)
		}
		doc = strings.Replace(f.yaml, "%s", "-1", 1)
		if p := problems(t, doc); len(p) != 1 || !strings.Contains(p[0], "must not be negative (0 turns it off)") {
			t.Errorf("%s: %q", doc, p)
		}
	}
	for _, c := range []struct{ doc, want string }{
		{"limits: {per_ip: {burst: 0}}", "limits.per_ip.burst: must be at least 1 while limits.per_ip.rate is on (limits.per_ip.rate: 0 turns the rate limit off)"},
		{"limits: {handshake: {burst: 0}}", "limits.handshake.burst: must be at least 1 while limits.handshake.rate is on (limits.handshake.rate: 0 turns the rate limit off)"},
	} {
		if p := problems(t, c.doc); len(p) != 1 || p[0] != c.want {
			t.Errorf("%s: %q, want %q", c.doc, p, c.want)
		}
	}
	for _, doc := range []string{"limits: {per_ip: {rate: 0, burst: 0}}", "limits: {handshake: {rate: 0, burst: 0}}", "limits: {max_conns: 0, per_ip: {max_conns: 500}}"} {
		if p := problems(t, doc); len(p) != 0 {
			t.Errorf("%s: %q, want valid", doc, p)
		}
	}
	if got := *parseDefaults(t, "limits: {per_ip: {burst: 7}}").Limits.PerIP.Burst; got != 7 {
		t.Errorf("per_ip.burst 7: %d", got)
	}
	// WithDefaults copies what it was given.
	c, _ := Parse([]byte("limits: {max_conns: 9}"), noEnv)
	d := c.WithDefaults()
	*d.Limits.MaxConns = 10
	if *c.Limits.MaxConns != 9 {
		t.Error("WithDefaults shares a pointer with its input")
	}
}

func parseDefaults(t *testing.T, doc string) *Config {
	t.Helper()
	c, err := Parse([]byte(doc), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	return c.WithDefaults()
}

// TestProxyProtocolConfig: defaults, prefixes from IPs and CIDRs, and the
// field paths of bad values.
func TestProxyProtocolConfig(t *testing.T) {
	c := parseDefaults(t, `listen: {proxy_protocol: {trusted: ["10.0.0.0/8", "192.0.2.7", "2001:db8::1"]}}`)
	pp := c.Listen.ProxyProtocol
	if pp.Timeout.D().String() != "5s" {
		t.Errorf("timeout default %s, want 5s", pp.Timeout)
	}
	var got []string
	for _, p := range pp.Prefixes() {
		got = append(got, p.String())
	}
	if strings.Join(got, " ") != "10.0.0.0/8 192.0.2.7/32 2001:db8::1/128" {
		t.Errorf("prefixes %v", got)
	}
	if p := problems(t, `listen: {proxy_protocol: {trusted: ["10.0.0.0/33", "lb.example.com"], timeout: 2m}}`); strings.Join(p, "\n") != strings.Join([]string{
		`listen.proxy_protocol.trusted[0]: must be an IP or CIDR (got "10.0.0.0/33")`,
		`listen.proxy_protocol.trusted[1]: must be an IP or CIDR (got "lb.example.com")`,
		`listen.proxy_protocol.timeout: must be within (0s, 60s] (got 2m0s)`,
	}, "\n") {
		t.Errorf("problems:\n%s", strings.Join(p, "\n"))
	}
}
