//go:build unix

package proxy

import (
	"net"
	"syscall"
	"testing"
)

// TestListenTCPNoKeepalive: connections accepted from devices carry no
// TCP keepalive (edgeshim's own timeouts bound idle connections), while
// Go's default listener turns it on, which the check must see.
func TestListenTCPNoKeepalive(t *testing.T) {
	for _, tc := range []struct {
		name   string
		listen func(string) (net.Listener, error)
		want   int
	}{
		{"edgeshim", listenTCP, 0},
		{"go default", func(a string) (net.Listener, error) { return net.Listen("tcp", a) }, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := tc.listen("127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			sc, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer sc.Close()
			rc, err := sc.(*net.TCPConn).SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			got, gerr := -1, error(nil)
			if err := rc.Control(func(fd uintptr) {
				got, gerr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
			}); err != nil || gerr != nil {
				t.Fatal(err, gerr)
			}
			if (got != 0) != (tc.want != 0) {
				t.Errorf("SO_KEEPALIVE = %d, want %d", got, tc.want)
			}
		})
	}
}
