package proxy

import (
	"github.com/edgeshim/edgeshim/config"
	"github.com/edgeshim/edgeshim/limits"
)

// SetLimits puts the limits that can change while running in force for
// new connections and requests: max_body, per-IP max_conns, rate and
// burst, handshake rate and burst. The rest of l is ignored (it needs a
// restart). Open connections are not touched.
func (s *Server) SetLimits(l config.Limits) {
	s.live.Store(&l)
	s.admission.SetRate(*l.Handshake.Rate, *l.Handshake.Burst)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ln := range s.limited {
		ln.SetPerIP(limits.PerIP{MaxConns: *l.PerIP.MaxConns, Rate: *l.PerIP.Rate, Burst: *l.PerIP.Burst})
	}
}

// maxBody is limits.max_body as now in force.
func (s *Server) maxBody() int64 { return int64(s.live.Load().MaxBody) }

// bodyLimit is the route's max_body, or limits.max_body when lower or the
// route sets none.
func (rp *routeProxy) bodyLimit() int64 {
	m := int64(1<<63 - 1)
	if rp.liveMax != nil {
		m = rp.liveMax()
	}
	if rp.maxBody > 0 && rp.maxBody < m {
		m = rp.maxBody
	}
	return m
}
