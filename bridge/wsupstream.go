package bridge

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// maxCommandID bounds the id of a command from a WebSocket backend.
const maxCommandID = 128

// wsLink is a device's WebSocket session to a backend (upstream.driver:
// websocket). Protocol, JSON text frames both ways:
//
//	backend → edgeshim  {"id": "c1", "topic": "...", "payload": "...", "encoding": "base64"}   a command (id required)
//	edgeshim → backend  {"ack": "c1"}                                                           c1 was delivered
//	edgeshim → backend  {"topic": "...", "payload": "...", "encoding": "base64"}                 telemetry
//
// A command is acknowledged only once delivered (written to the device,
// or acked by it with ack: explicit). The backend gets at-least-once
// delivery by resending what was not acked after a reconnect (edgeshim
// matches resent ids against the commands it holds); a backend that does
// not resend gets at-most-once, since a command held by edgeshim is lost
// if edgeshim dies. Telemetry is sent once written to the socket: there is
// no backend acknowledgement, so a frame in flight when the socket breaks
// is lost (the device was already answered 202).
type wsLink struct {
	s    *session
	c    *websocket.Conn
	wmu  sync.Mutex    // one writer of data frames at a time
	gone chan struct{} // closed when the reader ends (the link is lost)
	ping *time.Timer   // the heartbeat: no goroutine per link
	wg   sync.WaitGroup
	once sync.Once
	code int // close code that ended the link, set before gone closes
}

var _ link = (*wsLink)(nil)

// maxPacket: a backend frame's size is bounded by limits.websocket, not by
// the link.
func (l *wsLink) maxPacket() uint32 { return 0 }

// ackAnywhere: the backend matches acks by command id, on any link of the
// session.
func (l *wsLink) ackAnywhere() bool { return true }

// wsUpstreamURL fills the device id (validated, path-escaped) into the
// backend URL template.
func wsUpstreamURL(tmpl, device string) string {
	return strings.ReplaceAll(tmpl, "{device}", url.PathEscape(device))
}

// connectWS dials the backend, and starts the reader and the heartbeat.
// There is no session state on the backend's side to resume: present is
// false, so commands held from an earlier link are kept and offered.
func (s *session) connectWS(ctx context.Context) (link, bool, error) {
	b := s.b
	ws := b.lim.WebSocket
	d := websocket.Dialer{
		NetDialContext: b.dialer.DialContext, TLSClientConfig: b.tlsCfg.Clone(),
		HandshakeTimeout: b.cfg.Upstream.ConnectTimeout.D(), ReadBufferSize: 1024, WriteBufferSize: 1024,
		WriteBufferPool: b.wsPool,
	}
	c, resp, err := d.DialContext(ctx, wsUpstreamURL(b.cfg.Upstream.URL, s.device), nil)
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		if resp != nil {
			return nil, false, fmt.Errorf("websocket upstream: %w (HTTP %d)", err, resp.StatusCode)
		}
		return nil, false, fmt.Errorf("websocket upstream: %w", err)
	}
	l := &wsLink{s: s, c: c, gone: make(chan struct{})}
	pongWait := ws.Ping.D() + ws.PongTimeout.D()
	c.SetReadLimit(int64(ws.MaxMessage))
	_ = c.SetReadDeadline(time.Now().Add(pongWait))
	c.SetPongHandler(func(string) error { return c.SetReadDeadline(time.Now().Add(pongWait)) })
	l.ping = time.AfterFunc(ws.Ping.D(), func() {
		if c.WriteControl(websocket.PingMessage, nil, time.Now().Add(ws.PongTimeout.D())) == nil {
			l.ping.Reset(ws.Ping.D())
		}
	})
	b.m.upSockets.Inc()
	l.wg.Add(1)
	b.wg.Add(1) // the reader's last act is reporting the loss to the session
	go func() {
		defer b.wg.Done()
		l.code = l.read()
		close(l.gone)
		l.wg.Done() // before linkLost, which closes the link and waits for it
		s.linkLost(l)
	}()
	return l, false, nil
}

