package sim

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/edgeshim/edgeshim/cmd/edgeshim-sim/internal/scenario"
	"github.com/gorilla/websocket"
)

// maxBody bounds what a device reads of one answer.
const maxBody = 1 << 20

// device is one simulated device; its fields other than lastOK belong to
// its own goroutine.
type device struct {
	r         *runner
	idx       int
	id        string
	tls       *tls.Config // nil for http:// targets
	local     net.Addr
	poll      *url.URL
	head      []byte // the poll request
	hello     []byte // longpoll: the first poll on a new connection, without wait
	online    bool
	wasOnline bool
	lastOK    atomic.Int64 // unix nanos of the last successful poll or session start

	conn    net.Conn
	connCtx context.Context // the storm generation conn was opened in
	br      *bufio.Reader
	used    bool // conn already carried a request
}

func (d *device) markOK() {
	d.lastOK.Store(d.r.now().UnixNano())
	if !d.online {
		d.online = true
		d.r.st.online.Add(1)
	}
	if !d.wasOnline {
		d.wasOnline = true
		d.r.seen(d)
	}
}

func (d *device) markDown() {
	if d.online {
		d.online = false
		d.r.st.online.Add(-1)
	}
}

func (d *device) closeConn() {
	if d.conn != nil {
		d.conn.Close()
		d.conn, d.br, d.used = nil, nil, false
	}
}

// backoff is the device's retry delay, jittered ±50%.
func (d *device) backoff() time.Duration {
	b := d.r.sc.Devices.Backoff
	return b/2 + rand.N(b)
}

// run is the device's life: one step after another until ctx ends.
func (d *device) run(ctx context.Context) {
	defer d.closeConn() // online stays counted: the run is over, not the device
	if ci := d.r.issuer; ci != nil {
		cert, err := ci.issue(d.id, int64(d.idx))
		if err != nil {
			d.r.st.refused("identity")
			return
		}
		d.tls = d.tls.Clone()
		d.tls.Certificates = []tls.Certificate{cert}
	}
	if d.r.sc.Devices.Telemetry.Interval > 0 {
		d.r.wg.Go(func() { d.telemetryLoop(ctx) })
	}
	for ctx.Err() == nil {
		sctx, obey := d.r.stormCtx()
		var delay time.Duration
		switch d.r.sc.Devices.Model {
		case scenario.ModelWebSocket, scenario.ModelMQTTWS:
			delay = d.socket(ctx, sctx, obey)
		default:
			delay = d.pollOnce(ctx, sctx, obey)
		}
		if delay <= 0 {
			continue
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-sctx.Done(): // a storm: reconnect now
			t.Stop()
		}
	}
}

// dial opens a connection (TLS for https), recording connect and
// handshake times.
func (d *device) dial(ctx context.Context, hostport string, cfg *tls.Config) (net.Conn, error) {
	st := d.r.st
	to := d.r.sc.Devices.Timeout
	dl := net.Dialer{LocalAddr: d.local, Timeout: to}
	t0 := time.Now()
	raw, err := dl.DialContext(ctx, "tcp", hostport)
	if err != nil {
		return nil, err
	}
	t1 := time.Now()
	st.connect.add(t1.Sub(t0))
	if cfg == nil {
		return raw, nil
	}
	hctx, cancel := context.WithTimeout(ctx, to)
	defer cancel()
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(hctx); err != nil {
		raw.Close()
		return nil, err
	}
	st.addHandshake(time.Since(t1))
	st.handshakes.Add(1)
	if tc.ConnectionState().DidResume {
		st.resumed.Add(1)
	}
	return tc, nil
}

func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "https" || u.Scheme == "wss" {
		return net.JoinHostPort(u.Hostname(), "443")
	}
	return net.JoinHostPort(u.Hostname(), "80")
}

// request builds an HTTP/1.1 request head (and body).
func (d *device) request(method string, u *url.URL, body []byte, close bool) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: edgeshim-sim\r\n", method, u.RequestURI(), u.Host)
	if d.r.sc.Devices.Identity.Tokens {
		fmt.Fprintf(&b, "Authorization: Bearer %s\r\n", Token(d.r.sc.Devices.Identity.Secret, d.id))
	}
	if close {
		b.WriteString("Connection: close\r\n")
	}
	if body != nil {
		fmt.Fprintf(&b, "Content-Type: application/octet-stream\r\nContent-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n")
	b.Write(body)
	return b.Bytes()
}

