package bridge

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/edgeshim/edgeshim/bridge/longpoll"
	"github.com/edgeshim/edgeshim/limits"
	"github.com/edgeshim/edgeshim/limits/accesslog"
)

// The delivery core, as its fronts use it (net/http's poll handler, the
// HTTP/1.1 fast path through longpoll.Handler, the device WebSocket as an
// outlet): beginPoll identifies the device from its credentials, applies
// the flapping limit, reads the wait and gets or creates the session; the
// poll's Next either takes commands and renders the answer, or registers
// a wake callback, in one lock section of the session, so that a command
// added (or put back) at any moment either is taken or wakes the poll;
// Written acknowledges (ack: write), records as offered (explicit) or puts
// back what was taken, by the write's outcome alone.

// outlet is a device connection the session wakes when commands arrive
// or are put back (the device WebSocket's writer).
type outlet interface{ kick() }

var _ outlet = (*wsConn)(nil)

// pollRequest is what a front knows of a poll request.
type pollRequest struct {
	ctx      context.Context // for log lines
	cred     Credentials
	path     string
	pathDev  string
	rawQuery string
	http1    bool              // HTTP/1.x: a drained answer closes the connection
	conn     net.Conn          // the client connection; nil: not observable
	rec      *accesslog.Record // nil: none
}

// pollRequestOf is a net/http request's pollRequest.
func pollRequestOf(r *http.Request, pathDev string) pollRequest {
	c, _ := limits.ConnFrom(r.Context())
	return pollRequest{ctx: r.Context(), cred: credentialsOf(r), path: r.URL.Path, pathDev: pathDev,
		rawQuery: r.URL.RawQuery, http1: r.ProtoMajor == 1, conn: c, rec: accesslog.FromContext(r.Context())}
}

// answerWriter is an http.ResponseWriter that keeps the answer, so that
// every front writes the same status, header fields and body.
type answerWriter struct {
	h    http.Header
	code int
	body bytes.Buffer
	rec  *accesslog.Record
}

var _ http.ResponseWriter = (*answerWriter)(nil)

func newAnswerWriter(rec *accesslog.Record) *answerWriter {
	return &answerWriter{h: http.Header{}, rec: rec}
}

func (a *answerWriter) Header() http.Header { return a.h }

func (a *answerWriter) WriteHeader(code int) {
	if a.code == 0 {
		a.code = code
	}
}

func (a *answerWriter) Write(p []byte) (int, error) {
	if a.code == 0 {
		a.code = http.StatusOK
	}
	return a.body.Write(p)
}

// RecordReason takes the message of an error answer (limits.WriteError)
// for the access log.
func (a *answerWriter) RecordReason(msg string) { a.rec.SetReason(msg) }

func (a *answerWriter) answer() *longpoll.Answer {
	code := a.code
	if code == 0 {
		code = http.StatusOK
	}
	return &longpoll.Answer{Status: code, Header: a.h, Body: a.body.Bytes()}
}

// writeAnswer writes a to w and flushes it; nil: written and flushed.
func writeAnswer(w http.ResponseWriter, rc *http.ResponseController, a *longpoll.Answer) error {
	h := w.Header()
	for k, v := range a.Header {
		h[k] = v
	}
	w.WriteHeader(a.Status)
	if len(a.Body) > 0 {
		if _, err := w.Write(a.Body); err != nil {
			return err
		}
	}
	return rc.Flush()
}

// waitOf reads ?wait=N or "Prefer: wait=N", capped by poll.max_wait.
func (b *Bridge) waitOf(rawQuery string, h http.Header) (time.Duration, error) {
	q, _ := url.ParseQuery(rawQuery)
	v := q.Get("wait")
	if v == "" {
		for _, pref := range strings.Split(h.Get("Prefer"), ",") {
			if k, val, ok := strings.Cut(strings.TrimSpace(pref), "="); ok && strings.EqualFold(k, "wait") {
				v = strings.TrimSpace(val)
			}
		}
	}
	return parseWait(v, b.cfg.Poll.MaxWait.D())
}

