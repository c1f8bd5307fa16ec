package limits

import (
	"context"
	"net"
)

type connKey struct{}

// WithConn returns ctx carrying the accepted connection a request arrived
// on, so that a handler can inspect its socket (bridge: has the device's
// TCP stack acknowledged the answer?). proxy sets it for HTTP/1 and HTTP/2;
// HTTP/3 requests carry none.
func WithConn(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// ConnFrom returns the connection WithConn stored, if any.
func ConnFrom(ctx context.Context) (net.Conn, bool) {
	c, ok := ctx.Value(connKey{}).(net.Conn)
	return c, ok && c != nil
}
