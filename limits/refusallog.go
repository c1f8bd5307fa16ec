package limits

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// RefusalLog writes refusals to a logger at most once per reason per
// Window, so that a flood cannot fill the disk: the first refusal of a
// reason is written at once; the ones that follow within the window are
// counted and written as one aggregate line when the window ends, with
// their count and the first and last refused address. Reasons must come
// from a small fixed set (metric label values): each has a little state.
//
// The clock is the time package's (tests run it under testing/synctest).
// Close writes what is pending and stops the timers.
type RefusalLog struct {
	log    *slog.Logger
	level  slog.Level
	msg    string
	window time.Duration

	mu     sync.Mutex
	closed bool
	rs     map[string]*refusals
}

type refusals struct {
	wrote       time.Time   // when a line of this reason was last written
	n           int         // refused since, not yet written
	first, last string      // their addresses
	timer       *time.Timer // writes the aggregate at the window's end
}

// NewRefusalLog returns a RefusalLog writing msg at level, at most once per
// second per reason. A nil log discards.
func NewRefusalLog(log *slog.Logger, level slog.Level, msg string) *RefusalLog {
	return &RefusalLog{log: log, level: level, msg: msg, window: time.Second, rs: map[string]*refusals{}}
}

// Refused records one refusal for reason of addr (a client address or a
// device id); err, if not nil, is written with the first refusal of a
// window. It is safe on a nil RefusalLog (nothing is logged).
func (r *RefusalLog) Refused(reason, addr string, err error) {
	if r == nil || r.log == nil {
		return
	}
	now := time.Now()
	r.mu.Lock()
	s := r.rs[reason]
	if s == nil {
		s = &refusals{}
		r.rs[reason] = s
	}
	if s.timer == nil && (s.wrote.IsZero() || now.Sub(s.wrote) >= r.window) {
		s.wrote = now
		r.mu.Unlock()
		args := []any{"reason", reason, "count", 1, "addr", addr}
		if err != nil {
			args = append(args, "err", err.Error())
		}
		r.log.Log(context.Background(), r.level, r.msg, args...)
		return
	}
	if s.n == 0 {
		s.first = addr
	}
	s.n++
	s.last = addr
	if s.timer == nil && !r.closed {
		s.timer = time.AfterFunc(s.wrote.Add(r.window).Sub(now), func() { r.flush(reason) })
	}
	r.mu.Unlock()
}

// flush writes the aggregate of reason.
func (r *RefusalLog) flush(reason string) {
	r.mu.Lock()
	s := r.rs[reason]
	s.timer = nil
	if r.closed || s.n == 0 {
		r.mu.Unlock()
		return
	}
	n, first, last := s.n, s.first, s.last
	s.n, s.wrote = 0, time.Now()
	r.mu.Unlock()
	r.write(reason, n, first, last)
}

func (r *RefusalLog) write(reason string, n int, first, last string) {
	r.log.Log(context.Background(), r.level, r.msg, "reason", reason, "count", n, "first", first, "last", last, "within", r.window.String())
}

// Close writes the pending aggregates and stops the timers; later
// refusals are written one per window, without aggregates.
func (r *RefusalLog) Close() {
	if r == nil {
		return
	}
	type line struct {
		reason      string
		n           int
		first, last string
	}
	var pending []line
	r.mu.Lock()
	r.closed = true
	for reason, s := range r.rs {
		if s.timer != nil {
			s.timer.Stop()
			s.timer = nil
		}
		if s.n > 0 {
			pending = append(pending, line{reason, s.n, s.first, s.last})
			s.n = 0
		}
	}
	r.mu.Unlock()
	for _, l := range pending {
		r.write(l.reason, l.n, l.first, l.last)
	}
}
