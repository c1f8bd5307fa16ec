package bridge

import (
	"context"
	"sync"
	"sync/atomic"
)

// drainState is the first step of a bridge's shutdown (Drain): held polls
// are answered and device WebSockets closed 1001 at once, while sessions
// stay until Shutdown so that in-flight telemetry still reaches the broker.
type drainState struct {
	once     sync.Once
	initOnce sync.Once
	ctx      context.Context // cancelled by Drain; see context
	cancel   context.CancelFunc

	answered atomic.Int64 // held polls answered by the drain
	sockets  atomic.Int64 // device WebSockets closed by the drain
	sessions atomic.Int64 // sessions ended by Shutdown
}

// context is cancelled when the drain starts (made on first use, so that
// the zero drainState is ready).
func (d *drainState) context() context.Context {
	d.initOnce.Do(func() { d.ctx, d.cancel = context.WithCancel(context.Background()) })
	return d.ctx
}

// DrainStats says what the drain and the shutdown did, for the shutdown
// summary.
type DrainStats struct {
	// PollsAnswered are held polls answered at once by Drain.
	PollsAnswered int64
	// SocketsClosed are device WebSockets closed 1001 by Drain.
	SocketsClosed int64
	// SessionsEnded are the sessions Shutdown ended.
	SessionsEnded int64
}

// Drain answers every held poll at once with its empty answer (with
// Connection: close on HTTP/1.1; HTTP/2 turns that into a GOAWAY) and
// closes the device WebSockets with 1001. New WebSocket upgrades are
// refused 503 with Retry-After; a poll arriving now is answered empty at
// once. Sessions stay until Shutdown. Drain returns at once; it is safe
// to call more than once.
func (b *Bridge) Drain() {
	b.drain.once.Do(func() {
		close(b.closing) // Drain, or Shutdown through it, closes it
		b.drain.context()
		b.drain.cancel()
		b.wakeHeldPolls()
	})
}

// wakeHeldPolls wakes every waiting poll of every session once the drain
// started: each sees it (poll.over) and answers. A poll registering
// after a session's lock section here already sees the drain.
func (b *Bridge) wakeHeldPolls() {
	b.mu.Lock()
	ss := b.sessions.Values()
	b.mu.Unlock()
	for _, s := range ss {
		s.mu.Lock()
		wakes := s.wakePolls()
		s.mu.Unlock()
		for _, w := range wakes {
			w()
		}
	}
}

// Stats returns what Drain and Shutdown have done so far.
func (b *Bridge) Stats() DrainStats {
	return DrainStats{PollsAnswered: b.drain.answered.Load(), SocketsClosed: b.drain.sockets.Load(),
		SessionsEnded: b.drain.sessions.Load()}
}

func (b *Bridge) draining() bool { return b.drain.context().Err() != nil }
