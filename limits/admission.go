package limits

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// AdmissionOptions configure handshake admission.
type AdmissionOptions struct {
	// Rate and Burst bound TLS handshakes per second.
	Rate  float64
	Burst int
	// MaxQueue bounds handshakes waiting for admission.
	MaxQueue int
	// QueueTimeout is the longest wait; a handshake that would wait longer
	// is refused at once.
	QueueTimeout time.Duration
	// Refused counts refused handshakes ("queue_full", "queue_timeout").
	// Optional.
	Refused *prometheus.CounterVec
	// Waiting tracks handshakes waiting. Optional.
	Waiting prometheus.Gauge
	// Log writes refused handshakes (reasons "handshake_queue_full",
	// "handshake_queue_timeout"), rate-limited. Optional.
	Log *RefusalLog
	// AnswerRefused completes refused handshakes anyway, at most Rate
	// more per second (Burst), with their connection marked
	// (MarkOverflow) so that its requests are answered 503 with
	// Retry-After; past that, or false, a refused handshake fails at the
	// ClientHello. Only connections of a limits Listener can be marked.
	AnswerRefused bool
}

// Admission paces TLS handshakes: in a reconnection storm the server keeps
// completing the handshakes it admits at full speed instead of starting all
// of them and finishing none. It hooks in at the ClientHello, before the
// expensive key exchange and signature.
type Admission struct {
	o      AdmissionOptions
	lim    *rate.Limiter
	answer *rate.Limiter // refused handshakes completed to answer 503; nil: none
	queue  chan struct{}
}

// NewAdmission returns an Admission.
func NewAdmission(o AdmissionOptions) *Admission {
	if o.MaxQueue < 1 {
		o.MaxQueue = 1
	}
	a := &Admission{o: o, lim: rate.NewLimiter(admissionLimit(o.Rate), o.Burst), queue: make(chan struct{}, o.MaxQueue)}
	if o.AnswerRefused {
		a.answer = rate.NewLimiter(admissionLimit(o.Rate), o.Burst)
	}
	return a
}

// Wait blocks until the handshake is admitted, or returns ErrAdmission
// (wrapped with the reason) when the queue is full or the wait would pass
// QueueTimeout. With Rate 0 every handshake is admitted at once.
func (a *Admission) Wait(ctx context.Context) error { return a.wait(ctx, "") }

// wait is Wait for a client at addr (for the log).
func (a *Admission) wait(ctx context.Context, addr string) error {
	if a.lim.Limit() == rate.Inf {
		return nil
	}
	r := a.lim.Reserve()
	delay := r.Delay()
	if delay == 0 {
		return nil
	}
	if delay > a.o.QueueTimeout {
		r.Cancel()
		return a.refuse("queue_timeout", addr)
	}
	select {
	case a.queue <- struct{}{}:
	default:
		r.Cancel()
		return a.refuse("queue_full", addr)
	}
	defer func() { <-a.queue }()
	if a.o.Waiting != nil {
		a.o.Waiting.Inc()
		defer a.o.Waiting.Dec()
	}
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		r.Cancel()
		return ctx.Err()
	}
}

func (a *Admission) refuse(reason, addr string) error {
	if a.o.Refused != nil {
		a.o.Refused.WithLabelValues(reason).Inc()
	}
	a.o.Log.Refused("handshake_"+reason, addr, nil)
	return fmt.Errorf("%w: %s", ErrAdmission, reason)
}

// GetConfigForClient returns a tls.Config.GetConfigForClient that admits
// the handshake and then hands it live, the configuration that really
// serves it (its certificates and session ticket keys stay in force).
func (a *Admission) GetConfigForClient(live func(*tls.ClientHelloInfo) (*tls.Config, error)) func(*tls.ClientHelloInfo) (*tls.Config, error) {
	return func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		if err := a.wait(hello.Context(), addrIP(hello.Conn)); err != nil {
			// Refused: a device told 503 + Retry-After backs off; one
			// whose connection is closed retries at once.
			if a.answer == nil || hello.Conn == nil || overflowFlag(hello.Conn) == nil || !a.answer.Allow() {
				return nil, err
			}
			MarkOverflow(hello.Conn)
		}
		return live(hello)
	}
}

// addrIP is the IP of c's remote address, for logs.
func addrIP(c net.Conn) string {
	if c == nil {
		return ""
	}
	return remoteIP(c.RemoteAddr()).String()
}

// admissionLimit is the limiter's rate for a configured one: 0 is off.
func admissionLimit(r float64) rate.Limit {
	if r <= 0 {
		return rate.Inf
	}
	return rate.Limit(r)
}
