//go:build unix

package mqtt

import (
	"io"
	"net"
	"os"
	"syscall"
)

// Read reads what the socket holds; with nonblock set it returns
// errWouldBlock rather than wait.
func (c *pollConn) Read(p []byte) (int, error) {
	if !c.nonblock.Load() || len(p) == 0 {
		return c.Conn.Read(p)
	}
	var n int
	var serr error
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			n, serr = syscall.Read(int(fd), p)
			if serr != syscall.EINTR {
				return true // one attempt: never wait in the runtime's poller
			}
		}
	})
	switch {
	case err != nil: // closed
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	case serr == syscall.EAGAIN:
		return 0, errWouldBlock
	case serr != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", serr)}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}
