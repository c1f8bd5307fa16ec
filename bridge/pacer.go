package bridge

import (
	"container/list"
	"math"
	"sync"
	"time"
)

// pacer releases session connects at a fixed rate (a token bucket of
// burst tokens refilled at rate per second). Waiting connects queue in
// two FIFOs: urgent ones (a device waits on the session: first contact,
// a held poll) go before background ones (reconnects after a broker
// loss). A connect that is no longer wanted (the session was evicted or
// ended) leaves its queue and takes no token, so it delays nobody.
//
// It replaces x/time/rate's Reserve/Cancel, whose cancelled reservations
// return no token while later reservations exist: an eviction storm then
// stalled every other connect for seconds.
//
// The pacer has no goroutine of its own: a timer is armed only while
// connects wait (and stopped when the last one leaves), and it calls
// their release functions on its goroutine, without the pacer's lock.
type pacer struct {
	now   func() time.Time
	rate  float64 // tokens per second
	burst float64

	mu     sync.Mutex
	tokens float64
	last   time.Time // of the last refill
	queues [2]list.List
	timer  *time.Timer // armed while connects wait
	gen    uint64      // of the armed timer: a stopped one that fired anyway does nothing
}

// paceEps absorbs float rounding of the refill: a timer set for the next
// token finds it there.
const paceEps = 1e-9

// Queue indexes: urgent first.
const (
	paceUrgent = iota
	paceBackground
)

// paceTicket is one queued connect.
type paceTicket struct {
	release func()
	q       int
	e       *list.Element // nil once released or cancelled
}

func newPacer(rate float64, burst int, now func() time.Time) *pacer {
	p := &pacer{now: now, rate: rate, burst: float64(max(1, burst))}
	p.tokens, p.last = p.burst, now()
	return p
}

// refill adds the tokens earned since the last refill; p.mu is held.
func (p *pacer) refill() {
	now := p.now()
	if d := now.Sub(p.last); d > 0 {
		p.tokens = min(p.burst, p.tokens+d.Seconds()*p.rate)
	}
	p.last = now
}

// enqueue asks for a connect. With a token free and nobody queued it
// returns (nil, true): connect now, release is not called. Otherwise the
// connect queues, and release is called (on the pacer's timer goroutine)
// when its turn comes, unless cancel removed it first.
func (p *pacer) enqueue(urgent bool, release func()) (*paceTicket, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refill()
	ahead := p.queues[paceUrgent].Len() // queued before this one
	if !urgent {
		ahead += p.queues[paceBackground].Len()
	}
	if p.tokens+paceEps >= 1 && ahead == 0 {
		p.tokens--
		return nil, true
	}
	t := &paceTicket{release: release, q: paceBackground}
	if urgent {
		t.q = paceUrgent
	}
	t.e = p.queues[t.q].PushBack(t)
	p.arm()
	return t, false
}

// promote moves a queued background connect to the urgent queue: a
// device started waiting on it.
func (p *pacer) promote(t *paceTicket) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if t == nil || t.e == nil || t.q == paceUrgent {
		return
	}
	p.queues[t.q].Remove(t.e)
	t.q = paceUrgent
	t.e = p.queues[t.q].PushBack(t)
}

// cancel removes a queued connect; false if it was already released (its
// release function runs or ran).
func (p *pacer) cancel(t *paceTicket) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if t == nil || t.e == nil {
		return false
	}
	p.queues[t.q].Remove(t.e)
	t.e = nil
	if p.timer != nil && p.queues[paceUrgent].Len()+p.queues[paceBackground].Len() == 0 {
		p.timer.Stop() // nothing waits: no timer outlives the sessions
		p.timer = nil
	}
	return true
}

// queued is the number of waiting connects.
func (p *pacer) queued() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.queues[paceUrgent].Len() + p.queues[paceBackground].Len()
}

// arm starts the timer for the next token if connects wait; p.mu is held.
func (p *pacer) arm() {
	if p.timer != nil || p.queues[paceUrgent].Len()+p.queues[paceBackground].Len() == 0 {
		return
	}
	// At least 1ns, so that the clock moves and the token is there.
	d := max(time.Duration(math.Ceil((1-p.tokens)/p.rate*float64(time.Second))), 1)
	p.gen++
	g := p.gen
	p.timer = time.AfterFunc(d, func() { p.run(g) })
}

// run releases as many queued connects as there are tokens, urgent
// first, and re-arms for the rest.
func (p *pacer) run(gen uint64) {
	p.mu.Lock()
	if gen != p.gen || p.timer == nil {
		p.mu.Unlock()
		return
	}
	p.timer = nil
	p.refill()
	var due []func()
	for p.tokens+paceEps >= 1 {
		q := &p.queues[paceUrgent]
		if q.Len() == 0 {
			q = &p.queues[paceBackground]
		}
		if q.Len() == 0 {
			break
		}
		t := q.Remove(q.Front()).(*paceTicket)
		t.e = nil
		p.tokens--
		due = append(due, t.release)
	}
	p.arm()
	p.mu.Unlock()
	for _, f := range due {
		f()
	}
}