// read takes commands from the backend until the socket fails, and
// returns the close code describing why.
func (l *wsLink) read() int {
	b := l.s.b
	for {
		mt, data, err := l.c.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			switch {
			case errors.Is(err, websocket.ErrReadLimit):
				// gorilla has sent the 1009 close frame
				b.log.Warn("backend frame over limits.websocket.max_message; reconnecting", "device", l.s.device)
				return websocket.CloseMessageTooBig
			case errors.As(err, &ce):
				b.log.Info("backend closed the websocket", "device", l.s.device, "code", ce.Code, "text", ce.Text)
				return ce.Code
			case isTimeout(err):
				b.log.Warn("websocket backend missed its heartbeat; reconnecting", "device", l.s.device)
				return websocket.CloseInternalServerErr
			}
			b.log.Info("backend websocket lost", "device", l.s.device, "err", err)
			return websocket.CloseAbnormalClosure
		}
		b.m.wsMessages.WithLabelValues("upstream", "in").Inc()
		cmd, err := parseBackendFrame(mt, data)
		if err != nil {
			b.log.Warn("bad frame from the websocket backend; closing", "device", l.s.device, "err", err)
			l.closeWith(websocket.ClosePolicyViolation, err.Error())
			return websocket.ClosePolicyViolation
		}
		if cmd == nil {
			continue
		}
		cmd.via = l
		if !b.rr.admitBackend(l.s, cmd) {
			continue
		}
		if cmd.topic == "" && b.cfg.Commands.Topic != "" {
			cmd.topic = topic(b.cfg.Commands.Topic, l.s.device)
		}
		l.s.add(cmd)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// errBadFrame is a backend frame edgeshim does not accept.
var errBadFrame = errors.New("bad backend frame")

// parseBackendFrame decodes a command frame. It returns nil, nil for a
// frame that carries no command (an ack or empty object, for forward
// compatibility).
func parseBackendFrame(mt int, data []byte) (*command, error) {
	if mt != websocket.TextMessage {
		return nil, fmt.Errorf("%w: binary frame, want JSON text", errBadFrame)
	}
	var f wsFrame
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("%w: %w", errBadFrame, err)
	}
	if f.ID == "" {
		if f.Payload != "" || f.Topic != "" {
			return nil, fmt.Errorf("%w: command without id", errBadFrame)
		}
		return nil, nil
	}
	if len(f.ID) > maxCommandID || !printable(f.ID) {
		return nil, fmt.Errorf("%w: id must be 1-%d printable characters", errBadFrame, maxCommandID)
	}
	payload := []byte(f.Payload)
	switch f.Encoding {
	case "":
	case "base64":
		var err error
		if payload, err = base64.StdEncoding.DecodeString(f.Payload); err != nil {
			return nil, fmt.Errorf("%w: payload: %w", errBadFrame, err)
		}
	default:
		return nil, fmt.Errorf("%w: encoding %q, want base64 or none", errBadFrame, f.Encoding)
	}
	return &command{id: f.ID, topic: f.Topic, payload: payload, req: backendRequest(f.ResponseRequired)}, nil
}

func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

func (l *wsLink) write(ctx context.Context, f wsFrame) error {
	data, err := json.Marshal(f)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(l.s.b.cfg.Upstream.PublishTimeout.D())
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	l.wmu.Lock()
	defer l.wmu.Unlock()
	select {
	case <-l.gone:
		return errors.New("websocket upstream lost")
	default:
	}
	_ = l.c.SetWriteDeadline(deadline)
	if err := l.c.WriteMessage(websocket.TextMessage, data); err != nil {
		// A backend too slow to read (or gone): after a failed write the
		// socket is unusable, so end it and let the session reconnect
		// rather than queue behind it.
		_ = l.c.Close()
		return err
	}
	l.s.b.m.wsMessages.WithLabelValues("upstream", "out").Inc()
	return nil
}

func (l *wsLink) publish(ctx context.Context, topic string, _ byte, payload []byte) error {
	f := wsFrame{Topic: topic}
	f.Payload, f.Encoding = encodePayload(payload)
	return l.write(ctx, f)
}

func (l *wsLink) ack(c *command) error {
	return l.write(context.Background(), wsFrame{Ack: c.id})
}

func (l *wsLink) done() <-chan struct{} { return l.gone }

// closeWith sends a close frame (best effort) and closes the socket.
func (l *wsLink) closeWith(code int, text string) {
	l.once.Do(func() {
		l.ping.Stop()
		_ = l.c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text), time.Now().Add(time.Second))
		_ = l.c.Close()
		l.s.b.m.upSockets.Dec()
	})
}

// close ends the link: 1000 when the session ended, 1001 when edgeshim
// shuts down; it waits for the reader.
func (l *wsLink) close() {
	code, text := websocket.CloseNormalClosure, "session ended"
	select {
	case <-l.s.b.closing:
		code, text = websocket.CloseGoingAway, "edgeshim shutting down"
	default:
	}
	lost := 0
	select {
	case <-l.gone:
		lost = l.code // already ended by the backend or a failure
		code, text = websocket.CloseInternalServerErr, "upstream lost"
	default:
	}
	l.closeWith(code, text)
	l.wg.Wait()
	l.s.b.m.upCloses.WithLabelValues(upCodeLabel(lost, code)).Inc()
}

// upCodeLabel is the metric label of the code that ended a link: the one
// received or detected if the link was lost, else the one sent.
func upCodeLabel(lost, sent int) string {
	code := sent
	if lost != 0 {
		code = lost
	}
	switch code {
	case 1000, 1001, 1006, 1008, 1009, 1011:
		return strconv.Itoa(code)
	}
	return "other"
}
