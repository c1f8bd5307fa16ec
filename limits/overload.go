package limits

import (
	"net/http"
	"runtime/metrics"
	"sync"
	"time"
)

// HeapWatermark answers new requests 503 with a jittered Retry-After while
// the Go heap is above max. The heap is sampled at most every interval, on
// the request path (no goroutine of its own).
type HeapWatermark struct {
	max      uint64
	interval time.Duration
	retry    RetryAfter
	// Heap reads the live heap in bytes. Default: runtime/metrics.
	Heap func() uint64
	Now  func() time.Time
	// Log writes shed requests (reason "overloaded"), rate-limited.
	// Optional.
	Log *RefusalLog

	mu     sync.Mutex
	at     time.Time
	over   bool
	sample []metrics.Sample
}

// NewHeapWatermark returns a watermark; max 0 means off.
func NewHeapWatermark(max uint64, retry RetryAfter) *HeapWatermark {
	h := &HeapWatermark{max: max, interval: 100 * time.Millisecond, retry: retry, Now: time.Now,
		sample: []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}}
	h.Heap = h.readHeap
	return h
}

func (h *HeapWatermark) readHeap() uint64 {
	metrics.Read(h.sample)
	return h.sample[0].Value.Uint64()
}

// Over reports whether the heap is above the watermark (sampled).
func (h *HeapWatermark) Over() bool {
	if h == nil || h.max == 0 {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if now := h.Now(); now.Sub(h.at) >= h.interval {
		h.at = now
		h.over = h.Heap() > h.max
	}
	return h.over
}

// Wrap sheds new requests while over the watermark.
func (h *HeapWatermark) Wrap(next http.Handler) http.Handler {
	if h == nil || h.max == 0 {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h.Over() {
			h.Log.Refused("overloaded", r.RemoteAddr, nil)
			h.retry.Reject(w, http.StatusServiceUnavailable, "overloaded")
			return
		}
		next.ServeHTTP(w, r)
	})
}