// connectGrace is how long a poll on a session not yet connected waits
// for the connection (and the commands the broker queued) at least.
const connectGrace = 2 * time.Second

// beginPoll starts a poll: identified, allowed by the flapping limit, its
// wait read and its session got or created. It returns the poll, or the
// refusal to answer (nil poll).
func (b *Bridge) beginPoll(pr pollRequest) (*poll, *longpoll.Answer) {
	aw := newAnswerWriter(pr.rec)
	dev, ok := b.deviceFor(aw, pr.ctx, pr.cred, pr.path, pr.pathDev, pr.rec)
	if !ok {
		return nil, aw.answer()
	}
	wait, err := b.waitOf(pr.rawQuery, pr.cred.Header)
	if err != nil {
		b.failAt(aw, pr.ctx, pr.path, pr.cred.RemoteAddr, http.StatusBadRequest, err.Error())
		return nil, aw.answer()
	}
	s, err := b.session(dev)
	if err != nil {
		b.failAt(aw, pr.ctx, pr.path, pr.cred.RemoteAddr, http.StatusServiceUnavailable, err.Error())
		return nil, aw.answer()
	}
	p := &poll{b: b, s: s, req: pr, wait: wait, explicit: b.cfg.Poll.Ack == "explicit", batch: 1}
	if b.cfg.Poll.Format != "raw" {
		p.batch = b.cfg.Poll.MaxBatch
	}
	// While it waits, a queued reconnect of s goes first, and a lost link
	// reconnects at once (Next ends that with the answer).
	s.addWaiter() // ended once by endWait
	if wait > 0 {
		p.held = true
		b.m.held.Inc()
	}
	limit := wait
	s.mu.Lock()
	if s.link == nil && wait < connectGrace {
		// A new session gets the commands the broker queued right after
		// it connects: give it a moment (connecting wakes the poll).
		limit, p.early = connectGrace, b.now().Add(wait)
	}
	s.mu.Unlock()
	if limit > 0 {
		p.timer = time.AfterFunc(limit, func() { p.event(func() { p.expired = true }) })
	} else {
		p.expired = true // a short poll answers at once: nothing to wait for
	}
	// Nothing of the request is kept past here but what the answer needs:
	// a held poll must not pin the header map or the TLS state.
	p.req.cred.Header, p.req.cred.TLS = nil, nil
	return p, nil
}

// poll is one poll of a device on its session. A held poll has no
// goroutine of its own: its deadline is a timer, and a command, the
// session's end (session.stop) and the drain (Bridge.Drain) wake it
// through the callback registered by Next, from the session's list of
// waiting polls; over reads the session's and the drain's contexts under
// the session's lock, so no wake is lost.
type poll struct {
	b        *Bridge
	s        *session
	req      pollRequest
	wait     time.Duration
	explicit bool
	batch    int
	held     bool        // counted in the held gauge
	early    time.Time   // not connected at start: over once connected and past this
	waitDone atomic.Bool // endWait ran
	timer    *time.Timer // nil: no wait

	// under s.mu
	wake         func() // registered by Next
	expired      bool
	drainCounted bool
	cmds         []*command // taken, awaiting Written
	finished     bool
}

var _ longpoll.Poll = (*poll)(nil)

// event records what happened (f, under the session's lock) and fires
// the registered wake, if any, once.
func (p *poll) event(f func()) {
	p.s.mu.Lock()
	f()
	wake := p.unregister()
	p.s.mu.Unlock()
	if wake != nil {
		wake()
	}
}

// unregister removes p from the session's waiting polls and returns its
// wake callback, if registered. s.mu is held.
func (p *poll) unregister() func() {
	wake := p.wake
	if wake == nil {
		return nil
	}
	p.wake = nil
	ps := p.s.polls
	for i, q := range ps {
		if q == p {
			p.s.polls = append(ps[:i], ps[i+1:]...)
			break
		}
	}
	return wake
}

