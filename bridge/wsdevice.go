package bridge

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"
	"unicode/utf8"

	"github.com/edgeshim/edgeshim/limits/accesslog"
	"github.com/edgeshim/edgeshim/limits/wsnet"
	"github.com/gorilla/websocket"
)

// wsFrame is a json-format frame. From edgeshim: a command {id, topic,
// payload[, encoding]}. From the device: telemetry {payload[, encoding]}
// or an acknowledgement {ack: id}.
type wsFrame struct {
	ID       string `json:"id,omitempty"`
	Topic    string `json:"topic,omitempty"`
	Payload  string `json:"payload,omitempty"`
	Encoding string `json:"encoding,omitempty"`
	Ack      string `json:"ack,omitempty"`
	// ExpiresIn: a command's remaining expiry in whole seconds, if any.
	ExpiresIn *int64 `json:"expires_in,omitempty"`
	// Request/response (reqresp.go): the device's answer {id, response,
	// status}; edgeshim's answer to a WebSocket backend {response_to,
	// status, payload}.
	Response   *string `json:"response,omitempty"`
	Status     int     `json:"status,omitempty"`
	ResponseTo string  `json:"response_to,omitempty"`
	requestInfo
}

// encodePayload carries a payload in JSON: valid UTF-8 as a string, any
// other bytes base64 with encoding "base64".
func encodePayload(p []byte) (payload, encoding string) {
	if utf8.Valid(p) {
		return string(p), ""
	}
	return base64.StdEncoding.EncodeToString(p), "base64"
}

// serveWS attaches a device WebSocket to the device's session: commands go
// out as frames, frames in are telemetry (or acks). The session ends, and
// its will fires, when the socket does.
//
// Once upgraded, the socket's reader is parked (wsnet.Serve) and ServeHTTP
// returns, so that net/http releases its state for the connection (the
// request and its 4 KiB buffers) with the handler goroutine. An idle
// socket has no goroutine: a parked reader, a ping timer and the
// gorilla/TLS state; a reader goroutine exists only while the device
// sends, a writer goroutine only while commands are being written.
func (b *Bridge) serveWS(w http.ResponseWriter, r *http.Request, pathDev string) {
	dev, ok := b.device(w, r, pathDev)
	if !ok {
		return
	}
	if !websocket.IsWebSocketUpgrade(r) {
		b.fail(w, r, http.StatusBadRequest, "websocket upgrade required")
		return
	}
	if b.draining() {
		w.Header().Set("Connection", "close")
		b.retry.Reject(w, http.StatusServiceUnavailable, "shutting down")
		return
	}
	s, err := b.session(dev)
	if err != nil {
		b.fail(w, r, http.StatusServiceUnavailable, err.Error())
		return
	}
	b.wg.Add(1)
	u, err := wsnet.Upgrade(&b.upgrader, w, r, nil)
	if err != nil {
		b.wg.Done()
		return
	}
	s.attached.Add(1)
	b.m.sockets.Inc()
	x := &wsConn{b: b, s: s, c: u.Conn, running: 1, rec: accesslog.FromContext(r.Context()).Hold()}
	ws := b.lim.WebSocket
	sock, err := wsnet.Serve(b.park, u, wsnet.KeepOptions{Ping: ws.Ping.D(), PongTimeout: ws.PongTimeout.D(), MaxMessage: int64(ws.MaxMessage)},
		x.message, nil, func() { x.exited(false) })
	if err != nil { // the parker is closed: shutting down
		s.attached.Add(-1)
		b.m.sockets.Dec()
		b.wg.Done()
		return
	}
	x.keep = sock.Keeper
	// The session ending (eviction, shutdown) closes the socket, without a
	// goroutine waiting for it.
	x.stopEnd = context.AfterFunc(s.ctx, func() {
		if context.Cause(s.ctx).Error() == reasonShutdown {
			x.close(websocket.CloseGoingAway, "shutdown")
		} else {
			x.close(websocket.ClosePolicyViolation, "evicted")
		}
	})
	// Draining closes it 1001 at once; the session stays until Shutdown.
	x.stopDrain = context.AfterFunc(b.drain.context(), func() {
		b.drain.sockets.Add(1)
		x.close(websocket.CloseGoingAway, "shutdown")
	})
	s.setOutlet(x)
	sock.Start() // the reader: parked until the device sends something
	x.kick()     // commands queued before the socket came
}

