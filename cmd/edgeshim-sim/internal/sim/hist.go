package sim

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// hist is a lock-free latency histogram: 16 buckets per power of two of
// microseconds (about 4.4% resolution) from 1 µs to about 2^40 µs.
type hist struct {
	b     [41 * 16]atomic.Uint64
	n     atomic.Uint64
	sumUS atomic.Uint64
	maxUS atomic.Uint64
}

func bucketOf(us uint64) int {
	if us < 1 {
		us = 1
	}
	exp := 63 - bits.LeadingZeros64(us) // floor(log2)
	// 4 bits of mantissa below the leading one.
	var frac uint64
	if exp >= 4 {
		frac = (us >> (exp - 4)) & 15
	} else {
		frac = (us << (4 - exp)) & 15
	}
	i := exp*16 + int(frac)
	return min(i, 41*16-1)
}

// lowerUS is the smallest value of bucket i, in µs.
func lowerUS(i int) float64 {
	exp, frac := i/16, i%16
	return math.Ldexp(1+float64(frac)/16, exp)
}

func (h *hist) add(d time.Duration) {
	us := uint64(max(d.Microseconds(), 0))
	h.b[bucketOf(us)].Add(1)
	h.n.Add(1)
	h.sumUS.Add(us)
	for {
		m := h.maxUS.Load()
		if us <= m || h.maxUS.CompareAndSwap(m, us) {
			break
		}
	}
}

// quantile returns the q-th quantile (0..1), the upper edge of its bucket.
func (h *hist) quantile(q float64) time.Duration {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	rank = max(rank, 1)
	var seen uint64
	for i := range h.b {
		seen += h.b[i].Load()
		if seen >= rank {
			up := time.Duration(lowerUS(i+1) * float64(time.Microsecond))
			return min(up, time.Duration(h.maxUS.Load())*time.Microsecond)
		}
	}
	return time.Duration(h.maxUS.Load()) * time.Microsecond
}

// Summary is a histogram's digest in milliseconds.
type Summary struct {
	Count  uint64  `json:"count"`
	MeanMS float64 `json:"mean_ms"`
	P50MS  float64 `json:"p50_ms"`
	P90MS  float64 `json:"p90_ms"`
	P99MS  float64 `json:"p99_ms"`
	P999MS float64 `json:"p999_ms"`
	MaxMS  float64 `json:"max_ms"`
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }

func (h *hist) summary() Summary {
	n := h.n.Load()
	s := Summary{Count: n}
	if n == 0 {
		return s
	}
	s.MeanMS = math.Round(float64(h.sumUS.Load())/float64(n)) / 1e3
	s.P50MS, s.P90MS, s.P99MS, s.P999MS = ms(h.quantile(.5)), ms(h.quantile(.9)), ms(h.quantile(.99)), ms(h.quantile(.999))
	s.MaxMS = float64(h.maxUS.Load()) / 1e3
	return s
}
