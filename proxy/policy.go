package proxy

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"
)

// The proxy's policy, written once for every path a request takes: the
// HTTP/1.1 fast path (fastproxy.go), and net/http's HTTP/1.1 (the
// fallback), HTTP/2 and HTTP/3, which go through routeProxy, ReverseProxy
// and poolTransport (and, for http:// backends, syncbackend.go). Each path
// brings its own representation of a request — the bytes of a parsed head,
// or an http.Request — and takes its decisions here:
//
//   - routeFor: the route a host and clean path take;
//   - trustList.has: whether the peer is a trusted proxy;
//   - forwarded: the X-Forwarded-For/-Host/-Proto and Forwarded values;
//   - appendOutPath/outPath: strip_prefix and the backend URL's path;
//   - idempotentReq, replayableReq, retryable, retryFresh and attempts:
//     the retry loop (which backend next, what a failure counts for);
//   - classify (classify.go): error → status, and whether it is the
//     backend's fault.
//
// The functions are generic over string and []byte where a path holds
// bytes (the fast path allocates nothing per request) and the other
// strings.

// byteseq is what the policy reads a request's values from.
type byteseq interface{ ~string | ~[]byte }

// routeFor is the route of a request to host (hostForMatch's form: lower
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

// trustList is trusted_proxies: the peers whose forwarded values are kept.
type trustList []netip.Prefix

