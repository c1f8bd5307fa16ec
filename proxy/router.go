package proxy

import (
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"

	"github.com/edgeshim/edgeshim/config"
	"github.com/edgeshim/edgeshim/limits"
	"github.com/edgeshim/edgeshim/limits/accesslog"
	"github.com/edgeshim/edgeshim/proxy/fast"
	"github.com/edgeshim/edgeshim/proxy/internal/h1"
)

// router matches requests by host and longest path prefix.
type router struct {
	routes  []*route
	proxies []*routeProxy // for their health loops
}

type route struct {
	name    string // config.Route.Name, the route label of metrics and logs
	host    string // "" any, "*.example.com" wildcard, else exact (lowercase)
	prefix  string
	strip   bool
	early   bool // HTTP/3 0-RTT GETs allowed
	plain   bool // served on listen.http too (allow_http)
	handler http.Handler
	fast    *fast.Route     // the fast path serves it; nil: net/http only
	poll    *fast.PollRoute // the fast path serves its long-polls; nil: net/http only
	noLog   bool            // access_log: false
	bridge  string          // the bridge's name, for the access log
	broker  string          // the bridge's upstream URL without credentials
}

func newRouter(cfg []config.Route, bridges map[string]http.Handler, d proxyDeps) (*router, error) {
	rt := &router{}
	for i, rc := range cfg {
		r := &route{
			name:   rc.Name,
			host:   strings.ToLower(rc.Host),
			prefix: rc.Path,
			strip:  rc.StripPrefix,
			early:  rc.Allow0RTT,
			plain:  rc.AllowHTTP,
			noLog:  rc.AccessLog != nil && !*rc.AccessLog,
			bridge: rc.Bridge,
		}
		switch {
		case rc.Bridge != "":
			h, ok := bridges[rc.Bridge]
			if !ok {
				return nil, fmt.Errorf("routes[%d].bridge: no bridge %q", i, rc.Bridge)
			}
			r.handler = h
			r.broker = withoutUserinfo(d.cfg.Bridges[rc.Bridge].Upstream.URL)
		case rc.Proxy != nil:
			rp, err := newRouteProxy(r.name, rc, d)
			if err != nil {
				return nil, fmt.Errorf("routes[%d].%w", i, err)
			}
			r.handler = rp
			rt.proxies = append(rt.proxies, rp)
			if !rc.Decompress && rp.fast != nil {
				rp.fast.NoLog = r.noLog
				r.fast = rp.fast
			}
		case rc.MQTTWS != nil:
			h, err := newMQTTWS(r.name, rc, d)
			if err != nil {
				return nil, fmt.Errorf("routes[%d]: %w", i, err)
			}
			r.handler = h
		default:
			r.handler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				writeError(w, http.StatusNotImplemented, "route kind not implemented yet")
			})
		}
		if rc.Decompress {
			r.handler = limits.Decompress(int64(d.cfg.Limits.MaxDecompressed), d.cfg.Limits.MaxRatio, r.handler)
		}
		if rc.MaxBody > 0 {
			r.handler = limits.Body(int64(rc.MaxBody), r.handler)
		}
		d.m.initRoute(r.name)
		rt.routes = append(rt.routes, r)
	}
	// Longest prefix first; among equal prefixes exact hosts before
	// wildcards before "any".
	sort.SliceStable(rt.routes, func(i, j int) bool {
		a, b := rt.routes[i], rt.routes[j]
		if len(a.prefix) != len(b.prefix) {
			return len(a.prefix) > len(b.prefix)
		}
		return hostRank(a.host) < hostRank(b.host)
	})
	return rt, nil
}

func hostRank(h string) int {
	switch {
	case h == "":
		return 2
	case strings.HasPrefix(h, "*."):
		return 1
	}
	return 0
}

// matchHost: host (h1.HostForMatch's form) is the route's host, or under its
// wildcard, or the route takes any.
func (r *route) matchHost(host []byte) bool {
	switch {
	case r.host == "":
		return true
	case strings.HasPrefix(r.host, "*."):
		return len(host) > len(r.host)-1 && string(host[len(host)-len(r.host)+1:]) == r.host[1:]
	}
	return string(host) == r.host
}

// match is the route of req (routeFor), by its Host and clean path.
func (rt *router) match(req *http.Request) *route {
	var buf [64]byte
	return routeFor(rt, h1.HostForMatch(buf[:0], []byte(req.Host)), req.URL.Path)
}

// routeName is the name of the route req matches, "none" if none does:
// the route label of the request's metrics, known before any limit
// refuses the request (413, 431, 503, ...).
func (rt *router) routeName(req *http.Request) string {
	if clean, err := cleanPath(req.URL.Path, req.URL.EscapedPath()); err == nil && clean != req.URL.Path {
		// Labelled by the route the clean path takes (ServeHTTP's).
		u := *req.URL
		u.Path, u.RawPath = clean, ""
		r2 := *req
		r2.URL = &u
		req = &r2
	}
	if r := rt.match(req); r != nil {
		return r.name
	}
	return "none"
}

func (rt *router) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if !normalizePath(w, req) {
		return
	}
	r := rt.match(req)
	if r == nil {
		writeError(w, http.StatusNotFound, "no route")
		return
	}
	r.serve(w, req)
}

func (r *route) serve(w http.ResponseWriter, req *http.Request) {
	setRouteName(req, r.name, r.noLog)
	if r.bridge != "" {
		if rec := accesslog.FromContext(req.Context()); rec != nil {
			rec.Bridge, rec.Upstream = r.bridge, r.broker
		}
	}
	if req.TLS != nil && !req.TLS.HandshakeComplete && (!r.early || req.Method != http.MethodGet) {
		// HTTP/3 0-RTT data can be replayed: only GETs on routes that
		// allow it are served before the handshake completes (RFC 8470).
		writeError(w, http.StatusTooEarly, "retry after the handshake")
		return
	}
	r.handler.ServeHTTP(w, req)
}

// withoutUserinfo is u without its user and password (for logs).
func withoutUserinfo(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return ""
	}
	p.User = nil
	return p.String()
}

// byteseq is what routeFor reads a request's values from.
type byteseq interface{ ~string | ~[]byte }

// routeFor is the route of a request to host (h1.HostForMatch's form: lower
// case, no port, no trailing dot) and its clean path (cleanPath's):
// the longest prefix first, then exact hosts before wildcards before any
// (newRouter's order). nil: no route.
func routeFor[S byteseq](rt *router, host []byte, path S) *route {
	for _, r := range rt.routes {
		if hasPrefix(path, r.prefix) && r.matchHost(host) {
			return r
		}
	}
	return nil
}

func hasPrefix[S byteseq](s S, prefix string) bool {
	return len(s) >= len(prefix) && string(s[:len(prefix)]) == prefix
}
