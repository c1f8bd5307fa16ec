// Package match pairs the commands a simulator published with what its
// devices received, and counts each command as delivered (once or more),
// late, lost or expired. It is pure bookkeeping on an injected clock.
package match

import (
	"sync"
	"time"
)

// Clock tells the time; time.Now in production, a fake in tests.
type Clock func() time.Time

// Counts is the outcome of matching, in commands (Duplicates in extra
// receipts).
type Counts struct {
	// Published: sent and not withdrawn by Failed.
	Published int64 `json:"published"`
	// Failed: the publish itself failed (withdrawn).
	Failed int64 `json:"publish_failed"`
	// Delivered: received at least once by the device it was sent to.
	Delivered int64 `json:"delivered"`
	// Duplicates: receipts after the first (at-least-once redelivery).
	Duplicates int64 `json:"duplicates"`
	// Late: delivered, the first time after the late threshold.
	Late int64 `json:"late"`
	// Expired: not delivered within the message expiry.
	Expired int64 `json:"expired"`
	// Lost: not delivered, not expired, when Finish was called.
	Lost int64 `json:"lost"`
	// Pending: not delivered yet (before Finish).
	Pending int64 `json:"pending"`
	// Unknown: receipts of ids never published (an earlier run's).
	Unknown int64 `json:"unknown"`
	// Misrouted: received by another device than the one it was sent to.
	Misrouted int64 `json:"misrouted"`
}

type entry struct {
	device   string
	at       time.Time
	received int
}

// Matcher is safe for concurrent use.
type Matcher struct {
	now    Clock
	late   time.Duration
	expiry time.Duration

	mu       sync.Mutex
	cmds     map[string]*entry
	c        Counts
	finished bool
}

// New returns a matcher: a command first received more than late after it
// was published is late; with expiry > 0, one not received within expiry
// is expired rather than lost.
func New(now Clock, late, expiry time.Duration) *Matcher {
	return &Matcher{now: now, late: late, expiry: expiry, cmds: map[string]*entry{}}
}

// Published records a command sent to device, before the publish call
// (a device may receive it before the broker's PUBACK comes back).
func (m *Matcher) Published(id, device string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, dup := m.cmds[id]; dup || m.finished {
		return
	}
	m.cmds[id] = &entry{device: device, at: m.now()}
	m.c.Published++
}

// Failed withdraws a command whose publish failed (no PUBACK, or a
// reason code saying the broker did not take it).
func (m *Matcher) Failed(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.cmds[id]
	if !ok || m.finished {
		return
	}
	if e.received > 0 { // it arrived anyway: keep it as published
		return
	}
	delete(m.cmds, id)
	m.c.Published--
	m.c.Failed++
}

// Received records that device received command id. It returns the
// publish → receipt latency and whether this was the first receipt of a
// known command.
func (m *Matcher) Received(id, device string) (time.Duration, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.cmds[id]
	if !ok {
		m.c.Unknown++
		return 0, false
	}
	if e.device != device {
		m.c.Misrouted++
		return 0, false
	}
	e.received++
	if e.received > 1 {
		m.c.Duplicates++
		return 0, false
	}
	lat := m.now().Sub(e.at)
	m.c.Delivered++
	if lat > m.late {
		m.c.Late++
	}
	return lat, true
}

// Counts returns the counts so far; commands not yet received are
// Pending (or Expired past the expiry).
func (m *Matcher) Counts() Counts {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.settle(false)
}

// Finish ends matching: commands not received are expired (past the
// expiry) or lost. Later calls to Published are ignored; Received still
// counts duplicates and unknown ids.
func (m *Matcher) Finish() Counts {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.finished = true
	return m.settle(true)
}

func (m *Matcher) settle(final bool) Counts {
	c := m.c
	now := m.now()
	for _, e := range m.cmds {
		if e.received > 0 {
			continue
		}
		switch {
		case m.expiry > 0 && now.Sub(e.at) > m.expiry:
			c.Expired++
		case final:
			c.Lost++
		default:
			c.Pending++
		}
	}
	return c
}
