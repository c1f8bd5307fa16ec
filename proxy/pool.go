package proxy

import (
	"errors"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// ErrNoBackend is returned when every backend of a pool is ejected.
var ErrNoBackend = errors.New("no healthy backend")

// backend is one upstream server of a pool with its passive and active
// health state.
type backend struct {
	url      *url.URL
	name     string // url without userinfo, for metrics and logs
	logKey   string // "backend NAME", its key in the route's failure log
	inflight atomic.Int64

	// Metric children, resolved once (label lookups on every request cost).
	mInflight interface {
		Inc()
		Dec()
	}
	mDuration interface{ Observe(float64) }
	mErrors   interface{ Inc() }

	fast *fastBackend // the fast path's client; nil unless its route is fast

	mu           sync.Mutex
	fails        int       // consecutive failures
	ejectedUntil time.Time // passive ejection
	activeDown   bool      // failed its last active health check
}

// pool picks backends by policy and ejects failing ones.
type pool struct {
	backends []*backend
	lb       string
	maxFails int
	ejectFor time.Duration
	now      func() time.Time
	next     atomic.Uint64
	onHealth func(b *backend, healthy bool)
}

func newPool(urls []*url.URL, lb string, maxFails int, ejectFor time.Duration, now func() time.Time) *pool {
	p := &pool{lb: lb, maxFails: maxFails, ejectFor: ejectFor, now: now, onHealth: func(*backend, bool) {}}
	for _, u := range urls {
		v := *u
		v.User = nil
		p.backends = append(p.backends, &backend{url: u, name: v.String(), logKey: "backend " + v.String()})
	}
	return p
}

func (b *backend) available(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return !b.activeDown && !now.Before(b.ejectedUntil)
}

// pick returns an available backend not in tried, by the pool's policy.
// It allocates nothing: it runs on every request.
func (p *pool) pick(tried []*backend) (*backend, error) {
	now := p.now()
	ok := func(b *backend) bool { return b.available(now) && !contains(tried, b) }
	n := len(p.backends)
	switch p.lb {
	case "first":
		for _, b := range p.backends {
			if ok(b) {
				return b, nil
			}
		}
	case "least_conn":
		var best *backend
		for _, b := range p.backends {
			if ok(b) && (best == nil || b.inflight.Load() < best.inflight.Load()) {
				best = b
			}
		}
		if best != nil {
			return best, nil
		}
	default: // round_robin over the available ones
		start := int((p.next.Add(1) - 1) % uint64(n))
		for i := range n {
			if b := p.backends[(start+i)%n]; ok(b) {
				return b, nil
			}
		}
	}
	return nil, ErrNoBackend
}

func contains(bs []*backend, b *backend) bool {
	for _, x := range bs {
		if x == b {
			return true
		}
	}
	return false
}

// success resets a backend's failure count.
func (p *pool) success(b *backend) {
	b.mu.Lock()
	recovered := b.fails >= p.maxFails
	b.fails = 0
	b.mu.Unlock()
	if recovered {
		p.onHealth(b, true)
	}
}

// failure counts a failure; at maxFails consecutive ones the backend is
// ejected for ejectFor.
func (p *pool) failure(b *backend) {
	b.mu.Lock()
	b.fails++
	eject := b.fails == p.maxFails || (b.fails > p.maxFails && !p.now().Before(b.ejectedUntil))
	if eject {
		b.ejectedUntil = p.now().Add(p.ejectFor)
	}
	b.mu.Unlock()
	if eject {
		p.onHealth(b, false)
	}
}

// setActive records an active health check result.
func (p *pool) setActive(b *backend, healthy bool) {
	b.mu.Lock()
	changed := b.activeDown == healthy
	b.activeDown = !healthy
	b.mu.Unlock()
	if changed {
		p.onHealth(b, healthy)
	}
}
