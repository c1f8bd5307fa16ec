// Package bridge owns device sessions: the HTTP poll, long-poll, telemetry
// and ack endpoints, the device WebSocket endpoint, the session registry,
// the upstream drivers (MQTT 5 on paho.golang's packet codec, or a WebSocket backend)
// and presence. A Bridge is an http.Handler that proxy mounts on the routes
// that name it.
//
// Delivery: a command from the broker is acknowledged (PUBACK) only after
// it was written to the device (ack: write) or the device acknowledged it
// (ack: explicit). Until then the broker holds it and redelivers it on the
// device's next connection, so nothing is lost when a write fails, edgeshim
// dies or a session ends. Telemetry is answered 202 only after the broker's
// PUBACK. The WebSocket driver's weaker guarantee is described on wsLink.
package bridge

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgeshim/edgeshim/bridge/mqtt"
	"github.com/edgeshim/edgeshim/config"
	"github.com/edgeshim/edgeshim/limits"
	"github.com/edgeshim/edgeshim/limits/accesslog"
	"github.com/edgeshim/edgeshim/limits/park"
	"github.com/edgeshim/edgeshim/limits/wsnet"
	"github.com/edgeshim/edgeshim/tlsterm"
	"github.com/gorilla/websocket"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/prometheus/client_golang/prometheus"
)

// Options configure a Bridge.
type Options struct {
	// Name is the bridge's name in the config.
	Name string
	// Config is the bridge section, defaults filled and validated.
	Config config.Bridge
	// Limits is the limits section (body limits, Retry-After window,
	// flapping).
	Limits config.Limits
	// Logger is required.
	Logger *slog.Logger
	// Registerer receives the bridge metrics. Required.
	Registerer prometheus.Registerer
	// Now is the clock. Default: time.Now.
	Now func() time.Time
	// Dialer dials the broker. Default: a net.Dialer.
	Dialer *net.Dialer
	// TrustedProxies (CIDRs or IPs) may name the device in the identity
	// header (identity.from: header). Default: none.
	TrustedProxies []string
	// CheckClientCert rechecks a verified client certificate against the
	// CRL in force (identity.from: cert), for connections opened before a
	// reload. Default: none.
	CheckClientCert func(*tls.ConnectionState) error
}

// Bridge serves one bridge's device endpoints.
type Bridge struct {
	cfg      config.Bridge
	lim      config.Limits
	log      *slog.Logger
	m        *metrics
	now      func() time.Time
	dialer   *net.Dialer
	tlsCfg   *tls.Config
	ident    *identifier
	authLog  *authLog
	poll     pathTemplate
	answer   *answerTemplate // poll.format template
	telem    pathTemplate
	wsPath   pathTemplate
	upgrader websocket.Upgrader
	wsPool   *sync.Pool   // write buffers shared by all WebSockets
	park     *park.Parker // idle device WebSockets and MQTT sessions wait here (see parker)
	parkOnce sync.Once
	open     opener // the upstream driver's (link.go)
	retry    limits.RetryAfter
	flap     atomic.Pointer[limits.Flapping] // nil: off; swapped by a reload
	liveMax  atomic.Int64                    // limits.max_body, reloadable
	rr       *requests                       // request/response (reqresp.go)

	pacer             *pacer       // session connects
	unlinkedEvictions eventLog     // sessions evicted before they connected
	lostLinks         eventLog     // upstream connections lost
	upLog             *upstreamLog // connect failures, aggregated

	mu       sync.Mutex
	sessions *lru.Cache[string, *session]
	closed   bool
	wg       sync.WaitGroup // session goroutines and the idle loop
	closing  chan struct{}  // closed by Shutdown: held polls answer at once
	stopIdle context.CancelFunc
	drain    drainState // see drain.go
}

var _ http.Handler = (*Bridge)(nil)

