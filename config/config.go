// Package config owns edgeshim's configuration: the YAML schema, strict
// decoding (an unknown key is an error that names it), ${ENV} expansion,
// defaults filled into a copy, and validation that reports every problem
// with its field path.
//
// Config values are pure data. Load or Parse a file, call WithDefaults to get
// a copy with every default filled in, then Validate that copy.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"

	"go.yaml.in/yaml/v3"
)

// Config is the root of an edgeshim configuration file.
type Config struct {
	// Listen holds the listener addresses.
	Listen Listen `yaml:"listen"`
	// TLS configures certificates, session tickets and client certificates.
	TLS TLS `yaml:"tls"`
	// Limits configures connection caps, rate limits, payload limits and
	// timeouts.
	Limits Limits `yaml:"limits"`
	// TrustedProxies lists the CIDRs (or single IPs) whose X-Forwarded-* and
	// Forwarded headers, and bridges' identity headers (identity.from:
	// header, which requires them), are believed. Default: none, the
	// client's values are replaced.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// Routes map requests (by host and path prefix) to a bridge, a backend
	// pool or an MQTT-over-WebSocket relay. Default: none.
	Routes []Route `yaml:"routes"`
	// Bridges are the polling/WebSocket device bridges by name. Default: none.
	Bridges map[string]Bridge `yaml:"bridges"`
	// EmbeddedBroker runs an in-process MQTT broker (mochi-mqtt). Default:
	// off, except in the embedded default configuration.
	EmbeddedBroker EmbeddedBroker `yaml:"embedded_broker"`
	// Log configures logging.
	Log Log `yaml:"log"`
	// DataDir is where edgeshim keeps its own files (the self-signed dev
	// certificate, generated ticket keys). Default: ".edgeshim".
	DataDir string `yaml:"data_dir"`
	// Shutdown configures graceful shutdown.
	Shutdown Shutdown `yaml:"shutdown"`
	// AdminAPI serves the fleet admin API on listen.admin. Default: off.
	AdminAPI AdminAPI `yaml:"admin_api"`
	// AccessLog writes a line per request (and per WebSocket when it
	// ends). Default: on, to standard error, in log.format, sampled.
	AccessLog AccessLog `yaml:"access_log"`
	// Runtime tunes the Go garbage collector. Default: gc_percent 200, no
	// memory limit.
	Runtime Runtime `yaml:"runtime"`
}

// Listen holds listener addresses. An empty address disables a listener.
type Listen struct {
	// HTTPS is the TLS listener for HTTP/1.1 and HTTP/2. Default: ":8443".
	HTTPS string `yaml:"https"`
	// HTTP3 also serves HTTP/3 over UDP on the HTTPS port. Default: false.
	HTTP3 bool `yaml:"http3"`
	// HTTP2Server is the HTTP/2 server of the https listener: "edgeshim"
	// (proxy/h2front: frame writes batched per connection, no goroutine
	// per frame write) or "net/http" (Go's own, the server before
	// h2front; kept for the transition). Default: "edgeshim".
	HTTP2Server string `yaml:"http2_server"`
	// HTTP is a plain-HTTP listener that answers ACME HTTP-01 challenges and
	// redirects everything else to HTTPS. Default: "" (off).
	HTTP string `yaml:"http"`
	// Admin serves /metrics, /healthz and /readyz. Default: "127.0.0.1:9090".
	// Use "off" to disable it.
	Admin string `yaml:"admin"`
	// ProxyProtocol reads PROXY protocol headers from trusted load
	// balancers on the https and http listeners. Default: off.
	ProxyProtocol ProxyProtocol `yaml:"proxy_protocol"`
}

// The values of Listen.HTTP2Server.
const (
	HTTP2Edgeshim = "edgeshim"
	HTTP2NetHTTP  = "net/http"
)

// Log configures log/slog output.
type Log struct {
	// Level is debug, info, warn or error. Default: "info".
	Level string `yaml:"level"`
	// Format is text or json. Default: "text".
	Format string `yaml:"format"`
}

