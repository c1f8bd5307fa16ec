package sim

import (
	"testing"
	"time"
)

func TestHistQuantiles(t *testing.T) {
	var h hist
	for i := 1; i <= 1000; i++ {
		h.add(time.Duration(i) * time.Millisecond)
	}
	for q, want := range map[float64]time.Duration{.5: 500 * time.Millisecond, .99: 990 * time.Millisecond} {
		got := h.quantile(q)
		if got < want || float64(got) > float64(want)*1.07 {
			t.Errorf("q%.2f = %v, want %v within +7%%", q, got, want)
		}
	}
	if s := h.summary(); s.Count != 1000 || s.MaxMS != 1000 {
		t.Errorf("summary %+v", s)
	}
}
