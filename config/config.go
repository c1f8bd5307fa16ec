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
	"os"
	"reflect"
	"regexp"
	"strings"

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
	// Forwarded headers are believed. Default: none, the client's values are
	// replaced.
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
}

// Listen holds listener addresses. An empty address disables a listener.
type Listen struct {
	// HTTPS is the TLS listener for HTTP/1.1 and HTTP/2. Default: ":8443".
	HTTPS string `yaml:"https"`
	// HTTP3 also serves HTTP/3 over UDP on the HTTPS port. Default: false.
	HTTP3 bool `yaml:"http3"`
	// HTTP is a plain-HTTP listener that answers ACME HTTP-01 challenges and
	// redirects everything else to HTTPS. Default: "" (off).
	HTTP string `yaml:"http"`
	// Admin serves /metrics, /healthz and /readyz. Default: "127.0.0.1:9090".
	// Use "off" to disable it.
	Admin string `yaml:"admin"`
}

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

// Parse decodes a YAML document strictly: unknown keys, duplicate keys and
// wrongly typed values are errors that carry the line. ${NAME} and
// ${NAME:-default} in scalar values are expanded with lookup; $$ is a
// literal $.
func Parse(data []byte, lookup LookupFunc) (*Config, error) {
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if err.Error() == "EOF" {
			return nil, ErrEmpty
		}
		return nil, fmt.Errorf("yaml: %w", err)
	}
	if len(doc.Content) == 0 {
		return nil, ErrEmpty
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("yaml: line %d: top level must be a mapping", root.Line)
	}
	if err := expandEnv(root, lookup); err != nil {
		return nil, err
	}
	if err := checkKnown(root, reflect.TypeOf(Config{}), ""); err != nil {
		return nil, err
	}
	var c Config
	if err := root.Decode(&c); err != nil {
		return nil, fmt.Errorf("yaml: %w", err)
	}
	return &c, nil
}

var envRe = regexp.MustCompile(`\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}`)

func expandEnv(n *yaml.Node, lookup LookupFunc) error {
	if n.Kind == yaml.ScalarNode {
		if !strings.Contains(n.Value, "$") {
			return nil
		}
		var firstErr error
		n.Value = envRe.ReplaceAllStringFunc(n.Value, func(m string) string {
			if m == "$$" {
				return "$"
			}
			sub := envRe.FindStringSubmatch(m)
			if v, ok := lookup(sub[1]); ok {
				return v
			}
			if sub[2] != "" {
				return sub[3]
			}
			if firstErr == nil {
				firstErr = fmt.Errorf("line %d: environment variable %s is not set", n.Line, sub[1])
			}
			return ""
		})
		// Expanded values are data, never YAML: a string that now looks
		// like a number stays decodable into numeric fields, which is what
		// "port: ${PORT}" wants.
		return firstErr
	}
	for _, c := range n.Content {
		if err := expandEnv(c, lookup); err != nil {
			return err
		}
	}
	return nil
}

var unmarshalerType = reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()

// checkKnown walks the node tree beside the Go type and reports the first
// mapping key that has no field, with its line and path.
func checkKnown(n *yaml.Node, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(unmarshalerType) {
		return nil
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return nil // type errors are reported by Decode with their line
		}
		fields := map[string]reflect.Type{}
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "" || name == "-" {
				continue
			}
			fields[name] = f.Type
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			ft, ok := fields[k.Value]
			if !ok {
				return fmt.Errorf("yaml: line %d: unknown field %q in %s", k.Line, k.Value, orTop(path))
			}
			if err := checkKnown(v, ft, join(path, k.Value)); err != nil {
				return err
			}
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return nil
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if err := checkKnown(n.Content[i+1], t.Elem(), join(path, n.Content[i].Value)); err != nil {
				return err
			}
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return nil
		}
		for i, c := range n.Content {
			if err := checkKnown(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	}
	return nil
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
	Msg  string
}

func (e *FieldError) Error() string { return e.Path + ": " + e.Msg }

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
	out.TLS = c.TLS.withDefaults()
	out.Limits = c.Limits.withDefaults()
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
	c.TLS.validate(&e, c)
	c.Limits.validate(&e)
	for i, r := range c.Routes {
		r.validate(&e, fmt.Sprintf("routes[%d]", i), c)
	}
	for _, name := range sortedKeys(c.Bridges) {
		b := c.Bridges[name]
		b.validate(&e, "bridges."+name, c)
	}
	return errors.Join(e...)
}
