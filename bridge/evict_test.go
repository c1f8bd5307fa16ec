package bridge

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/edgeshim/edgeshim/config"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestEvictedWhileQueuedCountedAndNotStalling: with session.max 1 and a
// connect rate of 1/s, 50 first contacts evict each other while their
// connects wait in the pacer. Each evicted session leaves the queue, is
// counted (disconnects{reason="evicted"}) and logged in one aggregated
// line, and the surviving session's connect goes at the next token, not
// after the evicted ones' turns (x/time/rate's cancelled reservations
// stalled it).
func TestEvictedWhileQueuedCountedAndNotStalling(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close() // every dial is refused at once: each attempt is counted
	synctest.Test(t, func(t *testing.T) {
		cfg := config.Default().WithDefaults()
		bc := cfg.Bridges["fleet"]
		bc.Upstream.URL = "mqtt://" + dead
		bc.Upstream.ReconnectRate = 1
		bc.Upstream.BackoffMin = config.Duration(time.Hour) // one attempt each
		bc.Upstream.BackoffMax = config.Duration(time.Hour)
		bc.Session.Max = 1
		var logs syncBuffer
		b, err := New(Options{Name: "fleet", Config: bc, Limits: cfg.Limits,
			Logger: slog.New(slog.NewTextHandler(&logs, nil)), Registerer: prometheus.NewRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		const devices = 50
		for i := range devices {
			if _, err := b.session(fmt.Sprintf("d%d", i)); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		if got := testutil.ToFloat64(b.m.disconnects.WithLabelValues(reasonEvicted)); got != devices-1 {
			t.Errorf("evicted sessions counted: %v, want %d", got, devices-1)
		}
		if n := strings.Count(logs.String(), "sessions evicted before they connected"); n != 1 {
			t.Errorf("%d eviction log lines for %d evictions in one burst, want 1:\n%s", n, devices-1, logs.String())
		}
		if q := b.pacer.queued(); q != 1 {
			t.Errorf("pacer queue holds %d connects, want only the survivor's", q)
		}
		// d0 took the burst token (its refused attempt is counted only if
		// it failed before d0 was evicted); the survivor (d49) is next,
		// within 1s.
		before := testutil.ToFloat64(b.m.connects.WithLabelValues("error"))
		time.Sleep(time.Second)
		synctest.Wait()
		if got := testutil.ToFloat64(b.m.connects.WithLabelValues("error")) - before; got != 1 {
			t.Errorf("connect attempts in the next second: %v, want 1 (the survivor's)", got)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
	})
}