// dropSession ends s and removes it from the registry (if still there).
func (b *Bridge) dropSession(s *session, reason string) {
	s.end(reason)
	b.mu.Lock()
	if cur, ok := b.sessions.Peek(s.device); ok && cur == s {
		b.sessions.Remove(s.device)
	}
	b.mu.Unlock()
}

// wsConn is one device WebSocket attached to its session.
type wsConn struct {
	b       *Bridge
	s       *session
	c       *websocket.Conn
	keep    *wsnet.Keeper
	stopEnd func() bool
	// stopDrain stops the close on drain; set before the socket starts.
	stopDrain func() bool
	rec       *accesslog.Record // the socket's access log line, written when it ends

	mu      sync.Mutex
	writing bool // a writer goroutine is running
	running int  // goroutines (reader, writer) not yet returned
}

// setOutlet makes x the socket the session wakes for new commands (the
// latest attached one); x == nil detaches o if it is still the outlet.
func (s *session) setOutlet(x *wsConn) {
	s.mu.Lock()
	s.outlet = x
	s.mu.Unlock()
}

func (s *session) clearOutlet(x *wsConn) {
	s.mu.Lock()
	if s.outlet == x {
		s.outlet = nil
	}
	s.mu.Unlock()
}

// close closes the socket once, saying why.
func (x *wsConn) close(code int, reason string) { x.keep.Close(code, reason) }

// exited is the last call of the reader and writer goroutines (a writer
// still marked as such clears the mark); the last one to return accounts
// for the socket.
func (x *wsConn) exited(writer bool) {
	x.mu.Lock()
	if writer {
		x.writing = false
	}
	x.running--
	last := x.running == 0
	x.mu.Unlock()
	if !last {
		return
	}
	b, s := x.b, x.s
	x.stopEnd()
	x.stopDrain()
	s.clearOutlet(x)
	code, reason := x.keep.Why()
	b.log.Debug("device websocket closed", "device", s.device, "code", code, "reason", reason)
	x.rec.Finish(code, reason)
	b.m.wsCloses.WithLabelValues(strconv.Itoa(code), reason).Inc()
	b.m.sockets.Dec()
	s.attached.Add(-1)
	if code != websocket.CloseGoingAway {
		b.dropSession(s, "websocket_closed")
	}
	b.wg.Done()
}

// message handles one frame from the device: telemetry or an ack. It runs
// in the socket's reader, which exists only while the device sends.
func (x *wsConn) message(mt int, r io.Reader) (int, string) {
	data, err := io.ReadAll(r)
	if err != nil {
		return wsnet.ReadCloseCode(err)
	}
	return x.b.wsMessage(x.s, mt, data)
}

// wsMessage handles one frame; it returns 0 to go on, or the close code
// and reason that end the socket.
func (b *Bridge) wsMessage(s *session, mt int, data []byte) (int, string) {
	b.m.wsMessages.WithLabelValues("device", "in").Inc()
	payload := data
	if b.cfg.WebSocket.Format == "json" {
		var f wsFrame
		if mt != websocket.TextMessage || json.Unmarshal(data, &f) != nil {
			return websocket.ClosePolicyViolation, "bad_frame"
		}
		if f.Response != nil {
			return b.wsResponse(s, f)
		}
		if f.Ack != "" {
			if b.cfg.WebSocket.Ack == "explicit" {
				s.ack(f.Ack)
			}
			return 0, ""
		}
		payload = []byte(f.Payload)
		if f.Encoding == "base64" {
			var err error
			if payload, err = base64.StdEncoding.DecodeString(f.Payload); err != nil {
				return websocket.ClosePolicyViolation, "bad_frame"
			}
		}
	}
	if b.cfg.Telemetry.Topic == "" {
		return 0, ""
	}
	if err := b.publishTelemetry(s.ctx, s, payload); err != nil {
		b.log.Warn("websocket telemetry not acknowledged; closing so the device resends", "device", s.device, "err", err)
		return websocket.CloseInternalServerErr, "upstream_lost"
	}
	return 0, ""
}

