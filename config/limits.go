package config

// Limits configures what edgeshim accepts and for how long.
//
// The caps and rates below that are pointers follow one rule: unset
// means the default, an explicit 0 turns the limit off (see PerIP).
type Limits struct {
	// MaxConns caps open client connections in total (per listener); above
	// it new ones are closed at accept. At start it is lowered (with a
	// warning) to half of what the descriptor limit (RLIMIT_NOFILE) leaves
	// after a reserve of 64 + 2%: each connection costs about two
	// descriptors (its own, and its broker or backend connection).
	// Default: 50000; 0: no cap (still fitted to the descriptor limit).
	MaxConns *int `yaml:"max_conns"`
	// PerIP caps connections and their rate per source IP.
	PerIP PerIP `yaml:"per_ip"`
	// Handshake admits TLS handshakes at a bounded rate.
	Handshake Handshake `yaml:"handshake"`
	// MaxHeaderBytes caps the request line and headers. Default: 16KiB.
	MaxHeaderBytes Size `yaml:"max_header_bytes"`
	// MaxHeaders caps the number of request header fields (431 above).
	// Default: 100.
	MaxHeaders int `yaml:"max_headers"`
	// MaxBody caps request bodies, routes may lower it. Default: 1MiB.
	MaxBody Size `yaml:"max_body"`
	// MaxDecompressed caps a decoded request body where a route decodes
	// Content-Encoding. Default: 4MiB.
	MaxDecompressed Size `yaml:"max_decompressed"`
	// MaxRatio caps decompressed/compressed size. Default: 100.
	MaxRatio float64 `yaml:"max_ratio"`
	// Timeouts are the server-side timeouts.
	Timeouts Timeouts `yaml:"timeouts"`
	// RetryAfter is the window Retry-After values are drawn from, uniformly
	// at random, on every 429 and 503 edgeshim sends.
	RetryAfter RetryAfter `yaml:"retry_after"`
	// Flapping bans devices that connect or poll too often. Default: off.
	Flapping Flapping `yaml:"flapping"`
	// Overload stops accepting when watermarks are passed.
	Overload Overload `yaml:"overload"`
	// WebSocket limits WebSocket connections.
	WebSocket WebSocket `yaml:"websocket"`
}

// PerIP holds per-source-IP limits. The source IP is the client's: the
// one carried by the PROXY header when listen.proxy_protocol trusts the
// peer. Unset means the default; an explicit 0 turns the limit off.
type PerIP struct {
	// MaxConns caps open connections per IP. Default: 200; 0: no cap.
	MaxConns *int `yaml:"max_conns"`
	// Rate is new connections per second per IP. Default: 20; 0: no rate
	// limit (Burst is then ignored).
	Rate *float64 `yaml:"rate"`
	// Burst is the new-connection burst per IP; at least 1 while Rate is
	// on. Default: 40.
	Burst *int `yaml:"burst"`
	// Tracked bounds how many source IPs have state (LRU). Default: 100000.
	Tracked int `yaml:"tracked"`
}

// Handshake configures TLS handshake admission.
type Handshake struct {
	// Rate is handshakes per second. Default: 2000; 0: no pacing (Burst,
	// QueueTimeout and MaxQueue are then ignored).
	Rate *float64 `yaml:"rate"`
	// Burst is the handshake burst; at least 1 while Rate is on.
	// Default: 4000.
	Burst *int `yaml:"burst"`
	// QueueTimeout is how long a handshake may wait for admission before the
	// connection is refused. Default: 2s.
	QueueTimeout Duration `yaml:"queue_timeout"`
	// MaxQueue bounds the handshakes waiting. Default: 10000.
	MaxQueue int `yaml:"max_queue"`
	// AnswerRefused completes a handshake that admission refuses (queue
	// full or past queue_timeout), up to the same rate and burst again,
	// and answers its requests 503 with a jittered Retry-After (and
	// Connection: close), so that an obedient device backs off instead
	// of retrying at once after a closed connection; past that second
	// budget, or with false, it is closed at the ClientHello. Default:
	// true.
	AnswerRefused *bool `yaml:"answer_refused"`
}

