package bridge

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/edgeshim/edgeshim/config"
	"github.com/edgeshim/edgeshim/limits"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// shutdownBridge ends b at the test's end.
func shutdownBridge(t *testing.T, b *Bridge) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		http.DefaultClient.CloseIdleConnections()
	})
}

// awaitHeld waits until n polls are held (the gauge is the only signal
// of a poll waiting inside the handler).
func awaitHeld(t *testing.T, b *Bridge, n float64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for testutilGauge(b.m.held) != n {
		if time.Now().After(deadline) {
			t.Fatalf("held polls = %v, want %v", testutilGauge(b.m.held), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRequeuedCommandWakesHeldPoll (lost wakeup): a command put back in
// the session (another poll's write failed) while a poll of the device
// is held must wake that poll at once, not at the end of its wait.
func TestRequeuedCommandWakesHeldPoll(t *testing.T) {
	b, srv := newEmbeddedBridge(t, nil)
	shutdownBridge(t, b)
	resp, err := http.Get(srv.URL + "/devices/d1/commands")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	type got struct {
		code int
		id   string
		err  error
	}
	done := make(chan got, 1)
	go func() {
		c := &http.Client{Timeout: 10 * time.Second} // the wait is 30 s
		resp, err := c.Get(srv.URL + "/devices/d1/commands?wait=30")
		if err != nil {
			done <- got{err: err}
			return
		}
		io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- got{code: resp.StatusCode, id: resp.Header.Get("X-Command-Id")}
	}()
	awaitHeld(t, b, 1)
	s := b.held("d1")
	s.requeue([]*command{{id: "back-1", topic: "devices/d1/commands", payload: []byte("on"), arrived: time.Now()}})
	g := <-done
	if g.err != nil || g.code != 200 || g.id != "back-1" {
		t.Fatalf("held poll after a requeue: %+v, want 200 with back-1 at once", g)
	}
}

// TestPromptCloseDeliversOnce (duplicate after a prompt close): 200
// rounds of "read the whole answer, close at once" never offer the same
// command again, and every command is counted delivered.
func TestPromptCloseDeliversOnce(t *testing.T) {
	b, _ := newEmbeddedBridge(t, func(bc *config.Bridge) { bc.Poll.Format = "raw" })
	shutdownBridge(t, b)
	srv := httptest.NewUnstartedServer(b)
	srv.Config.ConnContext = limits.WithConn // the receipt check sees the socket
	srv.Start()
	t.Cleanup(srv.Close)
	addr := srv.Listener.Addr().String()
	poll := func() (int, string) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close() // at once, as soon as the answer is read
		c.SetDeadline(time.Now().Add(20 * time.Second))
		io.WriteString(c, "GET /devices/d2/commands?wait=5 HTTP/1.1\r\nHost: edge\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("X-Command-Id")
	}
	poll() // the session
	s := b.held("d2")
	const rounds = 200
	seen := map[string]int{}
	for i := range rounds {
		s.add(&command{topic: "devices/d2/commands", payload: []byte("x")})
		code, id := poll()
		if code != 200 || id == "" {
			t.Fatalf("round %d: %d %q, want 200 with a command", i, code, id)
		}
		if prev, ok := seen[id]; ok {
			t.Fatalf("round %d: command %s offered again (first in round %d)", i, id, prev)
		}
		seen[id] = i
	}
	deadline := time.Now().Add(20 * time.Second)
	for testutil.ToFloat64(b.m.delivered) != rounds && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // the last Written may still run
	}
	if n := testutil.ToFloat64(b.m.delivered); n != rounds {
		t.Errorf("commands_delivered_total = %v, want %d", n, rounds)
	}
}

// TestNextTakesOrWakes: a command added at any moment around a poll's
// Next is either taken by it or wakes it at once (take and registration
// are one lock section), over many rounds of a racing add.
func TestNextTakesOrWakes(t *testing.T) {
	b, srv := newEmbeddedBridge(t, nil)
	shutdownBridge(t, b)
	resp, err := http.Get(srv.URL + "/devices/d3/commands") // the session, connected
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	s := b.held("d3")
	for i := range 300 {
		p, a := b.beginPoll(pollRequest{ctx: context.Background(), cred: Credentials{Header: http.Header{}, RemoteAddr: "127.0.0.1:1"},
			path: "/devices/d3/commands", pathDev: "d3", rawQuery: "wait=30", http1: true})
		if p == nil {
			t.Fatalf("round %d: refused %d", i, a.Status)
		}
		woke := make(chan struct{}, 1)
		wake := func() { woke <- struct{}{} }
		added := make(chan struct{})
		go func() {
			defer close(added)
			s.add(&command{topic: "devices/d3/commands", payload: []byte("x")})
		}()
		a = p.Next(wake)
		for a == nil {
			select {
			case <-woke:
			case <-time.After(10 * time.Second):
				t.Fatalf("round %d: a command added around Next neither taken nor woke the poll", i)
			}
			a = p.Next(wake)
		}
		<-added
		if a.Status != 200 {
			t.Fatalf("round %d: answer %d, want 200 with the command", i, a.Status)
		}
		p.Written(nil)
	}
}
