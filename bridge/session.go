package bridge

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// Session end reasons (label values of the disconnect metric).
const (
	reasonIdle     = "idle"
	reasonEvicted  = "evicted"
	reasonShutdown = "shutdown"
	reasonLost     = "connection_lost"
)

// maxPending bounds commands buffered for one device. Beyond it a command
// is left un-acknowledged, so the broker keeps it and redelivers it on the
// next connection.
const maxPending = 1000

// command is one message from the broker for a device.
type command struct {
	id      string
	topic   string
	payload []byte
	pub     *paho.Publish // MQTT only
	via     link          // the connection it came on; MQTT: only it may ack it
	arrived time.Time
	offered time.Time // explicit ack: when it was last written
	dup     bool
}

// session is one device's live MQTT session on the broker.
type session struct {
	b      *Bridge
	device string
	ctx    context.Context
	cancel context.CancelCauseFunc
	done   chan struct{}
	tag    string // makes command ids unique across sessions

	mu        sync.Mutex
	link      link          // nil while disconnected
	connected chan struct{} // closed while connected
	pending   []*command
	inflight  []*command // explicit ack: written, not yet acknowledged
	wake      chan struct{}
	outlet    *wsConn // the device WebSocket to wake for commands, if any
	seq       uint64
	lastPoll  time.Time
	ended     bool
	attached  atomic.Int32 // device WebSockets holding the session open
}

func newSession(b *Bridge, device string) *session {
	ctx, cancel := context.WithCancelCause(context.Background())
	return &session{
		b: b, device: device, ctx: ctx, cancel: cancel, done: make(chan struct{}),
		tag:       fmt.Sprintf("%06x", rand.Uint32()&0xffffff),
		connected: make(chan struct{}), wake: make(chan struct{}), lastPoll: b.now(),
	}
}

// end stops the session; its goroutine disconnects with reason 0x04
// (disconnect with will message) so presence turns offline.
func (s *session) end(reason string) {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return
	}
	s.ended = true
	s.mu.Unlock()
	s.cancel(errors.New(reason))
}

// run connects, and reconnects with jittered exponential backoff, paced by
// the bridge-wide connect limiter, until the session ends.
func (s *session) run() {
	defer close(s.done)
	defer s.b.m.sessionsOpen.Dec()
	s.b.m.sessionsOpen.Inc()
	for attempt := 0; ; {
		if err := s.b.connectLimiter.Wait(s.ctx); err != nil {
			return
		}
		l, err := s.connect()
		if err != nil {
			if s.ctx.Err() != nil {
				return
			}
			s.b.m.connects.WithLabelValues("error").Inc()
			d := backoff(attempt, s.b.cfg.Upstream.BackoffMin.D(), s.b.cfg.Upstream.BackoffMax.D())
			attempt++
			s.b.log.Warn("upstream connect failed", "device", s.device, "err", err, "retry_in", d.Round(time.Millisecond).String())
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(d):
			}
			continue
		}
		s.b.m.connects.WithLabelValues("ok").Inc()
		attempt = 0
		select {
		case <-l.done():
			s.disconnected(l)
			l.close()
			s.b.m.disconnects.WithLabelValues(reasonLost).Inc()
			s.b.log.Info("upstream connection lost", "device", s.device)
			d := backoff(0, s.b.cfg.Upstream.BackoffMin.D(), s.b.cfg.Upstream.BackoffMax.D())
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(d):
			}
		case <-s.ctx.Done():
			reason := context.Cause(s.ctx).Error()
			s.disconnected(l)
			l.close()
			s.b.m.disconnects.WithLabelValues(reason).Inc()
			s.b.log.Debug("session ended", "device", s.device, "reason", reason)
			return
		}
	}
}

