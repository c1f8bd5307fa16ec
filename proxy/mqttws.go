package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgeshim/edgeshim/config"
	"github.com/edgeshim/edgeshim/limits/accesslog"
	"github.com/edgeshim/edgeshim/limits/faillog"
	"github.com/edgeshim/edgeshim/limits/park"
	"github.com/edgeshim/edgeshim/limits/wsnet"
	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
)

// mqttWS relays MQTT over WebSocket (subprotocol "mqtt") to a broker's TCP
// port: browser dashboards and MQTT.js clients reach a broker that does not
// face the internet, through edgeshim's TLS and limits.
type mqttWS struct {
	broker   string // host:port
	ws       config.WebSocket
	log      *slog.Logger
	dialer   net.Dialer
	upgrader websocket.Upgrader
	upgrades *sync.WaitGroup
	park     *park.Parker // where idle sockets wait
	m        *metrics
	fails    *faillog.Log // broker unreachable, aggregated
	// messages relayed, by direction
	toBroker, toClient prometheus.Counter

	// The open sockets, closed (1001) when the server's base context is
	// cancelled (shutdown): one hook
	// for all instead of a context.AfterFunc per socket (~0.4 KiB each).
	mu       sync.Mutex
	open     map[*relayConn]struct{}
	shutdown bool
}

func newMQTTWS(name string, rc config.Route, d proxyDeps) (*mqttWS, error) {
	u, err := url.Parse(rc.MQTTWS.Broker)
	if err != nil {
		return nil, err
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "1883")
	}
	ws := d.cfg.Limits.WebSocket
	m := &mqttWS{
		broker: host, ws: ws, log: d.log.With("route", name), upgrades: d.upgrades, park: d.park, m: d.m,
		fails:    faillog.New(faillog.Options{Logger: d.log.With("route", name)}),
		toBroker: d.m.wsMessages.WithLabelValues("to_broker"), toClient: d.m.wsMessages.WithLabelValues("to_client"),
		dialer: net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second},
		upgrader: websocket.Upgrader{
			Subprotocols: []string{"mqtt"},
			// Small buffers: an idle relayed connection should cost little.
			// The read buffer is the socket's own (512 B, see
			// wsnet.Upgrade; larger payloads are read past it); write
			// buffers come from the pool only while a message is written.
			WriteBufferSize: 1024, WriteBufferPool: &sync.Pool{},
			EnableCompression: false,
			// MQTT authenticates at the broker; dashboards are often served
			// from another origin.
			CheckOrigin: func(*http.Request) bool { return true },
		},
		open: map[*relayConn]struct{}{},
	}
	closeOn := d.drain // the sockets close 1001 when the drain starts
	if closeOn == nil {
		closeOn = d.base
	}
	context.AfterFunc(closeOn, m.closeAll)
	return m, nil
}

// closeAll closes the open sockets (1001) at shutdown, each in a goroutine
// of its own: a close frame may wait up to a second on a slow reader.
func (m *mqttWS) closeAll() {
	m.fails.Close()
	m.mu.Lock()
	m.shutdown = true
	xs := make([]*relayConn, 0, len(m.open))
	for x := range m.open {
		xs = append(xs, x)
	}
	m.mu.Unlock()
	for _, x := range xs {
		go x.ws.Close(websocket.CloseGoingAway, "shutdown")
	}
}

// track adds x to the open sockets, or reports false at shutdown.
func (m *mqttWS) track(x *relayConn) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.shutdown {
		return false
	}
	m.open[x] = struct{}{}
	return true
}