// Timeouts are server timeouts.
type Timeouts struct {
	// Handshake bounds the TLS handshake on TCP and the QUIC (HTTP/3)
	// handshake. Default: 10s.
	Handshake Duration `yaml:"handshake"`
	// ReadHeader bounds reading the request headers. Default: 10s.
	ReadHeader Duration `yaml:"read_header"`
	// Read bounds reading a whole request, body included. Default: 60s.
	Read Duration `yaml:"read"`
	// Write bounds writing a response; long-polls extend their own.
	// Default: 60s.
	Write Duration `yaml:"write"`
	// Idle bounds an idle keep-alive connection. Default: 120s.
	Idle Duration `yaml:"idle"`
}

// RetryAfter is the Retry-After window.
type RetryAfter struct {
	// Min is the smallest Retry-After. Default: 5s.
	Min Duration `yaml:"min"`
	// Max is the largest Retry-After. Default: 60s.
	Max Duration `yaml:"max"`
}

// Flapping configures per-device flapping detection.
type Flapping struct {
	// Max connects/polls within Window that count as flapping. Default: 0
	// (off).
	Max int `yaml:"max"`
	// Window is the counting window. Default: 1m.
	Window Duration `yaml:"window"`
	// Ban is how long a flapping device is refused (429). Default: 5m.
	Ban Duration `yaml:"ban"`
}

// Overload configures load shedding.
type Overload struct {
	// MaxConns is the soft connection cap: connections accepted above
	// this many open ones are answered 503 with a jittered Retry-After
	// (and Connection: close) on every request, until limits.max_conns,
	// the hard cap. Default: 0 (90% of limits.max_conns).
	MaxConns int `yaml:"max_conns"`
	// MaxHeap answers new requests 503 while the Go heap is above this.
	// Default: 0 (off).
	MaxHeap Size `yaml:"max_heap"`
}

// WebSocket configures WebSocket heartbeats and limits.
type WebSocket struct {
	// Ping is the interval between pings. Default: 25s.
	Ping Duration `yaml:"ping"`
	// PongTimeout closes a connection that has not answered a ping in this
	// long, and one that has not taken a written message in this long (a
	// slow reader: close 1008; nothing is queued behind it). Default: 10s.
	PongTimeout Duration `yaml:"pong_timeout"`
	// MaxMessage caps one message (close 1009 above). Default: 64KiB.
	MaxMessage Size `yaml:"max_message"`
}

func (l Limits) withDefaults() Limits {
	out := l
	defPtr(&out.MaxConns, 50000)
	defPtr(&out.PerIP.MaxConns, 200)
	defPtr(&out.PerIP.Rate, 20)
	defPtr(&out.PerIP.Burst, 40)
	def(&out.PerIP.Tracked, 100000)
	defPtr(&out.Handshake.Rate, 2000)
	defPtr(&out.Handshake.Burst, 4000)
	def(&out.Handshake.QueueTimeout, Duration(2e9))
	def(&out.Handshake.MaxQueue, 10000)
	defPtr(&out.Handshake.AnswerRefused, true)
	def(&out.MaxHeaderBytes, 16<<10)
	def(&out.MaxHeaders, 100)
	def(&out.MaxBody, 1<<20)
	def(&out.MaxDecompressed, 4<<20)
	def(&out.MaxRatio, 100)
	def(&out.Timeouts.Handshake, Duration(10e9))
	def(&out.Timeouts.ReadHeader, Duration(10e9))
	def(&out.Timeouts.Read, Duration(60e9))
	def(&out.Timeouts.Write, Duration(60e9))
	def(&out.Timeouts.Idle, Duration(120e9))
	def(&out.RetryAfter.Min, Duration(5e9))
	def(&out.RetryAfter.Max, Duration(60e9))
	def(&out.Flapping.Window, Duration(60e9))
	def(&out.Flapping.Ban, Duration(300e9))
	def(&out.WebSocket.Ping, Duration(25e9))
	def(&out.WebSocket.PongTimeout, Duration(10e9))
	def(&out.WebSocket.MaxMessage, 64<<10)
	return out
}