// kick starts the writer unless it runs (or the socket is closed): called
// by the session when a command arrives.
func (x *wsConn) kick() {
	x.mu.Lock()
	if x.writing || x.isClosed() {
		x.mu.Unlock()
		return
	}
	x.writing = true
	x.running++
	x.mu.Unlock()
	go x.write()
}

// write sends the session's commands until none is left, then returns:
// an idle socket has no writer goroutine. Each command is acknowledged
// upstream once written (or, in explicit mode, when the device's ack frame
// comes). A command the device does not take within pong_timeout is put
// back, unacknowledged, and the socket is closed 1008 (slow reader): the
// broker keeps it for the next connection. Commands wait in the session,
// at most upstream.receive_maximum of them; the rest wait at the broker.
func (x *wsConn) write() {
	b, s := x.b, x.s
	explicit := b.cfg.WebSocket.Ack == "explicit"
	ackTimeout := b.cfg.Poll.AckTimeout.D()
	for {
		cmds := s.take(1, explicit, ackTimeout)
		if len(cmds) == 0 {
			x.mu.Lock()
			x.writing = false
			x.mu.Unlock()
			// A command may have come between take and here, its kick
			// seeing this writer still running.
			if !s.hasPending() || !x.claimWriter() {
				x.exited(false)
				return
			}
			continue
		}
		if cmds = b.dropExpired(s, cmds); len(cmds) == 0 {
			continue // expired while it waited: acknowledged, never sent
		}
		cmd := cmds[0]
		x.keep.WriteDeadline()
		if err := b.writeFrame(x.c, cmd); err != nil {
			s.requeue(cmds)
			code, reason := wsnet.WriteCloseCode(err)
			x.close(code, reason)
			break
		}
		b.m.wsMessages.WithLabelValues("device", "out").Inc()
		if err := awaitReceivedIf(s.ctx, !explicit, x.c.NetConn(), b.cfg.Poll.AckWriteTimeout.D()); err != nil {
			// Written is not received: the command stays for the next connection.
			if errors.Is(err, errNotReceived) {
				b.m.notReceived.Inc()
			}
			s.requeue(cmds)
			x.close(websocket.ClosePolicyViolation, "slow_reader")
			break
		}
		s.settle(cmds, explicit, nil, x.rec)
	}
	x.exited(true)
}

func (x *wsConn) isClosed() bool {
	code, _ := x.keep.Why()
	return code != 0
}

// claimWriter makes the calling goroutine the writer again, if no other
// is and the socket is open.
func (x *wsConn) claimWriter() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.writing || x.isClosed() {
		return false
	}
	x.writing = true
	return true
}

// errUnavailable: no upstream connection came up within the publish
// timeout.
var errUnavailable = errors.New("upstream unavailable")

// publishTelemetry publishes a device's telemetry on its session's link
// and waits for the upstream to take it, within upstream.publish_timeout.
func (b *Bridge) publishTelemetry(ctx context.Context, s *session, payload []byte) error {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Upstream.PublishTimeout.D())
	defer cancel()
	l := s.waitConnected(ctx)
	if l == nil {
		b.m.telemetry.WithLabelValues("unavailable").Inc()
		return errUnavailable
	}
	if err := l.publish(ctx, topic(b.cfg.Telemetry.Topic, s.device), byte(*b.cfg.Telemetry.QoS), payload); err != nil {
		b.m.telemetry.WithLabelValues("failed").Inc()
		return err
	}
	b.m.telemetry.WithLabelValues("published").Inc()
	return nil
}

func (b *Bridge) writeFrame(c *websocket.Conn, cmd *command) error {
	if b.cfg.WebSocket.Format == "raw" {
		return c.WriteMessage(websocket.BinaryMessage, cmd.payload)
	}
	f := wsFrame{ID: cmd.id, Topic: cmd.topic, requestInfo: cmd.requestInfo()}
	f.Payload, f.Encoding = encodePayload(cmd.payload)
	if left := cmd.expiresIn(b.now()); left >= 0 {
		f.ExpiresIn = &left
	}
	data, _ := json.Marshal(f)
	return c.WriteMessage(websocket.TextMessage, data)
}
