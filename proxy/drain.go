package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/edgeshim/edgeshim/limits"
)

// drainState is the server's graceful shutdown: Drain stops every
// listener at once and starts the servers' shutdowns, Shutdown waits for
// them within its context.
type drainState struct {
	once sync.Once
	// ctx is cancelled when the drain starts: MQTT-over-WebSocket
	// pass-through sockets close 1001 then.
	ctx    context.Context
	cancel context.CancelFunc
	// grace is the servers' shutdown context, cancelled when the
	// context given to Shutdown ends (or by Close).
	grace       context.Context
	graceCancel context.CancelFunc
	wg          sync.WaitGroup // the servers' shutdown goroutines
	on          atomic.Bool    // Drain was called

	mu   sync.Mutex
	errs []error

	plainLn net.Listener       // listen.http, set by Start
	lims    []*limits.Listener // the TCP listeners' caps, guarded by Server.mu

	openAtDrain int64
	cut         atomic.Int64
}

func (d *drainState) init(base context.Context) {
	d.ctx, d.cancel = context.WithCancel(base)
	d.grace, d.graceCancel = context.WithCancel(context.Background())
}

func (d *drainState) fail(err error) {
	d.mu.Lock()
	d.errs = append(d.errs, err)
	d.mu.Unlock()
}

func (s *Server) draining() bool { return s.drain.on.Load() }

// openConns counts the open TCP connections (HTTP/3 has none).
func (s *Server) openConns() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for _, l := range s.drain.lims {
		n += l.Open()
	}
	return n
}

// Drain stops accepting on every listener, TCP (HTTPS, listen.http) and
// UDP (HTTP/3), at the same moment, and starts the graceful shutdown of
// every server: idle connections close, HTTP/1.1 responses say
// Connection: close, HTTP/2 and HTTP/3 connections get GOAWAY.
// MQTT-over-WebSocket pass-through sockets are closed 1001. It returns at
// once; Shutdown waits for the in-flight requests. The bridges' held
// polls are theirs to answer (bridge.Drain), right after this.
func (s *Server) Drain() {
	s.drain.once.Do(func() {
		d := &s.drain
		d.on.Store(true)
		d.openAtDrain = s.openConns()
		// HTTP/3 first: its Shutdown closes its QUIC listener under a
		// lock before it waits, so that all listeners close together.
		if s.h3 != nil {
			d.wg.Add(1)
			go func() {
				defer d.wg.Done()
				if err := s.h3.Shutdown(d.grace); err != nil {
					d.fail(fmt.Errorf("http3: %w", err))
				}
			}()
		}
		if s.tln != nil {
			s.tln.Close()
		}
		if s.h2f != nil {
			s.h2f.Drain() // GOAWAY; connections end when their streams have
		}
		if d.plainLn != nil {
			d.plainLn.Close()
		}
		d.cancel()
		for _, hs := range s.httpServers() {
			d.wg.Add(1)
			go func() {
				defer d.wg.Done()
				if err := hs.Shutdown(d.grace); err != nil && !errors.Is(err, http.ErrServerClosed) {
					d.fail(err)
					hs.Close()
				}
			}()
		}
		if s.tln != nil {
			d.wg.Add(1)
			go func() {
				defer d.wg.Done()
				// HTTP/2 connections were sent GOAWAY by https.Shutdown;
				// they end when their streams are done, or are closed
				// when the grace ends.
				if err := s.tln.wait(d.grace); err != nil {
					d.fail(fmt.Errorf("http2 connections: %w", err))
				}
			}()
		}
	})
}

// ShutdownStats says what a shutdown did with the connections.
type ShutdownStats struct {
	// OpenAtDrain are the TCP connections open when the drain began.
	OpenAtDrain int64
	// Cut are the TCP connections still open when the grace ended, which
	// were closed.
	Cut int64
}

// Stats returns what Drain and Shutdown have done.
func (s *Server) Stats() ShutdownStats {
	return ShutdownStats{OpenAtDrain: s.drain.openAtDrain, Cut: s.drain.cut.Load()}
}

// Shutdown drains (see Drain) if that was not done, waits for in-flight
// requests until ctx ends, then closes what remains, upgraded connections
// included (their close is the signal of shutdown to WebSocket peers). It
// returns as soon as nothing is left.
func (s *Server) Shutdown(ctx context.Context) error {
	s.Drain()
	d := &s.drain
	stop := context.AfterFunc(ctx, func() {
		d.cut.Store(s.openConns())
		d.graceCancel()
	})
	d.wg.Wait()
	cut := !stop()
	d.graceCancel()
	s.closeRest()
	d.mu.Lock()
	defer d.mu.Unlock()
	if !cut {
		return errors.Join(d.errs...)
	}
	// The servers saw the grace cancelled; what ended it was ctx.
	errs := []error{fmt.Errorf("grace ended with %d connections open: %w", d.cut.Load(), ctx.Err())}
	for _, err := range d.errs {
		if !errors.Is(err, context.Canceled) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
