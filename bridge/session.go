package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/packets"
)

// Session end reasons (label values of the disconnect metric).
const (
	reasonIdle     = "idle"
	reasonEvicted  = "evicted"
	reasonShutdown = "shutdown"
	reasonLost     = "connection_lost"
	// reasonTakenOver: the broker gave the session to another connection
	// (DISCONNECT 0x8E), e.g. the device's poll reached another replica.
	reasonTakenOver = "taken_over"
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
	expires time.Time // zero: none (MQTT 5 message expiry, commands.max_age)
	req     *request  // it asks for an answer (reqresp.go)
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
	polls     []*poll    // held polls waiting for a command (delivery.go)
	woken     []func()   // poll wakes to call once mu is released (unlockWake)
	outlet    outlet     // the device WebSocket to wake for commands, if any
	seq       uint64
	lastPoll  time.Time
	ended     bool
	attached  atomic.Int32 // device WebSockets holding the session open

	// reconnect state, under mu
	timer     *time.Timer // backoff delay
	ticket    *paceTicket // the connect pacer's, while queued
	dialing   bool        // a connect attempt is running
	stopped   bool        // the session ended: no more attempts
	attempts  int         // failed attempts in a row
	linked    bool        // it had a link once: later connects are reconnects
	dormant   bool        // link lost, nobody waiting: connects on the next request
	afterLoss bool        // reconnecting after a loss: dormant instead if nobody waits by then
	waiters   int         // requests of the device waiting on the session
}

func newSession(b *Bridge, device string) *session {
	ctx, cancel := context.WithCancelCause(context.Background())
	return &session{
		b: b, device: device, ctx: ctx, cancel: cancel,
		tag:       fmt.Sprintf("%06x", rand.Uint32()&0xffffff),
		connected: make(chan struct{}), lastPoll: b.now(),
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

// schedule makes the next connect attempt after d, then when the connect
// pacer releases it. s.mu is held.
func (s *session) schedule(d time.Duration) {
	if d <= 0 {
		s.reserve(false)
		return
	}
	s.timer = time.AfterFunc(d, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if !s.stopped {
			s.timer = nil
			if s.afterLoss && s.unwaited() {
				s.dormant = true // the request that waited has been answered
				return
			}
			s.reserve(false)
		}
	})
}

// reserve queues the connect at the bridge's pacer, ahead of background
// reconnects when a device waits on the session (its first contact, or a
// request waiting now). s.mu is held.
func (s *session) reserve(urgent bool) {
	urgent = urgent || !s.linked || s.waiters > 0
	t, now := s.b.pacer.enqueue(urgent, s.paced)
	if now {
		s.launch()
		return
	}
	s.ticket = t
}

// paced is the pacer releasing the queued connect.
func (s *session) paced() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ticket = nil
	if !s.stopped {
		s.launch()
	}
}

// addWaiter marks a device request waiting on the session (a poll, held
// or waiting for the connection): a queued reconnect becomes urgent.
// doneWaiter ends the wait.
func (s *session) addWaiter() {
	s.mu.Lock()
	s.waiters++
	if s.ticket != nil {
		s.b.pacer.promote(s.ticket)
	}
	if s.dormant && !s.stopped {
		s.dormant = false
		s.reserve(true)
	}
	s.mu.Unlock()
}

// doneWaiter ends a wait begun by addWaiter.
func (s *session) doneWaiter() {
	s.mu.Lock()
	s.waiters--
	s.mu.Unlock()
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
		reason := context.Cause(s.ctx).Error()
		if l != nil {
			l.close()
			s.b.m.disconnects.WithLabelValues(reason).Inc()
		} else {
			s.b.endedUnlinked(reason)
		}
		s.finish()
		return
	}
	if err != nil {
		s.b.m.connects.WithLabelValues("error").Inc()
		if errors.Is(err, errLostOpening) && s.unwaited() {
			// Taken while opening, and nobody here waits: another replica
			// holds the session now. Trying again would take it back and
			// the two would fight; the device's next request here resumes.
			s.dormant = true
			s.mu.Unlock()
			s.b.log.Debug("upstream session taken while opening; dormant", "device", s.device, "err", err)
			return
		}
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
	s.linked, s.afterLoss = true, false
	s.link = l
	if present {
		// Commands from an earlier connection were never acknowledged: the
		// broker redelivers them on this one, so drop the stale copies.
		s.pending = keepFrom(s.pending, l)
		s.inflight = keepFrom(s.inflight, l)
	}
	close(s.connected)
	woken := s.wakePolls() // a new session's polls take what the broker queued
	s.mu.Unlock()
	wakeAll(woken)
	select {
	case <-l.done(): // lost before it was installed: its report was ignored
		s.linkLost(l)
	default:
	}
}

// unwaited reports whether no request and no device WebSocket of the
// device waits on the session here. s.mu is held.
func (s *session) unwaited() bool { return s.waiters == 0 && s.attached.Load() == 0 }

