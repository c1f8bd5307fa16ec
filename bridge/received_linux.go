package bridge

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// unacked is the number of bytes in the socket's send queue not yet
// acknowledged by the peer (SIOCOUTQ).
func unacked(rc syscall.RawConn) (int, error) {
	var n int
	var ierr error
	if err := rc.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) }); err != nil {
		return 0, err
	}
	return n, ierr
}