// over reports whether the poll answers now, commands or not. s.mu is
// held.
func (p *poll) over() bool {
	return p.expired || p.s.ctx.Err() != nil || p.b.draining() ||
		(!p.early.IsZero() && p.s.link != nil && !p.b.now().Before(p.early))
}

// endWait ends the poll's wait on its session, once.
func (p *poll) endWait() {
	if p.waitDone.CompareAndSwap(false, true) {
		p.s.doneWaiter()
	}
}

// Next takes commands and returns their answer, or the empty answer when
// the poll is over, or registers wake and returns nil: taking and
// registering are one lock section of the session, so nothing added in
// between is missed.
func (p *poll) Next(wake func()) *longpoll.Answer {
	a := p.next(wake)
	if a != nil {
		// Answered: the poll needs the link no more (the PUBACK goes on
		// the command's own connection). The wait ends before the
		// answer is written, so that the device, having it, may poll
		// another replica without this one's lost link reconnecting
		// (and taking the session back).
		p.endWait()
	}
	return a
}

func (p *poll) next(wake func()) *longpoll.Answer {
	b, s := p.b, p.s
	for {
		now := b.now()
		s.mu.Lock()
		cmds := s.takeLocked(p.batch, p.explicit, b.cfg.Poll.AckTimeout.D(), now)
		if len(cmds) == 0 {
			if !p.over() {
				if p.wake == nil {
					s.polls = append(s.polls, p)
				}
				p.wake = wake
				s.mu.Unlock()
				return nil
			}
			s.mu.Unlock()
			return p.emptyAnswer()
		}
		s.mu.Unlock()
		if cmds = b.dropExpired(s, cmds); len(cmds) == 0 {
			continue
		}
		if a := p.render(cmds); a != nil {
			return a
		}
	}
}

// drainMark adds the drain's mark to an answer: counted once, and on
// HTTP/1.1 the connection closes after it (HTTP/2 and HTTP/3 have
// GOAWAY, sent by the server's shutdown).
func (p *poll) drainMark(aw *answerWriter) {
	drained := p.b.draining()
	p.s.mu.Lock()
	first := drained && !p.drainCounted
	p.drainCounted = p.drainCounted || drained
	p.s.mu.Unlock()
	if first {
		p.b.drain.answered.Add(1)
	}
	if drained && p.req.http1 {
		aw.Header().Set("Connection", "close")
	}
}

func (p *poll) emptyAnswer() *longpoll.Answer {
	aw := newAnswerWriter(p.req.rec)
	p.drainMark(aw)
	p.b.writeEmpty(aw, p.req, p.s)
	return aw.answer()
}

// render is the answer carrying cmds, which Written settles; nil when
// none of them could be rendered (format template; they were dropped).
func (p *poll) render(cmds []*command) *longpoll.Answer {
	aw := newAnswerWriter(p.req.rec)
	p.drainMark(aw)
	cmds = p.b.renderCommands(aw, p.s, cmds)
	if len(cmds) == 0 {
		return nil
	}
	p.cmds = cmds
	return aw.answer()
}

// Written settles the commands of the answer by the write's outcome
// alone: written and flushed (and, with ack: write, acknowledged by the
// device's TCP stack, see awaitConnReceived) is delivered, whatever the
// request's context does afterwards; a failed write puts them back.
func (p *poll) Written(err error) {
	b, s := p.b, p.s
	cmds := p.cmds
	p.cmds = nil
	if len(cmds) > 0 {
		if err == nil && !p.explicit {
			err = b.awaitReceipt(s, p.req.conn)
		}
		if err != nil {
			b.log.Info("command write failed; it stays queued", "device", s.device, "err", err)
		}
		s.settle(cmds, p.explicit, err, p.req.rec)
	}
	p.finish()
}

// settle is the outcome of writing cmds to the device, for every front:
// written (and received, with ack: write) is delivered, or offered
// (explicit: awaiting the device's ack); a failed write puts them back.
func (s *session) settle(cmds []*command, explicit bool, err error, rec *accesslog.Record) {
	switch {
	case err != nil:
		s.requeue(cmds)
	case explicit:
		rec.AddCommands(len(cmds))
		s.offered(cmds)
	default:
		rec.AddCommands(len(cmds))
		s.delivered(cmds)
	}
}