// newTrustList parses trusted_proxies (validated by config: CIDRs or
// addresses).
func newTrustList(cfg []string) trustList {
	var t trustList
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
func (t trustList) has(a netip.Addr) bool {
	for _, p := range t {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// peerAddr is the client's address of an http.Request's RemoteAddr,
// IPv4-mapped addresses unmapped; not valid when it is not an address.
func peerAddr(remote string) netip.Addr {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// forwarded is what the forwarded headers of one request are made of:
// the client's own values are kept only when it is a trusted proxy
// (trusted), and the edge's hop is added after them.
type forwarded[S byteseq] struct {
	peer    netip.Addr // the client (unmapped); not valid: "unknown"
	host    S          // the request's Host
	tls     bool       // it came over TLS: proto https
	trusted bool       // peer is a trusted proxy
	xff     []S        // the request's X-Forwarded-For lines
	xfh     S          // its first X-Forwarded-Host
	xfp     S          // its first X-Forwarded-Proto
	fwd     []S        // its Forwarded lines
}

// appendXFF appends X-Forwarded-For's value: a trusted proxy's list, then
// the client's address.
func (f *forwarded[S]) appendXFF(b []byte) []byte {
	if f.trusted {
		for _, v := range f.xff {
			b = append(append(b, v...), ", "...)
		}
	}
	if !f.peer.IsValid() {
		return append(b, "unknown"...)
	}
	return f.peer.AppendTo(b)
}

// appendXFH appends X-Forwarded-Host's value: a trusted proxy's, else the
// request's Host.
func (f *forwarded[S]) appendXFH(b []byte) []byte {
	if f.trusted && len(f.xfh) > 0 {
		return append(b, f.xfh...)
	}
	return append(b, f.host...)
}

// appendXFP appends X-Forwarded-Proto's value: a trusted proxy's, else
// the edge's.
func (f *forwarded[S]) appendXFP(b []byte) []byte {
	if f.trusted && len(f.xfp) > 0 {
		return append(b, f.xfp...)
	}
	return append(b, f.proto()...)
}

func (f *forwarded[S]) proto() string {
	if f.tls {
		return "https"
	}
	return "http"
}

// appendForwarded appends Forwarded's value (RFC 7239): a trusted proxy's
// elements, then the edge's for=;host=;proto=.
func (f *forwarded[S]) appendForwarded(b []byte) []byte {
	if f.trusted {
		for _, v := range f.fwd {
			b = append(append(b, v...), ", "...)
		}
	}
	b = append(b, "for="...)
	switch {
	case !f.peer.IsValid():
		b = append(b, "unknown"...)
	case f.peer.Is6():
		b = append(f.peer.AppendTo(append(b, `"[`...)), `]"`...)
	default:
		b = f.peer.AppendTo(b)
	}
	b = append(b, ";host="...)
	b = appendQuoted(b, f.host)
	b = append(b, ";proto="...)
	return append(b, f.proto()...)
}

// appendLines appends the four header lines, as the fast path writes them.
func (f *forwarded[S]) appendLines(b []byte) []byte {
	b = f.appendXFF(append(b, "X-Forwarded-For: "...))
	b = f.appendXFH(append(b, "\r\nX-Forwarded-Host: "...))
	b = f.appendXFP(append(b, "\r\nX-Forwarded-Proto: "...))
	b = f.appendForwarded(append(b, "\r\nForwarded: "...))
	return append(b, "\r\n"...)
}

// setForwarded sets the four headers on h, as net/http's paths send them.
func setForwarded(h http.Header, f *forwarded[string]) {
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

// appendOutPath appends the path a backend gets for a request's path (or
// its escaped form): with strip_prefix (strip is then the route's path,
// else ""), the route's prefix without its trailing slash removed; then
// joined under the backend URL's path base with a single slash, as
// ReverseProxy joins them.
func appendOutPath[S byteseq](b []byte, base, strip string, path S) []byte {
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

// outPath is appendOutPath for net/http's paths: path itself, not a copy,
// when nothing changes it.
func outPath(base, strip, path string) string {
	if (base == "" || base == "/") && (strip == "" || strip == "/") && strings.HasPrefix(path, "/") {
		return path
	}
	return string(appendOutPath(make([]byte, 0, len(base)+len(path)+1), base, strip, path))
}

// idempotentReq: the request may go to another backend after a failure
// that proves the first one got none of it (RFC 9110's idempotent
// methods; a body cannot be read twice).
func idempotentReq[S byteseq](method S, body bool) bool {
	switch string(method) {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return !body
	}
	return false
}

// replayableReq: the request may be written again on a fresh connection
// after a reused one turned out closed by the backend (http.Transport's
// rule: the safe methods, no body).
func replayableReq[S byteseq](method S, body bool) bool {
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

// retryFresh: an exchange on a reused backend connection failed before any
// of the response: the backend had closed it while idle, and a replayable
// request is written again on a new connection (as http.Transport does).
// Not after a timeout: the backend had the request and did not answer.
func retryFresh(bc *bconn, replayable bool, err error) bool {
	return bc.reused && replayable && bc.br.Buffered() == 0 && !isTimeout(err)
}

// attempts is the retry loop of one request over its route's pool, the
// same for every path: the next backend (one not tried yet, by the pool's
// policy), what a failure counts for (classify), and whether another
// backend is tried (retryable). It lives on its caller's stack.
type attempts struct {
	rp         *routeProxy
	idempotent bool
	n          int                // attempts so far
	tried      [maxTries]*backend // tried[:n]
}

// maxTries bounds the attempts of a request: a first one and up to 10
// retries (config validates retries to 0-10).
const maxTries = 11

// next is the backend of the next attempt, or ErrNoBackend (after how
// many attempts, if any).
func (a *attempts) next() (*backend, error) {
	var b *backend
	err := ErrNoBackend
	if a.n < maxTries {
		b, err = a.rp.pool.pick(a.tried[:a.n])
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

// failed records that the attempt on b failed with err (the path's own
// knowledge added: errClientGone, errRequestTimeout, ...). Only the
// backend's faults count towards ejecting it. It reports whether the
// request goes to another backend.
func (a *attempts) failed(b *backend, err error) bool {
	if !a.rp.fault(b, err) {
		return false
	}
	if !retryable(err, a.idempotent, a.n-1, *a.rp.route.Proxy.Retries) {
		return false
	}
	a.rp.mRetries.Inc()
	a.rp.log.Info("retrying on another backend", "backend", b.name, "err", err)
	return true
}

// fault counts a failed exchange with b towards ejecting it when it is
// the backend's fault (classify), and reports whether it was.
func (rp *routeProxy) fault(b *backend, err error) bool {
	if !classify(err).backendFault {
		return false
	}
	rp.pool.failure(b)
	b.mErrors.Inc()
	return true
}

// begin and end count an exchange in flight with b.
func (b *backend) begin() {
	b.inflight.Add(1)
	b.mInflight.Inc()
}

func (b *backend) end() {
	b.inflight.Add(-1)
	b.mInflight.Dec()
}