// linkLost is a link's report that it ended. If it is the session's link
// and the session goes on, it reconnects after a backoff; a session taken
// over by another connection is handed over instead.
func (s *session) linkLost(l link) {
	if takenOver(l) {
		s.handOver(l)
		return
	}
	s.mu.Lock()
	if s.link != l || s.stopped {
		s.mu.Unlock()
		return
	}
	s.link = nil
	s.connected = make(chan struct{})
	_, mqtt := l.(*mqttConn)
	dormant := mqtt && s.unwaited()
	if dormant {
		// Nobody waits on the session: it reconnects on the device's next
		// request (resume), not now. A broker that closes a taken-over
		// session without DISCONNECT 0x8E (mosquitto before 2.0.15) looks
		// like this; reconnecting at once would take the session back from
		// the replica the device now polls, and the two would fight.
		s.dormant = true
	} else {
		s.afterLoss = mqtt
		s.schedule(backoff(0, s.b.cfg.Upstream.BackoffMin.D(), s.b.cfg.Upstream.BackoffMax.D()))
	}
	s.mu.Unlock()
	l.close()
	s.b.m.disconnects.WithLabelValues(reasonLost).Inc()
	s.b.lostLinks.note(s.b.now(), func(n int, since time.Duration) {
		s.b.log.Info("upstream connections lost", "count", n, "in", since.Round(time.Second).String(), "last_device", s.device, "reconnect", !dormant)
	})
}

// resume reconnects a dormant session: a request of its device arrived.
func (s *session) resume() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.dormant || s.stopped {
		return
	}
	s.dormant = false
	s.reserve(true)
}

// takenOver tells whether the broker ended l because another connection
// took its session over (DISCONNECT 0x8E).
func takenOver(l link) bool {
	ml, ok := l.(*mqttConn)
	if !ok {
		return false
	}
	var de *disconnectError
	return errors.As(ml.err(), &de) && de.Reason == reasonSessionTakenOver
}

// handOver ends the session after the broker gave it to another
// connection, e.g. another replica that the device's poll reached. It
// does not reconnect (that would take the session back, and the two
// replicas would fight over it); it sends nothing (the broker closed the
// connection: no DISCONNECT, so no will from us); its un-acknowledged
// commands are dropped here, as the broker redelivers them to the new
// owner; held polls answer empty at once. A later request of the device
// here creates a fresh session, which takes it back legitimately.
func (s *session) handOver(l link) {
	s.mu.Lock()
	if s.link != l || s.stopped {
		s.mu.Unlock()
		return
	}
	s.link = nil
	s.connected = make(chan struct{})
	dropped := len(s.pending) + len(s.inflight)
	s.pending, s.inflight = nil, nil
	s.mu.Unlock()
	l.close() // the connection is closed already: nothing is written
	s.b.m.disconnects.WithLabelValues(reasonTakenOver).Inc()
	s.b.log.Debug("session taken over by another connection; handed over", "device", s.device, "dropped_commands", dropped)
	s.b.dropSession(s, reasonTakenOver)
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
	if s.ticket != nil {
		s.b.pacer.cancel(s.ticket) // leaves the queue; delays nobody
		s.ticket = nil
	}
	l := s.link
	if l != nil {
		s.link = nil
		s.connected = make(chan struct{})
	}
	dialing := s.dialing
	wakes := s.wakePolls() // they see the session's end (poll.over)
	s.mu.Unlock()
	for _, w := range wakes {
		w()
	}
	s.b.rr.ended(s, l) // open requests are answered 503 before the link closes
	if dialing {
		return
	}
	reason := context.Cause(s.ctx).Error()
	if l != nil {
		s.closeLink(l, reason)
		s.b.m.disconnects.WithLabelValues(reason).Inc()
		s.b.log.Debug("session ended", "device", s.device, "reason", reason)
	} else {
		s.b.endedUnlinked(reason)
	}
	s.finish()
}

// closeLink ends the session's link. A device gone idle, or whose session
// an operator ended (admin API), is offline now:
// its offline presence is published at once and the will discarded
// (DISCONNECT 0x00). Any other end (eviction, shutdown) leaves it to the
// will, which the broker sends only after presence.will_delay: a device
// that polls again (here, or at another replica) within it never shows
// offline.
func (s *session) closeLink(l link, reason string) {
	ml, ok := l.(*mqttConn)
	p := s.b.cfg.Presence
	if !ok || (reason != reasonIdle && reason != reasonAdmin) || p.Topic == "" {
		l.close()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), min(s.b.cfg.Upstream.PublishTimeout.D(), 2*time.Second))
	defer cancel()
	err := ml.pub(ctx, &packets.Publish{Topic: topic(p.Topic, s.device), QoS: 1, Retain: true, Payload: []byte(p.Offline)})
	if err != nil {
		s.b.log.Debug("offline presence not published; the will sends it", "device", s.device, "err", err)
		ml.close()
		return
	}
	ml.closeWith(0x00)
}

