// Package upstream is the backend side of edgeshim's reverse proxy,
// shared by every path a request takes (the HTTP/1.1 fast path, net/http's
// HTTP/1.1, HTTP/2 and HTTP/3): a route's backends and their pool (pick,
// passive ejection, active health state), the HTTP/1.1 connection pool
// of a plain http:// backend (Conns) with its response-head and chunk
// parsing, and the proxy's policy about upstreams, written once:
//
//   - Forwarded and TrustList: the X-Forwarded-For/-Host/-Proto and
//     Forwarded values, a trusted proxy's kept;
//   - AppendOutPath/OutPath: strip_prefix and the backend URL's path;
//   - Idempotent, Replayable, RetryFresh and Route.Attempts: the retry
//     loop (which backend next, what a failure counts for);
//   - Classify: error → status, and whether it is the backend's fault,
//     by the failures named here (ErrClientGone, ErrRequestTimeout, ...).
//
// Each path brings its own representation of a request — the bytes of a
// parsed head, or an http.Request — so the policy functions are generic
// over string and []byte (the fast path allocates nothing per request).
// The package knows nothing of routing, listeners or net/http's server.
package upstream
