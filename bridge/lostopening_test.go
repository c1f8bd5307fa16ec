package bridge

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/edgeshim/edgeshim/bridge/mqtt"
	"github.com/edgeshim/edgeshim/config"
	"github.com/prometheus/client_golang/prometheus"
)

// TestLostWhileOpeningGoesDormant: a connect the broker accepts and then
// ends before the subscription (mosquitto before 2.0.15 closes a
// taken-over session that way: the device's poll reached the other
// replica) is not retried while nobody here waits on the session —
// retrying would take the session back and the replicas would fight.
// The device's next request here connects again.
func TestLostWhileOpeningGoesDormant(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := config.Default().WithDefaults()
		bc := cfg.Bridges["fleet"]
		bc.Upstream.URL = "mqtt://127.0.0.1:1"
		b, err := New(Options{Name: "fleet", Config: bc, Limits: cfg.Limits,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registerer: prometheus.NewRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Shutdown(context.Background())
		var opens atomic.Int32
		b.open = func(s *session, ctx context.Context) (link, bool, error) {
			opens.Add(1)
			return nil, false, fmt.Errorf("subscribe: %w", fmt.Errorf("%w: %w", errLostOpening, mqtt.ErrLost))
		}
		s, err := b.session("d1")
		if err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		time.Sleep(time.Minute) // far beyond every backoff (fake clock)
		synctest.Wait()
		if n := opens.Load(); n != 1 {
			t.Fatalf("%d connect attempts after a loss while opening with nobody waiting, want 1", n)
		}
		s.resume() // the device's next request here
		synctest.Wait()
		if n := opens.Load(); n != 2 {
			t.Fatalf("%d connect attempts after the device came back, want 2", n)
		}
	})
}
