package limits

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"runtime/metrics"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/edgeshim/edgeshim/config"
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

// Descriptor budget. Every open client connection costs a descriptor, and
// about one more behind it: a bridge device's broker connection, a proxied
// request's backend connection. Above the process's RLIMIT_NOFILE accept
// fails with EMFILE and devices see connections closed or reset without
// an answer. FitDescriptors therefore caps limits.max_conns at half of
// what the limit leaves after a reserve, and the bridges' session.max
// (broker connections, two descriptors each with the embedded broker,
// whose end is in the same process) at the other half. It clamps, with a
// warning, rather than refusing to start: the default max_conns (50,000)
// is above what common limits allow, and a capped edgeshim that answers
// 503 beats one that does not start.

// DescriptorReserve is what FitDescriptors leaves for listeners, log and
// data files, the admin server and DNS: 64 + 2% of the limit.
func DescriptorReserve(nofile uint64) int { return 64 + int(nofile/50) }

// FitDescriptors clamps cfg's connection caps to the descriptor limit
// nofile (0: unknown, nothing changes) and returns a warning for each cap
// it lowered. cfg must have its defaults filled.
func FitDescriptors(cfg *config.Config, nofile uint64) []string {
	if nofile == 0 || nofile > 1<<30 {
		return nil
	}
	var warns []string
	avail := int(nofile) - DescriptorReserve(nofile)
	if avail < 4 {
		avail = 4
	}
	// Pointers are replaced, not written through: cfg may share them with
	// the configuration it was copied from.
	maxConns := *cfg.Limits.MaxConns // 0: no cap, which the limit caps all the same
	if max := avail / 2; maxConns == 0 || maxConns > max {
		warns = append(warns, fmt.Sprintf("limits.max_conns lowered from %d to %d: the descriptor limit (RLIMIT_NOFILE) is %d and each connection costs about two", maxConns, max, nofile))
		maxConns = max
		cfg.Limits.MaxConns = &maxConns
	}
	if p := *cfg.Limits.PerIP.MaxConns; p > maxConns {
		cfg.Limits.PerIP.MaxConns = &maxConns
	}
	if cfg.Limits.Overload.MaxConns > maxConns {
		cfg.Limits.Overload.MaxConns = 0 // derived from the lowered cap
	}
	cost := 1
	if cfg.EmbeddedBroker.Enabled {
		cost = 2
	}
	sessions := 0
	names := make([]string, 0, len(cfg.Bridges))
	for name, b := range cfg.Bridges {
		sessions += b.Session.Max * cost
		names = append(names, name)
	}
	if budget := avail - maxConns; sessions > budget && len(names) > 0 {
		sort.Strings(names)
		bridges := make(map[string]config.Bridge, len(cfg.Bridges))
		for _, name := range names {
			b := cfg.Bridges[name]
			n := max(1, b.Session.Max*budget/sessions)
			warns = append(warns, fmt.Sprintf("bridges.%s.session.max lowered from %d to %d: each session holds a broker connection and the descriptor limit (RLIMIT_NOFILE) is %d", name, b.Session.Max, n, nofile))
			b.Session.Max = n
			bridges[name] = b
		}
		cfg.Bridges = bridges
	}
	return warns
}

// SoftConns is the open-connection count above which new connections are
// still accepted but each of their requests is answered 503 with a
// jittered Retry-After (and Connection: close): limits.overload.max_conns,
// or 90% of maxConns when that is 0.
func SoftConns(overload, maxConns int) int {
	if overload > 0 && overload < maxConns {
		return overload
	}
	return maxConns - maxConns/10
}

// Overflowed reports whether c (or a connection it wraps, found through
// NetConn) was admitted above the soft cap, or its handshake above the
// admission rate (MarkOverflow).
func Overflowed(c net.Conn) bool {
	f := overflowFlag(c)
	return f != nil && f.Load()
}

// MarkOverflow marks c (or the accepted connection it wraps) so that its
// requests are answered 503 with Retry-After (OverflowGuard); false when
// c is not one of the limits listener's.
func MarkOverflow(c net.Conn) bool {
	f := overflowFlag(c)
	if f != nil {
		f.Store(true)
	}
	return f != nil
}

func overflowFlag(c net.Conn) *atomic.Bool {
	for range 8 {
		switch x := c.(type) {
		case *limitedConn:
			return &x.overflow
		case *ppConn:
			return &x.overflow
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// OverflowGuard answers every request on an overflowed connection 503
// with a jittered Retry-After and closes the connection after it (on
// HTTP/2 the Connection: close becomes a GOAWAY). overflowed reads the
// mark from the request (the server puts it in the connection's context).
func OverflowGuard(retry RetryAfter, overflowed func(*http.Request) bool, refused func(), next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if overflowed(r) {
			if refused != nil {
				refused()
			}
			w.Header().Set("Connection", "close")
			retry.Reject(w, http.StatusServiceUnavailable, "overloaded")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// acceptError names an accept failure for the accept-errors metric:
// "emfile" (the process is out of descriptors), "enfile" (the system
// is), or "other".
func acceptError(err error) string {
	switch {
	case errors.Is(err, syscall.EMFILE):
		return "emfile"
	case errors.Is(err, syscall.ENFILE):
		return "enfile"
	}
	return "other"
}
