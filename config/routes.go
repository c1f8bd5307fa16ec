package config

import (
	"fmt"
	"net/url"
	"strings"
)

// Route maps requests to a handler. Exactly one of Bridge, Proxy and MQTTWS
// is set. Routes match by host (exact or "*.example.com"; empty matches any)
// and path prefix; the longest matching prefix wins.
type Route struct {
	// Name labels the route in metrics (the route label of
	// edgeshim_http_requests_total and the backend metrics) and logs, so
	// that dashboards survive reordering the routes. Up to 128 printable
	// ASCII characters without spaces, quotes or backslashes; unique among
	// the routes. Default: the host followed by the path
	// ("api.example.com/", or "/devices/" for any host).
	Name string `yaml:"name"`
	// Host to match. Default: "" (any host).
	Host string `yaml:"host"`
	// Path prefix to match. Default: "/".
	Path string `yaml:"path"`
	// StripPrefix removes Path from the request path before proxying.
	// Default: false.
	StripPrefix bool `yaml:"strip_prefix"`
	// Bridge names a bridge in bridges. Default: "".
	Bridge string `yaml:"bridge"`
	// Proxy forwards to a backend pool. Default: nil.
	Proxy *ProxyRoute `yaml:"proxy"`
	// MQTTWS relays MQTT-over-WebSocket to a broker's TCP port. Default: nil.
	MQTTWS *MQTTWS `yaml:"mqtt_ws"`
	// MaxBody lowers limits.max_body for this route. Default: 0 (global).
	MaxBody Size `yaml:"max_body"`
	// Decompress decodes gzip/deflate request bodies, capped by
	// limits.max_decompressed and limits.max_ratio. Default: false.
	Decompress bool `yaml:"decompress"`
	// AllowHTTP serves this route on listen.http instead of redirecting to
	// HTTPS. Default: false.
	AllowHTTP bool `yaml:"allow_http"`
	// Allow0RTT accepts HTTP/3 0-RTT GET requests on this route. Default:
	// false.
	Allow0RTT bool `yaml:"allow_0rtt"`
	// AccessLog: false leaves this route's requests out of the access
	// log. Default: true.
	AccessLog *bool `yaml:"access_log"`
}

// ProxyRoute is a reverse-proxy backend pool.
type ProxyRoute struct {
	// Backends are http://, https:// or h2c:// URLs. Required.
	Backends []string `yaml:"backends"`
	// LB is round_robin, least_conn or first. Default: "round_robin".
	LB string `yaml:"lb"`
	// Passive health: a backend failing MaxFails times in a row is ejected
	// for EjectFor.
	Passive PassiveHealth `yaml:"passive"`
	// HealthCheck is an optional active health check. Default: nil.
	HealthCheck *HealthCheck `yaml:"health_check"`
	// Timeouts bound backend requests.
	Timeouts BackendTimeouts `yaml:"timeouts"`
	// TLS configures TLS to https backends.
	TLS BackendTLS `yaml:"tls"`
	// MaxIdleConns is the idle keep-alive pool size per backend. Default: 64.
	MaxIdleConns int `yaml:"max_idle_conns"`
	// Retries for idempotent requests that reached no backend. Default: 1.
	Retries *int `yaml:"retries"`
}

// PassiveHealth configures backend ejection.
type PassiveHealth struct {
	// MaxFails consecutive failures eject a backend. Default: 3.
	MaxFails int `yaml:"max_fails"`
	// EjectFor is how long an ejected backend is skipped. Default: 30s.
	EjectFor Duration `yaml:"eject_for"`
}

// HealthCheck is an active backend health check.
type HealthCheck struct {
	// Path requested with GET. Default: "/healthz".
	Path string `yaml:"path"`
	// Interval between checks. Default: 10s.
	Interval Duration `yaml:"interval"`
	// Timeout per check. Default: 2s.
	Timeout Duration `yaml:"timeout"`
	// ExpectStatus is the healthy status. Default: 200.
	ExpectStatus int `yaml:"expect_status"`
}

// BackendTimeouts bound a backend request.
type BackendTimeouts struct {
	// Dial bounds connecting. Default: 5s.
	Dial Duration `yaml:"dial"`
	// ResponseHeader bounds waiting for response headers. Default: 30s.
	ResponseHeader Duration `yaml:"response_header"`
	// Request bounds the whole request. Default: 0 (none; the server's
	// timeouts still apply).
	Request Duration `yaml:"request"`
}

