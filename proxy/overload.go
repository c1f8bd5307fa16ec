package proxy

import (
	"context"
	"net"
	"net/http"

	"github.com/edgeshim/edgeshim/limits"
	"github.com/prometheus/client_golang/prometheus"
)

// Overload: connections admitted above the soft cap (limits.SoftConns)
// get an HTTP answer, 503 with a jittered Retry-After and Connection:
// close, instead of a socket closed at accept: the device learns when to
// come back. That costs their TLS handshake (resumed, for most devices),
// the cheapest way to an HTTP answer on a TLS port; above the hard cap
// (limits.max_conns, fitted to the descriptor limit) connections are
// still closed at accept, so descriptors never run out.

type overloadMetrics struct {
	answered     prometheus.Counter
	acceptErrors *prometheus.CounterVec
}

func newOverloadMetrics(reg prometheus.Registerer) *overloadMetrics {
	m := &overloadMetrics{
		answered: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgeshim_overload_answered_total",
			Help: "Requests answered 503 with Retry-After because their connection was accepted above the soft cap (limits.overload.max_conns)."}),
		acceptErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgeshim_accept_errors_total",
			Help: "Failed accepts, by kind (emfile, enfile, other); the accept loop backs off and goes on."}, []string{"reason"}),
	}
	reg.MustRegister(m.answered, m.acceptErrors)
	return m
}

type overflowKey struct{}

func markOverflow(ctx context.Context, c net.Conn) context.Context {
	if limits.Overflowed(c) {
		return context.WithValue(ctx, overflowKey{}, true)
	}
	return ctx
}

func overflowed(r *http.Request) bool {
	v, _ := r.Context().Value(overflowKey{}).(bool)
	return v
}