// pollOnce sends one poll and returns the delay before the next.
func (d *device) pollOnce(ctx, sctx context.Context, obey bool) time.Duration {
	sc := d.r.sc
	st := d.r.st
	reuse := sc.Devices.Model != scenario.ModelNewConn
	for attempt := 0; ; attempt++ {
		if d.conn != nil && d.connCtx != sctx {
			d.closeConn() // opened before a storm: the storm drops it
		}
		if d.conn == nil {
			c, err := d.dial(sctx, hostPort(d.poll), d.tls)
			if err != nil {
				if sctx.Err() != nil {
					return 0
				}
				st.refused(errorClass(err))
				d.markDown()
				return d.backoff()
			}
			d.conn, d.br, d.connCtx = c, bufio.NewReaderSize(c, 4096), sctx
		}
		conn := d.conn
		stop := context.AfterFunc(sctx, func() { conn.Close() })
		wasUsed := d.used
		d.used = true
		head, held := d.head, sc.Devices.Wait > 0
		if d.hello != nil && !wasUsed {
			head, held = d.hello, false
		}
		conn.SetDeadline(time.Now().Add(sc.Devices.Timeout + time.Duration(sc.Devices.Wait)*time.Second))
		t0 := time.Now()
		resp, body, err := roundTrip(conn, d.br, head)
		if !stop() && err == nil {
			d.closeConn() // a storm closed it just after the answer: not an error
		}
		if err != nil {
			d.closeConn()
			if sctx.Err() != nil {
				return 0
			}
			if wasUsed && attempt == 0 && (errors.Is(err, io.EOF) || errorClass(err) == "reset") {
				continue // the server closed an idle kept-alive connection: retry on a new one
			}
			st.polls.Add(1)
			st.refused(errorClass(err))
			d.markDown()
			return d.backoff()
		}
		st.polls.Add(1)
		st.code(resp.StatusCode)
		if !reuse || resp.Close {
			d.closeConn()
		}
		return d.answer(resp, body, t0, held, obey)
	}
}

// answer handles a poll's response and returns the delay before the next.
func (d *device) answer(resp *http.Response, body []byte, t0 time.Time, held, obey bool) time.Duration {
	sc := d.r.sc
	st := d.r.st
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		st.pollsOK.Add(1)
		if !held {
			st.addPoll(time.Since(t0))
		}
		d.markOK()
		d.r.received(d, body)
		if sc.Devices.Wait > 0 {
			return 0 // re-poll on answer
		}
		iv := *sc.Devices.Interval
		if sc.Devices.Jitter > 0 {
			iv += rand.N(sc.Devices.Jitter)
		}
		return iv
	}
	ra := resp.Header.Get("Retry-After")
	st.refused(refusalOf(resp.StatusCode, ra))
	d.markDown()
	if secs, err := strconv.Atoi(ra); err == nil && obey && secs >= 0 {
		return time.Duration(secs)*time.Second + rand.N(time.Second)
	}
	return d.backoff()
}

// roundTrip writes a request and reads its response (body bounded).
func roundTrip(conn net.Conn, br *bufio.Reader, req []byte) (*http.Response, []byte, error) {
	if _, err := conn.Write(req); err != nil {
		return nil, nil, err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, nil, err
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	resp.Body.Close()
	if err != nil {
		return nil, nil, err
	}
	return resp, body, nil
}

// telemetryLoop posts telemetry on a new connection every interval.
func (d *device) telemetryLoop(ctx context.Context) {
	tm := d.r.sc.Devices.Telemetry
	u := d.r.telemetryURL(d.id)
	req := d.request(http.MethodPost, u, bytes.Repeat([]byte("t"), tm.Size), true)
	for {
		t := time.NewTimer(tm.Interval/2 + rand.N(tm.Interval))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		d.r.st.telemetry.Add(1)
		c, err := d.dial(ctx, hostPort(u), d.tls)
		if err != nil {
			continue
		}
		c.SetDeadline(time.Now().Add(d.r.sc.Devices.Timeout))
		resp, _, err := roundTrip(c, bufio.NewReader(c), req)
		c.Close()
		if err == nil && resp.StatusCode/100 == 2 {
			d.r.st.telemetryOK.Add(1)
		}
	}
}

// socket runs one device WebSocket (or MQTT-over-WebSocket) session until
// it ends, and returns the delay before the next.
func (d *device) socket(ctx, sctx context.Context, obey bool) time.Duration {
	sc := d.r.sc
	st := d.r.st
	wsu := d.r.wsURL(d.id)
	dl := websocket.Dialer{HandshakeTimeout: sc.Devices.Timeout,
		NetDialContext:    func(ctx context.Context, _, addr string) (net.Conn, error) { return d.dial(ctx, addr, nil) },
		NetDialTLSContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return d.dial(ctx, addr, d.tls) }}
	h := http.Header{}
	if sc.Devices.Identity.Tokens {
		h.Set("Authorization", "Bearer "+Token(sc.Devices.Identity.Secret, d.id))
	}
	if sc.Devices.Model == scenario.ModelMQTTWS {
		dl.Subprotocols = []string{"mqtt"}
	}
	c, resp, err := dl.DialContext(sctx, wsu.String(), h)
	if err != nil {
		if sctx.Err() != nil {
			return 0
		}
		st.polls.Add(1)
		d.markDown()
		if resp != nil {
			st.code(resp.StatusCode)
			return d.answer(resp, nil, time.Now(), false, obey)
		}
		st.refused(errorClass(err))
		return d.backoff()
	}
	st.polls.Add(1)
	st.pollsOK.Add(1)
	st.code(http.StatusSwitchingProtocols)
	stop := context.AfterFunc(sctx, func() { c.Close() })
	defer stop()
	defer c.Close()
	if sc.Devices.Model == scenario.ModelMQTTWS {
		err = d.mqttSession(sctx, c)
	} else {
		d.markOK()
		for {
			var data []byte
			if _, data, err = c.ReadMessage(); err != nil {
				break
			}
			d.r.received(d, data)
		}
	}
	d.markDown()
	if sctx.Err() != nil {
		return 0
	}
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		st.refused("ws_close_" + strconv.Itoa(ce.Code))
	} else {
		st.refused(errorClass(err))
	}
	return d.backoff()
}