func (m *mqttWS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !websocket.IsWebSocketUpgrade(r) {
		writeError(w, http.StatusBadRequest, "websocket upgrade required")
		return
	}
	if !hasMQTTSubprotocol(r) {
		writeError(w, http.StatusBadRequest, `subprotocol "mqtt" required`)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	bc, err := m.dialer.DialContext(ctx, "tcp", m.broker)
	cancel()
	rec := accesslog.FromContext(r.Context())
	rec.SetUpstream(m.broker)
	if err != nil {
		m.fails.Fail("broker "+m.broker, "broker unreachable", "broker", m.broker, "err", err)
		writeError(w, http.StatusBadGateway, "broker unavailable")
		return
	}
	m.fails.Recover("broker "+m.broker, "broker reachable again", "broker", m.broker)
	m.upgrades.Add(1)
	wc, err := wsnet.Upgrade(&m.upgrader, w, r, nil)
	if err != nil {
		bc.Close()
		m.upgrades.Done()
		return // the upgrader has answered
	}
	m.m.wsOpen.Inc()
	m.relay(wc, bc, rec.Hold())
	// Returning lets net/http drop its state for the connection (request,
	// 4 KiB read and write buffers) and this goroutine: an idle relayed
	// socket has no goroutine at all, both directions are parked.
}
func hasMQTTSubprotocol(r *http.Request) bool {
	for _, p := range websocket.Subprotocols(r) {
		if p == "mqtt" {
			return true
		}
	}
	return false
}

// relayConn is one relayed socket: two directions, each parked in the
// parker while idle (no goroutine, no buffer), and the heartbeat. The
// first to end decides the close code and closes both ends; the last
// direction to finish accounts for the socket.
type relayConn struct {
	m    *mqttWS
	ws   *wsnet.Socket
	bc   net.Conn
	bh   *park.Handle      // broker to client
	left atomic.Int32      // directions not finished
	rec  *accesslog.Record // its access log line, written when it ends
}

// relay registers both directions and returns.
func (m *mqttWS) relay(u *wsnet.Upgraded, bc net.Conn, rec *accesslog.Record) {
	x := &relayConn{m: m, bc: bc, rec: rec}
	x.left.Store(2)
	bh, err := m.park.Register(bc, x.brokerReady)
	var ws *wsnet.Socket
	if err == nil {
		x.bh = bh
		ws, err = wsnet.Serve(m.park, u, wsnet.KeepOptions{Ping: m.ws.Ping.D(), PongTimeout: m.ws.PongTimeout.D(), MaxMessage: int64(m.ws.MaxMessage)},
			x.clientMessage, x.closeBroker, x.finished)
	}
	if err != nil { // the parker is closed: shutting down
		if bh != nil {
			bh.Stop()
		}
		u.Close()
		bc.Close()
		x.left.Store(1)
		x.finished()
		return
	}
	x.ws = ws
	if !m.track(x) {
		ws.Close(websocket.CloseGoingAway, "shutdown")
	}
	ws.Start()
	if !bh.Park() {
		ws.Close(websocket.CloseInternalServerErr, "upstream_lost")
		x.finished()
	}
}

// closeBroker runs once the WebSocket is closed: it closes the broker's
// connection and finishes the broker direction if it was parked.
func (x *relayConn) closeBroker() {
	parked := x.bh.Stop() // out of the poller before the descriptor is closed
	x.bc.Close()
	if parked {
		x.finished()
	}
}

// finished is each direction's last call; the last one accounts for the
// socket.
func (x *relayConn) finished() {
	if x.left.Add(-1) > 0 {
		return
	}
	code, reason := websocket.CloseGoingAway, "shutdown"
	if x.ws != nil {
		code, reason = x.ws.Why()
		x.m.mu.Lock()
		delete(x.m.open, x)
		x.m.mu.Unlock()
	}
	x.m.log.Debug("mqtt websocket closed", "code", code, "reason", reason)
	x.rec.Finish(code, reason)
	x.m.m.wsOpen.Dec()
	x.m.m.wsCloses.WithLabelValues(strconv.Itoa(code), reason).Inc()
	x.m.upgrades.Done()
}

// clientMessage relays one message from the client to the broker.
func (x *relayConn) clientMessage(mt int, r io.Reader) (int, string) {
	if mt != websocket.BinaryMessage {
		return websocket.CloseUnsupportedData, "text_frame" // a text frame on an MQTT socket
	}
	if _, err := io.Copy(x.bc, r); err != nil {
		if errors.Is(err, websocket.ErrReadLimit) {
			return websocket.CloseMessageTooBig, "too_big"
		}
		return websocket.CloseInternalServerErr, "upstream_lost"
	}
	x.m.toBroker.Inc()
	return 0, ""
}

// relayBufs holds the broker-to-client read buffers: a buffer is taken
// only once the broker has sent something, so idle sockets hold none.
var relayBufs = sync.Pool{New: func() any { b := make([]byte, 4096); return &b }}

// brokerReady relays what the broker sent, once its connection is
// readable, and parks it again.
func (x *relayConn) brokerReady() {
	buf := relayBufs.Get().(*[]byte)
	n, err := x.bc.Read(*buf)
	var werr error
	if n > 0 {
		// A client that does not take a message within pong_timeout
		// is closed (1008), not buffered for without end.
		x.ws.WriteDeadline()
		werr = x.ws.C.WriteMessage(websocket.BinaryMessage, (*buf)[:n])
	}
	relayBufs.Put(buf)
	switch {
	case werr != nil:
		x.ws.Close(wsnet.WriteCloseCode(werr))
		x.finished()
		return
	case err != nil:
		x.ws.Close(websocket.CloseInternalServerErr, "upstream_lost") // 1011
		x.finished()
		return
	}
	x.m.toClient.Inc()
	if !x.bh.Park() {
		x.ws.Close(websocket.CloseInternalServerErr, "upstream_lost")
		x.finished()
	}
}
