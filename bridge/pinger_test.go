package bridge

import (
	"context"
	"io"
	"net"
	"testing"
	"testing/synctest"
	"time"
)

// TestTimerPinger: PINGREQ after a keepalive interval without traffic,
// postponed by traffic; the connection is closed when a PINGREQ gets no
// PINGRESP within the next interval; nothing fires after the context ends.
func TestTimerPinger(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ours, broker := net.Pipe()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		p := &timerPinger{}
		start := time.Now()
		if err := p.Run(ctx, ours, 10); err != nil {
			t.Fatal(err)
		}
		readPing := func(wantAt time.Duration) {
			t.Helper()
			buf := make([]byte, 2)
			if _, err := io.ReadFull(broker, buf); err != nil {
				t.Fatalf("reading PINGREQ: %v", err)
			}
			if buf[0] != 0xC0 || buf[1] != 0 {
				t.Fatalf("got % x, want PINGREQ c0 00", buf)
			}
			if at := time.Since(start); at != wantAt {
				t.Errorf("PINGREQ at %s, want %s", at, wantAt)
			}
		}
		time.Sleep(5 * time.Second)
		p.PacketSent()
		p.PacketReceived() // traffic at 5s: the first ping is due at 15s
		readPing(15 * time.Second)
		p.PacketReceived()
		p.PingResp()
		readPing(25 * time.Second)
		// No PINGRESP: closed one interval later.
		if _, err := broker.Read(make([]byte, 1)); err == nil {
			t.Fatal("connection still open after an unanswered PINGREQ")
		}
		if at := time.Since(start); at != 35*time.Second {
			t.Errorf("closed at %s, want 35s", at)
		}

		// A second pinger whose context ends sends nothing.
		ours2, broker2 := net.Pipe()
		ctx2, cancel2 := context.WithCancel(context.Background())
		(&timerPinger{}).Run(ctx2, ours2, 10)
		cancel2()
		go func() { time.Sleep(time.Minute); broker2.Close() }()
		if n, _ := broker2.Read(make([]byte, 1)); n != 0 {
			t.Error("PINGREQ sent after the context ended")
		}
		ours2.Close()
	})
}
