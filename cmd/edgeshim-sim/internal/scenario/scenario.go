// Package scenario is the description of one simulated fleet run: the
// device model, the target, the commands published to the broker, the
// events (restarts, storms) and where to read the server's resource use.
// A scenario comes from a YAML file (strictly decoded), from flags, or from
// both (flags win); both fill the same Scenario struct.
package scenario

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Bounds on what a scenario may ask for, so that a typo cannot ask the
// machine for a billion goroutines.
const (
	MaxDevices  = 1_000_000
	MaxDuration = 24 * time.Hour
	MaxSize     = 16 << 20
	maxFile     = 1 << 20
)

// ErrInvalid is wrapped by every validation error.
var ErrInvalid = errors.New("invalid scenario")

// Device models.
const (
	ModelNewConn   = "newconn"   // a new TLS connection for every poll
	ModelKeepAlive = "keepalive" // polls on one kept-alive connection
	ModelLongPoll  = "longpoll"  // wait=N held polls on one connection, re-poll on answer
	ModelWebSocket = "websocket" // the bridge's device WebSocket
	ModelMQTTWS    = "mqtt-ws"   // an MQTT client over WebSocket (the pass-through route)
)

// Scenario is one run. Zero fields take the defaults documented on them
// (filled by WithDefaults).
type Scenario struct {
	// Target is what the devices talk to.
	Target Target `yaml:"target"`
	// Devices is the fleet.
	Devices Devices `yaml:"devices"`
	// Duration of the run after the first device starts. Default 60s.
	Duration time.Duration `yaml:"duration"`
	// Drain is how long devices keep polling after Duration so commands in
	// flight can arrive, before unmatched ones count as lost. Default 5s
	// when commands are published, else 0.
	Drain time.Duration `yaml:"drain"`
	// Commands are published to the broker and matched with what devices
	// receive. Off when Commands.Broker is empty.
	Commands Commands `yaml:"commands"`
	// Events happen at fixed times into the run.
	Events []Event `yaml:"events"`
	// Server is where to read the server's CPU and memory.
	Server Server `yaml:"server"`
	// Project sizes the capacity projection.
	Project Project `yaml:"project"`
}

// Target is the server under test.
type Target struct {
	// URL is the poll URL template; {device} is replaced by the device id.
	// Default "https://127.0.0.1:8443/devices/{device}/commands".
	URL string `yaml:"url"`
	// TelemetryURL is the telemetry POST URL template. Default: URL with a
	// last path segment "commands" replaced by "telemetry".
	TelemetryURL string `yaml:"telemetry_url"`
	// WSURL is the WebSocket URL template (models websocket and mqtt-ws).
	// Default: wss:// + URL's host + "/devices/{device}/ws" (websocket) or
	// "/mqtt" (mqtt-ws).
	WSURL string `yaml:"ws_url"`
	// ServerName is the TLS server name. Default "localhost".
	ServerName string `yaml:"server_name"`
	// CA is a PEM file of roots to verify the server with. Default: none,
	// and the server's certificate is not verified.
	CA string `yaml:"ca"`
}

// Devices describes every simulated device (they are all alike).
type Devices struct {
	// Count of devices. Default 100.
	Count int `yaml:"count"`
	// Prefix of device ids: PREFIX0, PREFIX1, ... Default "sim-".
	Prefix string `yaml:"prefix"`
	// Model is newconn, keepalive, longpoll, websocket or mqtt-ws.
	// Default newconn.
	Model string `yaml:"model"`
	// Interval between polls (newconn, keepalive). 0 polls again as soon
	// as the answer is read (a closed loop, for throughput). Default 60s.
	Interval *time.Duration `yaml:"interval"`
	// Jitter is added to every interval, uniformly in [0, Jitter); the
	// first poll of each device is spread over one interval. Default 0.
	Jitter time.Duration `yaml:"jitter"`
	// Wait is the long-poll wait in seconds (?wait=N), model longpoll;
	// also allowed with newconn (a new connection per held poll).
	// Default 55 for longpoll, else 0.
	Wait int `yaml:"wait"`
	// TLS is the devices' TLS behaviour.
	TLS TLS `yaml:"tls"`
	// Identity is how devices identify themselves.
	Identity Identity `yaml:"identity"`
	// Telemetry sent by each device.
	Telemetry Telemetry `yaml:"telemetry"`
	// Ramp is how many devices start per second. Default 1000.
	Ramp float64 `yaml:"ramp"`
	// Sources spreads devices over source addresses 127.0.0.2 ...
	// 127.0.0.(1+Sources), bound in the dialer (loopback targets only).
	// 0 does not bind. Default 8 for a loopback target, else 0.
	Sources *int `yaml:"sources"`
	// Timeout bounds a connect, a handshake and a poll (plus its wait).
	// Default 10s.
	Timeout time.Duration `yaml:"timeout"`
	// Backoff after a failed poll or a refusal without Retry-After
	// (jittered ±50%). Default 1s.
	Backoff time.Duration `yaml:"backoff"`
	// ObeyRetryAfter makes refused devices wait Retry-After. Default true.
	ObeyRetryAfter *bool `yaml:"obey_retry_after"`
}

