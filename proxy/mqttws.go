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
	"github.com/edgeshim/edgeshim/limits/wsnet"
	"github.com/gorilla/websocket"
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
	base     context.Context // cancelled on shutdown
	m        *metrics
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
	return &mqttWS{
		broker: host, ws: ws, log: d.log.With("route", name), upgrades: d.upgrades, base: d.base, m: d.m,
		dialer: net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second},
		upgrader: websocket.Upgrader{
			Subprotocols: []string{"mqtt"},
			// Small buffers: an idle relayed connection should cost little.
			// The read buffer is the socket's own (512 B; larger payloads
			// are read past it); write buffers come from the pool only
			// while a message is written.
			ReadBufferSize: 512, WriteBufferSize: 1024, WriteBufferPool: &sync.Pool{},
			EnableCompression: false,
			// MQTT authenticates at the broker; dashboards are often served
			// from another origin.
			CheckOrigin: func(*http.Request) bool { return true },
		},
	}, nil
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
	if err != nil {
		m.log.Warn("broker unreachable", "broker", m.broker, "err", err)
		writeError(w, http.StatusBadGateway, "broker unavailable")
		return
	}
	m.upgrades.Add(1)
	wc, err := m.upgrader.Upgrade(w, r, nil)
	if err != nil {
		bc.Close()
		m.upgrades.Done()
		return // the upgrader has answered
	}
	m.m.wsOpen.Inc()
	m.relay(wc, bc)
	// Returning lets net/http drop its state for the connection (request,
	// 4 KiB read and write buffers) and this goroutine: an idle relayed
	// socket costs its two copiers and little else.
}
func hasMQTTSubprotocol(r *http.Request) bool {
	for _, p := range websocket.Subprotocols(r) {
		if p == "mqtt" {
			return true
		}
	}
	return false
}

// relayConn is one relayed socket: two copiers, the heartbeat and a
// shutdown hook. The first to end decides the close code and closes both
// ends; the last copier to return accounts for the socket.
type relayConn struct {
	m            *mqttWS
	wc           *websocket.Conn
	bc           net.Conn
	keep         *wsnet.Keeper
	stopShutdown func() bool
	left         atomic.Int32 // copiers running
}

// relay starts the copiers and returns.
func (m *mqttWS) relay(wc *websocket.Conn, bc net.Conn) {
	x := &relayConn{m: m, wc: wc, bc: bc}
	x.left.Store(2)
	x.keep = wsnet.Keep(wc, m.ws.Ping.D(), m.ws.PongTimeout.D(), int64(m.ws.MaxMessage), func() { bc.Close() })
	x.stopShutdown = context.AfterFunc(m.base, func() { x.keep.Close(websocket.CloseGoingAway, "shutdown") })
	go x.clientToBroker()
	go x.brokerToClient()
}

// copierDone is each copier's last call.
func (x *relayConn) copierDone(code int, reason string, err error) {
	if x.keep.Close(code, reason) {
		x.m.log.Debug("mqtt websocket closed", "code", code, "reason", reason, "err", err)
	}
	if x.left.Add(-1) > 0 {
		return
	}
	x.stopShutdown()
	code, reason = x.keep.Why()
	x.m.m.wsOpen.Dec()
	x.m.m.wsCloses.WithLabelValues(strconv.Itoa(code), reason).Inc()
	x.m.upgrades.Done()
}

func (x *relayConn) clientToBroker() {
	toBroker := x.m.m.wsMessages.WithLabelValues("to_broker")
	for {
		mt, rd, err := x.wc.NextReader()
		if err != nil {
			code, reason := wsnet.ReadCloseCode(err)
			x.copierDone(code, reason, err)
			return
		}
		if mt != websocket.BinaryMessage {
			x.copierDone(websocket.CloseUnsupportedData, "text_frame", errors.New("text frame on an MQTT socket"))
			return
		}
		if _, err := io.Copy(x.bc, rd); err != nil {
			if errors.Is(err, websocket.ErrReadLimit) {
				x.copierDone(websocket.CloseMessageTooBig, "too_big", err)
			} else {
				x.copierDone(websocket.CloseInternalServerErr, "upstream_lost", err)
			}
			return
		}
		toBroker.Inc()
	}
}

// relayBufs holds the broker-to-client read buffers: a buffer is taken
// only once the broker has sent something, so idle sockets hold none.
var relayBufs = sync.Pool{New: func() any { b := make([]byte, 4096); return &b }}

func (x *relayConn) brokerToClient() {
	toClient := x.m.m.wsMessages.WithLabelValues("to_client")
	for {
		if err := waitReadable(x.bc); err != nil {
			x.copierDone(websocket.CloseInternalServerErr, "upstream_lost", err) // 1011
			return
		}
		buf := relayBufs.Get().(*[]byte)
		n, err := x.bc.Read(*buf)
		var werr error
		if n > 0 {
			// A client that does not take a message within pong_timeout
			// is closed (1008), not buffered for without end.
			x.keep.WriteDeadline()
			werr = x.wc.WriteMessage(websocket.BinaryMessage, (*buf)[:n])
		}
		relayBufs.Put(buf)
		switch {
		case werr != nil:
			code, reason := wsnet.WriteCloseCode(werr)
			x.copierDone(code, reason, werr)
			return
		case err != nil:
			x.copierDone(websocket.CloseInternalServerErr, "upstream_lost", err) // 1011
			return
		}
		toClient.Inc()
	}
}
