package fast

import (
	"bufio"
	"errors"
	"net/http"
	"net/textproto"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/edgeshim/edgeshim/bridge/longpoll"
	"github.com/edgeshim/edgeshim/limits/accesslog"
	"github.com/edgeshim/edgeshim/limits/park"
	"github.com/edgeshim/edgeshim/proxy/internal/h1"
	"github.com/prometheus/client_golang/prometheus"
)

// The bridges' long-polls on the HTTP/1.1 fast path.
//
// A GET on a bridge route whose head the fast path accepts is handed to
// the bridge (longpoll.Handler, found on the mounted handler) as a neutral
// request. The bridge answers at once (commands, a refusal, an empty
// answer) or registers a wake callback; then, unless the client sent more
// than the request (pipelined data waits in the goroutine), the
// connection is parked in the epoll parker with no goroutine: its bufio
// reader back in the pool, nothing buffered above the socket. It is woken
// by the bridge's callback (a command, the wait's deadline, the session's
// end, the drain: each answered as net/http's path answers it) or by the
// parker when the socket becomes readable: the peer closing cancels the
// poll (nothing was taken), data means a pipelined request, which waits
// in that goroutine. Whoever wakes it first owns the connection (claim);
// after the answer a keep-alive connection goes on on the fast path.
//
// Anything the fast path cannot serve exactly as net/http does (HEAD, a
// body, HTTP/1.0, acks, telemetry, WebSocket upgrades, odd heads, the
// server over its heap watermark) falls back to net/http as before.

// pollOutcome is what servePoll did with a request.
type pollOutcome uint8

const (
	pollHandoff pollOutcome = iota // not taken: net/http serves it and the rest
	pollServed                     // answered: the connection goes on
	pollEnded                      // the connection ended
	pollParked                     // parked: the caller must not touch the connection again
)

// pollStats are the fast server's long-poll counters; held polls wait in
// the fast server's parker, with its idle keep-alive connections.
type pollStats struct {
	// served counts polls served on the fast path; parked, the times
	// one was parked.
	served, parked prometheus.Counter
	n, nParked     atomic.Int64 // served and parked, for tests
}

// newPollStats registers the polls' counters; nil if there are no poll
// routes.
func newPollStats(any bool, reg prometheus.Registerer) *pollStats {
	if !any {
		return nil
	}
	fp := &pollStats{}
	fp.served = prometheus.NewCounter(prometheus.CounterOpts{Name: "edgeshim_proxy_fast_polls_total",
		Help: "Bridge polls served on the HTTP/1.1 fast path (the others went through net/http)."})
	fp.parked = prometheus.NewCounter(prometheus.CounterOpts{Name: "edgeshim_proxy_fast_polls_parked_total",
		Help: "Times a held poll on the HTTP/1.1 fast path was parked (no goroutine) to wait."})
	reg.MustRegister(fp.served, fp.parked)
	return fp
}

// Parked poll states: whoever moves parked to owned (claim) serves the
// connection from then on.
const (
	stSetup       int32 = iota // being parked by its owner
	stParked                   // parked: nobody runs it
	stOwned                    // a goroutine serves it
	stInterrupted              // woken while being parked: its owner keeps it
)

// heldPoll is one poll served on the fast path.
type heldPoll struct {
	fc         *Conn
	p          longpoll.Poll
	r          *PollRoute
	rec        *accesslog.Record
	t0         time.Time
	closeAfter bool // the client asked for close
	kick       chan struct{}
	state      atomic.Int32
	h          *park.Handle
	wakeFn     func()
}

