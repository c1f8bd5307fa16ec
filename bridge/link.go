package bridge

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// link is one connection of a device session to its upstream: an MQTT
// broker (mqttLink) or a WebSocket backend (wsLink). A session holds at
// most one at a time and replaces it after a loss.
type link interface {
	// publish sends telemetry; it returns once the upstream took it
	// (MQTT QoS 1: the PUBACK; WebSocket: the frame written).
	publish(ctx context.Context, topic string, qos byte, payload []byte) error
	// ack tells the upstream a command it sent on this link was delivered.
	ack(c *command) error
	// done is closed when the link is lost.
	done() <-chan struct{}
	// close ends the link for good and waits for its goroutines: the
	// session ended (MQTT: DISCONNECT 0x04, so the will fires).
	close()
}

// ackInterval is how often a session's manual PUBACKs are flushed.
const ackInterval = time.Second

// errRefused is an upstream's refusal of a publish.
var errRefused = errors.New("upstream refused publish")

// mqttLink is a paho MQTT 5 client connection.
type mqttLink struct {
	cl        *paho.Client
	maxPacket uint32 // from CONNACK; 0 = no limit
}

var _ link = (*mqttLink)(nil)

func (l *mqttLink) publish(ctx context.Context, topic string, qos byte, payload []byte) error {
	resp, err := l.cl.Publish(ctx, &paho.Publish{Topic: topic, QoS: qos, Payload: payload})
	if err != nil {
		return err
	}
	if resp != nil && resp.ReasonCode >= 0x80 {
		return fmt.Errorf("%w: reason %#x", errRefused, resp.ReasonCode)
	}
	return nil
}

// ack sends the PUBACK; only the connection the PUBLISH came on may.
func (l *mqttLink) ack(c *command) error { return l.cl.Ack(c.pub) }

func (l *mqttLink) done() <-chan struct{} { return l.cl.Done() }

func (l *mqttLink) close() {
	_ = l.cl.Disconnect(&paho.Disconnect{ReasonCode: 0x04}) // with will: presence turns offline
	select {
	case <-l.cl.Done():
	case <-time.After(2 * time.Second):
	}
}

// connectMQTT opens the session's MQTT connection: CONNECT with a
// persistent session (clean start false, session expiry), the will, the
// command subscription and the online presence.
func (s *session) connectMQTT(ctx context.Context) (link, bool, error) {
	u := s.b.cfg.Upstream
	conn, err := s.b.dial(ctx)
	if err != nil {
		return nil, false, err
	}
	clientID := topic(u.ClientID, s.device)
	ml := &mqttLink{}
	cl := paho.NewClient(paho.ClientConfig{
		ClientID:                   clientID,
		Conn:                       conn,
		EnableManualAcknowledgment: true,
		PingHandler:                &timerPinger{},
		// paho sends manual acks from a ticker per session; its 50ms
		// default wakes 20 times a second per idle session (5M wake-ups/s
		// for 250k devices). An ack a little later only delays the
		// broker's inflight window; if the connection drops meanwhile the
		// command is redelivered, which at-least-once allows.
		SendAcksInterval: ackInterval,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			p := pr.Packet
			if p.Duplicate() {
				s.b.m.redelivered.Inc()
			}
			s.add(&command{topic: p.Topic, payload: p.Payload, pub: p, via: ml, dup: p.Duplicate()})
			return true, nil
		}},
		OnClientError: func(err error) {
			s.b.log.Debug("upstream client error", "device", s.device, "err", err)
		},
		OnServerDisconnect: func(d *paho.Disconnect) {
			s.b.log.Info("broker disconnected session", "device", s.device, "reason_code", d.ReasonCode)
		},
	})
	ml.cl = cl
	expiry := uint32(u.SessionExpiry.D() / time.Second)
	recvMax := uint16(u.ReceiveMaximum)
	cp := &paho.Connect{
		ClientID:   clientID,
		KeepAlive:  uint16(u.Keepalive.D() / time.Second),
		CleanStart: false,
		// ReceiveMaximum also sizes paho's receive queue: without it,
		// 64Ki slots (512 KiB) per session.
		Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry, ReceiveMaximum: &recvMax},
	}
	if p := s.b.cfg.Presence; p.Topic != "" {
		cp.WillMessage = &paho.WillMessage{Retain: true, QoS: 1, Topic: topic(p.Topic, s.device), Payload: []byte(p.Offline)}
	}
	if u.Username != "" {
		cp.UsernameFlag, cp.Username = true, topic(u.Username, s.device)
	}
	if u.Password != "" {
		cp.PasswordFlag, cp.Password = true, []byte(topic(u.Password, s.device))
	}
	ca, err := cl.Connect(ctx, cp)
	if err != nil {
		conn.Close()
		if ca != nil {
			return nil, false, fmt.Errorf("connack reason %#x: %w", ca.ReasonCode, err)
		}
		return nil, false, fmt.Errorf("connect: %w", err)
	}
	if ca.Properties != nil && ca.Properties.MaximumPacketSize != nil {
		ml.maxPacket = *ca.Properties.MaximumPacketSize
	}
	sub := &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{
		Topic: topic(s.b.cfg.Commands.Topic, s.device), QoS: 1,
		RetainHandling: 1, // retained commands only on a new subscription
	}}}
	if _, err := cl.Subscribe(ctx, sub); err != nil {
		_ = cl.Disconnect(&paho.Disconnect{ReasonCode: 0})
		return nil, false, fmt.Errorf("subscribe: %w", err)
	}
	if p := s.b.cfg.Presence; p.Topic != "" {
		if _, err := cl.Publish(ctx, &paho.Publish{Topic: topic(p.Topic, s.device), QoS: 1, Retain: true, Payload: []byte(p.Online)}); err != nil {
			s.b.log.Warn("presence online not published", "device", s.device, "err", err)
		}
	}
	return ml, ca.SessionPresent, nil
}
