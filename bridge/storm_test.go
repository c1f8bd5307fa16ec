package bridge

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"testing"
	"testing/synctest"
	"time"

	"github.com/edgeshim/edgeshim/config"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestReconnectStormPaced: when the broker is unreachable, 200 sessions
// retry with jittered backoff and the bridge-wide connect limiter keeps
// attempts within reconnect_rate, whatever the number of devices (fake
// time; each attempt is a real refused dial on loopback).
func TestReconnectStormPaced(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close() // nothing listens: every dial is refused at once
	synctest.Test(t, func(t *testing.T) {
		cfg := config.Default().WithDefaults()
		bc := cfg.Bridges["fleet"]
		bc.Upstream.URL = "mqtt://" + dead
		bc.Upstream.ReconnectRate = 20
		bc.Upstream.BackoffMin = config.Duration(time.Second)
		bc.Upstream.BackoffMax = config.Duration(8 * time.Second)
		b, err := New(Options{Name: "fleet", Config: bc, Limits: cfg.Limits,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registerer: prometheus.NewRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		const devices = 200
		for i := range devices {
			if _, err := b.session(fmt.Sprintf("d%d", i)); err != nil {
				t.Fatal(err)
			}
		}
		const window = 10 * time.Second
		time.Sleep(window)
		synctest.Wait()
		attempts := testutil.ToFloat64(b.m.connects.WithLabelValues("error"))
		t.Logf("%v connect attempts by %d devices in %s", attempts, devices, window)
		// burst (= rate) at once, then rate per second
		if limit := 20 + 20*window.Seconds(); attempts > limit {
			t.Errorf("%v connect attempts in %s, want at most %v (reconnect_rate 20/s)", attempts, window, limit)
		}
		if attempts < devices {
			t.Errorf("%v connect attempts in %s: every device should have tried once (200 at 20/s take 10s)", attempts, window)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
	})
}
