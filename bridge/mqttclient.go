package bridge

import (
	"context"
	"errors"
	"fmt"

	"github.com/eclipse/paho.golang/packets"
	"github.com/edgeshim/edgeshim/bridge/mqtt"
)

// mqttConn is a session's MQTT connection as the bridge sees it: the
// client of package mqtt, as a link. It is the same object (a conversion,
// not a wrapper), so the client's callbacks name the link they came on.
type mqttConn mqtt.Conn

var _ link = (*mqttConn)(nil)

// errTooLarge is the client's error for a packet over the limit.
var errTooLarge = mqtt.ErrTooLarge

// disconnectError is the broker's DISCONNECT (match with errors.As).
type disconnectError = mqtt.DisconnectError

// reasonSessionTakenOver is the DISCONNECT reason of a session taken
// over by another connection.
const reasonSessionTakenOver = mqtt.ReasonSessionTakenOver

func (l *mqttConn) c() *mqtt.Conn { return (*mqtt.Conn)(l) }

// pub publishes; a refusal by the broker is errRefused.
func (l *mqttConn) pub(ctx context.Context, p *packets.Publish) error {
	err := l.c().Publish(ctx, p)
	if errors.Is(err, mqtt.ErrRefused) {
		return fmt.Errorf("%w: %w", errRefused, err)
	}
	return err
}

func (l *mqttConn) publish(ctx context.Context, topic string, qos byte, payload []byte) error {
	return l.pub(ctx, &packets.Publish{Topic: topic, QoS: qos, Payload: payload})
}

// ack sends the PUBACK (in order, see mqtt.Conn.Ack); only the connection
// the PUBLISH came on may. A QoS 0 command has nothing to acknowledge.
func (l *mqttConn) ack(c *command) error {
	if c.pid == 0 {
		return nil
	}
	return l.ackID(c.pid)
}

func (l *mqttConn) ackID(id uint16) error { return l.c().Ack(id) }

// ackAnywhere: an MQTT publish is acknowledged on its own connection only.
func (l *mqttConn) ackAnywhere() bool { return false }

func (l *mqttConn) maxPacket() uint32     { return l.c().MaxPacket() }
func (l *mqttConn) done() <-chan struct{} { return l.c().Done() }
func (l *mqttConn) close()                { l.c().Close() }
func (l *mqttConn) closeWith(reason byte) { l.c().CloseWith(reason) }
func (l *mqttConn) err() error            { return l.c().Err() }
