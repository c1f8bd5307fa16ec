package proxy

import (
	"net"

	"github.com/edgeshim/edgeshim/proxy/upstream"
	"github.com/prometheus/client_golang/prometheus"
)

// fastRoute is what the HTTP/1 fast path needs of a proxy route whose
// backends are all plain http://: the route's metric children, resolved
// once, and a synchronous client per backend.
type fastRoute struct {
	rp       *routeProxy
	requests *upstream.CodeCounters // edgeshim_http_requests_total{route}
	duration prometheus.Observer
	// maxPath is the longest backend URL path (the request line grows by
	// it).
	maxPath int
}

func newFastRoute(rp *routeProxy, m *metrics, dial upstream.DialFunc, maxIdle int) *fastRoute {
	fr := &fastRoute{
		rp:       rp,
		requests: upstream.NewCodeCounters(m.requests, rp.name),
		duration: m.duration.WithLabelValues(rp.name),
	}
	for _, b := range rp.up.Pool.Backends() {
		port := b.URL.Port()
		if port == "" {
			port = "80"
		}
		b.Conns = upstream.NewConns(net.JoinHostPort(b.URL.Hostname(), port), b.URL.Path, dial, maxIdle)
		b.Metrics.Codes = upstream.NewCodeCounters(m.backendRequests, rp.name, b.Name)
		fr.maxPath = max(fr.maxPath, len(b.URL.Path))
	}
	return fr
}
