package bridge

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/edgeshim/edgeshim/config"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeLink is a session link (our own interface) that records answers
// and acks.
type fakeLink struct {
	mu      sync.Mutex
	answers map[string]int // request id → status
	acks    []string
	gone    chan struct{}
}

var (
	_ link      = (*fakeLink)(nil)
	_ responder = (*fakeLink)(nil)
)

func (f *fakeLink) publish(context.Context, string, byte, []byte) error { return nil }
func (f *fakeLink) done() <-chan struct{}                               { return f.gone }
func (f *fakeLink) close()                                              {}
func (f *fakeLink) maxPacket() uint32                                   { return 0 }
func (f *fakeLink) ackAnywhere() bool                                   { return true }
func (f *fakeLink) ack(c *command) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.acks = append(f.acks, c.id)
	return nil
}

func (f *fakeLink) respond(_ context.Context, r *request, status int, _ string, _ []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answers[r.id] = status
	return nil
}

func (f *fakeLink) answer(id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.answers[id]
}

// TestRequestTimersBoundedAndAnswered: at most upstream.receive_maximum
// requests are open per session (the next is answered 503 and acked, not
// delivered); an unanswered request is answered 504 at its deadline and
// its undelivered command dropped and acked; a device's answer stops the
// timer; another device's answer is refused; the session's end answers
// 503; no timer outlives it (Shutdown waits for them).
func TestRequestTimersBoundedAndAnswered(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	synctest.Test(t, func(t *testing.T) {
		cfg := config.Default().WithDefaults()
		bc := cfg.Bridges["fleet"]
		bc.Upstream.URL = "mqtt://" + dead
		bc.Upstream.ReceiveMaximum = 2
		bc.Commands.ResponseTopics = []string{"replies/#"}
		bc.Commands.ResponseTimeout = config.Duration(10 * time.Second)
		b, err := New(Options{Name: "fleet", Config: bc, Limits: cfg.Limits,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registerer: prometheus.NewRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		fl := &fakeLink{answers: map[string]int{}, gone: make(chan struct{})}
		s := newSession(b, "d1")
		s.link = fl
		q := b.rr
		req := func() (*command, bool) {
			c := &command{topic: "devices/d1/commands", via: fl}
			ok := q.track(s, c, &request{topic: "replies/a"}, bc.Commands.ResponseTimeout.D(), false)
			if ok {
				s.add(c)
			}
			return c, ok
		}
		c1, ok1 := req()
		c2, ok2 := req()
		c3, ok3 := req()
		if !ok1 || !ok2 || ok3 {
			t.Fatalf("admitted %v %v %v, want the first two (receive_maximum 2)", ok1, ok2, ok3)
		}
		synctest.Wait()
		if fl.answer(c3.id) != 503 || testutil.ToFloat64(q.mReqs.WithLabelValues(reqBusy)) != 1 {
			t.Errorf("over the bound: answer %d, busy %v; want 503, 1", fl.answer(c3.id), testutil.ToFloat64(q.mReqs.WithLabelValues(reqBusy)))
		}
		// c1 is delivered (write mode: acked then), c2 never is.
		s.take(1, false, 0)
		s.delivered([]*command{c1})
		if err := q.respond(context.Background(), "d2", c1.id, 200, "", nil); !errors.Is(err, errOtherDevice) {
			t.Errorf("another device's answer: %v", err)
		}
		time.Sleep(9 * time.Second)
		synctest.Wait()
		if fl.answer(c1.id) != 0 || fl.answer(c2.id) != 0 {
			t.Fatal("answered before the deadline")
		}
		if err := q.respond(context.Background(), "d1", c1.id, 200, "", nil); err != nil {
			t.Fatalf("device answer: %v", err)
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if fl.answer(c1.id) != 200 || fl.answer(c2.id) != 504 || testutil.ToFloat64(q.mTimeouts) != 1 {
			t.Errorf("answers %d %d timeouts %v, want 200 (device), 504 (timeout), 1", fl.answer(c1.id), fl.answer(c2.id), testutil.ToFloat64(q.mTimeouts))
		}
		if s.hasPending() {
			t.Error("the timed-out command is still waiting for delivery")
		}
		fl.mu.Lock()
		acks := append([]string(nil), fl.acks...)
		fl.mu.Unlock()
		if len(acks) != 3 { // c3 (busy), c1 (delivered), c2 (dropped at timeout)
			t.Errorf("acks %v, want c3, c1, c2", acks)
		}
		if err := q.respond(context.Background(), "d1", c2.id, 200, "", nil); !errors.Is(err, errNoRequest) {
			t.Errorf("answer after the timeout: %v, want errNoRequest", err)
		}
		c4, _ := req()
		s.end(reasonShutdown)
		q.ended(s, fl)
		if fl.answer(c4.id) != 503 {
			t.Errorf("open request at session end: %d, want 503", fl.answer(c4.id))
		}
		if _, ok := req(); ok {
			t.Error("a request admitted after the session ended")
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		start := time.Now()
		if err := b.Shutdown(ctx); err != nil { // waits for every timer
			t.Fatal(err)
		}
		if d := time.Since(start); d > 0 { // synctest's clock: only waiting moves it
			t.Errorf("Shutdown waited %s: a stopped request's timer still ran", d)
		}
	})
}
