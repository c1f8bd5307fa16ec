package upstream

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
)

// The proxy's policy about upstreams, written once for every path a
// request takes (see the package doc): the HTTP/1.1 fast path (proxy/fast)
// and net/http's HTTP/1.1 (the fallback), HTTP/2 and HTTP/3 (package
// proxy's routeProxy, ReverseProxy and poolTransport, and its direct
// exchange). The route match is the router's (package proxy).

// byteseq is what the policy reads a request's values from.
type byteseq interface{ ~string | ~[]byte }

func hasPrefix[S byteseq](s S, prefix string) bool {
	return len(s) >= len(prefix) && string(s[:len(prefix)]) == prefix
}

// TrustList is trusted_proxies: the peers whose forwarded values are kept.
type TrustList []netip.Prefix

// NewTrustList parses trusted_proxies (validated by config: CIDRs or
// addresses).
func NewTrustList(cfg []string) TrustList {
	var t TrustList
	for _, s := range cfg {
		if p, err := netip.ParsePrefix(s); err == nil {
			t = append(t, p.Masked())
		} else if a, err := netip.ParseAddr(s); err == nil {
			t = append(t, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	return t
}

// has reports whether a is a trusted proxy.
func (t TrustList) Has(a netip.Addr) bool {
	for _, p := range t {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// PeerAddr is the client's address (Forwarded.Peer) of an
// http.Request's RemoteAddr,
// IPv4-mapped addresses unmapped; not valid when it is not an address.
func PeerAddr(remote string) netip.Addr {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// Forwarded is what the forwarded headers of one request are made of:
// the client's own values are kept only when it is a trusted proxy
// (trusted), and the edge's hop is added after them.
type Forwarded[S byteseq] struct {
	Peer    netip.Addr // the client (unmapped); not valid: "unknown"
	Host    S          // the request's Host
	TLS     bool       // it came over TLS: proto https
	Trusted bool       // Peer is a trusted proxy
	XFF     []S        // the request's X-Forwarded-For lines
	XFH     S          // its first X-Forwarded-Host
	XFP     S          // its first X-Forwarded-Proto
	Fwd     []S        // its Forwarded lines
}

// appendXFF appends X-Forwarded-For's value: a trusted proxy's list, then
// the client's address.
func (f *Forwarded[S]) appendXFF(b []byte) []byte {
	if f.Trusted {
		for _, v := range f.XFF {
			b = append(append(b, v...), ", "...)
		}
	}
	if !f.Peer.IsValid() {
		return append(b, "unknown"...)
	}
	return f.Peer.AppendTo(b)
}

// appendXFH appends X-Forwarded-Host's value: a trusted proxy's, else the
// request's Host.
func (f *Forwarded[S]) appendXFH(b []byte) []byte {
	if f.Trusted && len(f.XFH) > 0 {
		return append(b, f.XFH...)
	}
	return append(b, f.Host...)
}

// appendXFP appends X-Forwarded-Proto's value: a trusted proxy's, else
// the edge's.
func (f *Forwarded[S]) appendXFP(b []byte) []byte {
	if f.Trusted && len(f.XFP) > 0 {
		return append(b, f.XFP...)
	}
	return append(b, f.proto()...)
}

func (f *Forwarded[S]) proto() string {
	if f.TLS {
		return "https"
	}
	return "http"
}

// appendForwarded appends Forwarded's value (RFC 7239): a trusted proxy's
// elements, then the edge's for=;host=;proto=.
func (f *Forwarded[S]) appendForwarded(b []byte) []byte {
	if f.Trusted {
		for _, v := range f.Fwd {
			b = append(append(b, v...), ", "...)
		}
	}
	b = append(b, "for="...)
	switch {
	case !f.Peer.IsValid():
		b = append(b, "unknown"...)
	case f.Peer.Is6():
		b = append(f.Peer.AppendTo(append(b, `"[`...)), `]"`...)
	default:
		b = f.Peer.AppendTo(b)
	}
	b = append(b, ";host="...)
	b = appendQuoted(b, f.Host)
	b = append(b, ";proto="...)
	return append(b, f.proto()...)
}

// AppendLines appends the four header lines, as the fast path writes them.
func (f *Forwarded[S]) AppendLines(b []byte) []byte {
	b = f.appendXFF(append(b, "X-Forwarded-For: "...))
	b = f.appendXFH(append(b, "\r\nX-Forwarded-Host: "...))
	b = f.appendXFP(append(b, "\r\nX-Forwarded-Proto: "...))
	b = f.appendForwarded(append(b, "\r\nForwarded: "...))
	return append(b, "\r\n"...)
}

// SetForwarded sets the four headers on h, as net/http's paths send them.
func SetForwarded(h http.Header, f *Forwarded[string]) {
	b := make([]byte, 0, 128)
	b = f.appendXFF(b)
	n1 := len(b)
	b = f.appendXFH(b)
	n2 := len(b)
	b = f.appendXFP(b)
	n3 := len(b)
	b = f.appendForwarded(b)
	s := string(b)
	v := []string{s[:n1], s[n1:n2], s[n2:n3], s[n3:]} // one allocation for the four
	h["X-Forwarded-For"] = v[0:1:1]
	h["X-Forwarded-Host"] = v[1:2:2]
	h["X-Forwarded-Proto"] = v[2:3:3]
	h["Forwarded"] = v[3:4:4]
}

// appendQuoted appends s as an RFC 9110 quoted-string: '"' and '\'
// escaped, control bytes (which no valid Host has) left out.
func appendQuoted[S byteseq](b []byte, s S) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < ' ' && c != '\t' || c == 0x7f:
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// AppendOutPath appends the path a backend gets for a request's path (or
// its escaped form): with strip_prefix (strip is then the route's path,
// else ""), the route's prefix without its trailing slash removed; then
// joined under the backend URL's path base with a single slash, as
// ReverseProxy joins them.
func AppendOutPath[S byteseq](b []byte, base, strip string, path S) []byte {
	if strip != "" && strip != "/" {
		if pre := strings.TrimSuffix(strip, "/"); hasPrefix(path, pre) {
			path = path[len(pre):]
		}
	}
	slash := len(path) == 0 || path[0] != '/' // the path lost its leading '/'
	if base == "" || base == "/" {
		if slash {
			b = append(b, '/')
		}
		return append(b, path...)
	}
	b = append(append(b, strings.TrimSuffix(base, "/")...), '/')
	if !slash {
		path = path[1:]
	}
	return append(b, path...)
}

// OutPath is AppendOutPath for net/http's paths: path itself, not a copy,
// when nothing changes it.
func OutPath(base, strip, path string) string {
	if (base == "" || base == "/") && (strip == "" || strip == "/") && strings.HasPrefix(path, "/") {
		return path
	}
	return string(AppendOutPath(make([]byte, 0, len(base)+len(path)+1), base, strip, path))
}

// Idempotent: the request may go to another backend after a failure
// that proves the first one got none of it (RFC 9110's idempotent
// methods; a body cannot be read twice).
func Idempotent[S byteseq](method S, body bool) bool {
	switch string(method) {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return !body
	}
	return false
}

// Replayable: the request may be written again on a fresh connection
// after a reused one turned out closed by the backend (http.Transport's
// rule: the safe methods, no body).
func Replayable[S byteseq](method S, body bool) bool {
	switch string(method) {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return !body
	}
	return false
}

// retryable: after a failed attempt (attempt counts from 0), the request
// goes to another backend. Only when the dial failed — nothing reached
// the backend — and the request is idempotent, retries times at most.
func retryable(err error, idempotent bool, attempt, retries int) bool {
	return idempotent && attempt < retries && isDialError(err)
}

// RetryFresh: an exchange on a reused backend connection failed before any
// of the response: the backend had closed it while idle, and a replayable
// request is written again on a new connection (as http.Transport does).
// Not after a timeout: the backend had the request and did not answer.
func RetryFresh(bc *Conn, replayable bool, err error) bool {
	return bc.reused && replayable && bc.R.Buffered() == 0 && !IsTimeout(err)
}

// Route is the upstream side of one route: its pool and its retry
// policy.
type Route struct {
	Pool    *Pool
	Retries int                // retries of an idempotent request after a dial failure (0-10)
	Retried interface{ Inc() } // edgeshim_backend_retries_total{route}
	Log     *slog.Logger
}

// Fault counts a failed exchange with b towards ejecting it when it is
// the backend's fault (Classify), and reports whether it was.
func (r *Route) Fault(b *Backend, err error) bool {
	if !Classify(err).BackendFault {
		return false
	}
	r.Pool.failure(b)
	b.Metrics.Errors.Inc()
	return true
}

// Attempts is the retry loop of one request over its route's pool, the
// same for every path: the next backend (one not tried yet, by the pool's
// policy), what a failure counts for (Classify), and whether another
// backend is tried (retryable). It lives on its caller's stack.
type Attempts struct {
	r          *Route
	idempotent bool
	n          int                // attempts so far
	tried      [maxTries]*Backend // tried[:n]
}

// Attempts starts the retry loop of a request; idempotent: it may go to
// another backend after a dial failure (Idempotent).
func (r *Route) Attempts(idempotent bool) Attempts {
	return Attempts{r: r, idempotent: idempotent}
}

// maxTries bounds the attempts of a request: a first one and up to 10
// retries (config validates retries to 0-10).
const maxTries = 11

// Next is the backend of the next attempt, or ErrNoBackend (after how
// many attempts, if any).
func (a *Attempts) Next() (*Backend, error) {
	var b *Backend
	err := ErrNoBackend
	if a.n < maxTries {
		b, err = a.r.Pool.pick(a.tried[:a.n])
	}
	if err != nil {
		if a.n > 0 {
			return nil, fmt.Errorf("after %d attempts: %w", a.n, err)
		}
		return nil, err
	}
	a.tried[a.n] = b
	a.n++
	return b, nil
}

// Failed records that the attempt on b failed with err (the path's own
// knowledge added: ErrClientGone, ErrRequestTimeout, ...). Only the
// backend's faults count towards ejecting it. It reports whether the
// request goes to another backend.
func (a *Attempts) Failed(b *Backend, err error) bool {
	if !a.r.Fault(b, err) {
		return false
	}
	if !retryable(err, a.idempotent, a.n-1, a.r.Retries) {
		return false
	}
	a.r.Retried.Inc()
	a.r.Log.Info("retrying on another backend", "backend", b.Name, "err", err)
	return true
}

// Begin and End count an exchange in flight with b.
func (b *Backend) Begin() {
	b.inflight.Add(1)
	b.Metrics.Inflight.Inc()
}

func (b *Backend) End() {
	b.inflight.Add(-1)
	b.Metrics.Inflight.Dec()
}
