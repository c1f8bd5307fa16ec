package upstream

import (
	"errors"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// ErrNoBackend is returned when every backend of a pool is ejected.
var ErrNoBackend = errors.New("no healthy backend")

// Backend is one upstream server of a pool with its passive and active
// health state.
type Backend struct {
	URL    *url.URL
	Name   string // URL without userinfo, for metrics and logs
	LogKey string // "backend NAME", its key in the route's failure log

	// Metrics are the backend's metric children, set by the pool's owner
	// before the first request.
	Metrics Metrics
	// Conns is the backend's HTTP/1.1 connection pool, set by the pool's
	// owner when the backend is plain http://; nil: none.
	Conns *Conns

	inflight atomic.Int64

	mu           sync.Mutex
	fails        int       // consecutive failures
	ejectedUntil time.Time // passive ejection
	activeDown   bool      // failed its last active health check
}

// Metrics are a backend's metric children, resolved once (label lookups
// on every request cost).
type Metrics struct {
	Inflight interface {
		Inc()
		Dec()
	} // edgeshim_backend_inflight{route, backend}
	Duration interface{ Observe(float64) } // edgeshim_backend_response_seconds{route, backend}
	Errors   interface{ Inc() }            // edgeshim_backend_requests_total{route, backend, code="error"}
	// Codes counts answers by status code
	// (edgeshim_backend_requests_total{route, backend, code}); nil: not
	// set (net/http's paths count by label).
	Codes *CodeCounters
}

// Pool picks backends by policy and ejects failing ones.
type Pool struct {
	backends []*Backend
	lb       string
	maxFails int
	ejectFor time.Duration
	now      func() time.Time
	next     atomic.Uint64
	// OnHealth is called when a backend is ejected or comes back (set
	// before use).
	OnHealth func(b *Backend, healthy bool)
}

// NewPool returns a pool of urls: lb is its policy (round_robin, first,
// least_conn), maxFails consecutive failures eject a backend for
// ejectFor, by the clock now.
func NewPool(urls []*url.URL, lb string, maxFails int, ejectFor time.Duration, now func() time.Time) *Pool {
	p := &Pool{lb: lb, maxFails: maxFails, ejectFor: ejectFor, now: now, OnHealth: func(*Backend, bool) {}}
	for _, u := range urls {
		v := *u
		v.User = nil
		p.backends = append(p.backends, &Backend{URL: u, Name: v.String(), LogKey: "backend " + v.String()})
	}
	return p
}

// Backends are the pool's backends, in configuration order.
func (p *Pool) Backends() []*Backend { return p.backends }

func (b *Backend) available(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return !b.activeDown && !now.Before(b.ejectedUntil)
}

// pick returns an available backend not in tried, by the pool's policy.
// It allocates nothing: it runs on every request.
func (p *Pool) pick(tried []*Backend) (*Backend, error) {
	now := p.now()
	ok := func(b *Backend) bool { return b.available(now) && !contains(tried, b) }
	n := len(p.backends)
	switch p.lb {
	case "first":
		for _, b := range p.backends {
			if ok(b) {
				return b, nil
			}
		}
	case "least_conn":
		var best *Backend
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

func contains(bs []*Backend, b *Backend) bool {
	for _, x := range bs {
		if x == b {
			return true
		}
	}
	return false
}

// success resets a backend's failure count.
func (p *Pool) Success(b *Backend) {
	b.mu.Lock()
	recovered := b.fails >= p.maxFails
	b.fails = 0
	b.mu.Unlock()
	if recovered {
		p.OnHealth(b, true)
	}
}

// failure counts a failure; at maxFails consecutive ones the backend is
// ejected for ejectFor.
func (p *Pool) failure(b *Backend) {
	b.mu.Lock()
	b.fails++
	eject := b.fails == p.maxFails || (b.fails > p.maxFails && !p.now().Before(b.ejectedUntil))
	if eject {
		b.ejectedUntil = p.now().Add(p.ejectFor)
	}
	b.mu.Unlock()
	if eject {
		p.OnHealth(b, false)
	}
}

// setActive records an active health check result.
func (p *Pool) SetActive(b *Backend, healthy bool) {
	b.mu.Lock()
	changed := b.activeDown == healthy
	b.activeDown = !healthy
	b.mu.Unlock()
	if changed {
		p.OnHealth(b, healthy)
	}
}
