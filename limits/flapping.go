package limits

import (
	"log/slog"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// FlappingOptions configure flapping detection.
type FlappingOptions struct {
	// Max events within Window count as flapping. 0 disables detection.
	Max int
	// Window is the counting window.
	Window time.Duration
	// Ban is how long a flapping device is refused.
	Ban time.Duration
	// Tracked bounds the devices with state. Default: 100000.
	Tracked int
	// Now is the clock. Default: time.Now.
	Now func() time.Time
	// Logger receives refused devices, at most one line per second with
	// a count (RefusalLog). Optional.
	Logger *slog.Logger
}

type flapState struct {
	start       time.Time
	count       int
	bannedUntil time.Time
}

// Flapping bans devices that connect or poll more than Max times within
// Window, for Ban (like EMQX's flapping detection). State is bounded.
type Flapping struct {
	o   FlappingOptions
	log *RefusalLog
	mu  sync.Mutex
	st  *lru.Cache[string, *flapState]
}

// NewFlapping returns a detector.
func NewFlapping(o FlappingOptions) *Flapping {
	if o.Tracked < 1 {
		o.Tracked = 100000
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	c, _ := lru.New[string, *flapState](o.Tracked)
	return &Flapping{o: o, st: c, log: NewRefusalLog(o.Logger, slog.LevelInfo, "flapping device refused")}
}

// Allow records one event for id and reports whether it is allowed; when it
// is not, retryAfter is how long the ban still lasts.
func (f *Flapping) Allow(id string) (ok bool, retryAfter time.Duration) {
	return f.AllowFrom(id, "")
}

// AllowFrom is Allow for a device connecting from addr (for the log).
func (f *Flapping) AllowFrom(id, addr string) (ok bool, retryAfter time.Duration) {
	if f == nil || f.o.Max <= 0 {
		return true, 0
	}
	ok, retryAfter = f.allow(id)
	if !ok {
		if addr != "" {
			id += " from " + addr
		}
		f.log.Refused("flapping", id, nil)
	}
	return ok, retryAfter
}

func (f *Flapping) allow(id string) (ok bool, retryAfter time.Duration) {
	now := f.o.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	s, found := f.st.Get(id)
	if !found {
		s = &flapState{start: now}
		f.st.Add(id, s)
	}
	if now.Before(s.bannedUntil) {
		return false, s.bannedUntil.Sub(now)
	}
	if now.Sub(s.start) >= f.o.Window {
		s.start, s.count = now, 0
	}
	s.count++
	if s.count > f.o.Max {
		s.bannedUntil = now.Add(f.o.Ban)
		s.start, s.count = s.bannedUntil, 0
		return false, f.o.Ban
	}
	return true, 0
}
