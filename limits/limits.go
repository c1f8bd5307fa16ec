// Package limits owns what edgeshim accepts and for how long: connection
// caps, per-IP and per-device rate limits (bounded state in golang-lru),
// TLS handshake admission, body/header limits, timeouts, heartbeat helpers
// and Retry-After with jitter. proxy, bridge and tlsterm apply what it
// provides; it imports none of them.
package limits

import (
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"
)

// RetryAfter draws Retry-After values uniformly at random from [Min, Max]
// in whole seconds, so that a herd told to come back spreads out instead of
// returning together.
type RetryAfter struct {
	Min, Max time.Duration
	// IntN returns a uniform int in [0, n). Default: math/rand/v2.IntN.
	IntN func(n int) int
}

// Seconds returns one draw.
func (r RetryAfter) Seconds() int {
	lo, hi := int(r.Min/time.Second), int(r.Max/time.Second)
	if hi <= lo {
		return lo
	}
	intn := r.IntN
	if intn == nil {
		intn = rand.IntN
	}
	return lo + intn(hi-lo+1)
}

// Reject writes code (429 or 503) with a jittered Retry-After and a short
// JSON body {"error": reason}.
func (r RetryAfter) Reject(w http.ResponseWriter, code int, reason string) {
	w.Header().Set("Retry-After", strconv.Itoa(r.Seconds()))
	WriteError(w, code, reason)
}

// ErrorBody is WriteError's body for reason, for the paths that write
// their answers as bytes (the HTTP/1.1 fast path, the HTTP/2 direct
// exchange). The reasons are plain ASCII, which encoding/json and
// strconv.Quote write alike.
func ErrorBody(reason string) string { return `{"error":` + strconv.Quote(reason) + "}\n" }

// WriteError writes a short JSON error body. A ResponseWriter (or one it
// wraps) with a RecordReason method is told the reason (the access log's).
func WriteError(w http.ResponseWriter, code int, reason string) {
	recordReason(w, reason)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(struct {
		Error string `json:"error"`
	}{reason})
}

// recordReason tells the first ResponseWriter in w's Unwrap chain that
// records reasons the reason of an error answer.
func recordReason(w http.ResponseWriter, reason string) {
	for range 8 {
		switch x := w.(type) {
		case interface{ RecordReason(string) }:
			x.RecordReason(reason)
			return
		case interface{ Unwrap() http.ResponseWriter }:
			w = x.Unwrap()
		default:
			return
		}
	}
}