// backoff is exponential from min, capped at max, with equal jitter.
func backoff(attempt int, min, max time.Duration) time.Duration {
	d := min
	for i := 0; i < attempt && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	if d <= 1 {
		return d
	}
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

// connect opens a link with the bridge's driver and makes it current.
func (s *session) connect() (link, error) {
	ctx, cancel := context.WithTimeout(s.ctx, s.b.cfg.Upstream.ConnectTimeout.D())
	defer cancel()
	open := s.connectMQTT
	if s.b.cfg.Upstream.Driver == "websocket" {
		open = s.connectWS
	}
	l, present, err := open(ctx)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.link = l
	if present {
		// Commands from an earlier connection were never acknowledged: the
		// broker redelivers them on this one, so drop the stale copies.
		s.pending = keepFrom(s.pending, l)
		s.inflight = keepFrom(s.inflight, l)
	}
	close(s.connected)
	s.mu.Unlock()
	return l, nil
}

func keepFrom(cmds []*command, l link) []*command {
	out := cmds[:0]
	for _, c := range cmds {
		if c.via == l {
			out = append(out, c)
		}
	}
	return out
}

func (s *session) disconnected(l link) {
	s.mu.Lock()
	if s.link == l {
		s.link = nil
		s.connected = make(chan struct{})
	}
	s.mu.Unlock()
}

// add buffers a command from the upstream; it is acknowledged later, once
// delivered. A command without an id (MQTT) gets one; a command whose id
// is already held (a WebSocket backend resending after a reconnect) only
// moves to the new link.
func (s *session) add(c *command) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.id != "" {
		for _, held := range [][]*command{s.pending, s.inflight} {
			for _, h := range held {
				if h.id == c.id {
					h.via = c.via
					return
				}
			}
		}
	}
	if len(s.pending) >= maxPending {
		s.b.log.Warn("command buffer full; leaving the command with the upstream", "device", s.device)
		return
	}
	if c.id == "" {
		s.seq++
		c.id = fmt.Sprintf("%s-%d", s.tag, s.seq)
	}
	c.arrived = s.b.now()
	s.pending = append(s.pending, c)
	close(s.wake)
	s.wake = make(chan struct{})
	if s.outlet != nil {
		s.outlet.kick()
	}
}

// take removes up to max commands to offer: in explicit mode, written ones
// whose ack timed out come first again.
func (s *session) take(max int, explicit bool, ackTimeout time.Duration) []*command {
	now := s.b.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*command
	if explicit {
		keep := s.inflight[:0]
		for _, c := range s.inflight {
			if len(out) < max && now.Sub(c.offered) >= ackTimeout {
				out = append(out, c)
				s.b.m.redelivered.Inc()
			} else {
				keep = append(keep, c)
			}
		}
		s.inflight = keep
	}
	n := min(max-len(out), len(s.pending))
	out = append(out, s.pending[:n]...)
	s.pending = append(s.pending[:0:0], s.pending[n:]...)
	return out
}

// requeue puts commands whose write failed back in front.
func (s *session) requeue(cmds []*command) {
	s.mu.Lock()
	s.pending = append(append([]*command(nil), cmds...), s.pending...)
	s.mu.Unlock()
}

// delivered acknowledges commands to the broker: at least once is kept
// because this happens only after the device has them.
func (s *session) delivered(cmds []*command) {
	now := s.b.now()
	for _, c := range cmds {
		s.b.m.delivered.Inc()
		s.b.m.latency.Observe(now.Sub(c.arrived).Seconds())
		if err := s.ackVia(c).ack(c); err != nil {
			s.b.log.Debug("ack not sent; the broker will redeliver", "device", s.device, "id", c.id, "err", err)
		}
	}
}

// ackVia is the link to acknowledge c on: MQTT acks only on the
// connection the command came on; a WebSocket backend matches acks by id,
// so the current link serves when the original is gone.
func (s *session) ackVia(c *command) link {
	if c.pub != nil {
		return c.via
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.link != nil {
		return s.link
	}
	return c.via
}

// offered records commands written in explicit mode, awaiting their ack.
func (s *session) offered(cmds []*command) {
	now := s.b.now()
	s.mu.Lock()
	for _, c := range cmds {
		c.offered = now
	}
	s.inflight = append(s.inflight, cmds...)
	s.mu.Unlock()
}

// ack handles an explicit acknowledgement; false when id is not awaiting
// one.
func (s *session) ack(id string) bool {
	s.mu.Lock()
	var found *command
	for i, c := range s.inflight {
		if c.id == id {
			found = c
			s.inflight = append(s.inflight[:i], s.inflight[i+1:]...)
			break
		}
	}
	s.mu.Unlock()
	if found == nil {
		return false
	}
	s.delivered([]*command{found})
	return true
}

// waitConnected returns the current link, waiting for a connection until
// ctx ends; nil if none.
func (s *session) waitConnected(ctx context.Context) link {
	s.mu.Lock()
	l, ch := s.link, s.connected
	s.mu.Unlock()
	if l != nil {
		return l
	}
	select {
	case <-ch:
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.link
	case <-ctx.Done():
	case <-s.ctx.Done():
	}
	return nil
}

func (s *session) hasPending() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending) > 0
}

func (s *session) wakeChan() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.wake
}

// packetLimit is the broker's maximum packet size (0: none, or not MQTT).
func (s *session) packetLimit() uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ml, ok := s.link.(*mqttLink); ok {
		return ml.maxPacket
	}
	return 0
}
