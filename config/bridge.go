package config

import (
	"net/url"
	"strings"
)

// Bridge turns HTTP-polling (or WebSocket) devices into persistent sessions
// on an upstream MQTT broker or WebSocket backend.
type Bridge struct {
	// Upstream is the broker or backend each device session connects to.
	Upstream Upstream `yaml:"upstream"`
	// Identity says how a device proves who it is.
	Identity Identity `yaml:"identity"`
	// Poll configures the command poll / long-poll endpoint.
	Poll Poll `yaml:"poll"`
	// Telemetry configures the telemetry endpoint. Default: off (no path).
	Telemetry Telemetry `yaml:"telemetry"`
	// Commands configures the topic commands arrive on.
	Commands Commands `yaml:"commands"`
	// Presence configures the retained online/offline topic.
	Presence Presence `yaml:"presence"`
	// Session bounds device sessions.
	Session Session `yaml:"session"`
	// WebSocket configures the device WebSocket endpoint. Default: off.
	WebSocket *DeviceWebSocket `yaml:"websocket"`
}

// Upstream configures the per-device upstream session.
type Upstream struct {
	// URL is mqtt://, mqtts://, ws:// or wss:// (MQTT over WebSocket), or,
	// with Driver websocket, the ws(s):// backend URL template with
	// {device}. Required.
	URL string `yaml:"url"`
	// Driver is mqtt or websocket. Default: "mqtt".
	Driver string `yaml:"driver"`
	// ClientID is the MQTT client id template. Default: "{device}".
	ClientID string `yaml:"client_id"`
	// Username and Password authenticate to the broker; both may be
	// templates with {device}. Default: none. The password is never logged.
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// SessionExpiry is the MQTT 5 session expiry: how long the broker
	// queues a gone device's commands. Default: 1h.
	SessionExpiry Duration `yaml:"session_expiry"`
	// Keepalive is the MQTT keepalive. Default: 30s.
	Keepalive Duration `yaml:"keepalive"`
	// ConnectTimeout bounds one connect attempt. Default: 10s.
	ConnectTimeout Duration `yaml:"connect_timeout"`
	// ReceiveMaximum is the MQTT 5 receive maximum: how many commands the
	// broker sends a device's session before it has acknowledged earlier
	// ones; the rest wait, durably, at the broker. Default: 64.
	ReceiveMaximum int `yaml:"receive_maximum"`
	// PublishTimeout bounds waiting for a PUBACK. Default: 5s.
	PublishTimeout Duration `yaml:"publish_timeout"`
	// ReconnectRate paces session (re)connects across all sessions, per
	// second (a burst of one second's worth goes at once). Connects a
	// device waits on (first contact, a held poll) go before background
	// reconnects. Default: 1000. Measured (BenchmarkMosquittoSessionConnect
	// in integration/): mosquitto 2.0.11 spends ~200 µs of CPU per session
	// connect (CONNECT with will, SUBSCRIBE, retained online) and took
	// 1,000-1,900/s at 21-37 % of one core on a shared, loaded 2-core VM;
	// 1000/s keeps such a broker at ~20 % of a core and brings 250,000
	// sessions back in about 4 minutes (100/s took over 40).
	ReconnectRate float64 `yaml:"reconnect_rate"`
	// BackoffMin and BackoffMax bound the jittered exponential reconnect
	// backoff. Default: 1s and 60s.
	BackoffMin Duration `yaml:"backoff_min"`
	BackoffMax Duration `yaml:"backoff_max"`
	// TLS configures mqtts:// and wss://.
	TLS BackendTLS `yaml:"tls"`
}

// Identity configures device identification.
type Identity struct {
	// From is cert, token, header or path. Required.
	From string `yaml:"from"`
	// Tokens is the file of device ids and the hex SHA-256 of their
	// tokens (from: token). A .yaml/.yml file is a flat map
	// "device: sha256hex"; any other name has one "device sha256hex" per
	// line. Both take # comments; duplicate ids or hashes are errors. It
	// is re-read on SIGHUP. Default: "".
	Tokens string `yaml:"tokens"`
	// Header carries the token (from: token; default "Authorization" with
	// "Bearer ") or the trusted identity (from: header; required). A header
	// identity is believed only from a peer in trusted_proxies (required
	// with from: header); from any other peer the request is 401.
	Header string `yaml:"header"`
	// CertField is the client certificate field used (from: cert): cn or
	// uri. Default: "cn".
	CertField string `yaml:"cert_field"`
	// AllowUnauthenticated must be true for from: path. Default: false.
	AllowUnauthenticated bool `yaml:"allow_unauthenticated"`
}

