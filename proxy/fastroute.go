package proxy

import (
	"bytes"
	"net"
	"net/http"

	"github.com/edgeshim/edgeshim/bridge/longpoll"
	"github.com/edgeshim/edgeshim/proxy/fast"
	"github.com/edgeshim/edgeshim/proxy/upstream"
)

// What the HTTP/1.1 fast path (proxy/fast) takes of the router: its
// routes (fastRouter.Match) and, per route, a fast.Route (a proxy route
// whose backends are all plain http://) or a fast.PollRoute (a bridge
// route whose handler serves long-polls).

// newFastRoute is rp's fast.Route, with a connection pool per backend;
// rp's backends are all plain http://.
func newFastRoute(rp *routeProxy, m *metrics, dial upstream.DialFunc, maxIdle int) *fast.Route {
	fr := &fast.Route{
		Name: rp.name, Up: &rp.up, Trusted: rp.trusted, Strip: rp.strip,
		RequestTimeout: rp.route.Proxy.Timeouts.Request.D(), HeaderTimeout: rp.route.Proxy.Timeouts.ResponseHeader.D(),
		Requests: upstream.NewCodeCounters(m.requests, rp.name),
		Duration: m.duration.WithLabelValues(rp.name),
		Policy:   rp,
	}
	for _, b := range rp.up.Pool.Backends() {
		port := b.URL.Port()
		if port == "" {
			port = "80"
		}
		b.Conns = upstream.NewConns(net.JoinHostPort(b.URL.Hostname(), port), b.URL.Path, dial, maxIdle)
		b.Metrics.Codes = upstream.NewCodeCounters(m.backendRequests, rp.name, b.Name)
		fr.MaxPath = max(fr.MaxPath, len(b.URL.Path))
	}
	return fr
}

var _ fast.RoutePolicy = (*routeProxy)(nil)

// BodyLimit is the route's body limit, live (fast.RoutePolicy).
func (rp *routeProxy) BodyLimit() int64 { return rp.bodyLimit() }

// Answer is answerFor (fast.RoutePolicy).
func (rp *routeProxy) Answer(err error) (code int, msg string, retryAfter bool) {
	return rp.answerFor(err)
}

// Answered is answered (fast.RoutePolicy).
func (rp *routeProxy) Answered(b *upstream.Backend) { rp.answered(b) }

// RetryAfter draws a Retry-After (fast.RoutePolicy).
func (rp *routeProxy) RetryAfter() int { return rp.retry() }

// fastRouter routes the fast path's requests as router.match does.
type fastRouter struct{ rt *router }

var _ fast.Router = fastRouter{}

// Match routes host and path (fast.Router): nothing when the path is not
// clean (net/http's path normalises or refuses it) or no route takes it.
func (fr fastRouter) Match(host, path []byte) fast.Target {
	if !isCleanPath(string(path)) || bytes.IndexByte(path, '\\') >= 0 {
		return fast.Target{}
	}
	r := routeFor(fr.rt, host, path)
	if r == nil {
		return fast.Target{}
	}
	return fast.Target{Proxy: r.fast, Poll: r.poll}
}

// setFastPolls gives the bridge routes whose handler serves long-polls
// their fast.PollRoute, and reports whether there is one.
func (rt *router) setFastPolls(bridges map[string]http.Handler, m *metrics) bool {
	any := false
	for _, r := range rt.routes {
		if h, ok := bridges[r.bridge].(longpoll.Handler); ok && r.bridge != "" {
			r.poll = &fast.PollRoute{Name: r.name, Bridge: r.bridge, Broker: r.broker, NoLog: r.noLog, Handler: h,
				Requests: upstream.NewCodeCounters(m.requests, r.name), Duration: m.duration.WithLabelValues(r.name)}
			any = true
		}
	}
	return any
}
