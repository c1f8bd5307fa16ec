package limits

import (
	"net/http"
	"time"

	"golang.org/x/time/rate"
)

// PerIP are the per-source-IP caps of a Listener that can change while it
// runs (SetPerIP).
type PerIP struct {
	// MaxConns caps open connections per IP (0: no cap).
	MaxConns int
	// Rate and Burst bound new connections per second per IP.
	Rate  float64
	Burst int
}

// SetPerIP changes the per-IP caps of new connections. Open connections
// stay; an IP's rate limiter takes the new rate at its next connection.
func (l *Listener) SetPerIP(p PerIP) { l.perIP.Store(&p) }

func (l *Listener) curPerIP() *PerIP { return l.perIP.Load() }

// retune gives an IP's limiter the current rate and burst (under l.mu).
func retune(lim *rate.Limiter, p *PerIP, now time.Time) {
	if lim.Limit() != rate.Limit(p.Rate) {
		lim.SetLimitAt(now, rate.Limit(p.Rate))
	}
	if lim.Burst() != p.Burst {
		lim.SetBurstAt(now, p.Burst)
	}
}

// SetRate changes the handshake rate and burst; waiting handshakes keep
// their reservations.
func (a *Admission) SetRate(r float64, burst int) {
	a.lim.SetLimit(admissionLimit(r))
	if a.answer != nil {
		a.answer.SetLimit(admissionLimit(r))
		a.answer.SetBurst(burst)
	}
	a.lim.SetBurst(burst)
}

// BodyFunc is Body with a limit read at each request, so that it can
// change while running (a configuration reload).
func BodyFunc(max func() int64, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		Body(max(), next).ServeHTTP(w, r)
	})
}