// Shutdown configures how edgeshim stops on SIGINT/SIGTERM.
type Shutdown struct {
	// Grace is how long in-flight requests may take to finish before the
	// remaining connections are closed. Default: 30s.
	Grace Duration `yaml:"grace"`
	// DrainDelay is how long the listeners keep accepting after SIGTERM,
	// while /readyz already answers 503, so that the load balancer stops
	// sending before they close. Default: 5s.
	DrainDelay Duration `yaml:"drain_delay"`
}

// EmbeddedBroker configures the in-process mochi-mqtt broker.
type EmbeddedBroker struct {
	// Enabled starts the broker. Default: false (true in the embedded
	// default configuration).
	Enabled bool `yaml:"enabled"`
	// Listen is the broker's TCP address. Default: "127.0.0.1:1883".
	Listen string `yaml:"listen"`
}

// Load reads, expands and strictly decodes the file at path. It does not fill
// defaults or validate.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(data, os.LookupEnv)
}

// LookupFunc looks up an environment variable, like os.LookupEnv.
type LookupFunc func(string) (string, bool)

// ErrEmpty is returned by Parse for a document with no content.
var ErrEmpty = errors.New("config is empty")

// ErrSyntax is returned by Parse for a document that is not YAML; the
// parser's message (with its line, mostly) follows.
var ErrSyntax = errors.New("not valid YAML")

// Parse decodes a YAML document strictly: unknown keys, duplicate keys and
// wrongly typed values are errors, every one of them reported (joined, each
// a *FieldError with its path and line). ${NAME} and ${NAME:-default} are
// expanded with lookup before a value is decoded, so they work in numbers,
// booleans, durations and sizes too; $$ is a literal $. It does not fill
// defaults or validate; Check does all of it.
func Parse(data []byte, lookup LookupFunc) (*Config, error) {
	c, w, err := parse(data, lookup)
	if err != nil {
		return nil, err
	}
	if len(w.errs) > 0 {
		return nil, errors.Join(w.errs...)
	}
	return c, nil
}

// parse decodes what it can of data: the walker holds the problems found
// (their values removed) and the line of every field path. The error is
// one that stops everything (not YAML, not a mapping, empty).
func parse(data []byte, lookup LookupFunc) (*Config, *walker, error) {
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil, ErrEmpty
		}
		return nil, nil, fmt.Errorf("%w: %v", ErrSyntax, err) // the parser's errors have no type to keep
	}
	if len(doc.Content) == 0 {
		return nil, nil, ErrEmpty
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, nil, &FieldError{Path: "top level", Line: root.Line, Msg: "must be a mapping"}
	}
	w := newWalker(lookup)
	w.walk(root, reflect.TypeFor[Config](), "")
	var c Config
	if err := root.Decode(&c); err != nil {
		// The walk removed every value it found wrong; what the decoder
		// still refuses is reported as it says.
		w.errs = append(w.errs, fmt.Errorf("yaml: %w", err))
	}
	return &c, w, nil
}

func orTop(path string) string {
	if path == "" {
		return "top level"
	}
	return path
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// FieldError is one validation problem, located by its field path such as
// "tls.session_tickets.keep" or "routes[1].proxy.backends[0]".
type FieldError struct {
	Path string
	// Line is the field's line in the file (or its section's, for a field
	// given its default), 0 when not known.
	Line int
	Msg  string
	// Err is the underlying error, if any (a file that cannot be opened).
	Err error
}

func (e *FieldError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("line %d: %s: %s", e.Line, e.Path, e.Msg)
	}
	return e.Path + ": " + e.Msg
}

// Unwrap returns the underlying error.
func (e *FieldError) Unwrap() error { return e.Err }

// errs collects FieldErrors during validation.
type errs []error

