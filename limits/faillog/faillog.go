// Package faillog turns repeated failures into a few log lines an
// operator can read: the first failure of a key (a backend, a broker) is
// logged at once, the ones after it are counted and summarised in one
// line per interval ("backend http://a: 49 more failures in the last
// 10s"), and when the key works again one line says so, with how long it
// was failing and how many failures there were.
//
// It is for failures that repeat (backend and broker errors); refusals of
// clients are limits' business.
package faillog

import (
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Options configure a Log.
type Options struct {
	// Logger receives the lines. Required.
	Logger *slog.Logger
	// Interval is the longest a failure waits to be reported, and the
	// least time between two failure lines of a key. Default: 10s.
	Interval time.Duration
	// Now is the clock. Default: time.Now. The summaries' timers are the
	// time package's (testing/synctest fakes both).
	Now func() time.Time
}

// Log aggregates failures by key. Its methods are safe for concurrent
// use; Recover of a key that is not failing costs one atomic load.
type Log struct {
	o      Options
	down   atomic.Int64 // keys failing
	mu     sync.Mutex
	keys   map[string]*state
	closed bool
}

// state is one key's.
type state struct {
	down      bool      // failing: a Fail without a Recover since
	announced bool      // a line about this outage was written
	since     time.Time // first failure of the outage
	failures  int       // in this outage
	pending   int       // failures not in a line yet
	lastLine  time.Time // of the last failure line
	last      []any     // the last failure's attributes
	msg       string    // the last failure's message
	timer     *time.Timer
}

// New returns a Log.
func New(o Options) *Log {
	if o.Interval <= 0 {
		o.Interval = 10 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Log{o: o, keys: map[string]*state{}}
}

// Fail records a failure of key. The first of an outage is logged at
// WARN as msg with args at once (unless a line about key was written
// less than an interval ago); the rest are counted and logged as one
// summary per interval, with the last one's message and attributes.
func (l *Log) Fail(key, msg string, args ...any) {
	now := l.o.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	st := l.keys[key]
	if st == nil {
		st = &state{}
		l.keys[key] = st
	}
	if !st.down {
		st.down, st.since, st.failures = true, now, 0
		l.down.Add(1)
	}
	st.failures++
	if !st.announced && (st.lastLine.IsZero() || now.Sub(st.lastLine) >= l.o.Interval) {
		st.announced, st.lastLine = true, now
		l.o.Logger.Warn(msg, args...)
	} else {
		st.pending++
		st.msg, st.last = msg, args
	}
	l.arm(key, st)
}

// arm starts key's summary timer unless it runs. l.mu is held.
func (l *Log) arm(key string, st *state) {
	if st.timer == nil {
		st.timer = time.AfterFunc(l.o.Interval, func() { l.tick(key) })
	}
}

// tick writes key's summary of the failures since its last line, and
// runs again while failures come.
func (l *Log) tick(key string) {
	now := l.o.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.keys[key]
	if l.closed || st == nil {
		return
	}
	st.timer = nil
	if st.pending == 0 {
		if !st.down {
			delete(l.keys, key) // nothing more to say about it
		}
		return
	}
	args := append([]any{"repeated", st.pending, "last", st.msg}, st.last...)
	l.o.Logger.Warn(fmt.Sprintf("%s: %d more failures in the last %s", key, st.pending, l.o.Interval), args...)
	st.pending, st.lastLine, st.last = 0, now, nil
	st.announced = st.down
	l.arm(key, st)
}

// Recover records that key works again. If a line about its failures was
// written, msg is logged at INFO with args, "down_for" (since the first
// failure) and "failures" (all of them, the ones not yet summarised
// included).
func (l *Log) Recover(key, msg string, args ...any) {
	if l.down.Load() == 0 {
		return
	}
	now := l.o.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.keys[key]
	if l.closed || st == nil || !st.down {
		return
	}
	st.down = false
	l.down.Add(-1)
	if !st.announced {
		return // the summary timer reports the failures
	}
	st.announced = false
	args = append(args, "down_for", now.Sub(st.since).Round(time.Millisecond).String(), "failures", st.failures)
	st.pending, st.last = 0, nil
	l.o.Logger.Info(msg, args...)
}

// AnyDown reports whether some key is failing: a caller on a hot path
// checks it before building Recover's arguments (an allocation).
func (l *Log) AnyDown() bool { return l.down.Load() != 0 }

// Failing reports whether key is failing (a Fail without a Recover since).
func (l *Log) Failing(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.keys[key]
	return st != nil && st.down
}

// Close stops the timers; failures not yet summarised are not logged.
func (l *Log) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	for _, st := range l.keys {
		if st.timer != nil {
			st.timer.Stop()
		}
	}
}
