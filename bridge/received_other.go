//go:build !linux

package bridge

import "syscall"

// unacked is not observable here: commands are PUBACKed once written.
func unacked(syscall.RawConn) (int, error) { return 0, errNoSocket }
