package upstream

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// closingBackend answers one request per connection ("ok", kept alive by
// its headers) and then closes it: a pooled connection is stale.
func closingBackend(t *testing.T) (addr string, conns *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	conns = new(atomic.Int64)
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			req, err := http.ReadRequest(bufio.NewReader(c))
			if err == nil {
				io.Copy(io.Discard, req.Body)
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}
			c.Close()
		}
	}()
	return ln.Addr().String(), conns
}

// get runs one GET exchange on cs and reads its body.
func get(cs *Conns, replayable bool) error {
	var rh RespHead
	x, err := cs.Exchange(context.Background(), replayable, 5*time.Second, func(bc *Conn) error {
		if _, err := io.WriteString(bc.C, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			return err
		}
		n, err := ReadRespHead(bc.R, &rh)
		if err == nil {
			bc.R.Discard(n)
		}
		return err
	})
	if err != nil {
		return err
	}
	x.Keep = true
	_, err = io.ReadFull(x.Conn.R, make([]byte, rh.CL))
	x.Done(err == nil)
	return err
}

// TestExchangeReplacesStaleConn: a pooled connection the backend closed
// is replaced by a new one for a replayable request, and is an error for
// one that is not (it may have been received).
func TestExchangeReplacesStaleConn(t *testing.T) {
	addr, conns := closingBackend(t)
	cs := NewConns(addr, "", (&net.Dialer{}).DialContext, 4)
	defer cs.CloseIdle()
	if err := get(cs, true); err != nil {
		t.Fatal(err)
	}
	// The pooled connection is closed by now (the backend closes after
	// answering); wait for its FIN to be sure the test is about it.
	waitClosed(t, cs)
	if err := get(cs, true); err != nil {
		t.Fatalf("replayable request on a stale pooled connection: %v, want it re-sent on a new one", err)
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("backend saw %d connections, want 2", n)
	}
	waitClosed(t, cs)
	if err := get(cs, false); err == nil {
		t.Fatal("a request that is not replayable was re-sent on a new connection")
	}
}

// waitClosed waits until the backend closed cs's pooled connection.
func waitClosed(t *testing.T, cs *Conns) {
	t.Helper()
	bc := cs.Idle()
	if bc == nil {
		t.Fatal("no pooled connection")
	}
	bc.C.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := bc.R.Peek(1); !errors.Is(err, io.EOF) {
		t.Fatalf("pooled connection: %v, want EOF", err)
	}
	bc.C.SetReadDeadline(time.Time{})
	cs.Put(bc)
}