// servePoll serves the head just read if it is a bridge long-poll the
// fast path takes (r); n is the head's length.
func (fc *Conn) servePoll(r *PollRoute, n int, t0 time.Time) pollOutcome {
	fs := fc.fs
	fp := fs.polls
	if fp == nil || r == nil {
		return pollHandoff
	}
	h := &fc.h
	lh := r.Handler
	if lh == nil || string(h.method) != http.MethodGet || h.http10 || h.contentLength != 0 || fs.heap.Over() {
		return pollHandoff
	}
	path, query, _ := strings.Cut(string(h.target), "?")
	hdr := make(http.Header, len(h.fields))
	for i := range h.fields {
		f := &h.fields[i]
		if h1.EqualFold(f.Name, "host") {
			continue // net/http keeps it in Request.Host
		}
		k := textproto.CanonicalMIMEHeaderKey(string(f.Name))
		hdr[k] = append(hdr[k], string(f.Value))
	}
	cs := fc.tc.ConnectionState()
	rec := &accesslog.Record{Start: t0, Route: r.Name, Client: fc.tc.RemoteAddr().String(), Proto: "HTTP/1.1",
		Host: string(h.host), Method: http.MethodGet, Path: path, RawQuery: query, Bridge: r.Bridge, Upstream: r.Broker}
	rec.SetTLS(&cs)
	if !r.NoLog {
		fs.alog.Begin(rec)
	}
	p, ok := lh.StartPoll(&longpoll.Request{Path: path, RawQuery: query, Header: hdr, RemoteAddr: rec.Client,
		TLS: &cs, Conn: fc.tc, Record: rec})
	if !ok {
		return pollHandoff
	}
	fc.br.Discard(n)
	fp.served.Inc()
	fp.n.Add(1)
	pp := &heldPoll{fc: fc, p: p, r: r, rec: rec, t0: t0, closeAfter: h.conn.Close, kick: make(chan struct{}, 1)}
	pp.wakeFn = pp.wake
	pp.state.Store(stOwned)
	return pp.run()
}

// run serves the poll in the owning goroutine until it is answered, the
// client is gone, or it is parked (pollParked: then another goroutine
// may own fc already).
func (pp *heldPoll) run() pollOutcome {
	fc := pp.fc
	for {
		select { // a kick before this look is seen by it
		case <-pp.kick:
		default:
		}
		if a := pp.p.Next(pp.wakeFn); a != nil {
			return pp.answer(a)
		}
		data, gone := fc.probe(aLongTimeAgo)
		if gone {
			pp.cancel()
			return pollEnded
		}
		if !data {
			parked, tried := pp.park()
			if parked {
				return pollParked
			}
			if tried {
				continue // woken while being parked: look again
			}
		}
		// Pipelined data, or no poller: wait here for the bridge.
		<-pp.kick
	}
}

// wake is the bridge's callback: a command, the deadline, the session's
// end or the drain. It must not block.
func (pp *heldPoll) wake() {
	select {
	case pp.kick <- struct{}{}:
	default:
	}
	if pp.claim() {
		go pp.resume(false) // within the parked connection's count (Listener.Hold)
	}
}

// readable is the parker's callback: the parked socket has data or was
// closed.
func (pp *heldPoll) readable() {
	if pp.claim() {
		pp.resume(true)
	}
}

// claim takes a parked connection for the caller; a connection being
// parked is marked so that its owner looks again.
func (pp *heldPoll) claim() bool { return claimParked(&pp.state) }

// park parks the connection; tried is false when it cannot be parked
// (no poller: the fallback would hold a goroutine anyway), and parked
// false with tried when it was woken while being parked (the caller
// keeps it).
func (pp *heldPoll) park() (parked, tried bool) {
	fc := pp.fc
	fs, l := fc.fs, fc.l
	// From here a wake marks the state (claim); one that came before
	// has kicked.
	pp.state.Store(stSetup)
	if len(pp.kick) > 0 {
		pp.state.Store(stOwned)
		return false, true
	}
	h, err := fs.parker.Register(fc.tc, pp.readable)
	if err != nil {
		pp.state.Store(stOwned)
		return false, false
	}
	if !h.Polled() {
		h.Stop()
		pp.state.Store(stOwned)
		return false, false
	}
	pp.h = h
	fc.br.Reset(nil)
	fs.readers.Put(fc.br)
	fc.br = nil
	fc.poll.Store(pp)
	l.Hold() // the parked connection's; done by whoever ends its turn
	if h.Park() && pp.state.CompareAndSwap(stSetup, stParked) {
		fs.polls.parked.Inc()
		fs.polls.nParked.Add(1)
		return true, true
	}
	// Woken while being parked (or the parker closed): keep it.
	h.Stop()
	pp.state.Store(stOwned)
	fc.poll.Store(nil)
	l.Release()
	fc.takeReader()
	return false, true
}

func (fc *Conn) takeReader() {
	fc.br, _ = fc.fs.readers.Get().(*bufio.Reader)
	if fc.br == nil {
		fc.br = bufio.NewReaderSize(nil, 4096)
	}
	fc.br.Reset(fc)
}

