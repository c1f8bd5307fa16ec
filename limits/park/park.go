// Package park lets an idle connection wait for data without a goroutine:
// a goroutine's stack (4 KiB and more) is the largest part of what an idle
// WebSocket costs. A Parker registers connections in one readiness poller
// (epoll on Linux) served by one goroutine; when a parked connection
// becomes readable, its callback runs in a fresh goroutine, which reads
// what it can without waiting for more and parks the connection again.
//
// Where there is no epoll (other systems, connections that are not
// sockets) a handle falls back to what a goroutine per connection does:
// Park starts a goroutine that runs the callback at once, and the callback
// blocks in its read. The API and its contract are the same.
//
// The contract of a Handle: it is running (its owner's goroutine, or the
// callback's, may read) or parked (nobody reads; the poller will run the
// callback) or stopped. Exactly one party finishes a handle — the running
// goroutine that ends it on an error or whose Park returns false, or the
// caller of Stop that returned true — so that a connection is accounted
// for once, whichever of close, readiness and timer comes first.
package park

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
)

// ErrClosed is returned by Register on a closed Parker.
var ErrClosed = errors.New("park: parker closed")

const (
	running int32 = iota
	parked
	stopped
)

// Parker owns the poller and the callbacks it starts.
type Parker struct {
	mu      sync.RWMutex
	closed  bool
	handles map[uint64]*Handle
	next    uint64
	wg      sync.WaitGroup // callbacks started by the parker
	poll    *poller        // nil: every handle falls back to a goroutine
}

// Handle is one registered connection.
type Handle struct {
	p     *Parker
	id    uint64
	conn  net.Conn        // closed by Parker.Close if still registered
	rc    syscall.RawConn // the socket beneath conn; nil: fallback
	fn    func()
	state atomic.Int32
	// added to the poller: set before the EPOLL_CTL_ADD, as the callback
	// its readiness starts may park (EPOLL_CTL_MOD) before that call returns.
	added atomic.Bool
}

// New starts a Parker. If the system's poller cannot be set up, every
// handle falls back to a goroutine.
func New() *Parker {
	p := &Parker{handles: map[uint64]*Handle{}}
	p.poll, _ = newPoller(p)
	return p
}

// NewFallback returns a Parker without a poller: every handle waits in a
// goroutine blocked in its callback's read, as on systems without epoll.
func NewFallback() *Parker { return &Parker{handles: map[uint64]*Handle{}} }

// Register adds c, running: the caller owns it until it calls Park. fn is
// the callback the parker runs, in a goroutine of its own, each time the
// parked connection becomes readable (or is closed by the peer); it must
// end with Park or finish the connection. The socket is found beneath c's
// wrappers through NetConn() (tls.Conn's method) down to a syscall.Conn.
func (p *Parker) Register(c net.Conn, fn func()) (*Handle, error) {
	h := &Handle{p: p, conn: c, fn: fn}
	if p.poll != nil {
		h.rc = RawConn(c)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrClosed
	}
	p.next++
	h.id = p.next
	p.handles[h.id] = h
	return h, nil
}

// RawConn finds the socket beneath c's wrappers (NetConn, as tls.Conn
// has), or returns nil.
func RawConn(c net.Conn) syscall.RawConn {
	for range 16 {
		if sc, ok := c.(syscall.Conn); ok {
			rc, err := sc.SyscallConn()
			if err != nil {
				return nil
			}
			return rc
		}
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return nil
		}
		c = u.NetConn()
		if c == nil {
			return nil
		}
	}
	return nil
}

// Polled reports whether h waits in the poller (false: the fallback, a
// goroutine blocked in the callback's read).
func (h *Handle) Polled() bool { return h.rc != nil }

// Park hands the connection to the parker: the callback runs once it is
// readable. The caller must not read until the callback runs. Data already
// buffered above the socket (bufio, TLS records) must have been consumed:
// the poller sees only the socket. Park returns false when the handle was
// stopped or the parker closed, or the socket could not be watched: the
// caller keeps the connection and must finish it.
func (h *Handle) Park() bool {
	if !h.state.CompareAndSwap(running, parked) {
		return false // stopped: the caller finishes
	}
	p := h.p
	if h.rc == nil {
		p.mu.RLock()
		if p.closed {
			p.mu.RUnlock()
			return !h.state.CompareAndSwap(parked, running)
		}
		p.wg.Add(1)
		p.mu.RUnlock()
		go func() {
			defer p.wg.Done()
			if h.state.CompareAndSwap(parked, running) {
				h.fn()
			}
		}()
		return true
	}
	p.mu.RLock()
	err := ErrClosed
	if !p.closed {
		err = p.poll.arm(h)
	}
	p.mu.RUnlock()
	if err != nil {
		// Not watched. Unless a Stop took it meanwhile (then its caller
		// finishes), the caller keeps it.
		return !h.state.CompareAndSwap(parked, running)
	}
	return true
}

// Stop stops h for good: the callback will not run again and Park
// returns false. It reports whether h was parked: then the caller of Stop
// finishes the connection (nobody else will). When h was running, its
// running goroutine finishes it; the caller of Stop closes the connection
// so that a read blocked there returns.
func (h *Handle) Stop() bool {
	var was int32
	for {
		was = h.state.Load()
		if was == stopped {
			return false
		}
		if h.state.CompareAndSwap(was, stopped) {
			break
		}
	}
	p := h.p
	p.mu.Lock()
	delete(p.handles, h.id)
	if h.rc != nil && !p.closed {
		p.poll.disarm(h)
	}
	p.mu.Unlock()
	return was == parked
}

// Close stops the poller, closes the connections still registered (at
// shutdown, their owners should have closed them already), runs the
// callback of those that were parked so that their owners see the closed
// connection and finish them, and waits for every callback the parker
// started. Later Parks return false.
func (p *Parker) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	hs := make([]*Handle, 0, len(p.handles))
	for _, h := range p.handles {
		hs = append(hs, h)
	}
	p.mu.Unlock()
	var err error
	if p.poll != nil {
		err = p.poll.close()
	}
	for _, h := range hs {
		h.conn.Close()
		if h.state.CompareAndSwap(parked, running) {
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				h.fn()
			}()
		}
	}
	p.wg.Wait()
	return err
}

// wake runs the callback of the handle registered as id, if it is parked.
// Called by the poller.
func (p *Parker) wake(id uint64) {
	p.mu.RLock()
	h := p.handles[id]
	p.mu.RUnlock()
	if h == nil || !h.state.CompareAndSwap(parked, running) {
		return // stopped, or a stale event of a registration gone
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		h.fn()
	}()
}

// Len returns the number of registered handles.
func (p *Parker) Len() int {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return len(p.handles)
}