// def sets *p to v when *p is the zero value.
func def[T comparable](p *T, v T) {
	var zero T
	if *p == zero {
		*p = v
	}
}

func (l Limits) validate(e *errs) {
	maxConns, perIP := val(l.MaxConns), val(l.PerIP.MaxConns)
	notNegative(e, "limits.max_conns", maxConns)
	notNegative(e, "limits.per_ip.max_conns", perIP)
	rateBurst(e, "limits.per_ip", val(l.PerIP.Rate), val(l.PerIP.Burst))
	positive(e, "limits.per_ip.tracked", l.PerIP.Tracked)
	rateBurst(e, "limits.handshake", val(l.Handshake.Rate), val(l.Handshake.Burst))
	positive(e, "limits.handshake.max_queue", l.Handshake.MaxQueue)
	positive(e, "limits.max_headers", l.MaxHeaders)
	if maxConns > 0 && perIP > maxConns {
		e.add("limits.per_ip.max_conns", "must not exceed limits.max_conns (%d > %d)", perIP, maxConns)
	}
	if l.MaxHeaderBytes < 1024 {
		e.add("limits.max_header_bytes", "must be at least 1KiB")
	}
	if l.MaxBody < 1 {
		e.add("limits.max_body", "must be at least 1")
	}
	if l.MaxDecompressed < l.MaxBody {
		e.add("limits.max_decompressed", "must be at least limits.max_body")
	}
	if l.MaxRatio < 1 {
		e.add("limits.max_ratio", "must be at least 1")
	}
	if l.RetryAfter.Min.D() < 1e9 {
		e.add("limits.retry_after.min", "must be at least 1s (Retry-After has whole seconds)")
	}
	if l.RetryAfter.Max < l.RetryAfter.Min {
		e.add("limits.retry_after.max", "must be at least limits.retry_after.min (%s < %s)", l.RetryAfter.Max, l.RetryAfter.Min)
	}
	if l.Flapping.Max < 0 {
		e.add("limits.flapping.max", "must not be negative")
	}
	if l.WebSocket.PongTimeout > l.WebSocket.Ping*4 {
		e.add("limits.websocket.pong_timeout", "must not exceed 4 × limits.websocket.ping")
	}
	if l.WebSocket.Ping.D() >= l.Timeouts.Idle.D() {
		e.add("limits.websocket.ping", "must be shorter than limits.timeouts.idle (%s >= %s)", l.WebSocket.Ping, l.Timeouts.Idle)
	}
	if l.WebSocket.MaxMessage < 16 {
		e.add("limits.websocket.max_message", "must be at least 16 bytes")
	}
}

// defPtr sets *p to a pointer to v when it is unset (nil): an explicit
// zero stays zero. A set value is copied.
func defPtr[T any](p **T, v T) {
	if *p == nil {
		*p = &v
	} else {
		c := **p // a copy: the result shares nothing with the input
		*p = &c
	}
}

// val is *p, or zero for nil (a config without defaults filled).
func val[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// notNegative checks a cap where 0 means off.
func notNegative[T int | float64](e *errs, path string, v T) {
	if v < 0 {
		e.add(path, "must not be negative (0 turns it off)")
	}
}

// rateBurst checks a rate where 0 means off, and its burst, which must
// let at least one through while the rate is on.
func rateBurst(e *errs, path string, rate float64, burst int) {
	notNegative(e, path+".rate", rate)
	if rate > 0 && burst < 1 {
		e.add(path+".burst", "must be at least 1 while %s.rate is on (%s.rate: 0 turns the rate limit off)", path, path)
	}
}

func positive(e *errs, path string, v int) {
	if v < 1 {
		e.add(path, "must be at least 1")
	}
}
