package limits

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// logRecorder is a slog.Handler keeping each record as "msg k=v k=v".
type logRecorder struct {
	mu    sync.Mutex
	lines []string
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logRecorder) WithGroup(string) slog.Handler            { return h }
func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	h.mu.Lock()
	h.lines = append(h.lines, b.String())
	h.mu.Unlock()
	return nil
}

func (h *logRecorder) take() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	l := h.lines
	h.lines = nil
	return l
}

// TestRefusalLogRateLimited: a flood of one reason is one line at once and
// one aggregate per second with its count and first/last address; another
// reason has its own window; after a quiet second the next refusal is
// written at once; Close writes what is pending.
func TestRefusalLogRateLimited(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &logRecorder{}
		rl := NewRefusalLog(slog.New(rec), slog.LevelWarn, "connection refused")
		for i := range 1000 {
			rl.Refused("per_ip_rate", fmt.Sprintf("10.0.0.%d", i%250), nil)
		}
		rl.Refused("max_conns", "10.0.1.1", nil)
		got := rec.take()
		want := []string{
			"connection refused reason=per_ip_rate count=1 addr=10.0.0.0",
			"connection refused reason=max_conns count=1 addr=10.0.1.1",
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("at once:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		time.Sleep(999 * time.Millisecond)
		synctest.Wait()
		if got := rec.take(); len(got) != 0 {
			t.Fatalf("aggregate before the window ended: %q", got)
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		got = rec.take()
		if len(got) != 1 || got[0] != "connection refused reason=per_ip_rate count=999 first=10.0.0.1 last=10.0.0.249 within=1s" {
			t.Fatalf("aggregate: %q", got)
		}
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if got := rec.take(); len(got) != 0 {
			t.Fatalf("lines without refusals: %q", got)
		}
		rl.Refused("per_ip_rate", "10.0.0.7", fmt.Errorf("boom"))
		rl.Refused("per_ip_rate", "10.0.0.8", nil)
		got = rec.take()
		if len(got) != 1 || got[0] != "connection refused reason=per_ip_rate count=1 addr=10.0.0.7 err=boom" {
			t.Fatalf("after a quiet window: %q", got)
		}
		rl.Close()
		got = rec.take()
		if len(got) != 1 || !strings.Contains(got[0], "count=1 first=10.0.0.8 last=10.0.0.8") {
			t.Fatalf("Close: %q", got)
		}
		var nilLog *RefusalLog
		nilLog.Refused("x", "y", nil) // no panic
	})
}

// TestZeroIsOff: a listener with every cap and rate 0 admits without
// limit, and so does a handshake admission with rate 0.
func TestZeroIsOff(t *testing.T) {
	l := NewListener(nil, ListenerOptions{Tracked: 10})
	ip := netip.MustParseAddr("127.0.0.9")
	for i := range 1000 {
		if _, ok := l.Admit(ip); !ok {
			t.Fatalf("connection %d refused with every limit 0 (off)", i)
		}
	}
	l = NewListener(nil, ListenerOptions{PerIPMaxConns: 2, Tracked: 10})
	for i := range 2 {
		if _, ok := l.Admit(ip); !ok {
			t.Fatalf("connection %d refused: per-IP rate 0 is off", i)
		}
	}
	if _, ok := l.Admit(ip); ok {
		t.Fatal("per-IP max 2 not applied with rate 0")
	}
	a := NewAdmission(AdmissionOptions{Rate: 0, Burst: 0, QueueTimeout: 0})
	for i := range 100 {
		if err := a.Wait(context.Background()); err != nil {
			t.Fatalf("handshake %d refused with rate 0 (off): %v", i, err)
		}
	}
}

// TestFlappingRefusalsLogged: a banned device hammering is one log line
// at once and one aggregate a second later, not a line per attempt.
func TestFlappingRefusalsLogged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &logRecorder{}
		f := NewFlapping(FlappingOptions{Max: 2, Window: time.Minute, Ban: time.Hour, Logger: slog.New(rec)})
		refused := 0
		for range 500 {
			if ok, _ := f.AllowFrom("door-17", "198.51.100.7:4000"); !ok {
				refused++
			}
		}
		if refused != 498 {
			t.Fatalf("%d refused, want 498", refused)
		}
		if got := rec.take(); len(got) != 1 || got[0] != "flapping device refused reason=flapping count=1 addr=door-17 from 198.51.100.7:4000" {
			t.Fatalf("at once: %q", got)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if got := rec.take(); len(got) != 1 || !strings.Contains(got[0], "count=497") {
			t.Fatalf("aggregate: %q", got)
		}
	})
}

// TestAdmissionAndOverloadRefusalsLogged: a refused handshake and a shed
// request each write a line with their reason.
func TestAdmissionAndOverloadRefusalsLogged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &logRecorder{}
		a := NewAdmission(AdmissionOptions{Rate: 1, Burst: 1, QueueTimeout: time.Millisecond,
			Log: NewRefusalLog(slog.New(rec), slog.LevelWarn, "connection refused")})
		a.Wait(context.Background())
		if err := a.Wait(context.Background()); !errors.Is(err, ErrAdmission) {
			t.Fatalf("second handshake: %v, want ErrAdmission", err)
		}
		h := NewHeapWatermark(1, RetryAfter{Min: time.Second, Max: time.Second})
		h.Heap = func() uint64 { return 2 }
		h.Log = NewRefusalLog(slog.New(rec), slog.LevelWarn, "request refused")
		req := httptest.NewRequest("GET", "/", nil)
		h.Wrap(http.NotFoundHandler()).ServeHTTP(httptest.NewRecorder(), req)
		got := rec.take()
		if len(got) != 2 || got[0] != "connection refused reason=handshake_queue_timeout count=1 addr=" ||
			got[1] != "request refused reason=overloaded count=1 addr="+req.RemoteAddr {
			t.Fatalf("log: %q", got)
		}
	})
}
