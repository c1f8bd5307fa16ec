package mqtt

import (
	"net"
	"sync/atomic"
	"syscall"
)

// Pollable wraps a socket (a *net.TCPConn, or any syscall.Conn) so that a
// Conn's reader can read it without blocking and park while it is idle
// (Options.Parker). Wrap the socket itself, beneath TLS:
// tls.Client(mqtt.Pollable(tcp), cfg). Other connections are returned
// as they are.
func Pollable(c net.Conn) net.Conn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	return &pollConn{Conn: c, rc: rc}
}

// pollConn is a socket whose reads, once nonblock is set, return
// errWouldBlock instead of waiting.
type pollConn struct {
	net.Conn
	rc       syscall.RawConn
	nonblock atomic.Bool
}

var _ net.Conn = (*pollConn)(nil)

// NetConn returns the socket (park.RawConn finds it there).
func (c *pollConn) NetConn() net.Conn { return c.Conn }

// wouldBlock is a read that found no data. It is a temporary net.Error,
// so crypto/tls keeps a partial record and the connection goes on.
type wouldBlock struct{}

func (wouldBlock) Error() string   { return "mqtt: read would block" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

var errWouldBlock net.Error = wouldBlock{}

// findPollConn finds the pollConn beneath c's wrappers (NetConn, as
// tls.Conn has), or returns nil.
func findPollConn(c net.Conn) *pollConn {
	for range 16 {
		if pc, ok := c.(*pollConn); ok {
			return pc
		}
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return nil
		}
		if c = u.NetConn(); c == nil {
			return nil
		}
	}
	return nil
}