// TLS is how devices speak TLS.
type TLS struct {
	// Version is "1.2" or "1.3" (the highest offered). Default "1.3".
	Version string `yaml:"version"`
	// Resumption keeps a session cache per device. Default true.
	Resumption *bool `yaml:"resumption"`
	// PQ offers Go's hybrid post-quantum key share (X25519MLKEM768);
	// otherwise only X25519 and P-256, as deployed devices do. Default false.
	PQ bool `yaml:"pq"`
}

// Identity is how a device proves who it is.
type Identity struct {
	// Tokens sends "Authorization: Bearer TOKEN", the token derived from
	// the device id and Secret (the same as -gen-tokens writes). Default false.
	Tokens bool `yaml:"tokens"`
	// Secret derives tokens. Default "edgeshim-sim".
	Secret string `yaml:"secret"`
	// CertCA is a directory with ca.pem and ca-key.pem (written by
	// -gen-ca); each device presents a certificate for CN=device signed by
	// it. Default: no client certificate.
	CertCA string `yaml:"cert_ca"`
}

// Telemetry sent by devices (POST to Target.TelemetryURL).
type Telemetry struct {
	// Interval between messages per device; 0 sends none. Default 0.
	Interval time.Duration `yaml:"interval"`
	// Size of a message in bytes. Default 64.
	Size int `yaml:"size"`
}

// Commands are published (QoS 1) and matched with what devices receive.
type Commands struct {
	// Broker is mqtt://host:port. Empty publishes no commands.
	Broker string `yaml:"broker"`
	// Topic template. Default "devices/{device}/commands".
	Topic string `yaml:"topic"`
	// Rate in commands per second over the devices that are online. 0
	// with PerDevice false publishes none. Default 0.
	Rate float64 `yaml:"rate"`
	// PerDevice publishes one command to every device once all are online
	// (at Rate per second, or 1000/s when Rate is 0). Default false.
	PerDevice bool `yaml:"per_device"`
	// Start is when publishing starts. Default 0 (as soon as a device is online).
	Start time.Duration `yaml:"start"`
	// Stop is when publishing stops. Default Duration.
	Stop time.Duration `yaml:"stop"`
	// Late is the delivery latency above which a command counts as late.
	// Default 5s.
	Late time.Duration `yaml:"late"`
	// Expiry is the MQTT message expiry; a command not delivered within
	// it counts as expired, not lost. Default 0 (none).
	Expiry time.Duration `yaml:"expiry"`
	// Size of the payload in bytes (at least the embedded id). Default 48.
	Size int `yaml:"size"`
}

// Event happens at At into the run: exactly one of Restart, Storm.
type Event struct {
	// At is the time into the run.
	At time.Duration `yaml:"at"`
	// Restart runs this shell command (sh -c), e.g. to kill -9 and start
	// edgeshim or restart the broker.
	Restart string `yaml:"restart"`
	// Storm drops every device's connection; all reconnect at once.
	Storm *Storm `yaml:"storm"`
}

// Storm is a reconnect storm.
type Storm struct {
	// ObeyRetryAfter: refused devices wait Retry-After (else they retry
	// after Backoff). Default: Devices.ObeyRetryAfter.
	ObeyRetryAfter *bool `yaml:"obey_retry_after"`
}

// Server is where the server's resource use is read.
type Server struct {
	// PID of the server process (/proc/PID/stat and status). Default 0.
	PID int `yaml:"pid"`
	// Metrics is the admin /metrics URL (process_cpu_seconds_total,
	// process_resident_memory_bytes). Default "".
	Metrics string `yaml:"metrics"`
}

// Project sizes the capacity projection.
type Project struct {
	// Devices to plan for. Default 250000.
	Devices int `yaml:"devices"`
	// BoxMemory in MiB. Default 8192.
	BoxMemoryMiB int `yaml:"box_memory_mib"`
	// BoxCores per box. Default 4.
	BoxCores int `yaml:"box_cores"`
}

// Parse decodes a YAML scenario strictly (unknown keys are errors), fills
// defaults and validates it.
func Parse(data []byte) (*Scenario, error) {
	s := &Scenario{}
	if err := s.Decode(data); err != nil {
		return nil, err
	}
	s.WithDefaults()
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return s, nil
}