// resume serves a connection claimed from the parker: the poll, then the
// connection's further requests on the fast path, as serve does.
// readable: the parker woke it (else the bridge did).
func (pp *heldPoll) resume(readable bool) {
	fc := pp.fc
	l := fc.l
	defer l.Release() // the count taken when it was parked
	pp.h.Stop()
	fc.poll.Store(nil)
	fc.takeReader()
	// The parker's wake: the peer closed, or sent data (a short wait
	// tells a spurious readiness apart). The bridge's: run looks.
	gone := false
	if readable {
		_, gone = fc.probe(time.Now().Add(10 * time.Millisecond))
	}
	out := pollEnded
	if gone {
		pp.cancel()
	} else {
		out = pp.run()
	}
	if out == pollParked {
		return
	}
	handoff := false
	if out == pollServed {
		fc.state.Store(connIdle)
		if !l.Draining() {
			var parked bool
			if handoff, parked = fc.loop(l); parked {
				return
			}
		}
	}
	fc.fs.end(l, fc, handoff)
}

// abortPoll ends a parked poll whose connection abort closed: the parker
// never sees a socket closed here.
func (fc *Conn) abortPoll() {
	pp := fc.poll.Load()
	if pp == nil || !pp.claim() {
		return
	}
	go func() { // abort runs under the listener's lock
		defer fc.l.Release()
		pp.h.Stop()
		fc.poll.Store(nil)
		fc.takeReader()
		pp.cancel()
		fc.fs.end(fc.l, fc, false)
	}()
}

// cancel ends a poll whose client went away: nothing was taken. As on
// net/http's path, it is logged and counted as a 200 with no body.
func (pp *heldPoll) cancel() {
	pp.p.Cancel()
	pp.done(http.StatusOK, 0)
}

func (pp *heldPoll) done(code int, n int64) {
	pp.r.Requests.Inc(code)
	pp.r.Duration.Observe(time.Since(pp.t0).Seconds())
	pp.rec.Done(code, n)
}

// answerWriteTimeout bounds writing an answer to a device.
const answerWriteTimeout = 10 * time.Second

// answer writes a as net/http writes a handler's response, reports the
// write to the bridge and counts and logs the request.
func (pp *heldPoll) answer(a *longpoll.Answer) pollOutcome {
	fc := pp.fc
	keep := !pp.closeAfter && !fc.l.Draining() && !h1.HasToken([]byte(a.Header.Get("Connection")), "close")
	b := appendStatusLine(nil, false, a.Status)
	keys := make([]string, 0, len(a.Header))
	for k := range a.Header {
		switch k {
		case "Connection", "Content-Length", "Date", "Transfer-Encoding":
			continue
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range a.Header[k] {
			b = appendField(b, []byte(k), []byte(v))
		}
	}
	bodyOK := a.Status != http.StatusNoContent && a.Status != http.StatusNotModified && a.Status >= 200
	if bodyOK && len(a.Body) > 0 && a.Header.Get("Content-Type") == "" {
		b = append(b, "Content-Type: "+http.DetectContentType(a.Body)+"\r\n"...)
	}
	if bodyOK {
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, int64(len(a.Body)), 10)
		b = append(b, "\r\n"...)
	}
	b = fc.fs.appendDate(b)
	b = append(b, fc.fs.altSvcLine()...)
	if !keep {
		b = append(b, "Connection: close\r\n"...)
	}
	b = append(b, "\r\n"...)
	var n int64
	if bodyOK {
		b = append(b, a.Body...)
		n = int64(len(a.Body))
	}
	fc.writeDeadline(time.Now().Add(answerWriteTimeout), 0)
	_, err := fc.tc.Write(b)
	pp.p.Written(err)
	pp.done(a.Status, n)
	if err != nil || !keep {
		return pollEnded
	}
	return pollServed
}

// probe tells whether the client sent more than its request (data) or
// went away (gone), reading until deadline (a past one reads nothing
// from the socket: only what TLS has buffered). A byte read is kept for
// the next Read.
func (fc *Conn) probe(deadline time.Time) (data, gone bool) {
	if fc.stashed || fc.br.Buffered() > 0 {
		return true, false
	}
	fc.readDeadline(deadline, 0)
	n, err := fc.tc.Read(fc.stash[:])
	if n > 0 {
		fc.stashed = true
		return true, false
	}
	return false, err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
}

// match routes the head: the Host in h1.HostForMatch's form (kept in
// fc.host for the access log), then the router.
func (fs *Server) match(fc *Conn) Target {
	fc.host = h1.HostForMatch(fc.host, fc.h.host)
	return fs.routes.Match(fc.host, fc.h.path)
}
