package bridge

import (
	"context"
	"errors"
	"github.com/edgeshim/edgeshim/limits/park"
	"net"
	"time"
)

// "Written" means received (ack: write). A response flushed to the socket
// has only reached the kernel's send buffer; a device that vanished
// without FIN or RST (power cut, radio gone) never gets it. So before a
// command is PUBACKed, edgeshim waits until the device's TCP stack has
// acknowledged every byte queued on the socket (Linux: SIOCOUTQ reaches
// 0), within poll.ack_write_timeout. Past it the connection is closed and
// the command stays in the session, unacknowledged, for the next poll.
//
// On HTTP/2 the socket is shared by the connection's streams: waiting
// for its whole queue is conservative. Where the socket cannot be reached
// (HTTP/3 over QUIC, a connection without limits.WithConn, other OSes)
// the command is PUBACKed once written, as before.

// errNotReceived: the device did not acknowledge the bytes in time.
var errNotReceived = errors.New("device did not acknowledge the answer's bytes in time")

// errNoSocket: the answer's socket cannot be inspected here.
var errNoSocket = errors.New("socket queue not observable")

// awaitReceivedIf is awaitConnReceived when check is set; nil where the
// socket cannot be observed.
func awaitReceivedIf(ctx context.Context, check bool, c net.Conn, timeout time.Duration) error {
	if !check {
		return nil
	}
	if err := awaitConnReceived(ctx, c, timeout); !errors.Is(err, errNoSocket) {
		return err
	}
	return nil
}

// awaitConnReceived waits until c's socket has no bytes left
// unacknowledged by the peer, polling with a backoff from 1 ms to 50 ms.
// It returns errNoSocket when that cannot be observed (the caller goes
// on), errNotReceived after timeout, or ctx's error.
func awaitConnReceived(ctx context.Context, c net.Conn, timeout time.Duration) error {
	rc := park.RawConn(c)
	if rc == nil {
		return errNoSocket
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	pause := time.Millisecond
	for {
		n, err := unacked(rc)
		if err != nil {
			return errNoSocket
		}
		if n == 0 {
			return nil
		}
		t := time.NewTimer(pause)
		select {
		case <-t.C:
		case <-deadline.C:
			t.Stop()
			if n, err := unacked(rc); err == nil && n == 0 {
				return nil
			}
			return errNotReceived
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
		pause = min(pause*2, 50*time.Millisecond)
	}
}

// abortNetConn closes c at once, beneath TLS (no close_notify that a
// gone peer would never read).
func abortNetConn(c net.Conn) {
	for range 16 {
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok || u.NetConn() == nil {
			break
		}
		c = u.NetConn()
	}
	c.Close()
}
