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
	pub     *paho.Publish
	client  *paho.Client // the connection it came on; only it may ack it
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
	client    *paho.Client
	connected chan struct{} // closed while connected
	pending   []*command
	inflight  []*command // explicit ack: written, not yet acknowledged
	wake      chan struct{}
	seq       uint64
	lastPoll  time.Time
	maxPacket uint32
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
		cl, err := s.connect()
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
		case <-cl.Done():
			s.disconnected(cl)
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
			s.disconnected(cl)
			_ = cl.Disconnect(&paho.Disconnect{ReasonCode: 0x04})
			select {
			case <-cl.Done():
			case <-time.After(2 * time.Second):
			}
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

func (s *session) connect() (*paho.Client, error) {
	u := s.b.cfg.Upstream
	ctx, cancel := context.WithTimeout(s.ctx, u.ConnectTimeout.D())
	defer cancel()
	conn, err := s.b.dial(ctx)
	if err != nil {
		return nil, err
	}
	clientID := topic(u.ClientID, s.device)
	cl := paho.NewClient(paho.ClientConfig{
		ClientID:                   clientID,
		Conn:                       conn,
		EnableManualAcknowledgment: true,
		OnPublishReceived:          []func(paho.PublishReceived) (bool, error){s.onPublish},
		OnClientError: func(err error) {
			s.b.log.Debug("upstream client error", "device", s.device, "err", err)
		},
		OnServerDisconnect: func(d *paho.Disconnect) {
			s.b.log.Info("broker disconnected session", "device", s.device, "reason_code", d.ReasonCode)
		},
	})
	expiry := uint32(u.SessionExpiry.D() / time.Second)
	cp := &paho.Connect{
		ClientID:   clientID,
		KeepAlive:  uint16(u.Keepalive.D() / time.Second),
		CleanStart: false,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry},
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
			return nil, fmt.Errorf("connack reason %#x: %w", ca.ReasonCode, err)
		}
		return nil, fmt.Errorf("connect: %w", err)
	}
	sub := &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{
		Topic: topic(s.b.cfg.Commands.Topic, s.device), QoS: 1,
		RetainHandling: 1, // retained commands only on a new subscription
	}}}
	if _, err := cl.Subscribe(ctx, sub); err != nil {
		_ = cl.Disconnect(&paho.Disconnect{ReasonCode: 0})
		return nil, fmt.Errorf("subscribe: %w", err)
	}
	if p := s.b.cfg.Presence; p.Topic != "" {
		if _, err := cl.Publish(ctx, &paho.Publish{Topic: topic(p.Topic, s.device), QoS: 1, Retain: true, Payload: []byte(p.Online)}); err != nil {
			s.b.log.Warn("presence online not published", "device", s.device, "err", err)
		}
	}
	s.mu.Lock()
	s.client = cl
	s.maxPacket = 0
	if ca.Properties != nil && ca.Properties.MaximumPacketSize != nil {
		s.maxPacket = *ca.Properties.MaximumPacketSize
	}
	if ca.SessionPresent {
		// Commands from an earlier connection were never acknowledged: the
		// broker redelivers them on this one, so drop the stale copies.
		s.pending = keepFrom(s.pending, cl)
		s.inflight = keepFrom(s.inflight, cl)
	}
	close(s.connected)
	s.mu.Unlock()
	return cl, nil
}

func keepFrom(cmds []*command, cl *paho.Client) []*command {
	out := cmds[:0]
	for _, c := range cmds {
		if c.client == cl {
			out = append(out, c)
		}
	}
	return out
}

func (s *session) disconnected(cl *paho.Client) {
	s.mu.Lock()
	if s.client == cl {
		s.client = nil
		s.connected = make(chan struct{})
	}
	s.mu.Unlock()
}

// onPublish buffers a command. It is acknowledged later, once delivered.
func (s *session) onPublish(pr paho.PublishReceived) (bool, error) {
	p := pr.Packet
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pending) >= maxPending {
		s.b.log.Warn("command buffer full; leaving the command with the broker", "device", s.device)
		return true, nil
	}
	s.seq++
	s.pending = append(s.pending, &command{
		id: fmt.Sprintf("%s-%d", s.tag, s.seq), topic: p.Topic, payload: p.Payload,
		pub: p, client: pr.Client, arrived: s.b.now(), dup: p.Duplicate(),
	})
	if p.Duplicate() {
		s.b.m.redelivered.Inc()
	}
	close(s.wake)
	s.wake = make(chan struct{})
	return true, nil
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
		if err := c.client.Ack(c.pub); err != nil {
			s.b.log.Debug("ack not sent; the broker will redeliver", "device", s.device, "id", c.id, "err", err)
		}
	}
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

// waitConnected returns the current client, waiting for a connection until
// ctx ends; nil if none.
func (s *session) waitConnected(ctx context.Context) *paho.Client {
	s.mu.Lock()
	cl, ch := s.client, s.connected
	s.mu.Unlock()
	if cl != nil {
		return cl
	}
	select {
	case <-ch:
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.client
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

func (s *session) packetLimit() uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxPacket
}
