// Package wsnet presents a WebSocket as a net.Conn (binary messages), for
// stream protocols carried over WebSocket such as MQTT (subprotocol "mqtt")
// toward brokers that only face port 443.
package wsnet

import (
	"io"
	"net"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// Conn is a net.Conn over a WebSocket. Writes are serialized: gorilla
// allows one writer at a time, and MQTT clients write from several
// goroutines (keepalive pinger, publishers).
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
