package fast

import (
	"errors"
	"os"
	"sync/atomic"
	"time"

	"github.com/edgeshim/edgeshim/limits/park"
)

// Idle keep-alive connections on the HTTP/1.1 fast path hold no goroutine.
//
// Between two requests a keep-alive connection waits for the next one in
// its goroutine for idleParkAfter (a busy client's next request comes
// sooner: it costs nothing more than before). If nothing came, it is
// parked in the fast server's epoll parker as a held poll is: nothing is
// buffered above the socket (the bufio reader is empty, and crypto/tls
// holds no plaintext, since its read timed out), the bufio reader goes
// back to the pool and the goroutine ends. The idle timeout is a timer
// (time.AfterFunc: no goroutine) that closes it; the listener's shutdown
// and abort close it at once (closeIdle). When the socket becomes
// readable (a request, or the peer closing) the parker's callback claims
// it and serves it on the fast path again from that fresh goroutine.
// Whoever claims a parked connection first (readiness, timer, shutdown)
// owns it; the others do nothing.
//
// Where the parker cannot poll the socket, the connection waits in its
// goroutine as before.

// idleParkAfter is how long a keep-alive connection waits for its next
// request in its goroutine before it is parked (from idleParkAfter/5 to
// idleParkAfter: see awaitNext). A client's next request often comes
// a few milliseconds after the response on a loaded machine: parking it
// then costs more than the wait (BenchmarkProxyKeepAlive), while an idle
// device's next poll comes seconds or minutes later.
const idleParkAfter = 50 * time.Millisecond

// idleOutcome is what awaitNext saw.
type idleOutcome uint8

const (
	idleNext   idleOutcome = iota // a byte of the next request is buffered
	idleEnded                     // closed, failed or timed out: end the connection
	idleParked                    // parked: the caller must not touch the connection again
)

// idlePark is one parking of an idle keep-alive connection.
type idlePark struct {
	fc    *Conn
	h     *park.Handle
	timer *time.Timer  // the idle timeout; nil: none
	state atomic.Int32 // stSetup, stParked, stOwned, stInterrupted (poll.go)
}

// awaitNext waits for the next request of a keep-alive connection, until
// the idle timeout, parking the connection when it stays idle.
func (fc *Conn) awaitNext() idleOutcome {
	fs := fc.fs
	if fc.idleEnd.IsZero() && fs.idle > 0 {
		fc.idleEnd = time.Now().Add(fs.idle)
	}
	canPark := fs.parker != nil
	for {
		end := fc.idleEnd
		wait, slack := end, time.Second
		if canPark {
			if g := time.Now().Add(idleParkAfter); end.IsZero() || g.Before(end) {
				// A deadline set up to 4/5 of the grace ago is kept: one
				// call less per request.
				wait, slack = g, idleParkAfter*4/5
			}
		}
		if !wait.IsZero() {
			fc.readDeadline(wait, slack)
		}
		_, err := fc.br.Peek(1)
		if err == nil {
			fc.idleEnd = time.Time{}
			return idleNext
		}
		if !canPark || wait.Equal(end) || !errors.Is(err, os.ErrDeadlineExceeded) {
			return idleEnded
		}
		switch fc.parkIdle() {
		case parkDone:
			return idleParked
		case parkNotPolled:
			canPark = false // wait here, as without a parker
		}
		// parkInterrupted: woken while being parked; look again.
	}
}

type parkResult uint8

const (
	parkDone        parkResult = iota
	parkNotPolled              // the parker cannot watch it: the caller keeps it
	parkInterrupted            // woken (data, timer, shutdown) while being parked: the caller keeps it
)

// parkIdle parks fc, idle with nothing buffered above its socket.
func (fc *Conn) parkIdle() parkResult {
	fs, l := fc.fs, fc.l
	fi := &idlePark{fc: fc}
	fi.state.Store(stSetup)
	h, err := fs.parker.Register(fc.tc, fi.readable)
	if err != nil {
		return parkNotPolled // the parker is closed: the server is going away
	}
	if !h.Polled() {
		h.Stop()
		return parkNotPolled
	}
	fi.h = h
	// Shutdown marks the connection closing, then looks for a parked
	// idle one; here the other way round: one of the two sees the other.
	fc.parkedIdle.Store(fi)
	if fc.state.Load() != connIdle {
		h.Stop()
		fc.parkedIdle.Store(nil)
		return parkInterrupted // closed by shutdown: the next read fails
	}
	fc.br.Reset(nil)
	fs.readers.Put(fc.br)
	fc.br = nil
	l.Hold() // the parked connection's; done by whoever ends its turn
	if !fc.idleEnd.IsZero() {
		fi.timer = time.AfterFunc(time.Until(fc.idleEnd), fi.expire)
	}
	if h.Park() && fi.state.CompareAndSwap(stSetup, stParked) {
		fs.idleParked.Add(1)
		return parkDone
	}
	// Woken while being parked (or the parker closed): keep it.
	fi.state.Store(stOwned)
	fi.unpark()
	l.Release()
	return parkInterrupted
}

// unpark takes the connection back from the parker and the timer.
func (fi *idlePark) unpark() {
	fc := fi.fc
	fi.h.Stop()
	if fi.timer != nil {
		fi.timer.Stop()
	}
	fc.parkedIdle.Store(nil)
	fc.takeReader()
}

func (fi *idlePark) claim() bool { return claimParked(&fi.state) }

// readable is the parker's callback: the next request, or the peer
// closing (the loop's read tells).
func (fi *idlePark) readable() {
	if !fi.claim() {
		return
	}
	fc := fi.fc
	l := fc.l
	defer l.Release() // the count taken when it was parked
	fi.unpark()
	handoff, parked := fc.loop(l)
	if parked {
		return
	}
	fc.fs.end(l, fc, handoff)
}

// expire is the idle timeout's timer.
func (fi *idlePark) expire() {
	if fi.claim() {
		fi.close()
	}
}

// close ends a claimed parked connection.
func (fi *idlePark) close() {
	fc := fi.fc
	defer fc.l.Release()
	fi.unpark()
	fc.fs.end(fc.l, fc, false)
}

// closeIdle ends fc if it is parked idle (its socket is closed already:
// the parker never sees that). It runs under the listener's lock.
func (fc *Conn) closeIdle() {
	if fi := fc.parkedIdle.Load(); fi != nil && fi.claim() {
		go fi.close() // within the parked connection's count (Listener.Hold)
	}
}

// claimParked moves a parked connection's state to owned for the caller;
// one being parked is marked so that its owner looks again.
func claimParked(state *atomic.Int32) bool {
	for {
		switch st := state.Load(); st {
		case stParked:
			if state.CompareAndSwap(st, stOwned) {
				return true
			}
		case stSetup:
			if state.CompareAndSwap(st, stInterrupted) {
				return false
			}
		default:
			return false
		}
	}
}
