//go:build !unix

package proxy

import "net"

// waitReadable returns at once where sockets cannot be peeked; the
// caller's Read waits instead (holding its buffer).
func waitReadable(net.Conn) error { return nil }
