package bridge

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
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
	pid     uint16 // MQTT QoS 1 packet id, to acknowledge it
	via     link   // the connection it came on; MQTT: only it may ack it
	arrived time.Time
	offered time.Time // explicit ack: when it was last written
	dup     bool
}

// session is one device's live MQTT session on the broker. It has no
// goroutine of its own: a connect attempt runs on a short-lived goroutine,
// the backoff and the connect limiter's delay are timers, a lost link
// reports itself (linkLost) and the session's end closes the link from
// context.AfterFunc.
type session struct {
	b      *Bridge
	device string
	ctx    context.Context
	cancel context.CancelCauseFunc
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

	// reconnect state, under mu
	timer    *time.Timer       // backoff or connect limiter delay
	resv     *rate.Reservation // the limiter's, while its delay runs
	dialing  bool              // a connect attempt is running
	stopped  bool              // the session ended: no more attempts
	attempts int               // failed attempts in a row
}

func newSession(b *Bridge, device string) *session {
	ctx, cancel := context.WithCancelCause(context.Background())
	return &session{
		b: b, device: device, ctx: ctx, cancel: cancel,
		tag:       fmt.Sprintf("%06x", rand.Uint32()&0xffffff),
		connected: make(chan struct{}), wake: make(chan struct{}), lastPoll: b.now(),
	}
}

// end stops the session; its link disconnects with reason 0x04
// (disconnect with will message) so presence turns offline.
func (s *session) end(reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return
	}
	s.ended = true
	s.cancel(errors.New(reason))
}

// start connects, and reconnects with jittered exponential backoff, paced
// by the bridge-wide connect limiter, until the session ends. The caller
// has added the session to the bridge's wait group; finish releases it.
func (s *session) start() {
	s.b.m.sessionsOpen.Inc()
	s.mu.Lock()
	s.schedule(0)
	s.mu.Unlock()
	context.AfterFunc(s.ctx, s.stop)
}

// schedule makes the next connect attempt after d, then after the
// connect limiter's delay. s.mu is held.
func (s *session) schedule(d time.Duration) {
	if d <= 0 {
		s.reserve()
		return
	}
	s.timer = time.AfterFunc(d, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if !s.stopped {
			s.timer = nil
			s.reserve()
		}
	})
}

// reserve takes a token of the connect limiter and attempts when it is
// due. s.mu is held.
func (s *session) reserve() {
	r := s.b.connectLimiter.Reserve()
	d := r.Delay()
	if d <= 0 {
		s.launch()
		return
	}
	s.resv = r
	s.timer = time.AfterFunc(d, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if !s.stopped {
			s.timer, s.resv = nil, nil
			s.launch()
		}
	})
}

// launch starts a connect attempt; s.mu is held and the session is not
// stopped, so it still holds its place in the bridge's wait group.
func (s *session) launch() {
	s.dialing = true
	s.b.wg.Add(1)
	go s.attempt()
}

// attempt connects once and installs the link, or schedules the next try.
func (s *session) attempt() {
	defer s.b.wg.Done()
	l, present, err := s.connect()
	s.mu.Lock()
	s.dialing = false
	if s.stopped { // stop left the end to this attempt
		s.mu.Unlock()
		if l != nil {
			l.close()
			s.b.m.disconnects.WithLabelValues(context.Cause(s.ctx).Error()).Inc()
		}
		s.finish()
		return
	}
	if err != nil {
		s.b.m.connects.WithLabelValues("error").Inc()
		d := backoff(s.attempts, s.b.cfg.Upstream.BackoffMin.D(), s.b.cfg.Upstream.BackoffMax.D())
		s.attempts++
		s.schedule(d)
		s.b.upLog.connectFailed(s.device, s.attempts, err, d)
		s.mu.Unlock()
		return
	}
	s.b.m.connects.WithLabelValues("ok").Inc()
	s.b.upLog.connected()
	s.attempts = 0
	s.link = l
	if present {
		// Commands from an earlier connection were never acknowledged: the
		// broker redelivers them on this one, so drop the stale copies.
		s.pending = keepFrom(s.pending, l)
		s.inflight = keepFrom(s.inflight, l)
	}
	close(s.connected)
	s.mu.Unlock()
	select {
	case <-l.done(): // lost before it was installed: its report was ignored
		s.linkLost(l)
	default:
	}
}

// linkLost is a link's report that it ended. If it is the session's link
// and the session goes on, it reconnects after a backoff.
func (s *session) linkLost(l link) {
	s.mu.Lock()
	if s.link != l || s.stopped {
		s.mu.Unlock()
		return
	}
	s.link = nil
	s.connected = make(chan struct{})
	s.schedule(backoff(0, s.b.cfg.Upstream.BackoffMin.D(), s.b.cfg.Upstream.BackoffMax.D()))
	s.mu.Unlock()
	l.close()
	s.b.m.disconnects.WithLabelValues(reasonLost).Inc()
	s.b.upLog.lost(s.device)
}

// stop runs when the session's context ends: no more attempts, and the
// link is closed (its will fires). A running attempt finishes instead.
func (s *session) stop() {
	s.mu.Lock()
	s.stopped = true
	if s.timer != nil {
		s.timer.Stop() // a callback already running sees stopped
		s.timer = nil
	}
	if s.resv != nil {
		s.resv.Cancel() // give the token back to other sessions
		s.resv = nil
	}
	l := s.link
	if l != nil {
		s.link = nil
		s.connected = make(chan struct{})
	}
	dialing := s.dialing
	s.mu.Unlock()
	if dialing {
		return
	}
	if l != nil {
		reason := context.Cause(s.ctx).Error()
		l.close()
		s.b.m.disconnects.WithLabelValues(reason).Inc()
		s.b.log.Debug("session ended", "device", s.device, "reason", reason)
	}
	s.finish()
}

// finish releases the session's place in the bridge's wait group.
func (s *session) finish() {
	s.b.m.sessionsOpen.Dec()
	s.b.wg.Done()
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

// connect opens a link with the bridge's driver.
func (s *session) connect() (link, bool, error) {
	ctx, cancel := context.WithTimeout(s.ctx, s.b.cfg.Upstream.ConnectTimeout.D())
	defer cancel()
	open := s.connectMQTT
	if s.b.cfg.Upstream.Driver == "websocket" {
		open = s.connectWS
	}
	return open(ctx)
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
	if c.pid != 0 {
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
	if ml, ok := s.link.(*mqttConn); ok {
		return ml.maxPacket
	}
	return 0
}