// endedUnlinked accounts a session that ended without a link. Evicted
// ones (session.max) are counted and logged, aggregated: an eviction
// storm would otherwise log one line per session.
func (b *Bridge) endedUnlinked(reason string) {
	if reason != reasonEvicted {
		return
	}
	b.m.disconnects.WithLabelValues(reasonEvicted).Inc()
	b.unlinkedEvictions.note(b.now(), func(n int, since time.Duration) {
		b.log.Warn("sessions evicted before they connected (session.max reached)", "count", n, "in", since.Round(time.Second).String())
	})
}

// eventLog aggregates a frequent event into at most one log line per
// period.
type eventLog struct {
	mu    sync.Mutex
	first time.Time // of the events not yet logged
	last  time.Time // of the last line
	n     int
}

const eventLogPeriod = 10 * time.Second

// note counts one event; log is called (under the lock) with the count
// and the span when a line is due.
func (e *eventLog) note(now time.Time, log func(n int, since time.Duration)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.n == 0 {
		e.first = now
	}
	e.n++
	if !e.last.IsZero() && now.Sub(e.last) < eventLogPeriod {
		return
	}
	log(e.n, now.Sub(e.first))
	e.n, e.last = 0, now
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
	return s.b.open(s, ctx)
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
	defer s.unlockWake()
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
	s.wakeLocked()
}

// wakeLocked wakes the session's consumers after commands were added or
// put back: the device WebSocket's writer, and every held poll (each
// wake runs after mu is released, see unlockWake). s.mu is held.
func (s *session) wakeLocked() {
	if s.outlet != nil {
		s.outlet.kick()
	}
	s.woken = append(s.woken, s.wakePolls()...)
}

// take removes up to max commands to offer: in explicit mode, written ones
// whose ack timed out come first again.
func (s *session) take(max int, explicit bool, ackTimeout time.Duration) []*command {
	now := s.b.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.takeLocked(max, explicit, ackTimeout, now)
}

// takeLocked is take with s.mu held.
func (s *session) takeLocked(max int, explicit bool, ackTimeout time.Duration, now time.Time) []*command {
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

// wakePolls unregisters every waiting poll and returns their wake
// callbacks, to be called once s.mu is released. s.mu is held.
func (s *session) wakePolls() []func() {
	var out []func()
	for _, p := range s.polls {
		if p.wake != nil {
			out = append(out, p.wake)
			p.wake = nil
		}
	}
	s.polls = s.polls[:0]
	return out
}

// unlockWake releases s.mu, then calls the wakes collected meanwhile.
func (s *session) unlockWake() {
	w := s.woken
	s.woken = nil
	s.mu.Unlock()
	wakeAll(w)
}

func wakeAll(ws []func()) {
	for _, w := range ws {
		w()
	}
}

// requeue puts commands whose write failed back in front, and wakes a
// poll held meanwhile (or the WebSocket writer) to offer them at once.
func (s *session) requeue(cmds []*command) {
	if len(cmds) == 0 {
		return
	}
	s.mu.Lock()
	s.pending = append(append([]*command(nil), cmds...), s.pending...)
	s.wakeLocked()
	s.unlockWake()
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

// ackVia is the link to acknowledge c on: the one it came on, unless
// that link lets a later one acknowledge it (ackAnywhere): then the
// current link serves when the original is gone.
func (s *session) ackVia(c *command) link {
	if c.via != nil && !c.via.ackAnywhere() {
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

// packetLimit is the upstream's maximum packet size (0: none known).
func (s *session) packetLimit() uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.link != nil {
		return s.link.maxPacket()
	}
	return 0
}

// held returns the device's session on this replica, without creating
// one; nil if there is none.
func (b *Bridge) held(device string) *session {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, _ := b.sessions.Peek(device)
	return s
}

// notHeldBody is the answer to an ack for a command this replica does not
// hold: 404 with {"error":"not_held","id":ID,"message":...}.
type notHeldBody struct {
	Error   string `json:"error"`
	ID      string `json:"id"`
	Message string `json:"message"`
}

// notHeld answers an explicit ack for a command this replica does not
// hold: the device's session is on another replica (its poll landed
// there, or it was taken over), or the command was already acknowledged.
// The command is not lost: the broker redelivers an unacknowledged
// command to whichever replica holds the session, and the device acks it
// there when it sees it again.
func (b *Bridge) notHeld(w http.ResponseWriter, r *http.Request, device, id string) {
	b.log.Debug("ack for a command not held here", "device", device, "id", id, "remote", r.RemoteAddr)
	body, _ := json.Marshal(notHeldBody{Error: "not_held", ID: id,
		Message: "this replica holds no command awaiting ack with that id; an unacknowledged command is redelivered: ack it when it is offered again"})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNotFound)
	_, _ = w.Write(body)
}
