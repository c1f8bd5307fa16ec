package park

import (
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pairs returns n connected loopback TCP pairs (server side, client side).
func pairs(t *testing.T, n int) (srv, cli []net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for range n {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		srv, cli = append(srv, s), append(cli, c)
	}
	t.Cleanup(func() {
		for i := range srv {
			srv[i].Close()
			cli[i].Close()
		}
	})
	return srv, cli
}

// wrapped hides a connection behind a wrapper with NetConn, as tls.Conn
// and the limits wrappers do.
type wrapped struct{ net.Conn }

func (w wrapped) NetConn() net.Conn { return w.Conn }

// reader is a parked connection's owner: each callback reads one chunk
// (at most max bytes), sends it on got, and parks again; on a read error
// it finishes, once.
type reader struct {
	h        *Handle
	c        net.Conn
	max      int
	got      chan string
	finished chan error
}

func newReader(t *testing.T, p *Parker, c net.Conn, max int) *reader {
	t.Helper()
	r := &reader{c: c, max: max, got: make(chan string, 100), finished: make(chan error, 2)}
	h, err := p.Register(c, r.ready)
	if err != nil {
		t.Fatal(err)
	}
	r.h = h
	return r
}

func (r *reader) ready() {
	buf := make([]byte, r.max)
	n, err := r.c.Read(buf)
	if err != nil {
		r.h.Stop()
		r.finished <- err
		return
	}
	r.got <- string(buf[:n])
	if !r.h.Park() {
		r.finished <- errors.New("park refused")
	}
}

func recv(t *testing.T, ch chan string) string {
	t.Helper()
	select {
	case s := <-ch:
		return s
	case <-time.After(5 * time.Second):
		t.Fatal("callback did not run")
		return ""
	}
}

func TestReadinessAndRearm(t *testing.T) {
	p := New()
	defer p.Close()
	srv, cli := pairs(t, 1)
	r := newReader(t, p, wrapped{srv[0]}, 64)
	if !r.h.Polled() {
		t.Fatal("a TCP socket behind NetConn is not polled")
	}
	if !r.h.Park() {
		t.Fatal("park refused")
	}
	select {
	case s := <-r.got:
		t.Fatalf("callback ran with nothing sent: %q", s)
	case <-time.After(100 * time.Millisecond):
	}
	cli[0].Write([]byte("one"))
	if s := recv(t, r.got); s != "one" {
		t.Fatalf("got %q", s)
	}
	cli[0].Write([]byte("two"))
	if s := recv(t, r.got); s != "two" {
		t.Fatalf("got %q after re-arm", s)
	}
}

// TestRearmWithDataLeft: a callback that leaves data in the socket is run
// again at once when it parks (the re-arm sees the socket readable).
func TestRearmWithDataLeft(t *testing.T) {
	p := New()
	defer p.Close()
	srv, cli := pairs(t, 1)
	r := newReader(t, p, srv[0], 1)
	r.h.Park()
	cli[0].Write([]byte("abc"))
	for _, want := range []string{"a", "b", "c"} {
		if s := recv(t, r.got); s != want {
			t.Fatalf("got %q, want %q", s, want)
		}
	}
}

func TestPeerCloseWakes(t *testing.T) {
	p := New()
	defer p.Close()
	srv, cli := pairs(t, 1)
	r := newReader(t, p, srv[0], 64)
	r.h.Park()
	cli[0].Close()
	select {
	case err := <-r.finished:
		if err != io.EOF {
			t.Fatalf("finished with %v, want EOF", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("peer's close did not wake the parked connection")
	}
}

// TestStopWhileParked: Stop of a parked handle hands it to the caller; the
// callback never runs, even if data comes.
func TestStopWhileParked(t *testing.T) {
	p := New()
	defer p.Close()
	srv, cli := pairs(t, 1)
	r := newReader(t, p, srv[0], 64)
	r.h.Park()
	if !r.h.Stop() {
		t.Fatal("Stop of a parked handle returned false")
	}
	if r.h.Stop() {
		t.Fatal("second Stop returned true")
	}
	srv[0].Close()
	cli[0].Write([]byte("late"))
	select {
	case s := <-r.got:
		t.Fatalf("callback ran after Stop: %q", s)
	case err := <-r.finished:
		t.Fatalf("callback ran after Stop: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	if r.h.Park() {
		t.Fatal("Park after Stop returned true")
	}
	if p.Len() != 0 {
		t.Fatalf("%d handles registered after Stop", p.Len())
	}
}

// registerOne registers one server-side loopback connection whose
// callback must not run.
func registerOne(t *testing.T) (net.Conn, *Handle) {
	t.Helper()
	p := New()
	t.Cleanup(func() { p.Close() })
	srv, _ := pairs(t, 1)
	h, err := p.Register(srv[0], func() { t.Error("callback ran") })
	if err != nil {
		t.Fatal(err)
	}
	return srv[0], h
}

// TestStopWhileRunning: Stop of a running handle leaves it to the running
// goroutine, whose Park then returns false.
func TestStopWhileRunning(t *testing.T) {
	_, h := registerOne(t)
	if h.Stop() {
		t.Fatal("Stop of a running handle returned true")
	}
	if h.Park() {
		t.Fatal("Park after Stop returned true")
	}
}

// TestParkClosedConn: a connection closed before Park cannot be watched;
// Park returns false and the caller keeps it.
func TestParkClosedConn(t *testing.T) {
	c, h := registerOne(t)
	c.Close()
	if h.Park() {
		t.Fatal("Park of a closed connection returned true")
	}
	if h.Stop() {
		t.Fatal("Stop after a refused Park returned true: the handle is its caller's")
	}
}

// TestCloseWithParkedConns: closing the parker closes the connections
// still registered and runs the callbacks of the parked ones, which see
// the closed connection; later Parks fail; every goroutine is gone.
func TestCloseWithParkedConns(t *testing.T) {
	p := New()
	srv, _ := pairs(t, 3)
	var rs []*reader
	for _, c := range srv {
		r := newReader(t, p, c, 64)
		r.h.Park()
		rs = append(rs, r)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		select {
		case err := <-r.finished:
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("finished with %v, want a closed connection", err)
			}
		default:
			t.Error("a parked connection's callback did not run by the end of Close")
		}
	}
	if _, err := p.Register(srv[0], func() {}); err != ErrClosed {
		t.Errorf("Register after Close: %v", err)
	}
	p.Close() // twice is fine
}

// TestManyConns: many parked connections cost no goroutine; each wakes on
// its own data.
func TestManyConns(t *testing.T) {
	const n = 300
	p := New()
	defer p.Close()
	srv, cli := pairs(t, n)
	before := runtime.NumGoroutine()
	var rs []*reader
	for _, c := range srv {
		r := newReader(t, p, c, 64)
		if !r.h.Park() {
			t.Fatal("park refused")
		}
		rs = append(rs, r)
	}
	if g := runtime.NumGoroutine() - before; g > 2 {
		t.Errorf("%d parked connections hold %d goroutines", n, g)
	}
	for round := range 3 {
		for i := range cli {
			cli[i].Write([]byte{byte('a' + round)})
		}
		for i, r := range rs {
			if s := recv(t, r.got); s != string(rune('a'+round)) {
				t.Fatalf("conn %d round %d: got %q", i, round, s)
			}
		}
	}
}

// TestRaceCloseReadiness: data, the peer's close and Stop race; each
// handle is finished exactly once.
func TestRaceCloseReadiness(t *testing.T) {
	const n = 200
	p := New()
	defer p.Close()
	srv, cli := pairs(t, n)
	var finished atomic.Int32
	var wg sync.WaitGroup
	for i, c := range srv {
		var h *Handle
		var once sync.Once
		finish := func() {
			n := 0
			once.Do(func() { n = 1 })
			if n == 0 {
				t.Error("finished twice")
			}
			finished.Add(1)
			wg.Done()
		}
		wg.Add(1)
		var err error
		h, err = p.Register(c, func() {
			var b [16]byte
			if _, err := c.Read(b[:]); err != nil {
				h.Stop()
				finish()
				return
			}
			if !h.Park() {
				finish()
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		h.Park()
		go cli[i].Write([]byte("x"))
		go func() {
			if i%2 == 0 {
				cli[i].Close()
				return
			}
			c.Close()
			if h.Stop() {
				finish()
			}
		}()
	}
	wg.Wait()
	if finished.Load() != n {
		t.Fatalf("finished %d of %d", finished.Load(), n)
	}
}

// TestFallback: a connection without a socket beneath (net.Pipe) gets a
// goroutine blocked in the callback's read, with the same contract.
func TestFallback(t *testing.T) {
	p := New()
	a, b := net.Pipe()
	r := newReader(t, p, a, 64)
	if r.h.Polled() {
		t.Fatal("net.Pipe polled")
	}
	r.h.Park()
	go b.Write([]byte("hi"))
	if s := recv(t, r.got); s != "hi" {
		t.Fatalf("got %q", s)
	}
	b.Close()
	if err := <-r.finished; err != io.EOF {
		t.Fatalf("finished with %v", err)
	}
	// One parked at Close: its blocked read ends.
	c, d := net.Pipe()
	defer d.Close()
	r = newReader(t, p, c, 64)
	r.h.Park()
	p.Close()
	if err := <-r.finished; err == nil {
		t.Fatal("no error after Close")
	}
}
