package mqtt

import (
	"sync"
	"time"
)

// timerPinger keeps an MQTT keepalive with a runtime timer instead of a
// goroutine per connection: idle sessions are the common case, and each
// goroutine costs its stack. It sends PINGREQ when nothing was sent or
// received for a keepalive interval, and reports the connection lost when
// a PINGREQ got no PINGRESP within the next interval.
type timerPinger struct {
	mu           sync.Mutex
	lastSent     time.Time
	lastReceived time.Time
	lastPingSent time.Time
	lastPingResp time.Time
	timer        *time.Timer
	stopped      bool
}

// start arms the timer: ping sends a PINGREQ, lost ends the connection.
// Both run on the timer's goroutine, never with the pinger's lock held.
func (p *timerPinger) start(interval time.Duration, ping func() error, lost func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return
	}
	now := time.Now()
	p.lastSent, p.lastReceived = now, now
	p.timer = time.AfterFunc(interval, func() { p.tick(interval, ping, lost) })
}

// stop disarms the timer for good.
func (p *timerPinger) stop() {
	p.mu.Lock()
	p.stopped = true
	if p.timer != nil {
		p.timer.Stop()
	}
	p.mu.Unlock()
}

func (p *timerPinger) tick(interval time.Duration, ping func() error, lost func()) {
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		return
	}
	if !p.lastPingSent.IsZero() && p.lastPingSent.After(p.lastPingResp) {
		p.mu.Unlock()
		lost() // PINGRESP timed out: the broker is gone
		return
	}
	due := p.lastSent
	if p.lastReceived.Before(due) {
		due = p.lastReceived
	}
	due = due.Add(interval)
	now := time.Now()
	if now.Before(due) {
		p.timer.Reset(due.Sub(now))
		p.mu.Unlock()
		return
	}
	p.lastPingSent = now
	p.timer.Reset(interval)
	p.mu.Unlock()
	if err := ping(); err != nil {
		lost()
	}
}

// sent records a packet written to the broker.
func (p *timerPinger) sent() {
	p.mu.Lock()
	p.lastSent = time.Now()
	p.mu.Unlock()
}

// received records a packet read from the broker.
func (p *timerPinger) received() {
	p.mu.Lock()
	p.lastReceived = time.Now()
	p.mu.Unlock()
}

// pingResp records a PINGRESP.
func (p *timerPinger) pingResp() {
	p.mu.Lock()
	p.lastPingResp = time.Now()
	p.mu.Unlock()
}
