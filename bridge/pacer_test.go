package bridge

import (
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// paceLog records the order and time of released connects.
type paceLog struct {
	mu    sync.Mutex
	order []string
	at    []time.Time
}

func (l *paceLog) fn(name string) func() {
	return func() {
		l.mu.Lock()
		l.order = append(l.order, name)
		l.at = append(l.at, time.Now())
		l.mu.Unlock()
	}
}

func (l *paceLog) got() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.order...)
}

// TestPacerRateAndBurst: a burst goes at once, the rest at the rate, and
// the timer is gone once nothing waits.
func TestPacerRateAndBurst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newPacer(10, 5, time.Now)
		start := time.Now()
		var log paceLog
		now := 0
		for i := range 25 {
			if _, ok := p.enqueue(false, log.fn(fmt.Sprint(i))); ok {
				now++
			}
		}
		if now != 5 {
			t.Fatalf("%d connects went at once, want the burst of 5", now)
		}
		time.Sleep(2*time.Second - time.Millisecond)
		synctest.Wait()
		if n := len(log.got()); n != 19 {
			t.Errorf("released within 2s: %d, want 19 (10/s)", n)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if n := len(log.got()); n != 20 {
			t.Errorf("released within 3s: %d, want all 20", n)
		}
		if p.queued() != 0 || p.timer != nil {
			t.Errorf("queued %d, timer armed %v after all went", p.queued(), p.timer != nil)
		}
		if d := log.at[len(log.at)-1].Sub(start); d < 2*time.Second || d > 2*time.Second+time.Millisecond {
			t.Errorf("last release after %s, want 2s", d)
		}
	})
}

// TestPacerUrgentFirst: connects a device waits on go before background
// reconnects queued earlier, in FIFO order within each queue; a promoted
// background connect joins the urgent queue's end.
func TestPacerUrgentFirst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newPacer(1, 1, time.Now)
		var log paceLog
		if _, ok := p.enqueue(false, log.fn("first")); !ok {
			t.Fatal("the burst token was not used at once")
		}
		p.enqueue(false, log.fn("bg1"))
		bg2, _ := p.enqueue(false, log.fn("bg2"))
		p.enqueue(false, log.fn("bg3"))
		p.enqueue(true, log.fn("poll1"))
		if _, ok := p.enqueue(true, log.fn("poll2")); ok {
			t.Fatal("an urgent connect jumped a queued urgent one")
		}
		p.promote(bg2)
		time.Sleep(10 * time.Second)
		synctest.Wait()
		want := []string{"poll1", "poll2", "bg2", "bg1", "bg3"}
		if got := log.got(); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("release order %v, want %v", got, want)
		}
	})
}

// TestPacerCancelDelaysNobody: cancelling many queued connects (an
// eviction storm) leaves the others' turns as they were, and no timer
// survives the last one leaving. x/time/rate's Reservation.Cancel stalled
// the next connects here.
func TestPacerCancelDelaysNobody(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newPacer(10, 1, time.Now)
		start := time.Now()
		var log paceLog
		if _, ok := p.enqueue(false, log.fn("burst")); !ok {
			t.Fatal("the burst token was not used at once")
		}
		var evicted []*paceTicket
		for i := range 100 {
			tk, _ := p.enqueue(false, log.fn(fmt.Sprint("evicted", i)))
			evicted = append(evicted, tk)
		}
		p.enqueue(true, log.fn("a"))
		p.enqueue(false, log.fn("b"))
		for _, tk := range evicted {
			if !p.cancel(tk) {
				t.Fatal("cancel of a queued connect failed")
			}
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if got := log.got(); fmt.Sprint(got) != "[a b]" {
			t.Fatalf("released %v, want [a b]", got)
		}
		if d := log.at[1].Sub(start); d < 200*time.Millisecond || d > 201*time.Millisecond {
			t.Errorf("b released after %s, want 200ms (its place after the evicted ones left)", d)
		}
		p.enqueue(false, log.fn("late1")) // the token refilled meanwhile
		tk, _ := p.enqueue(false, log.fn("late2"))
		if tk == nil || !p.cancel(tk) {
			t.Fatal("could not queue and cancel")
		}
		if p.timer != nil {
			t.Error("timer still armed with nothing queued")
		}
		if p.cancel(tk) {
			t.Error("second cancel of the same ticket succeeded")
		}
	})
}