// New builds a bridge. Device sessions are created on first contact.
func New(o Options) (*Bridge, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Dialer == nil {
		o.Dialer = &net.Dialer{KeepAlive: 30 * time.Second}
	}
	c := o.Config
	b := &Bridge{
		cfg: c, lim: o.Limits, log: o.Logger, m: newMetrics(o.Registerer), now: o.Now, dialer: o.Dialer,
		retry:   limits.RetryAfter{Min: o.Limits.RetryAfter.Min.D(), Max: o.Limits.RetryAfter.Max.D()},
		pacer:   newPacer(c.Upstream.ReconnectRate, int(c.Upstream.ReconnectRate), o.Now),
		closing: make(chan struct{}),
		wsPool:  &sync.Pool{},
		upLog:   newUpstreamLog(o.Logger),
	}
	b.rr = newRequests(b, o.Registerer)
	b.flap.Store(newFlapping(o.Limits.Flapping, c.Session.Max, o.Now, o.Logger))
	b.liveMax.Store(int64(o.Limits.MaxBody))
	var err error
	if b.poll, err = compilePath(c.Poll.Path); err != nil {
		return nil, fmt.Errorf("poll.path: %w", err)
	}
	if c.Poll.Format == "template" {
		if b.answer, err = compileAnswer(c.Poll, o.Now); err != nil {
			return nil, err
		}
	}
	if c.Telemetry.Path != "" {
		if b.telem, err = compilePath(c.Telemetry.Path); err != nil {
			return nil, fmt.Errorf("telemetry.path: %w", err)
		}
	}
	if c.WebSocket != nil {
		if b.wsPath, err = compilePath(c.WebSocket.Path); err != nil {
			return nil, fmt.Errorf("websocket.path: %w", err)
		}
		// The read buffer is the socket's own 512 B (wsnet.Upgrade).
		b.upgrader = websocket.Upgrader{WriteBufferSize: 1024, WriteBufferPool: b.wsPool,
			CheckOrigin: func(*http.Request) bool { return true }}
	}
	if b.ident, err = newIdentifier(c.Identity, o.TrustedProxies); err != nil {
		return nil, err
	}
	b.ident.checkCert = o.CheckClientCert
	b.authLog = newAuthLog(o.Logger, o.Now, o.Registerer)
	if b.tlsCfg, err = tlsterm.ClientConfig(c.Upstream.TLS); err != nil {
		return nil, fmt.Errorf("upstream.tls: %w", err)
	}
	b.sessions, _ = lru.NewWithEvict(c.Session.Max, func(_ string, s *session) { b.endSession(s, reasonEvicted) })
	if c.WebSocket != nil {
		b.park = park.New()
	}
	b.open = openerFor(c.Upstream.Driver)
	ctx, cancel := context.WithCancel(context.Background())
	b.stopIdle = cancel
	b.wg.Add(1)
	go b.idleLoop(ctx)
	return b, nil
}

// dial opens a connection to the broker: mqtt:// (tcp), mqtts:// (TLS), or
// ws:// / wss:// (MQTT over WebSocket, subprotocol mqtt).
func (b *Bridge) dial(ctx context.Context) (net.Conn, error) {
	u, err := url.Parse(b.cfg.Upstream.URL)
	if err != nil {
		return nil, err
	}
	host := u.Host
	switch u.Scheme {
	case "mqtt", "tcp":
		if u.Port() == "" {
			host = net.JoinHostPort(u.Hostname(), "1883")
		}
		c, err := b.dialer.DialContext(ctx, "tcp", host)
		if err != nil {
			return nil, err
		}
		return mqtt.Pollable(c), nil // its reader parks while idle
	case "mqtts", "ssl":
		if u.Port() == "" {
			host = net.JoinHostPort(u.Hostname(), "8883")
		}
		cfg := b.tlsCfg.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName = u.Hostname()
		}
		c, err := b.dialer.DialContext(ctx, "tcp", host)
		if err != nil {
			return nil, err
		}
		tc := tls.Client(mqtt.Pollable(c), cfg) // its reader parks while idle, beneath TLS
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, err
		}
		return tc, nil
	case "ws", "wss":
		d := websocket.Dialer{NetDialContext: b.dialer.DialContext, TLSClientConfig: b.tlsCfg.Clone(), Subprotocols: []string{"mqtt"},
			HandshakeTimeout: b.cfg.Upstream.ConnectTimeout.D(), ReadBufferSize: 2048, WriteBufferSize: 2048}
		c, resp, err := d.DialContext(ctx, u.String(), nil)
		if resp != nil && resp.Body != nil {
			resp.Body.Close()
		}
		if err != nil {
			return nil, err
		}
		return wsnet.New(c), nil
	}
	return nil, fmt.Errorf("unsupported upstream scheme %q", u.Scheme)
}