// mqttSession runs an MQTT session over the WebSocket: subscribe to the
// device's command topic, count what arrives.
func (d *device) mqttSession(ctx context.Context, c *websocket.Conn) error {
	gone := make(chan error, 1)
	fail := func(err error) {
		select {
		case gone <- err:
		default:
		}
	}
	cl := paho.NewClient(paho.ClientConfig{ClientID: d.id, Conn: &wsConn{c: c},
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			d.r.received(d, pr.Packet.Payload)
			return true, nil
		}},
		OnClientError:      fail,
		OnServerDisconnect: func(p *paho.Disconnect) { fail(fmt.Errorf("%w: reason 0x%02x", io.EOF, p.ReasonCode)) }})
	defer cl.Disconnect(&paho.Disconnect{})
	expiry := uint32(3600)
	cctx, cancel := context.WithTimeout(ctx, d.r.sc.Devices.Timeout)
	defer cancel()
	if _, err := cl.Connect(cctx, &paho.Connect{ClientID: d.id, KeepAlive: 30, CleanStart: false,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry}}); err != nil {
		return err
	}
	topic := strings.ReplaceAll(d.r.sc.Commands.Topic, "{device}", d.id)
	if _, err := cl.Subscribe(cctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: topic, QoS: 1}}}); err != nil {
		return err
	}
	d.markOK()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case err := <-gone:
		return err
	}
}

// wsConn is a net.Conn over a WebSocket's binary messages (MQTT over
// WebSocket).
type wsConn struct {
	c *websocket.Conn
	r io.Reader
}

func (w *wsConn) Read(p []byte) (int, error) {
	for {
		if w.r == nil {
			_, r, err := w.c.NextReader()
			if err != nil {
				return 0, err
			}
			w.r = r
		}
		n, err := w.r.Read(p)
		if errors.Is(err, io.EOF) {
			w.r = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

func (w *wsConn) Write(p []byte) (int, error) {
	if err := w.c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (w *wsConn) Close() error         { return w.c.Close() }
func (w *wsConn) LocalAddr() net.Addr  { return w.c.LocalAddr() }
func (w *wsConn) RemoteAddr() net.Addr { return w.c.RemoteAddr() }
func (w *wsConn) SetDeadline(t time.Time) error {
	w.c.SetReadDeadline(t)
	return w.c.SetWriteDeadline(t)
}
func (w *wsConn) SetReadDeadline(t time.Time) error  { return w.c.SetReadDeadline(t) }
func (w *wsConn) SetWriteDeadline(t time.Time) error { return w.c.SetWriteDeadline(t) }

var _ net.Conn = (*wsConn)(nil)

// cmdMarker precedes a command id in a payload: "simcmd:ID;".
const cmdMarker = "simcmd:"

// scanIDs calls fn for every command id embedded in b.
func scanIDs(b []byte, fn func(id string)) {
	for {
		i := bytes.Index(b, []byte(cmdMarker))
		if i < 0 {
			return
		}
		b = b[i+len(cmdMarker):]
		j := bytes.IndexByte(b, ';')
		if j < 0 || j > 64 {
			continue
		}
		fn(string(b[:j]))
		b = b[j+1:]
	}
}