func (e *errs) add(path, format string, args ...any) {
	*e = append(*e, &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
}

// WithDefaults returns a copy of c with every unset field given its default.
// c itself is not modified.
func (c *Config) WithDefaults() *Config {
	out := *c
	out.TrustedProxies = append([]string(nil), c.TrustedProxies...)
	if out.Listen.HTTPS == "" && out.Listen.HTTP == "" {
		out.Listen.HTTPS = ":8443"
	}
	if out.Listen.Admin == "" {
		out.Listen.Admin = "127.0.0.1:9090"
	}
	if out.Listen.HTTP2Server == "" {
		out.Listen.HTTP2Server = HTTP2Edgeshim
	}
	if out.Log.Level == "" {
		out.Log.Level = "info"
	}
	if out.Log.Format == "" {
		out.Log.Format = "text"
	}
	if out.DataDir == "" {
		out.DataDir = ".edgeshim"
	}
	if out.Shutdown.Grace == 0 {
		out.Shutdown.Grace = Duration(30e9)
	}
	if out.Shutdown.DrainDelay == 0 {
		out.Shutdown.DrainDelay = Duration(5e9)
	}
	if out.EmbeddedBroker.Listen == "" {
		out.EmbeddedBroker.Listen = "127.0.0.1:1883"
	}
	out.Listen.ProxyProtocol = c.Listen.ProxyProtocol.withDefaults()
	out.TLS = c.TLS.withDefaults()
	out.AccessLog = c.AccessLog.withDefaults(out.Log)
	out.Limits = c.Limits.withDefaults()
	out.Runtime = c.Runtime.withDefaults()
	out.Routes = make([]Route, len(c.Routes))
	for i, r := range c.Routes {
		out.Routes[i] = r.withDefaults()
	}
	if c.Bridges != nil {
		out.Bridges = make(map[string]Bridge, len(c.Bridges))
		for name, b := range c.Bridges {
			out.Bridges[name] = b.withDefaults()
		}
	}
	return &out
}

// Validate reports every problem in c, each as a *FieldError, joined with
// errors.Join. It expects a config with defaults filled (see WithDefaults).
func (c *Config) Validate() error {
	var e errs
	validAddr(&e, "listen.https", c.Listen.HTTPS)
	validAddr(&e, "listen.http", c.Listen.HTTP)
	if c.Listen.Admin != "off" {
		validAddr(&e, "listen.admin", c.Listen.Admin)
	}
	c.listenerConflicts(&e)
	if v := c.Listen.HTTP2Server; v != HTTP2Edgeshim && v != HTTP2NetHTTP {
		e.add("listen.http2_server", "must be %q or %q (got %q)", HTTP2Edgeshim, HTTP2NetHTTP, v)
	}
	if c.Listen.HTTP3 && c.Listen.HTTPS == "" {
		e.add("listen.http3", "needs listen.https (HTTP/3 shares its port over UDP)")
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		e.add("log.level", "must be one of debug, info, warn, error (got %q)", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		e.add("log.format", "must be text or json (got %q)", c.Log.Format)
	}
	if c.EmbeddedBroker.Enabled {
		validAddr(&e, "embedded_broker.listen", c.EmbeddedBroker.Listen)
	}
	for i, p := range c.TrustedProxies {
		if !validCIDROrIP(p) {
			e.add(fmt.Sprintf("trusted_proxies[%d]", i), "must be an IP or CIDR (got %q)", p)
		}
	}
	c.Listen.ProxyProtocol.validate(&e)
	c.TLS.validate(&e, c)
	c.Limits.validate(&e)
	c.Runtime.validate(&e)
	for i, r := range c.Routes {
		r.validate(&e, fmt.Sprintf("routes[%d]", i), c)
	}
	validateRouteNames(&e, c.Routes)
	c.AdminAPI.validate(&e, c.Listen.Admin)
	c.AccessLog.validate(&e)
	for _, name := range sortedKeys(c.Bridges) {
		b := c.Bridges[name]
		b.validate(&e, "bridges."+name, c)
	}
	return errors.Join(e...)
}