// session returns the device's session, creating (and connecting) it on
// first contact, and marks it as just polled.
func (b *Bridge) session(device string) (*session, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, errClosed
	}
	s, ok := b.sessions.Get(device)
	if !ok {
		s = newSession(b, device)
		b.wg.Add(1) // released by the session when it ends
		s.start()
		b.sessions.Add(device, s) // may evict the least recently polled
	} else {
		s.resume()
	}
	s.lastPoll = b.now()
	return s, nil
}

var errClosed = errors.New("bridge is shutting down")

// touch marks a session as polled now (after a long-poll ends).
func (b *Bridge) touch(s *session) {
	b.mu.Lock()
	if cur, ok := b.sessions.Get(s.device); ok && cur == s {
		s.lastPoll = b.now()
	}
	b.mu.Unlock()
}

func (b *Bridge) endSession(s *session, reason string) { s.end(reason) }

// idleLoop ends sessions not polled for session.idle. The cache's order is
// the order of last polls, so it looks only at the oldest.
func (b *Bridge) idleLoop(ctx context.Context) {
	defer b.wg.Done()
	idle := b.cfg.Session.Idle.D()
	period := min(max(idle/4, 50*time.Millisecond), 5*time.Second)
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := b.now()
		b.mu.Lock()
		for {
			k, s, ok := b.sessions.GetOldest()
			if !ok || now.Sub(s.lastPoll) < idle {
				break
			}
			if s.attached.Load() > 0 { // a live device WebSocket
				s.lastPoll = now
				b.sessions.Get(k) // most recent now
				continue
			}
			s.end(reasonIdle) // before Remove, so the evict callback is a no-op
			b.sessions.Remove(k)
		}
		b.mu.Unlock()
	}
}

// ServeHTTP serves the poll, ack and telemetry endpoints.
func (b *Bridge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	if b.cfg.WebSocket != nil {
		if dev, ok := b.wsPath.match(p); ok {
			b.serveWS(w, r, dev)
			return
		}
	}
	if dev, ok := b.poll.match(p); ok {
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", http.MethodGet)
			b.fail(w, r, http.StatusMethodNotAllowed, "poll takes GET")
			return
		}
		b.servePoll(w, r, dev)
		return
	}
	if b.cfg.Telemetry.Path != "" {
		if dev, ok := b.telem.match(p); ok {
			if r.Method != http.MethodPost {
				w.Header().Set("Allow", http.MethodPost)
				b.fail(w, r, http.StatusMethodNotAllowed, "telemetry takes POST")
				return
			}
			b.serveTelemetry(w, r, dev)
			return
		}
	}
	if dev, id, ok := b.poll.matchAck(p); ok && b.cfg.Poll.Ack == "explicit" {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			b.fail(w, r, http.StatusMethodNotAllowed, "ack takes POST")
			return
		}
		b.serveAck(w, r, dev, id)
		return
	}
	if dev, id, ok := b.poll.matchResponse(p); ok && b.rr.enabled() {
		b.serveResponse(w, r, dev, id)
		return
	}
	b.fail(w, r, http.StatusNotFound, "no such device endpoint")
}