// Poll configures the poll endpoint.
type Poll struct {
	// Path is the poll URL template, with {device}. Required.
	Path string `yaml:"path"`
	// MaxWait caps a long-poll's wait. Default: 55s.
	MaxWait Duration `yaml:"max_wait"`
	// EmptyStatus is the status when no command is pending: 200 or 204.
	// Default: 204.
	EmptyStatus int `yaml:"empty_status"`
	// EmptyBody is a fixed body for empty answers (with empty_status 200),
	// e.g. {"updates":[]}. Default: "".
	EmptyBody string `yaml:"empty_body"`
	// EmptyContentType is the Content-Type of empty_body. Default:
	// "application/json".
	EmptyContentType string `yaml:"empty_content_type"`
	// Format is raw (one command per response), json (an array) or
	// template (the answers' bodies come from Template). Default: "raw".
	Format string `yaml:"format"`
	// Template shapes the answers with format template. Default: none
	// (required with format template).
	Template *PollTemplate `yaml:"template"`
	// MaxBatch caps commands per json response. Default: 10.
	MaxBatch int `yaml:"max_batch"`
	// Ack is write (delivered once written) or explicit (delivered once the
	// device POSTs {poll.path}/{id}/ack). Default: "write".
	Ack string `yaml:"ack"`
	// AckTimeout is how long an explicit-ack command waits for its ack
	// before it is offered again. Default: 30s.
	AckTimeout Duration `yaml:"ack_timeout"`
	// AckWriteTimeout bounds, with ack write, the wait for the device's
	// TCP stack to acknowledge the bytes of a command answer before the
	// command is PUBACKed; past it the connection is closed and the
	// command stays unacknowledged (delivered on a later poll). Linux
	// only; elsewhere and on HTTP/3 a command is PUBACKed once written.
	// Default: 5s.
	AckWriteTimeout Duration `yaml:"ack_write_timeout"`
}

// PollTemplate is the shape of the poll answers with format template. The
// bodies are Go text/template templates over the pending commands; see
// the README for the fields and functions.
type PollTemplate struct {
	// Body renders a command answer (one or more commands). Required.
	Body string `yaml:"body"`
	// Empty renders the empty answer (with poll.empty_status 200).
	// Default: Body rendered with no commands.
	Empty string `yaml:"empty"`
	// Status is the status of a command answer. Default: 200.
	Status int `yaml:"status"`
	// ContentType is the Content-Type of both answers. Default:
	// "application/json".
	ContentType string `yaml:"content_type"`
	// Headers are added to both answers. Default: none.
	Headers map[string]string `yaml:"headers"`
	// MaxBytes caps a rendered body; a batch that renders larger is cut
	// down to fewer commands. Default: 1MiB.
	MaxBytes Size `yaml:"max_bytes"`
}

// Telemetry configures device → broker publishing.
type Telemetry struct {
	// Path is the telemetry URL template, with {device}. Default: "" (off).
	Path string `yaml:"path"`
	// Topic is the topic template, with {device}. Required with path.
	Topic string `yaml:"topic"`
	// QoS is 0 or 1. Default: 1.
	QoS *int `yaml:"qos"`
	// MaxBody caps a telemetry body. Default: limits.max_body.
	MaxBody Size `yaml:"max_body"`
}

// Commands configures broker → device commands.
type Commands struct {
	// Topic is the topic template, with {device}. Required with
	// upstream.driver mqtt; unused with websocket.
	Topic string `yaml:"topic"`
	// QoS of the subscription: 1 (at least once). Default: 1.
	QoS int `yaml:"qos"`
	// MaxAge discards a command that waited longer than this in edgeshim
	// (it is acknowledged upstream, never delivered), for publishers that
	// set no MQTT 5 message expiry; a command's own expiry applies when
	// it is shorter. Default: 0 (off).
	MaxAge Duration `yaml:"max_age"`
	// ResponseTopics are the MQTT topic filters ("replies/#") a command's
	// MQTT 5 Response Topic must match for request/response: the device
	// answers, edgeshim publishes the answer there. A command whose
	// Response Topic matches none is acknowledged, not delivered and
	// counted; nothing is published to its topic (an error answer there
	// would let a publisher make edgeshim write to any topic, another
	// device's commands included). Default: none: request/response is off
	// and a command with a Response Topic is delivered as a plain one.
	ResponseTopics []string `yaml:"response_topics"`
	// ResponseTimeout is how long a request waits for the device's answer
	// (counted from its arrival at edgeshim; a shorter Message Expiry
	// wins) before edgeshim answers 504 itself. Default: 30s.
	ResponseTimeout Duration `yaml:"response_timeout"`
}

