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
	"time"

	"github.com/edgeshim/edgeshim/config"
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
		broker: host, ws: ws, log: d.log.With("route", name), upgrades: d.upgrades, m: d.m,
		dialer: net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second},
		upgrader: websocket.Upgrader{
			Subprotocols: []string{"mqtt"},
			// Small buffers: an idle relayed connection should cost little.
			ReadBufferSize: 1024, WriteBufferSize: 1024, WriteBufferPool: &sync.Pool{},
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
	m.upgrades.Add(1)
	defer m.upgrades.Done()
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	bc, err := m.dialer.DialContext(ctx, "tcp", m.broker)
	cancel()
	if err != nil {
		m.log.Warn("broker unreachable", "broker", m.broker, "err", err)
		writeError(w, http.StatusBadGateway, "broker unavailable")
		return
	}
	wc, err := m.upgrader.Upgrade(w, r, nil)
	if err != nil {
		bc.Close()
		return // the upgrader has answered
	}
	m.m.wsOpen.Inc()
	defer m.m.wsOpen.Dec()
	code := m.relay(r.Context(), wc, bc)
	m.m.wsCloses.WithLabelValues(strconv.Itoa(code)).Inc()
}

func hasMQTTSubprotocol(r *http.Request) bool {
	for _, p := range websocket.Subprotocols(r) {
		if p == "mqtt" {
			return true
		}
	}
	return false
}

// relay copies both ways with two named copiers; the first to stop decides
// the close code, both ends are closed and the sibling is awaited.
func (m *mqttWS) relay(ctx context.Context, wc *websocket.Conn, bc net.Conn) int {
	toBroker, toClient := m.m.wsMessages.WithLabelValues("to_broker"), m.m.wsMessages.WithLabelValues("to_client")
	ping, pongWait := m.ws.Ping.D(), m.ws.Ping.D()+m.ws.PongTimeout.D()
	wc.SetReadLimit(int64(m.ws.MaxMessage))
	wc.SetReadDeadline(time.Now().Add(pongWait))
	wc.SetPongHandler(func(string) error { return wc.SetReadDeadline(time.Now().Add(pongWait)) })
	// One timer per connection, no goroutine parked on a ticker.
	var pinger *time.Timer
	pinger = time.AfterFunc(ping, func() {
		if wc.WriteControl(websocket.PingMessage, nil, time.Now().Add(m.ws.PongTimeout.D())) == nil {
			pinger.Reset(ping)
		}
	})
	defer pinger.Stop()

	type result struct {
		code int
		err  error
	}
	done := make(chan result, 2)
	go func() { // clientToBroker
		for {
			mt, rd, err := wc.NextReader()
			if err != nil {
				if errors.Is(err, websocket.ErrReadLimit) {
					done <- result{websocket.CloseMessageTooBig, err}
				} else {
					done <- result{websocket.CloseNormalClosure, err}
				}
				return
			}
			if mt != websocket.BinaryMessage {
				done <- result{websocket.CloseUnsupportedData, errors.New("text frame on an MQTT socket")}
				return
			}
			if _, err := io.Copy(bc, rd); err != nil {
				done <- result{websocket.CloseInternalServerErr, err}
				return
			}
			toBroker.Inc()
		}
	}()
	go func() { // brokerToClient
		buf := make([]byte, 4096)
		for {
			n, err := bc.Read(buf)
			if n > 0 {
				// A client that does not read in time is closed, not
				// buffered for without end.
				wc.SetWriteDeadline(time.Now().Add(m.ws.PongTimeout.D()))
				if werr := wc.WriteMessage(websocket.BinaryMessage, buf[:n]); werr != nil {
					done <- result{websocket.ClosePolicyViolation, werr}
					return
				}
				toClient.Inc()
			}
			if err != nil {
				done <- result{websocket.CloseInternalServerErr, err} // 1011: upstream lost
				return
			}
		}
	}()
	var first result
	select {
	case first = <-done:
	case <-ctx.Done():
		first = result{websocket.CloseGoingAway, ctx.Err()}
	}
	_ = wc.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(first.code, ""), time.Now().Add(time.Second))
	m.log.Debug("mqtt websocket closed", "code", first.code, "reason", first.err)
	wc.Close()
	bc.Close()
	<-done
	if first.code == websocket.CloseGoingAway {
		<-done
	}
	return first.code
}
