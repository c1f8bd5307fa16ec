package faillog

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// lines is a goroutine-safe log sink.
type lines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lines) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Split(strings.TrimSpace(l.buf.String()), "\n")
}

func newTestLog(out *lines) *Log {
	return New(Options{Logger: slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}})), Interval: 10 * time.Second})
}

// TestRepeatedFailuresAggregated: 50 failures in 15s are the first line
// and one summary per interval with their count; the recovery is one line
// with how long and how many.
func TestRepeatedFailuresAggregated(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		out := &lines{}
		l := newTestLog(out)
		defer l.Close()
		err := errors.New("connection refused")
		for i := range 50 {
			l.Fail("backend a", "backend error", "backend", "a", "err", err, "n", i)
			time.Sleep(300 * time.Millisecond) // 50 failures over 15s
		}
		time.Sleep(10 * time.Second) // the last summary's timer
		synctest.Wait()
		if !l.AnyDown() {
			t.Error("AnyDown false with a key failing")
		}
		l.Recover("backend a", "backend answering again", "backend", "a")
		if l.AnyDown() {
			t.Error("AnyDown true after the only failing key recovered")
		}
		got := out.all()
		want := []string{
			`level=WARN msg="backend error" backend=a err="connection refused" n=0`,
			`level=WARN msg="backend a: 33 more failures in the last 10s" repeated=33 last="backend error" backend=a err="connection refused" n=33`,
			`level=WARN msg="backend a: 16 more failures in the last 10s" repeated=16 last="backend error" backend=a err="connection refused" n=49`,
			`level=INFO msg="backend answering again" backend=a down_for=25s failures=50`,
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		// Working keys cost nothing and say nothing.
		l.Recover("backend a", "backend answering again")
		l.Recover("backend b", "backend answering again")
		if n := len(out.all()); n != 4 {
			t.Errorf("recovering a working key logged: %d lines", n)
		}
	})
}

// TestFlappingKeyBounded: a key failing and recovering over and over
// writes at most a few lines per interval, however often it flaps.
func TestFlappingKeyBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		out := &lines{}
		l := newTestLog(out)
		defer l.Close()
		for range 1000 { // 1000 flaps in 10s
			l.Fail("upstream", "upstream connect failed")
			l.Recover("upstream", "upstream reconnected")
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(20 * time.Second)
		synctest.Wait()
		if n := len(out.all()); n > 6 {
			t.Errorf("1000 flaps in 10s gave %d lines, want at most 6:\n%s", n, strings.Join(out.all(), "\n"))
		}
		l.mu.Lock()
		keys := len(l.keys)
		l.mu.Unlock()
		if keys != 0 {
			t.Errorf("%d keys kept after the failures stopped", keys)
		}
	})
}

// TestCloseStopsTimers: after Close nothing is logged and no timer runs.
func TestCloseStopsTimers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		out := &lines{}
		l := newTestLog(out)
		l.Fail("k", "failed")
		l.Fail("k", "failed")
		l.Close()
		time.Sleep(time.Minute)
		synctest.Wait()
		l.Fail("k", "failed")
		if n := len(out.all()); n != 1 {
			t.Errorf("%d lines, want the first failure only", n)
		}
	})
}