// BackendTLS configures TLS toward a backend or broker.
type BackendTLS struct {
	// CA is a PEM file of roots to trust. Default: system roots.
	CA string `yaml:"ca"`
	// ServerName overrides the name verified. Default: the URL's host.
	ServerName string `yaml:"server_name"`
	// Cert and Key are a client certificate. Default: none.
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	// InsecureSkipVerify disables verification (tests only). Default: false.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// MQTTWS relays MQTT over WebSocket to a broker.
type MQTTWS struct {
	// Broker is the broker's tcp:// (or mqtt://) address. Required.
	Broker string `yaml:"broker"`
}

func (r Route) withDefaults() Route {
	out := r
	if out.Path == "" {
		out.Path = "/"
	}
	if out.Name == "" {
		out.Name = strings.ToLower(out.Host) + out.Path
	}
	out.AccessLog = boolOr(r.AccessLog, true)
	if r.Proxy != nil {
		p := *r.Proxy
		p.Backends = append([]string(nil), r.Proxy.Backends...)
		def(&p.LB, "round_robin")
		def(&p.Passive.MaxFails, 3)
		def(&p.Passive.EjectFor, Duration(30e9))
		def(&p.Timeouts.Dial, Duration(5e9))
		def(&p.Timeouts.ResponseHeader, Duration(30e9))
		def(&p.MaxIdleConns, 64)
		if p.Retries == nil {
			one := 1
			p.Retries = &one
		}
		if r.Proxy.HealthCheck != nil {
			hc := *r.Proxy.HealthCheck
			def(&hc.Path, "/healthz")
			def(&hc.Interval, Duration(10e9))
			def(&hc.Timeout, Duration(2e9))
			def(&hc.ExpectStatus, 200)
			p.HealthCheck = &hc
		}
		out.Proxy = &p
	}
	return out
}

func (r Route) validate(e *errs, p string, c *Config) {
	if !validRouteName(r.Name) {
		e.add(p+".name", "must be 1-128 printable ASCII characters without spaces, quotes or backslashes (got %q)", r.Name)
	}
	if !strings.HasPrefix(r.Path, "/") {
		e.add(p+".path", "must start with / (got %q)", r.Path)
	}
	if r.Host != "" && !validHostname(r.Host) {
		e.add(p+".host", "is not a valid host name (got %q)", r.Host)
	}
	n := 0
	if r.Bridge != "" {
		n++
		if _, ok := c.Bridges[r.Bridge]; !ok {
			e.add(p+".bridge", "names no bridge in bridges (got %q)", r.Bridge)
		}
	}
	if r.Proxy != nil {
		n++
		r.Proxy.validate(e, p+".proxy")
	}
	if r.MQTTWS != nil {
		n++
		if u, err := url.Parse(r.MQTTWS.Broker); err != nil || (u.Scheme != "tcp" && u.Scheme != "mqtt") || u.Host == "" {
			e.add(p+".mqtt_ws.broker", "must be a tcp:// or mqtt:// URL with a host (got %q)", r.MQTTWS.Broker)
		}
	}
	if n != 1 {
		e.add(p, "must set exactly one of bridge, proxy, mqtt_ws")
	}
	if r.MaxBody < 0 {
		e.add(p+".max_body", "must not be negative")
	}
}

func (pr *ProxyRoute) validate(e *errs, p string) {
	if len(pr.Backends) == 0 {
		e.add(p+".backends", "must list at least one backend")
	}
	for i, b := range pr.Backends {
		u, err := url.Parse(b)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "h2c") {
			e.add(fmt.Sprintf("%s.backends[%d]", p, i), "must be an http://, https:// or h2c:// URL with a host (got %q)", b)
		}
	}
	switch pr.LB {
	case "round_robin", "least_conn", "first":
	default:
		e.add(p+".lb", "must be round_robin, least_conn or first (got %q)", pr.LB)
	}
	if pr.Passive.MaxFails < 1 {
		e.add(p+".passive.max_fails", "must be at least 1")
	}
	if pr.Retries != nil && (*pr.Retries < 0 || *pr.Retries > 10) {
		e.add(p+".retries", "must be 0-10")
	}
	if hc := pr.HealthCheck; hc != nil {
		if !strings.HasPrefix(hc.Path, "/") {
			e.add(p+".health_check.path", "must start with /")
		}
		if hc.Interval.D() < 10e6 {
			e.add(p+".health_check.interval", "must be at least 10ms (got %s)", hc.Interval)
		}
		if hc.Timeout.D() <= 0 {
			e.add(p+".health_check.timeout", "must be positive (got %s)", hc.Timeout)
		}
		if hc.ExpectStatus < 100 || hc.ExpectStatus > 599 {
			e.add(p+".health_check.expect_status", "must be an HTTP status (got %d)", hc.ExpectStatus)
		}
	}
}

func validRouteName(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if b := s[i]; b <= ' ' || b >= 0x7f || b == '"' || b == '\\' {
			return false
		}
	}
	return true
}

// validateRouteNames reports a route whose name (set or derived) an
// earlier route already has: names are metric labels and must tell the
// routes apart.
func validateRouteNames(e *errs, routes []Route) {
	first := map[string]int{}
	for i, r := range routes {
		if j, ok := first[r.Name]; ok {
			e.add(fmt.Sprintf("routes[%d].name", i), "%q is already the name of routes[%d]; set name to tell them apart", r.Name, j)
			continue
		}
		first[r.Name] = i
	}
}