// fail answers with a short JSON error and logs the reason.
func (b *Bridge) fail(w http.ResponseWriter, r *http.Request, code int, reason string) {
	b.failAt(w, r.Context(), r.URL.Path, r.RemoteAddr, code, reason)
}

// failAt is fail for a request known by its path and peer.
func (b *Bridge) failAt(w http.ResponseWriter, ctx context.Context, path, remote string, code int, reason string) {
	lvl := slog.LevelInfo
	if code >= 500 {
		lvl = slog.LevelWarn
	}
	b.log.Log(ctx, lvl, "device request refused", "code", code, "reason", reason, "path", path, "remote", remote)
	if code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="edgeshim"`)
	}
	if code == http.StatusServiceUnavailable || code == http.StatusTooManyRequests {
		b.retry.Reject(w, code, reason)
		return
	}
	limits.WriteError(w, code, reason)
}

// device identifies the request and applies flapping detection.
func (b *Bridge) device(w http.ResponseWriter, r *http.Request, pathDev string) (string, bool) {
	return b.deviceFor(w, r.Context(), credentialsOf(r), r.URL.Path, pathDev, accesslog.FromContext(r.Context()))
}

// deviceFor identifies a request from its credentials and applies
// flapping detection; a refusal is written to w.
func (b *Bridge) deviceFor(w http.ResponseWriter, _ context.Context, cred Credentials, path, pathDev string, rec *accesslog.Record) (string, bool) {
	dev, aerr := b.ident.identify(cred, pathDev, b.poll.hasDevice)
	if aerr != nil {
		b.authLog.refuse(w, path, cred.RemoteAddr, aerr)
		return "", false
	}
	rec.SetDevice(dev)
	if ok, ban := b.flap.Load().AllowFrom(dev, cred.RemoteAddr); !ok {
		w.Header().Set("Retry-After", retrySeconds(ban))
		limits.WriteError(w, http.StatusTooManyRequests, "device is reconnecting too often")
		return "", false
	}
	return dev, true
}

func (b *Bridge) writeEmpty(w http.ResponseWriter, pr pollRequest, s *session) {
	p := b.cfg.Poll
	if b.answer != nil && p.EmptyStatus != http.StatusNoContent {
		body, err := b.answer.render(s.device, nil, b.now(), b.answer.maxBytes)
		if err != nil { // the trial render at start makes this unlikely
			b.failAt(w, pr.ctx, pr.path, pr.cred.RemoteAddr, http.StatusInternalServerError, "poll.template: "+err.Error())
			return
		}
		b.answer.writeHeader(w)
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(p.EmptyStatus)
		w.Write(body)
		return
	}
	if p.EmptyBody != "" {
		w.Header().Set("Content-Type", p.EmptyContentType)
		w.Header().Set("Content-Length", strconv.Itoa(len(p.EmptyBody)))
		w.WriteHeader(p.EmptyStatus)
		io.WriteString(w, p.EmptyBody)
		return
	}
	w.WriteHeader(p.EmptyStatus)
}

// jsonCommand is one command in a json poll response. Payloads that are
// valid UTF-8 are strings; others are base64 with "encoding":"base64".
type jsonCommand struct {
	ID       string `json:"id"`
	Topic    string `json:"topic"`
	Payload  string `json:"payload"`
	Encoding string `json:"encoding,omitempty"`
	// ExpiresIn is the whole seconds left before the command expires
	// (rounded up); absent when it has no expiry.
	ExpiresIn *int64 `json:"expires_in,omitempty"`
	requestInfo
}

// renderCommands writes the answer carrying cmds to w (an answerWriter)
// and returns the commands in it: fewer when some could not be rendered
// (format template: dropped, or put back when the batch did not fit);
// none when none could, having written nothing.
func (b *Bridge) renderCommands(w http.ResponseWriter, s *session, cmds []*command) []*command {
	var body []byte
	status := http.StatusOK
	now := b.now()
	switch b.cfg.Poll.Format {
	case "template":
		if body, cmds = b.renderBatch(s, cmds); len(cmds) == 0 {
			return nil
		}
		b.answer.writeHeader(w)
		status = b.answer.status
	case "json":
		out := make([]jsonCommand, len(cmds))
		for i, c := range cmds {
			out[i] = jsonCommand{ID: c.id, Topic: c.topic}
			out[i].Payload, out[i].Encoding = encodePayload(c.payload)
			if left := c.expiresIn(now); left >= 0 {
				out[i].ExpiresIn = &left
			}
			out[i].requestInfo = c.requestInfo()
		}
		body, _ = json.Marshal(out)
		w.Header().Set("Content-Type", "application/json")
	default:
		c := cmds[0]
		body = c.payload
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("X-Command-Id", c.id)
		w.Header().Set("X-Command-Topic", c.topic)
		if left := c.expiresIn(now); left >= 0 {
			w.Header().Set("X-Command-Expires-In", strconv.FormatInt(left, 10))
		}
		setRequestHeaders(w.Header(), c)
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(body)
	return cmds
}

func (b *Bridge) serveAck(w http.ResponseWriter, r *http.Request, pathDev, id string) {
	dev, ok := b.device(w, r, pathDev)
	if !ok {
		return
	}
	if s := b.held(dev); s == nil || !s.ack(id) {
		b.notHeld(w, r, dev, id)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (b *Bridge) serveTelemetry(w http.ResponseWriter, r *http.Request, pathDev string) {
	dev, ok := b.device(w, r, pathDev)
	if !ok {
		return
	}
	maxBody := b.liveMax.Load()
	if mb := int64(b.cfg.Telemetry.MaxBody); mb > 0 {
		maxBody = mb
	}
	if r.ContentLength > maxBody {
		b.fail(w, r, http.StatusRequestEntityTooLarge, "telemetry body too large")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		if limits.IsTooLarge(err) {
			b.fail(w, r, http.StatusRequestEntityTooLarge, "telemetry body too large")
		} else {
			b.fail(w, r, http.StatusBadRequest, "reading body: "+err.Error())
		}
		return
	}
	s, err := b.session(dev)
	if err != nil {
		b.fail(w, r, http.StatusServiceUnavailable, err.Error())
		return
	}
	tp := topic(b.cfg.Telemetry.Topic, dev)
	if lim := s.packetLimit(); lim > 0 && uint64(len(body)+len(tp)+16) > uint64(lim) {
		b.fail(w, r, http.StatusRequestEntityTooLarge, "telemetry larger than the broker's maximum packet size")
		return
	}
	if err := b.publishTelemetry(r.Context(), s, body); err != nil {
		if errors.Is(err, errUnavailable) {
			b.fail(w, r, http.StatusServiceUnavailable, "upstream unavailable")
		} else {
			b.fail(w, r, http.StatusServiceUnavailable, "upstream did not acknowledge: "+err.Error())
		}
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

// Shutdown drains (see Drain) if that was not done, ends every session
// (their wills fire) and waits for their goroutines, or until ctx ends.
func (b *Bridge) Shutdown(ctx context.Context) error {
	b.Drain()
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		b.drain.sessions.Store(int64(b.sessions.Len()))
		for _, k := range b.sessions.Keys() {
			if s, ok := b.sessions.Peek(k); ok {
				s.end(reasonShutdown)
			}
		}
		b.sessions.Purge()
	}
	b.mu.Unlock()
	b.stopIdle()
	b.upLog.close()
	done := make(chan struct{})
	go func() {
		b.wg.Wait()
		b.parkOnce.Do(func() {}) // no parker is made from now on
		if b.park != nil {
			b.park.Close() // after the sockets, which the sessions' ends closed
		}
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("bridge shutdown: %w", ctx.Err())
	}
}
