package bridge

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"time"
	"unicode/utf8"

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
}

var errPeerGone = errors.New("websocket closed")

// serveWS attaches a device WebSocket to the device's session: commands go
// out as frames, frames in are telemetry (or acks). The session ends, and
// its will fires, when the socket does.
func (b *Bridge) serveWS(w http.ResponseWriter, r *http.Request, pathDev string) {
	dev, ok := b.device(w, r, pathDev)
	if !ok {
		return
	}
	if !websocket.IsWebSocketUpgrade(r) {
		b.fail(w, r, http.StatusBadRequest, "websocket upgrade required")
		return
	}
	s, err := b.session(dev)
	if err != nil {
		b.fail(w, r, http.StatusServiceUnavailable, err.Error())
		return
	}
	b.wg.Add(1)
	defer b.wg.Done()
	c, err := b.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	s.attached.Add(1)
	defer s.attached.Add(-1)
	b.m.sockets.Inc()
	defer b.m.sockets.Dec()
	code := b.runWS(r.Context(), c, s)
	_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, ""), time.Now().Add(time.Second))
	c.Close()
	b.m.wsCloses.WithLabelValues(closeCodeLabel(code)).Inc()
	if code != websocket.CloseGoingAway {
		b.dropSession(s, "websocket_closed")
	}
}

func closeCodeLabel(code int) string {
	switch code {
	case websocket.CloseGoingAway:
		return "1001"
	case websocket.ClosePolicyViolation:
		return "1008"
	case websocket.CloseMessageTooBig:
		return "1009"
	case websocket.CloseInternalServerErr:
		return "1011"
	}
	return "1000"
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

// runWS runs the reader (telemetry, acks) and the writer (commands) until
// one ends, and returns the close code that says why.
func (b *Bridge) runWS(ctx context.Context, c *websocket.Conn, s *session) int {
	ws := b.lim.WebSocket
	pongWait := ws.Ping.D() + ws.PongTimeout.D()
	c.SetReadLimit(int64(ws.MaxMessage))
	c.SetReadDeadline(time.Now().Add(pongWait))
	c.SetPongHandler(func(string) error { return c.SetReadDeadline(time.Now().Add(pongWait)) })
	var pinger *time.Timer
	pinger = time.AfterFunc(ws.Ping.D(), func() {
		if c.WriteControl(websocket.PingMessage, nil, time.Now().Add(ws.PongTimeout.D())) == nil {
			pinger.Reset(ws.Ping.D())
		}
	})
	defer pinger.Stop()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	codes := make(chan int, 2)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); codes <- b.wsReader(ctx, c, s) }()
	go func() { defer wg.Done(); codes <- b.wsWriter(ctx, c, s) }()
	code := <-codes
	cancel()
	c.SetReadDeadline(time.Now()) // unblock the reader
	wg.Wait()
	return code
}

func (b *Bridge) wsReader(ctx context.Context, c *websocket.Conn, s *session) int {
	explicit := b.cfg.WebSocket.Ack == "explicit"
	for {
		mt, data, err := c.ReadMessage()
		if err != nil {
			if errors.Is(err, websocket.ErrReadLimit) {
				return websocket.CloseMessageTooBig
			}
			if ctx.Err() != nil {
				return websocket.CloseGoingAway
			}
			return websocket.CloseNormalClosure
		}
		b.m.wsMessages.WithLabelValues("device", "in").Inc()
		payload := data
		if b.cfg.WebSocket.Format == "json" {
			var f wsFrame
			if mt != websocket.TextMessage || json.Unmarshal(data, &f) != nil {
				return websocket.ClosePolicyViolation
			}
			if f.Ack != "" {
				if explicit {
					s.ack(f.Ack)
				}
				continue
			}
			payload = []byte(f.Payload)
			if f.Encoding == "base64" {
				if payload, err = base64.StdEncoding.DecodeString(f.Payload); err != nil {
					return websocket.ClosePolicyViolation
				}
			}
		}
		if b.cfg.Telemetry.Topic == "" {
			continue
		}
		if err := b.publishTelemetry(ctx, s, payload); err != nil {
			b.log.Warn("websocket telemetry not acknowledged; closing so the device resends", "device", s.device, "err", err)
			return websocket.CloseInternalServerErr
		}
	}
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

// wsWriter sends commands as they arrive; each is acknowledged upstream
// once written (or, in explicit mode, when the device's ack frame comes).
func (b *Bridge) wsWriter(ctx context.Context, c *websocket.Conn, s *session) int {
	explicit := b.cfg.WebSocket.Ack == "explicit"
	ackTimeout := b.cfg.Poll.AckTimeout.D()
	for {
		for _, cmd := range s.take(1, explicit, ackTimeout) {
			if err := b.writeFrame(c, cmd); err != nil {
				s.requeue([]*command{cmd})
				return websocket.ClosePolicyViolation
			}
			b.m.wsMessages.WithLabelValues("device", "out").Inc()
			if explicit {
				s.offered([]*command{cmd})
			} else {
				s.delivered([]*command{cmd})
			}
		}
		wake := s.wakeChan()
		if s.hasPending() {
			continue
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return websocket.CloseGoingAway
		case <-b.closing:
			return websocket.CloseGoingAway
		case <-s.ctx.Done():
			return websocket.ClosePolicyViolation // evicted
		}
	}
}

func (b *Bridge) writeFrame(c *websocket.Conn, cmd *command) error {
	c.SetWriteDeadline(time.Now().Add(b.lim.WebSocket.PongTimeout.D()))
	if b.cfg.WebSocket.Format == "raw" {
		return c.WriteMessage(websocket.BinaryMessage, cmd.payload)
	}
	f := wsFrame{ID: cmd.id, Topic: cmd.topic, Payload: string(cmd.payload)}
	if !utf8.Valid(cmd.payload) {
		f.Payload, f.Encoding = base64.StdEncoding.EncodeToString(cmd.payload), "base64"
	}
	data, _ := json.Marshal(f)
	return c.WriteMessage(websocket.TextMessage, data)
}
