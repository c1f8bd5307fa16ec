package proxy

import (
	"log/slog"

	"github.com/edgeshim/edgeshim/limits"
)

// refusalLogs write what edgeshim refuses, at most one line per reason
// per second each (limits.RefusalLog): a flood cannot fill the disk.
type refusalLogs struct {
	conn      *limits.RefusalLog // at accept (caps, per-IP) and handshake admission
	proxy     *limits.RefusalLog // PROXY protocol headers
	handshake *limits.RefusalLog // failed TLS handshakes, by tlsterm.FailureReason
	request   *limits.RefusalLog // requests shed (overload)
}

func newRefusalLogs(log *slog.Logger) refusalLogs {
	return refusalLogs{
		conn:      limits.NewRefusalLog(log, slog.LevelWarn, "connection refused"),
		proxy:     limits.NewRefusalLog(log, slog.LevelWarn, "PROXY protocol header refused"),
		handshake: limits.NewRefusalLog(log, slog.LevelInfo, "TLS handshake failed"),
		request:   limits.NewRefusalLog(log, slog.LevelWarn, "request refused"),
	}
}

func (r refusalLogs) close() {
	r.conn.Close()
	r.proxy.Close()
	r.handshake.Close()
	r.request.Close()
}

// listenerOptions are the connection caps of the https and http
// listeners, which apply before any TLS work, and their PROXY protocol.
func (s *Server) listenerOptions() limits.ListenerOptions {
	lim := s.opts.Config.Limits
	maxConns := *lim.MaxConns
	o := limits.ListenerOptions{
		MaxConns: maxConns, SoftConns: limits.SoftConns(lim.Overload.MaxConns, maxConns), AcceptErrors: s.ov.acceptErrors,
		PerIPMaxConns: *lim.PerIP.MaxConns, PerIPRate: *lim.PerIP.Rate,
		PerIPBurst: *lim.PerIP.Burst, Tracked: lim.PerIP.Tracked, Refused: s.m.connsRefused, Open: s.m.connsOpen,
		Log: s.logs.conn,
	}
	if pp := s.opts.Config.Listen.ProxyProtocol; len(pp.Trusted) > 0 {
		o.Proxy = &limits.ProxyProtocol{Trusted: pp.Prefixes(), Timeout: pp.Timeout.D(), Refused: s.m.proxyRefused, Log: s.logs.proxy}
	}
	return o
}
