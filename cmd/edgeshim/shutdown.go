package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/edgeshim/edgeshim/bridge"
	"github.com/edgeshim/edgeshim/config"
	"github.com/edgeshim/edgeshim/proxy"
)

// shutdown stops edgeshim without cutting what it can answer:
//  1. /readyz answers 503 at once, while the listeners keep accepting for
//     shutdown.drain_delay, so that the balancer stops sending first;
//  2. then every listener (TCP and UDP) stops accepting at once, idle
//     connections close, HTTP/2 and HTTP/3 get GOAWAY, every held poll
//     is answered with its empty answer (Connection: close on HTTP/1.1)
//     and WebSockets close 1001;
//  3. in-flight requests finish within shutdown.grace (what remains then
//     is cut);
//  4. the bridges' sessions end (their wills fire).
//
// It returns as soon as nothing is left, and logs a one-line summary.
func shutdown(cfg config.Shutdown, log *slog.Logger, admin *adminServer, srv *proxy.Server, bridges map[string]*bridge.Bridge) {
	start := time.Now()
	admin.ready.Store(false)
	log.Info("shutting down: not ready; draining after the delay", "drain_delay", cfg.DrainDelay.String(), "grace", cfg.Grace.String())
	time.Sleep(cfg.DrainDelay.D()) // the balancer's time to notice /readyz; nothing to await

	sctx, cancel := context.WithTimeout(context.Background(), cfg.Grace.D())
	defer cancel()
	srv.Drain()
	for _, b := range bridges {
		b.Drain()
	}
	log.Info("draining: listeners closed, held polls answered, websockets closed")
	var errs []error
	if err := srv.Shutdown(sctx); err != nil {
		errs = append(errs, fmt.Errorf("proxy shutdown: %w", err))
	}
	for name, b := range bridges {
		if err := b.Shutdown(sctx); err != nil {
			errs = append(errs, fmt.Errorf("bridge %s shutdown: %w", name, err))
		}
	}
	admin.close()
	if err := errors.Join(errs...); err != nil {
		log.Warn("shutdown was not clean", "err", err)
	}
	var bs bridge.DrainStats
	for _, b := range bridges {
		st := b.Stats()
		bs.PollsAnswered += st.PollsAnswered
		bs.SocketsClosed += st.SocketsClosed
		bs.SessionsEnded += st.SessionsEnded
	}
	ps := srv.Stats()
	log.Info("shutdown summary", "polls_answered", bs.PollsAnswered, "websockets_closed", bs.SocketsClosed,
		"conns_at_drain", ps.OpenAtDrain, "conns_drained", ps.OpenAtDrain-ps.Cut, "conns_cut", ps.Cut,
		"sessions_ended", bs.SessionsEnded, "took", time.Since(start).Round(time.Millisecond).String())
}
