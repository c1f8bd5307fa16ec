package limits

import (
	"net/http"
)

// HeaderCount answers 431 to requests with more than max header fields
// (field lines, counting repeated names) before next sees them.
// MaxHeaderBytes bounds their size; this bounds their number, which costs
// memory and CPU per field whatever their size.
func HeaderCount(max int, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := 0
		for _, v := range r.Header {
			n += len(v)
		}
		if n > max {
			WriteError(w, http.StatusRequestHeaderFieldsTooLarge, "too many header fields")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// HeaderSize answers 431 to requests whose head is over max bytes, the
// same figure on every protocol: the request line (method, target,
// protocol) and each field as "name: value" with its line end, which is
// what the head takes on the wire in HTTP/1.1 and about what HPACK and
// QPACK decode to. The servers' own hard limits sit above it
// (HardHeaderBytes), so that a head a little over the limit gets this 431
// rather than a closed connection.
func HeaderSize(max int64, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := int64(len(r.Method) + 1 + len(r.RequestURI) + 1 + len(r.Proto) + 2)
		if r.Host != "" {
			n += int64(len("Host: ") + len(r.Host) + 2) // net/http moves it out of Header
		}
		for k, vs := range r.Header {
			for _, v := range vs {
				n += int64(len(k) + 2 + len(v) + 2)
			}
		}
		if n > max {
			WriteError(w, http.StatusRequestHeaderFieldsTooLarge, "request head too large")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// HardHeaderBytes is the MaxHeaderBytes to give net/http, HTTP/2 and
// HTTP/3 servers for a configured max: their own refusal (a closed
// connection on HTTP/2 when one field exceeds it) only past twice the
// limit, so HeaderSize answers everything up to there with 431.
func HardHeaderBytes(max int64) int { return int(2*max + 4096) }

// Body enforces a body limit while streaming: a declared Content-Length over
// max is answered 413 at once; a chunked body is cut at max bytes, and the
// handler's read fails with *http.MaxBytesError (handlers answer 413 for it),
// so no more than max bytes ever reach a backend or a broker.
func Body(max int64, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > max {
			w.Header().Set("Connection", "close")
			WriteError(w, http.StatusRequestEntityTooLarge, "body too large")
			return
		}
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = http.MaxBytesReader(w, r.Body, max)
		}
		next.ServeHTTP(w, r)
	})
}