// Presence configures the retained presence topic.
type Presence struct {
	// Topic is the topic template, with {device}. Default: "" (off).
	Topic string `yaml:"topic"`
	// Online and Offline are the payloads. Default: "online", "offline".
	Online  string `yaml:"online"`
	Offline string `yaml:"offline"`
	// WillDelay is the MQTT 5 Will Delay Interval of the offline will:
	// the broker publishes offline only when the session's connection has
	// been gone this long (or the session expired, if sooner). Default: 2m,
	// longer than a legacy device's one-minute poll interval, so a short
	// gap between polls, a replica restart or a takeover by another
	// replica never shows the device offline. At most
	// upstream.session_expiry (MQTT sends the will at the earlier of the
	// two). 0 sends the will at once.
	WillDelay *Duration `yaml:"will_delay"`
}

// Session bounds the device session registry.
type Session struct {
	// Idle ends a session not polled for this long. Default: 5m.
	Idle Duration `yaml:"idle"`
	// Max caps sessions; the least recently polled is ended. Default:
	// 100000.
	Max int `yaml:"max"`
}

// DeviceWebSocket configures the device WebSocket endpoint.
type DeviceWebSocket struct {
	// Path is the URL template, with {device}. Required.
	Path string `yaml:"path"`
	// Format is raw or json. Default: "json".
	Format string `yaml:"format"`
	// Ack is write or explicit. Default: "write".
	Ack string `yaml:"ack"`
}

func (b Bridge) withDefaults() Bridge {
	out := b
	u := &out.Upstream
	def(&u.Driver, "mqtt")
	def(&u.ClientID, "{device}")
	def(&u.SessionExpiry, Duration(3600e9))
	def(&u.Keepalive, Duration(30e9))
	def(&u.ConnectTimeout, Duration(10e9))
	def(&u.ReceiveMaximum, 64)
	def(&u.PublishTimeout, Duration(5e9))
	def(&u.ReconnectRate, 1000)
	def(&u.BackoffMin, Duration(1e9))
	def(&u.BackoffMax, Duration(60e9))
	def(&out.Identity.CertField, "cn")
	if out.Identity.From == "token" {
		def(&out.Identity.Header, "Authorization")
	}
	def(&out.Poll.MaxWait, Duration(55e9))
	if out.Poll.Format == "template" {
		def(&out.Poll.EmptyStatus, 200) // the template renders an empty answer
	}
	if t := out.Poll.Template; t != nil {
		tc := *t
		def(&tc.Status, 200)
		def(&tc.ContentType, "application/json")
		def(&tc.MaxBytes, Size(1<<20))
		out.Poll.Template = &tc
	}
	def(&out.Poll.AckWriteTimeout, Duration(5e9))
	def(&out.Poll.EmptyStatus, 204)
	def(&out.Poll.EmptyContentType, "application/json")
	def(&out.Poll.Format, "raw")
	def(&out.Poll.MaxBatch, 10)
	def(&out.Poll.Ack, "write")
	def(&out.Poll.AckTimeout, Duration(30e9))
	if out.Telemetry.QoS == nil {
		one := 1
		out.Telemetry.QoS = &one
	}
	def(&out.Commands.QoS, 1)
	def(&out.Commands.ResponseTimeout, Duration(30e9))
	def(&out.Presence.Online, "online")
	def(&out.Presence.Offline, "offline")
	if out.Presence.WillDelay == nil {
		d := Duration(120e9)
		out.Presence.WillDelay = &d
	}
	def(&out.Session.Idle, Duration(300e9))
	def(&out.Session.Max, 100000)
	if b.WebSocket != nil {
		ws := *b.WebSocket
		def(&ws.Format, "json")
		def(&ws.Ack, "write")
		out.WebSocket = &ws
	}
	return out
}