// Decode decodes YAML onto s (fields present in data replace those in s).
func (s *Scenario) Decode(data []byte) error {
	if len(data) > maxFile {
		return fmt.Errorf("%w: file over %d bytes", ErrInvalid, maxFile)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(s); err != nil && !errors.Is(err, io.EOF) { // io.EOF: an empty file
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

func ptr[T any](v T) *T { return &v }

// WithDefaults fills zero fields with their defaults.
func (s *Scenario) WithDefaults() *Scenario {
	d := &s.Devices
	if s.Target.URL == "" {
		s.Target.URL = "https://127.0.0.1:8443/devices/{device}/commands"
	}
	if s.Target.TelemetryURL == "" {
		if i := strings.LastIndex(s.Target.URL, "/commands"); i >= 0 {
			s.Target.TelemetryURL = s.Target.URL[:i] + "/telemetry" + s.Target.URL[i+len("/commands"):]
		} else {
			s.Target.TelemetryURL = s.Target.URL
		}
	}
	if s.Target.WSURL == "" {
		if u, err := url.Parse(s.Target.URL); err == nil {
			path := "/devices/{device}/ws"
			if d.Model == ModelMQTTWS {
				path = "/mqtt"
			}
			s.Target.WSURL = "wss://" + u.Host + path
		}
	}
	if s.Target.ServerName == "" {
		s.Target.ServerName = "localhost"
	}
	if d.Count == 0 {
		d.Count = 100
	}
	if d.Prefix == "" {
		d.Prefix = "sim-"
	}
	if d.Model == "" {
		d.Model = ModelNewConn
	}
	if d.Interval == nil {
		d.Interval = ptr(60 * time.Second)
	}
	if d.Wait == 0 && d.Model == ModelLongPoll {
		d.Wait = 55
	}
	if d.TLS.Version == "" {
		d.TLS.Version = "1.3"
	}
	if d.TLS.Resumption == nil {
		d.TLS.Resumption = ptr(true)
	}
	if d.Identity.Secret == "" {
		d.Identity.Secret = "edgeshim-sim"
	}
	if d.Telemetry.Size == 0 {
		d.Telemetry.Size = 64
	}
	if d.Ramp == 0 {
		d.Ramp = 1000
	}
	if d.Sources == nil {
		n := 0
		if u, err := url.Parse(s.Target.URL); err == nil && strings.HasPrefix(u.Hostname(), "127.") {
			n = 8
		}
		d.Sources = &n
	}
	if d.Timeout == 0 {
		d.Timeout = 10 * time.Second
	}
	if d.Backoff == 0 {
		d.Backoff = time.Second
	}
	if d.ObeyRetryAfter == nil {
		d.ObeyRetryAfter = ptr(true)
	}
	if s.Duration == 0 {
		s.Duration = 60 * time.Second
	}
	if s.Drain == 0 && s.Commands.Broker != "" {
		s.Drain = 5 * time.Second
	}
	c := &s.Commands
	if c.Topic == "" {
		c.Topic = "devices/{device}/commands"
	}
	if c.Stop == 0 {
		c.Stop = s.Duration
	}
	if c.Late == 0 {
		c.Late = 5 * time.Second
	}
	if c.Size == 0 {
		c.Size = 48
	}
	for i := range s.Events {
		if st := s.Events[i].Storm; st != nil && st.ObeyRetryAfter == nil {
			st.ObeyRetryAfter = ptr(*d.ObeyRetryAfter)
		}
	}
	if s.Project.Devices == 0 {
		s.Project.Devices = 250_000
	}
	if s.Project.BoxMemoryMiB == 0 {
		s.Project.BoxMemoryMiB = 8192
	}
	if s.Project.BoxCores == 0 {
		s.Project.BoxCores = 4
	}
	return s
}

// Validate checks a scenario with defaults filled; every problem is
// reported with its field path.
func (s *Scenario) Validate() error {
	var errs []error
	bad := func(path, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: %s: %s", ErrInvalid, path, fmt.Sprintf(format, a...)))
	}
	checkURL := func(path, raw string, schemes ...string) {
		u, err := url.Parse(strings.ReplaceAll(raw, "{device}", "d"))
		if err != nil || u.Host == "" {
			bad(path, "not an absolute URL: %q", raw)
			return
		}
		for _, sc := range schemes {
			if u.Scheme == sc {
				return
			}
		}
		bad(path, "scheme %q, want one of %v", u.Scheme, schemes)
	}
	checkURL("target.url", s.Target.URL, "https", "http")
	checkURL("target.telemetry_url", s.Target.TelemetryURL, "https", "http")
	checkURL("target.ws_url", s.Target.WSURL, "wss", "ws")
	d := s.Devices
	if d.Count < 1 || d.Count > MaxDevices {
		bad("devices.count", "%d, want 1..%d", d.Count, MaxDevices)
	}
	if len(d.Prefix) > 64 || strings.ContainsAny(d.Prefix, "/+#?& \t\r\n") {
		bad("devices.prefix", "%q: at most 64 characters, no / + # ? & or spaces", d.Prefix)
	}
	switch d.Model {
	case ModelNewConn, ModelKeepAlive, ModelLongPoll, ModelWebSocket, ModelMQTTWS:
	default:
		bad("devices.model", "%q, want newconn, keepalive, longpoll, websocket or mqtt-ws", d.Model)
	}
	if *d.Interval < 0 || *d.Interval > MaxDuration {
		bad("devices.interval", "%s out of range", *d.Interval)
	}
	if d.Jitter < 0 || d.Jitter > MaxDuration {
		bad("devices.jitter", "%s out of range", d.Jitter)
	}
	if d.Wait < 0 || d.Wait > 3600 {
		bad("devices.wait", "%d, want 0..3600 seconds", d.Wait)
	}
	if d.Wait > 0 && d.Model != ModelLongPoll && d.Model != ModelNewConn {
		bad("devices.wait", "only for models longpoll and newconn")
	}
	if d.TLS.Version != "1.2" && d.TLS.Version != "1.3" {
		bad("devices.tls.version", "%q, want 1.2 or 1.3", d.TLS.Version)
	}
	if d.Telemetry.Interval < 0 || d.Telemetry.Interval > MaxDuration {
		bad("devices.telemetry.interval", "%s out of range", d.Telemetry.Interval)
	}
	if d.Telemetry.Size < 1 || d.Telemetry.Size > MaxSize {
		bad("devices.telemetry.size", "%d, want 1..%d", d.Telemetry.Size, MaxSize)
	}
	if !(d.Ramp > 0 && d.Ramp <= 1e6) {
		bad("devices.ramp", "%v, want (0, 1e6] devices per second", d.Ramp)
	}
	if *d.Sources < 0 || *d.Sources > 253 {
		bad("devices.sources", "%d, want 0..253", *d.Sources)
	}
	if d.Timeout <= 0 || d.Timeout > time.Hour {
		bad("devices.timeout", "%s, want (0, 1h]", d.Timeout)
	}
	if d.Backoff <= 0 || d.Backoff > time.Hour {
		bad("devices.backoff", "%s, want (0, 1h]", d.Backoff)
	}
	if s.Duration <= 0 || s.Duration > MaxDuration {
		bad("duration", "%s, want (0, 24h]", s.Duration)
	}
	if s.Drain < 0 || s.Drain > time.Hour {
		bad("drain", "%s, want [0, 1h]", s.Drain)
	}
	c := s.Commands
	if c.Broker != "" {
		if u, err := url.Parse(c.Broker); err != nil || u.Scheme != "mqtt" || u.Host == "" {
			bad("commands.broker", "%q, want mqtt://host:port", c.Broker)
		}
	}
	if !strings.Contains(c.Topic, "{device}") || strings.ContainsAny(c.Topic, "+#") {
		bad("commands.topic", "%q: must contain {device} and no wildcard", c.Topic)
	}
	if !(c.Rate >= 0 && c.Rate <= 1e6) {
		bad("commands.rate", "%v, want [0, 1e6]", c.Rate)
	}
	if c.Start < 0 || c.Stop < c.Start || c.Stop > MaxDuration {
		bad("commands.stop", "%s..%s: want 0 <= start <= stop <= 24h", c.Start, c.Stop)
	}
	if c.Late <= 0 || c.Expiry < 0 || c.Expiry > MaxDuration {
		bad("commands.late", "late %s and expiry %s: want late > 0, expiry in [0, 24h]", c.Late, c.Expiry)
	}
	if c.Size < 1 || c.Size > MaxSize {
		bad("commands.size", "%d, want 1..%d", c.Size, MaxSize)
	}
	if len(s.Events) > 1000 {
		bad("events", "%d events, at most 1000", len(s.Events))
	}
	for i, e := range s.Events {
		p := fmt.Sprintf("events[%d]", i)
		if e.At < 0 || e.At > MaxDuration {
			bad(p+".at", "%s out of range", e.At)
		}
		if (e.Restart == "") == (e.Storm == nil) {
			bad(p, "want exactly one of restart, storm")
		}
	}
	if s.Server.PID < 0 {
		bad("server.pid", "%d", s.Server.PID)
	}
	if s.Server.Metrics != "" {
		checkURL("server.metrics", s.Server.Metrics, "http", "https")
	}
	if p := s.Project; p.Devices < 1 || p.Devices > 1e9 || p.BoxMemoryMiB < 1 || p.BoxMemoryMiB > 1<<24 || p.BoxCores < 1 || p.BoxCores > 4096 {
		bad("project", "devices %d, box_memory_mib %d, box_cores %d out of range", p.Devices, p.BoxMemoryMiB, p.BoxCores)
	}
	return errors.Join(errs...)
}
