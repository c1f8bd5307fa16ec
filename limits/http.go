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
