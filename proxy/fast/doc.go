// Package fast is edgeshim's HTTP/1.1 fast path: a request served
// without net/http, in the goroutine of its client connection.
//
// After the TLS handshake of a connection that did not negotiate h2, the
// handshake goroutine serves the connection's requests itself while each
// is "fast": its head passes parseHead (a strict subset of HTTP/1.1), it
// routes to a proxy route whose backends are all plain http:// (no
// decompression), its body has a Content-Length within the limits, and
// the server is not shedding load. It proxies such a request
// synchronously in the same goroutine: a backend connection from the
// backend's idle pool (or dialed), the rewritten head (and body) written,
// the response head read and its body relayed with its framing checked,
// then the backend connection goes back to the pool. No http.Request, no
// Transport, no goroutine per request: only when the backend has not
// answered within watchAfter does a goroutine read the client connection
// to notice that the client went away (as net/http's background read
// does), and it is stopped before the response is written.
//
// The first request that is not fast hands the connection, with the
// bytes already read replayed first, to net/http (the listener's HandOff),
// which serves it and the rest of the connection. The switch happens
// before anything of that request was written anywhere, so such requests
// are served exactly as before: every refusal (CL+TE, bad bytes, 431, 413,
// 501, upgrades, ...) is net/http's and package proxy's framing guard's.
//
// Bridges' long-polls are served on the fast path too (poll.go), and idle
// keep-alive connections and held polls wait in an epoll parker without
// a goroutine (idle.go, poll.go).
//
// The package depends on proxy/upstream (backends, their connection
// pools, the policy about upstreams), limits, limits/park, bridge/longpoll
// and limits/accesslog, never on package proxy: what it needs of the rest
// comes through Config at construction (the Router, the base context, the
// access log, Alt-Svc, the heap watermark, the limits) and, per
// connection, the Listener that owns it.
package fast
