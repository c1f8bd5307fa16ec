//go:build unix

package proxy

import (
	"errors"
	"net"
	"syscall"
)

// waitReadable blocks until c has data to read (or EOF, or an error), so
// that a caller can take a read buffer from a pool only then: an idle
// connection holds no buffer while it waits. It peeks one byte with
// MSG_PEEK|MSG_DONTWAIT under the runtime's netpoller; connections that
// are not sockets return at once and the caller's Read waits instead.
func waitReadable(c net.Conn) error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	var b [1]byte
	return rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return !errors.Is(err, syscall.EAGAIN) && !errors.Is(err, syscall.EINTR)
	})
}