func (b Bridge) validate(e *errs, p string, c *Config) {
	u := b.Upstream
	switch u.Driver {
	case "mqtt":
		if pu, err := url.Parse(u.URL); err != nil || pu.Host == "" || !oneOf(pu.Scheme, "mqtt", "mqtts", "tcp", "ssl", "ws", "wss") {
			e.add(p+".upstream.url", "must be an mqtt://, mqtts://, ws:// or wss:// URL with a host (got %q)", u.URL)
		}
	case "websocket":
		if pu, err := url.Parse(strings.ReplaceAll(u.URL, "{device}", "d")); err != nil || pu.Host == "" || !oneOf(pu.Scheme, "ws", "wss") {
			e.add(p+".upstream.url", "must be a ws:// or wss:// URL with a host (got %q)", u.URL)
		} else if !strings.Contains(u.URL, "{device}") || strings.Contains(strings.SplitN(strings.SplitN(u.URL, "://", 2)[1], "/", 2)[0], "{device}") {
			e.add(p+".upstream.url", "must name {device} in its path or query: each device has its own session (got %q)", u.URL)
		}
	default:
		e.add(p+".upstream.driver", "must be mqtt or websocket (got %q)", u.Driver)
	}
	if u.ReconnectRate <= 0 {
		e.add(p+".upstream.reconnect_rate", "must be greater than 0")
	}
	if u.BackoffMax < u.BackoffMin {
		e.add(p+".upstream.backoff_max", "must be at least upstream.backoff_min")
	}
	if u.Keepalive.D() > 0 && u.Keepalive.D() < 1e9 {
		e.add(p+".upstream.keepalive", "must be at least 1s")
	}
	if u.ReceiveMaximum < 1 || u.ReceiveMaximum > 65535 {
		e.add(p+".upstream.receive_maximum", "must be 1-65535 (got %d)", u.ReceiveMaximum)
	}
	if u.Keepalive.D() > 65535e9 {
		e.add(p+".upstream.keepalive", "must be at most 65535s (MQTT limit)")
	}
	validTemplate(e, p+".upstream.client_id", u.ClientID, false)

	id := b.Identity
	switch id.From {
	case "cert":
		if c.TLS.ClientAuth == nil {
			e.add(p+".identity.from", "cert needs tls.client_auth")
		}
		if !oneOf(id.CertField, "cn", "uri") {
			e.add(p+".identity.cert_field", "must be cn or uri (got %q)", id.CertField)
		}
	case "token":
		if id.Tokens == "" {
			e.add(p+".identity.tokens", "is required with from: token")
		}
	case "header":
		if id.Header == "" {
			e.add(p+".identity.header", "is required with from: header")
		}
		if len(c.TrustedProxies) == 0 {
			e.add(p+".identity.from", "header needs trusted_proxies: the header is believed only from those peers (anyone else could claim any device)")
		}
	case "path":
		if !id.AllowUnauthenticated {
			e.add(p+".identity.allow_unauthenticated", "must be true with from: path (the path proves nothing)")
		}
	case "":
		e.add(p+".identity.from", "is required: cert, token, header or path")
	default:
		e.add(p+".identity.from", "must be cert, token, header or path (got %q)", id.From)
	}

	// A legacy fleet may poll a fixed path ("/api/updates"): then the
	// device id comes from its credential. Only path identity needs it in
	// the URL.
	pathID := id.From == "path"
	validTemplate(e, p+".poll.path", b.Poll.Path, pathID)
	if !strings.HasPrefix(b.Poll.Path, "/") {
		e.add(p+".poll.path", "must start with / (got %q)", b.Poll.Path)
	}
	if !oneOf(b.Poll.Format, "raw", "json", "template") {
		e.add(p+".poll.format", "must be raw, json or template (got %q)", b.Poll.Format)
	}
	b.Poll.validateTemplate(e, p+".poll")
	if b.Poll.AckWriteTimeout < 0 {
		e.add(p+".poll.ack_write_timeout", "must not be negative")
	}
	if b.Commands.MaxAge < 0 {
		e.add(p+".commands.max_age", "must not be negative")
	}
	if !oneOf(b.Poll.Ack, "write", "explicit") {
		e.add(p+".poll.ack", "must be write or explicit (got %q)", b.Poll.Ack)
	}
	if b.Poll.EmptyStatus != 200 && b.Poll.EmptyStatus != 204 {
		e.add(p+".poll.empty_status", "must be 200 or 204 (got %d)", b.Poll.EmptyStatus)
	}
	if b.Poll.EmptyBody != "" && b.Poll.EmptyStatus == 204 {
		e.add(p+".poll.empty_body", "needs empty_status 200 (a 204 has no body)")
	}
	if b.Poll.MaxBatch < 1 || b.Poll.MaxBatch > 1000 {
		e.add(p+".poll.max_batch", "must be 1-1000")
	}
	if b.Poll.MaxWait.D() < 1e9 {
		e.add(p+".poll.max_wait", "must be at least 1s")
	}
	if lim := c.Limits.Timeouts.Idle; b.Poll.MaxWait >= lim {
		e.add(p+".poll.max_wait", "must be shorter than limits.timeouts.idle (%s >= %s)", b.Poll.MaxWait, lim)
	}
	if b.Telemetry.Path != "" {
		validTemplate(e, p+".telemetry.path", b.Telemetry.Path, pathID)
		validTemplate(e, p+".telemetry.topic", b.Telemetry.Topic, true)
		if q := *b.Telemetry.QoS; q != 0 && q != 1 {
			e.add(p+".telemetry.qos", "must be 0 or 1 (got %d)", q)
		}
	}
	if u.Driver == "websocket" {
		// The backend addresses the device by its socket: no topics.
		if b.Presence.Topic != "" {
			e.add(p+".presence.topic", "needs upstream.driver mqtt (a WebSocket backend sees presence as the socket itself)")
		}
	} else {
		validTemplate(e, p+".commands.topic", b.Commands.Topic, true)
	}
	if b.Commands.QoS != 1 {
		e.add(p+".commands.qos", "must be 1 (commands are delivered at least once)")
	}
	validResponseTopics(e, p+".commands", b.Commands)
	if b.Presence.Topic != "" {
		validTemplate(e, p+".presence.topic", b.Presence.Topic, true)
	}
	if wd := b.Presence.WillDelay; wd != nil {
		if *wd < 0 || wd.D() > 0xffffffff*1e9 {
			e.add(p+".presence.will_delay", "must be 0s to 4294967295s (MQTT limit; got %s)", *wd)
		} else if *wd > u.SessionExpiry {
			e.add(p+".presence.will_delay", "must be at most upstream.session_expiry (%s > %s): the broker sends the will when the session expires", *wd, u.SessionExpiry)
		}
	}
	if b.Session.Max < 1 {
		e.add(p+".session.max", "must be at least 1")
	}
	if b.Session.Idle.D() < 1e9 {
		e.add(p+".session.idle", "must be at least 1s")
	}
	if ws := b.WebSocket; ws != nil {
		validTemplate(e, p+".websocket.path", ws.Path, pathID)
		if !oneOf(ws.Format, "raw", "json") {
			e.add(p+".websocket.format", "must be raw or json (got %q)", ws.Format)
		}
		if !oneOf(ws.Ack, "write", "explicit") {
			e.add(p+".websocket.ack", "must be write or explicit (got %q)", ws.Ack)
		}
		if ws.Ack == "explicit" && ws.Format == "raw" {
			e.add(p+".websocket.ack", "explicit needs format json (ack frames carry the command id)")
		}
	}
}

// validTemplate checks a template: non-empty, only the {device}
// placeholder, and (when needDevice) containing it. MQTT wildcards are
// refused in topics.
func validTemplate(e *errs, p, tmpl string, needDevice bool) {
	if tmpl == "" {
		e.add(p, "is required")
		return
	}
	rest := strings.ReplaceAll(tmpl, "{device}", "")
	if strings.ContainsAny(rest, "{}") {
		e.add(p, "has an unknown placeholder; only {device} is allowed (got %q)", tmpl)
	}
	if strings.ContainsAny(rest, "+#") && !strings.HasPrefix(tmpl, "/") {
		e.add(p, "must not contain MQTT wildcards + or # (got %q)", tmpl)
	}
	if needDevice && !strings.Contains(tmpl, "{device}") {
		e.add(p, "must contain {device} (got %q)", tmpl)
	}
}

func oneOf(s string, opts ...string) bool {
	for _, o := range opts {
		if s == o {
			return true
		}
	}
	return false
}
