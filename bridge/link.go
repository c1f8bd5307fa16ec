package bridge

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/edgeshim/edgeshim/bridge/mqtt"
	"github.com/edgeshim/edgeshim/limits/park"
)

// link is one connection of a device session to its upstream: an MQTT
// broker (mqttConn) or a WebSocket backend (wsLink). A session holds at
// most one at a time and replaces it after a loss. The session knows no
// more of the upstream than this.
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
	// maxPacket is the largest packet the upstream takes (0: no limit
	// known).
	maxPacket() uint32
	// ackAnywhere tells whether a command that came on this link may be
	// acknowledged on a later link of the session (the upstream matches
	// acks by id), not only on this one (MQTT: packet ids are per
	// connection).
	ackAnywhere() bool
}

// opener opens a session's link; present tells whether the upstream
// resumed a session of the device (its unacknowledged commands come
// again, so held copies from older links are dropped).
type opener func(s *session, ctx context.Context) (l link, present bool, err error)

// openerFor is the opener of upstream.driver, chosen once at New.
func openerFor(driver string) opener {
	if driver == "websocket" {
		return (*session).connectWS
	}
	return (*session).connectMQTT
}

// errLostOpening: the upstream accepted the connection and then ended
// it before the session was set up (mosquitto before 2.0.15 closes a
// taken-over session that way).
var errLostOpening = errors.New("upstream connection lost while opening")

// errRefused is an upstream's refusal of a publish.
var errRefused = errors.New("upstream refused publish")

// mqttMaxIn is the largest packet edgeshim takes from the broker: a
// command as large as a device body may be, plus room for the topic and
// properties. It is sent as the CONNECT's maximum packet size, so the
// broker does not send larger ones (MQTT 5 has it drop them); a broker
// that does anyway is disconnected with 0x95.
func mqttMaxIn(maxBody int64) int {
	return int(min(max(maxBody, 64<<10)+64<<10, mqtt.MaxRemaining))
}

// parker is the bridge's parker, made on the first MQTT connection if
// the device WebSockets did not make it: a bridge that never connects
// starts no poller goroutine.
func (b *Bridge) parker() *park.Parker {
	b.parkOnce.Do(func() {
		if b.park == nil {
			b.park = park.New()
		}
	})
	return b.park
}

// connectMQTT opens the session's MQTT connection: CONNECT with a
// persistent session (clean start false, session expiry), the will, the
// command subscription and the online presence.
func (s *session) connectMQTT(ctx context.Context) (link, bool, error) {
	b := s.b
	u := b.cfg.Upstream
	conn, err := b.dial(ctx)
	if err != nil {
		return nil, false, err
	}
	expiry := uint32(u.SessionExpiry.D() / time.Second)
	recvMax := uint16(u.ReceiveMaximum)
	maxIn := mqttMaxIn(int64(b.lim.MaxBody))
	maxPacket := uint32(maxIn)
	cp := &packets.Connect{
		ProtocolName: "MQTT", ProtocolVersion: 5,
		ClientID:   topic(u.ClientID, s.device),
		KeepAlive:  uint16(u.Keepalive.D() / time.Second),
		CleanStart: false,
		Properties: &packets.Properties{SessionExpiryInterval: &expiry, ReceiveMaximum: &recvMax, MaximumPacketSize: &maxPacket},
	}
	if p := b.cfg.Presence; p.Topic != "" {
		cp.WillFlag, cp.WillRetain, cp.WillQOS = true, true, 1
		cp.WillTopic, cp.WillMessage = topic(p.Topic, s.device), []byte(p.Offline)
		cp.WillProperties = &packets.Properties{}
		if wd := p.WillDelay; wd != nil && *wd > 0 {
			// The broker holds the will this long after the connection is
			// gone; a new connection of the session within it cancels it.
			delay := uint32(wd.D() / time.Second)
			cp.WillProperties.WillDelayInterval = &delay
		}
	}
	if u.Username != "" {
		cp.UsernameFlag, cp.Username = true, topic(u.Username, s.device)
	}
	if u.Password != "" {
		cp.PasswordFlag, cp.Password = true, []byte(topic(u.Password, s.device))
	}
	s.b.wg.Add(1) // the reader's last act is reporting the loss to the session
	mc, ca, err := mqtt.Connect(ctx, conn, mqtt.Options{
		Connect: cp, WriteTimeout: u.PublishTimeout.D(), MaxIn: maxIn,
		// An idle session's reader waits in the parker: no goroutine.
		Parker: b.parker(),
		OnPublish: func(c *mqtt.Conn, p *packets.Publish) {
			if p.Duplicate {
				b.m.redelivered.Inc()
			}
			l := (*mqttConn)(c)
			if c := b.mqttCommand(l, p); b.rr.admitMQTT(s, l, p, c) {
				s.add(c)
			}
		},
		OnDisconnect: func(d *packets.Disconnect) {
			b.log.Info("broker disconnected session", "device", s.device, "reason_code", d.ReasonCode)
		},
		OnLost: func(c *mqtt.Conn, err error) {
			defer s.b.wg.Done()
			b.log.Debug("upstream client error", "device", s.device, "err", err)
			s.linkLost((*mqttConn)(c))
		},
	})
	if err != nil {
		s.b.wg.Done()
		return nil, false, err
	}
	sub := packets.SubOptions{
		Topic: topic(b.cfg.Commands.Topic, s.device), QoS: 1,
		RetainHandling: 1, // retained commands only on a new subscription
	}
	l := (*mqttConn)(mc)
	if err := mc.Subscribe(ctx, sub); err != nil {
		l.closeWith(0)
		if errors.Is(err, mqtt.ErrLost) || takenOver(l) {
			// The broker accepted the session, then ended the connection:
			// another connection (a replica the device polls now) took it.
			err = fmt.Errorf("%w: %w", errLostOpening, err)
		}
		return nil, false, fmt.Errorf("subscribe: %w", err)
	}
	if p := b.cfg.Presence; p.Topic != "" {
		if err := l.pub(ctx, &packets.Publish{Topic: topic(p.Topic, s.device), QoS: 1, Retain: true, Payload: []byte(p.Online)}); err != nil {
			b.log.Warn("presence online not published", "device", s.device, "err", err)
		}
	}
	return l, ca.SessionPresent, nil
}
