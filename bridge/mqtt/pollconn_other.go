//go:build !unix

package mqtt

// Read reads as the socket does: without unix reads there is no parking
// (the Parker has no poller here either).
func (c *pollConn) Read(p []byte) (int, error) { return c.Conn.Read(p) }
