package upstream

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// aLongTimeAgo is a deadline in the past: set on a connection, it
// interrupts its blocked reads and writes.
var aLongTimeAgo = time.Unix(1, 0)

// Exchange is a backend connection during a synchronous exchange: the
// request's context interrupts its reads and writes until done.
type Exchange struct {
	// Conn is the backend connection; its reader holds the response
	// after the head.
	Conn *Conn
	// Keep: the response allows the connection to be reused (set by the
	// caller from the response head).
	Keep bool

	fb   *Conns
	stop func() bool
	once sync.Once
}

// Done ends the exchange: the connection goes back to the pool when the
// response was read to its end (complete) and it can be reused, else it
// is closed.
func (x *Exchange) Done(complete bool) {
	x.once.Do(func() {
		// stop false: the request's context ended and poisoned the
		// connection's deadlines.
		if x.stop() && complete && x.Keep && x.Conn.R.Buffered() == 0 {
			x.fb.Put(x.Conn)
			return
		}
		x.Conn.Close()
	})
}

// Exchange runs send on a backend connection of fb (idle, else new)
// until it succeeds: the request written and the response head read. The
// write is bounded by ctx's deadline, the head by hdrTimeout too; ctx
// ending interrupts both. A reused connection that turns out closed is
// replaced by a new one for a replayable request (RetryFresh). On error
// the connection is closed.
func (fb *Conns) Exchange(ctx context.Context, replayable bool, hdrTimeout time.Duration, send func(*Conn) error) (*Exchange, error) {
	fresh := false
	for {
		bc := (*Conn)(nil)
		if !fresh {
			bc = fb.Idle()
		}
		if bc == nil {
			var err error
			if bc, err = fb.Dial(ctx); err != nil {
				return nil, err
			}
		}
		dl, _ := ctx.Deadline()
		bc.C.SetWriteDeadline(dl)
		hdl := dl
		if hdrTimeout > 0 {
			if t := time.Now().Add(hdrTimeout); hdl.IsZero() || t.Before(hdl) {
				hdl = t
			}
		}
		bc.C.SetReadDeadline(hdl)
		// The client going away or the request's timeout interrupts the
		// backend connection's reads and writes.
		stop := context.AfterFunc(ctx, func() { bc.C.SetDeadline(aLongTimeAgo) })
		err := send(bc)
		if err == nil {
			bc.C.SetReadDeadline(dl)
			return &Exchange{Conn: bc, fb: fb, stop: stop}, nil
		}
		stop()
		bc.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w (%w)", context.Cause(ctx), err)
		}
		// Not the request's timeout: the head's (a client body that
		// broke is named by the caller).
		err = HeaderTimeout(err)
		if !RetryFresh(bc, replayable, err) {
			return nil, err
		}
		fresh = true
	}
}
