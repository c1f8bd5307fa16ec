package mqtt

import (
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// TestTimerPinger: PINGREQ after a keepalive interval without traffic,
// postponed by traffic; the connection is reported lost when a PINGREQ
// gets no PINGRESP within the next interval; nothing fires after stop.
func TestTimerPinger(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		var mu sync.Mutex // the timer's goroutine writes, the test reads
		var pings []time.Duration
		var lostAt time.Duration
		p := &timerPinger{}
		p.start(10*time.Second, func() error {
			mu.Lock()
			pings = append(pings, time.Since(start))
			mu.Unlock()
			p.sent()
			return nil
		}, func() { mu.Lock(); lostAt = time.Since(start); mu.Unlock() })
		time.Sleep(5 * time.Second)
		p.sent()
		p.received() // traffic at 5s: the first ping is due at 15s
		time.Sleep(10*time.Second + time.Millisecond)
		p.received()
		p.pingResp()
		time.Sleep(time.Minute) // a ping at 25s gets no answer: lost at 35s
		mu.Lock()
		defer mu.Unlock()
		if want := []time.Duration{15 * time.Second, 25 * time.Second}; len(pings) != 2 || pings[0] != want[0] || pings[1] != want[1] {
			t.Errorf("PINGREQs at %v, want %v", pings, want)
		}
		if lostAt != 35*time.Second {
			t.Errorf("lost at %s, want 35s", lostAt)
		}

		// A stopped pinger does nothing.
		q := &timerPinger{}
		var fired atomic.Bool
		q.start(10*time.Second, func() error { fired.Store(true); return nil }, func() { fired.Store(true) })
		q.stop()
		time.Sleep(time.Minute)
		if fired.Load() {
			t.Error("pinger fired after stop")
		}
	})
}