// Cancel ends a poll whose client went away before its answer.
func (p *poll) Cancel() {
	if cmds := p.cmds; len(cmds) > 0 {
		p.cmds = nil
		p.s.requeue(cmds)
	}
	p.finish()
}

func (p *poll) finish() {
	s := p.s
	s.mu.Lock()
	done := p.finished
	p.finished = true
	p.unregister()
	s.mu.Unlock()
	if done {
		return
	}
	if p.timer != nil {
		p.timer.Stop()
	}
	p.endWait()
	if p.held {
		p.b.m.held.Dec()
	}
	p.b.touch(s)
}

// awaitReceipt waits (ack: write) until the device's TCP stack has the
// answer's bytes, on c (nil: not observable: written is all there is to
// know). The wait is bounded by poll.ack_write_timeout and the session's
// life, not the request's context: a client that read its answer and
// closed at once has it. A connection whose peer did not acknowledge in
// time is closed beneath TLS.
func (b *Bridge) awaitReceipt(s *session, c net.Conn) error {
	if c == nil {
		return nil
	}
	err := awaitConnReceived(s.ctx, c, b.cfg.Poll.AckWriteTimeout.D())
	switch {
	case errors.Is(err, errNoSocket):
		return nil
	case errors.Is(err, errNotReceived):
		b.m.notReceived.Inc()
		abortNetConn(c)
	}
	return err
}

// refusedPoll is a poll refused before it began: its answer is the
// refusal.
type refusedPoll struct{ a *longpoll.Answer }

var _ longpoll.Poll = refusedPoll{}

func (r refusedPoll) Next(func()) *longpoll.Answer { return r.a }
func (refusedPoll) Written(error)                  {}
func (refusedPoll) Cancel()                        {}

var _ longpoll.Handler = (*Bridge)(nil)

// StartPoll serves a GET of the poll endpoint for a front that parks held
// polls (the proxy's HTTP/1.1 fast path); anything else is not taken.
func (b *Bridge) StartPoll(r *longpoll.Request) (longpoll.Poll, bool) {
	if b.cfg.WebSocket != nil {
		if _, ok := b.wsPath.match(r.Path); ok {
			return nil, false
		}
	}
	dev, ok := b.poll.match(r.Path)
	if !ok {
		return nil, false
	}
	p, a := b.beginPoll(pollRequest{ctx: context.Background(), cred: Credentials{Header: r.Header, RemoteAddr: r.RemoteAddr, TLS: r.TLS},
		path: r.Path, pathDev: dev, rawQuery: r.RawQuery, http1: true, conn: r.Conn, rec: r.Record})
	if p == nil {
		return refusedPoll{a}, true
	}
	return p, true
}

// servePoll serves a poll through net/http (HTTP/2, HTTP/3, and
// HTTP/1.1 requests the fast path does not take).
func (b *Bridge) servePoll(w http.ResponseWriter, r *http.Request, pathDev string) {
	p, a := b.beginPoll(pollRequestOf(r, pathDev))
	if p == nil {
		writeAnswer(w, http.NewResponseController(w), a)
		return
	}
	rc := http.NewResponseController(w)
	if p.wait > 0 {
		// Long-poll: this response may outlive the server's WriteTimeout.
		_ = rc.SetWriteDeadline(time.Now().Add(p.wait + 10*time.Second))
	}
	woke := make(chan struct{}, 1) // each registration fires at most once
	wake := func() { woke <- struct{}{} }
	for {
		if a := p.Next(wake); a != nil {
			p.Written(writeAnswer(w, rc, a))
			return
		}
		select {
		case <-woke:
		case <-r.Context().Done():
			p.Cancel()
			return
		}
	}
}

// retrySeconds is the Retry-After of a refusal, as a header value.
func retrySeconds(d time.Duration) string {
	return strconv.Itoa(int((d + time.Second - 1) / time.Second))
}
