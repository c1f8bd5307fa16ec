// Package wsnet presents a WebSocket as a net.Conn (binary messages), for
// stream protocols carried over WebSocket such as MQTT (subprotocol "mqtt")
// toward brokers that only face port 443; and it keeps edgeshim's
// server-side WebSockets: the heartbeat and close (Keeper), and a reader
// that holds no goroutine while the socket is idle (Upgrade, Serve).
package wsnet

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// Conn is a net.Conn over a WebSocket. Writes are serialized: gorilla
// allows one writer at a time, and MQTT clients write from several
// goroutines (keepalive pinger, publishers). Each Write is one message,
// and only a Write is atomic: a client that writes a packet in several
// Writes from several goroutines (paho's ControlPacket.WriteTo and its
// pinger) can interleave them; write each packet whole (bridge/mqtt does).
type Conn struct {
	*websocket.Conn
	r  io.Reader
	wu sync.Mutex
}

var _ net.Conn = (*Conn)(nil)

// New wraps c.
func New(c *websocket.Conn) *Conn { return &Conn{Conn: c} }

// Read reads across message boundaries as one byte stream.
func (c *Conn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			_, r, err := c.NextReader()
			if err != nil {
				return 0, err
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if err == io.EOF {
			c.r = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

// Write sends p as one binary message.
func (c *Conn) Write(p []byte) (int, error) {
	c.wu.Lock()
	defer c.wu.Unlock()
	if err := c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// SetDeadline sets both deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

// Keeper keeps a server-side WebSocket: pings and the check that the peer
// answers them from one runtime timer (no goroutine, and no read blocked
// on a deadline: an idle socket may have no reader at all, see Serve),
// and one close that says why. It is the part of a socket's life that
// edgeshim's WebSocket paths share.
type Keeper struct {
	c          *websocket.Conn
	ping, pong time.Duration
	timer      *time.Timer
	lastPong   atomic.Int64 // UnixNano of the last pong (or of Keep)
	nextPing   time.Time    // touched by the timer's function only
	mu         sync.Mutex
	closed     bool
	code       int
	reason     string
	afterClose func()
	// beforeClose runs once, just before the connection is closed (Serve:
	// the reader leaves the poller while its descriptor is still open).
	beforeClose func()
}

// Keep starts the heartbeat on c: a ping every ping, and the connection is
// closed (1008 pong_timeout) once no pong arrived for ping+pongTimeout.
// Messages over maxMessage fail the read with websocket.ErrReadLimit.
// afterClose, if set, runs once the connection is closed.
func Keep(c *websocket.Conn, ping, pongTimeout time.Duration, maxMessage int64, afterClose func()) *Keeper {
	k := &Keeper{c: c, ping: ping, pong: pongTimeout, afterClose: afterClose}
	now := time.Now()
	k.lastPong.Store(now.UnixNano())
	k.nextPing = now.Add(ping)
	c.SetReadLimit(maxMessage)
	// Pongs inside a fragmented message reach gorilla's handler; those
	// between messages are read by Serve's reader.
	c.SetPongHandler(func(string) error { k.Pong(); return nil })
	k.timer = time.AfterFunc(ping, k.tick)
	return k
}

// Pong records a pong from the peer.
func (k *Keeper) Pong() { k.lastPong.Store(time.Now().UnixNano()) }

// tick sends the ping that is due and closes the connection when the
// peer has been silent too long; it then sets the timer to the earlier of
// the next ping and that deadline.
func (k *Keeper) tick() {
	now := time.Now()
	deadline := time.Unix(0, k.lastPong.Load()).Add(k.ping + k.pong)
	if !now.Before(deadline) {
		k.Close(websocket.ClosePolicyViolation, "pong_timeout")
		return
	}
	if !now.Before(k.nextPing) {
		// A ping not taken within pong timeout is not retried: the
		// deadline closes the connection.
		if k.c.WriteControl(websocket.PingMessage, nil, now.Add(k.pong)) == nil {
			k.nextPing = now.Add(k.ping)
		} else {
			k.nextPing = deadline
		}
	}
	next := k.nextPing
	if deadline.Before(next) {
		next = deadline
	}
	k.mu.Lock()
	if !k.closed {
		k.timer.Reset(next.Sub(now))
	}
	k.mu.Unlock()
}

// Close closes the connection once, with a close frame carrying code and
// reason (best effort: a peer that does not read cannot receive it; none
// for 1006, the peer being gone). Later calls do nothing. It reports
// whether this call closed.
func (k *Keeper) Close(code int, reason string) bool {
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return false
	}
	k.closed, k.code, k.reason = true, code, reason
	k.mu.Unlock()
	k.timer.Stop()
	if code != websocket.CloseAbnormalClosure {
		_ = k.c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(time.Second))
	}
	if k.beforeClose != nil {
		k.beforeClose()
	}
	k.c.Close()
	if k.afterClose != nil {
		k.afterClose()
	}
	return true
}

// Why returns the close code and reason (0 while open).
func (k *Keeper) Why() (int, string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.code, k.reason
}

// WriteDeadline sets the deadline for the next write: a peer that does not take
// a message within pong timeout is a slow reader.
func (k *Keeper) WriteDeadline() { k.c.SetWriteDeadline(time.Now().Add(k.pong)) }

// ReadCloseCode maps the error that ended a WebSocket's reads to a close
// code and a reason label.
func ReadCloseCode(err error) (int, string) {
	var ce *websocket.CloseError
	var ne net.Error
	switch {
	case errors.Is(err, websocket.ErrReadLimit):
		return websocket.CloseMessageTooBig, "too_big"
	case errors.As(err, &ce):
		return websocket.CloseNormalClosure, "peer_closed"
	case errors.As(err, &ne) && ne.Timeout():
		// A read deadline set by the caller (Serve's readers have none:
		// the Keeper's timer closes a silent peer).
		return websocket.ClosePolicyViolation, "pong_timeout"
	}
	return websocket.CloseAbnormalClosure, "peer_gone"
}

// WriteCloseCode maps a failed write: past its deadline it is a slow
// reader (1008); otherwise the peer is gone.
func WriteCloseCode(err error) (int, string) {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return websocket.ClosePolicyViolation, "slow_reader"
	}
	return websocket.CloseAbnormalClosure, "peer_gone"
}
