package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"
)

// getOn sends a GET on c and reads its response; it fails the test unless
// the status is want.
func getOn(t *testing.T, c *tls.Conn, br *bufio.Reader, path string, want int) {
	t.Helper()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want || resp.Close {
		t.Fatalf("GET %s: %d close=%v, want %d keep-alive", path, resp.StatusCode, resp.Close, want)
	}
}

func parkedIdle(s *Server) func() float64 {
	return func() float64 { return float64(s.fast.Stats().IdleParked) }
}

// fastConns is the number of connections the listener tracks as fast.
func fastConns(s *Server) int {
	s.tln.mu.Lock()
	defer s.tln.mu.Unlock()
	return len(s.tln.fast)
}

// TestIdleKeepAliveParkedWithoutGoroutines: 200 keep-alive connections
// idle between proxied requests hold no goroutine (the baseline is taken
// before dialling); each is parked, and its next request is served on
// the fast path from the parker's wake.
func TestIdleKeepAliveParkedWithoutGoroutines(t *testing.T) {
	const n = 200
	backend := echoBackend(t, "b")
	s, _ := startProxy(t, fmt.Sprintf(`
limits: {per_ip: {max_conns: 5000, rate: 100000, burst: 100000}, max_conns: 10000}
routes: [{path: /, proxy: {backends: [%q]}}]`, backend.URL))
	// A first connection starts what lives on (a handshake worker, the
	// backend connection and its server's goroutines); then it closes
	// and the baseline is taken.
	c0 := dialRawTLS(t, s, "")
	getOn(t, c0, bufio.NewReader(c0), "/warm", 200)
	c0.Close()
	waitFor(t, func() bool { return fastConns(s) == 0 })
	base := runtime.NumGoroutine()
	for range 50 {
		time.Sleep(20 * time.Millisecond) // settling: no signal for "nothing more ends"
		base = min(base, runtime.NumGoroutine())
	}
	parked0 := parkedIdle(s)()
	conns := make([]*tls.Conn, n)
	brs := make([]*bufio.Reader, n)
	for i := range conns {
		conns[i] = dialRawTLS(t, s, "")
		brs[i] = bufio.NewReader(conns[i])
		getOn(t, conns[i], brs[i], fmt.Sprint("/a", i), 200)
		// Parked before the next is dialled: its handshake worker is free
		// again, and no new one is started.
		awaitCounter(t, "idle connections parked", parkedIdle(s), parked0+float64(i+1))
	}
	// The last ones' goroutines may still be ending.
	awaitFewGoroutines(t, base, n, "idle keep-alive connections")
	if got := fastConns(s); got != n {
		t.Errorf("fast connections tracked = %d, want %d", got, n)
	}
	served := s.fast.Stats().Served
	for i := range conns { // served after their park, on the fast path
		getOn(t, conns[i], brs[i], fmt.Sprint("/b", i), 200)
	}
	if got := s.fast.Stats().Served - served; got != n {
		t.Errorf("requests after a park served on the fast path = %d, want %d", got, n)
	}
	for _, c := range conns { // the peer closing ends a parked connection
		c.Close()
	}
	awaitCounter(t, "fast connections gone", func() float64 { return float64(-fastConns(s)) }, 0)
}

// TestIdleParkedTimeoutCloses: the idle timeout closes a parked
// keep-alive connection (its timer: nobody reads it), not before it.
func TestIdleParkedTimeoutCloses(t *testing.T) {
	backend := echoBackend(t, "b")
	s, _ := startProxy(t, fmt.Sprintf(`
limits: {timeouts: {idle: 1s}, websocket: {ping: 500ms, pong_timeout: 1s}}
routes: [{path: /, proxy: {backends: [%q]}}]`, backend.URL))
	c := dialRawTLS(t, s, "")
	br := bufio.NewReader(c)
	getOn(t, c, br, "/x", 200)
	start := time.Now()
	awaitCounter(t, "idle connections parked", parkedIdle(s), 1)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if b, err := br.ReadByte(); err == nil {
		t.Fatalf("idle connection got %q, want it closed", b)
	} else if strings.Contains(err.Error(), "timeout") {
		t.Fatalf("idle connection still open after 30s: %v", err)
	}
	if took := time.Since(start); took < 900*time.Millisecond {
		t.Errorf("closed after %s, before the 1s idle timeout", took)
	}
	waitFor(t, func() bool { return fastConns(s) == 0 })
}

// TestIdleParkedShutdown: Shutdown closes parked idle connections at
// once and returns; a parked connection's next request was served
// before.
func TestIdleParkedShutdown(t *testing.T) {
	backend := echoBackend(t, "b")
	s, _ := startProxy(t, fmt.Sprintf(`routes: [{path: /, proxy: {backends: [%q]}}]`, backend.URL))
	const n = 5
	conns := make([]*tls.Conn, n)
	brs := make([]*bufio.Reader, n)
	for i := range conns {
		conns[i] = dialRawTLS(t, s, "")
		brs[i] = bufio.NewReader(conns[i])
		getOn(t, conns[i], brs[i], "/x", 200)
	}
	awaitCounter(t, "idle connections parked", parkedIdle(s), n)
	getOn(t, conns[0], brs[0], "/y", 200) // woken, served, parked again
	awaitCounter(t, "idle connections parked", parkedIdle(s), n+1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v (parked idle connections not closed)", err)
	}
	for i, br := range brs {
		conns[i].SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := br.ReadByte(); err == nil || strings.Contains(err.Error(), "timeout") {
			t.Errorf("connection %d after Shutdown: %v, want closed", i, err)
		}
	}
	if got := fastConns(s); got != 0 {
		t.Errorf("fast connections tracked after Shutdown = %d, want 0", got)
	}
}

// TestIdleParkedBridgePolls: a device short-polling over keep-alive is
// parked between its polls, and its next poll is served on the fast path.
func TestIdleParkedBridgePolls(t *testing.T) {
	s, _, h1 := startBridgeProxy(t)
	c := h1()
	br := bufio.NewReader(c)
	for i := range 3 {
		parked := parkedIdle(s)()
		getOn(t, c, br, "/devices/d1/commands", http.StatusNoContent)
		awaitCounter(t, fmt.Sprint("idle connection parked after poll ", i), parkedIdle(s), parked+1)
	}
	if got := s.fast.Stats().Polls; got != 3 {
		t.Errorf("polls served on the fast path = %d, want 3", got)
	}
}
