package bridge

import (
	"time"

	"github.com/eclipse/paho.golang/packets"
)

// Commands that expire. A PUBLISH with an MQTT 5 Message Expiry Interval
// expires that many seconds after it reached edgeshim (the broker sends
// the interval left, net of its own wait); commands.max_age caps every
// command's age in edgeshim. An expired command is never delivered: it is
// acknowledged upstream (so it is not redelivered), counted and logged.

// mqttCommand is the command a PUBLISH from the broker carries.
func (b *Bridge) mqttCommand(l *mqttConn, p *packets.Publish) *command {
	c := &command{topic: p.Topic, payload: p.Payload, pid: p.PacketID, via: l, dup: p.Duplicate}
	if p.Properties != nil && p.Properties.MessageExpiry != nil {
		c.expires = b.now().Add(time.Duration(*p.Properties.MessageExpiry) * time.Second)
	}
	return c
}

// expiresIn is the whole seconds left before the command expires, rounded
// up (a command with 0.2 s left still has 1); -1 when it has no expiry.
func (c *command) expiresIn(now time.Time) int64 {
	if c.expires.IsZero() {
		return -1
	}
	left := c.expires.Sub(now)
	if left <= 0 {
		return 0
	}
	return int64((left + time.Second - 1) / time.Second)
}

// dropExpired returns the commands of cmds that have not expired (their
// deadline is set here from commands.max_age if that comes first); the
// expired ones are acknowledged upstream and counted.
func (b *Bridge) dropExpired(s *session, cmds []*command) []*command {
	now := b.now()
	maxAge := b.cfg.Commands.MaxAge.D()
	live := cmds[:0:0]
	var dead []*command
	for _, c := range cmds {
		if maxAge > 0 {
			if d := c.arrived.Add(maxAge); c.expires.IsZero() || d.Before(c.expires) {
				c.expires = d
			}
		}
		if !c.expires.IsZero() && now.After(c.expires) {
			dead = append(dead, c)
			b.log.Info("command expired before delivery; discarded", "device", s.device, "id", c.id,
				"waited", now.Sub(c.arrived).Round(time.Millisecond).String())
			continue
		}
		live = append(live, c)
	}
	if len(dead) > 0 {
		b.m.expired.Add(float64(len(dead)))
		s.discard(dead)
	}
	return live
}

// discard acknowledges commands upstream without delivering them.
func (s *session) discard(cmds []*command) {
	for _, c := range cmds {
		if err := s.ackVia(c).ack(c); err != nil {
			s.b.log.Debug("ack of a discarded command not sent; the broker will redeliver it", "device", s.device, "id", c.id, "err", err)
		}
	}
}
