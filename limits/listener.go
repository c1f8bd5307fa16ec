package limits

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// ListenerOptions configure a connection-limiting listener.
type ListenerOptions struct {
	// MaxConns caps open connections in total; 0: no cap.
	MaxConns int
	// SoftConns marks connections admitted above this many open ones as
	// overflowed (see Overflowed): they get an HTTP answer, 503, rather
	// than a closed socket. 0: none.
	SoftConns int
	// PerIPMaxConns caps open connections per source IP; 0: no cap.
	PerIPMaxConns int
	// PerIPRate and PerIPBurst bound new connections per second per IP;
	// PerIPRate 0: no rate limit.
	PerIPRate  float64
	PerIPBurst int
	// Tracked bounds how many source IPs have state; the least recently
	// seen is forgotten first.
	Tracked int
	// Now is the clock. Default: time.Now.
	Now func() time.Time
	// Refused counts refused connections by reason. Optional.
	Refused *prometheus.CounterVec
	// Open tracks open connections. Optional.
	Open prometheus.Gauge
	// Log writes refused connections, rate-limited. Optional.
	Log *RefusalLog
	// Proxy, when not nil, reads PROXY protocol headers (see ProxyProtocol).
	Proxy *ProxyProtocol
	// AcceptErrors counts failed accepts by kind ("emfile", "enfile",
	// "other"); the caller backs off. Optional.
	AcceptErrors *prometheus.CounterVec
}

// Refusal reasons, the label values of edgeshim_conns_refused_total.
const (
	ReasonMaxConns      = "max_conns"
	ReasonPerIPMaxConns = "per_ip_max_conns"
	ReasonPerIPRate     = "per_ip_rate"
)

type ipState struct {
	open    atomic.Int32
	limiter *rate.Limiter // guarded by Listener.mu; nil: no rate limit
}

// Listener refuses connections over the caps right after accept, before
// any TLS work: a refused connection costs one accept and one close.
type Listener struct {
	net.Listener
	o     ListenerOptions
	open  atomic.Int64
	perIP atomic.Pointer[PerIP] // the live per-IP caps (SetPerIP)
	mu    sync.Mutex
	ips   *lru.Cache[netip.Addr, *ipState]
}

var _ net.Listener = (*Listener)(nil)

// NewListener wraps ln.
func NewListener(ln net.Listener, o ListenerOptions) *Listener {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Tracked < 1 {
		o.Tracked = 1
	}
	c, _ := lru.New[netip.Addr, *ipState](o.Tracked)
	l := &Listener{Listener: ln, o: o, ips: c}
	l.SetPerIP(PerIP{MaxConns: o.PerIPMaxConns, Rate: o.PerIPRate, Burst: o.PerIPBurst})
	return l
}

// Accept returns the next connection within the caps; the others are
// closed at once, counted and logged. With Proxy set, a connection from a
// trusted peer is admitted here under the total cap only: its per-IP
// admission follows its PROXY header (see ProxyProtocol).
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if l.o.AcceptErrors != nil && !errors.Is(err, net.ErrClosed) {
				l.o.AcceptErrors.WithLabelValues(acceptError(err)).Inc()
			}
			return nil, err
		}
		ip := remoteIP(c.RemoteAddr())
		if !l.admitTotal() {
			l.refuse(c, ip, ReasonMaxConns)
			continue
		}
		overflow := l.o.SoftConns > 0 && l.open.Load() > int64(l.o.SoftConns)
		if l.o.Proxy != nil && l.o.Proxy.trusts(ip) {
			pc := &ppConn{Conn: c, l: l, trusted: true}
			pc.overflow.Store(overflow)
			return pc, nil
		}
		if reason := l.admitIP(ip); reason != "" {
			l.releaseTotal()
			l.refuse(c, ip, reason)
			continue
		}
		if l.o.Proxy != nil {
			pc := &ppConn{Conn: c, l: l, ip: ip, perIP: true}
			pc.overflow.Store(overflow)
			return pc, nil
		}
		lc := &limitedConn{Conn: c, l: l, ip: ip}
		lc.overflow.Store(overflow)
		return lc, nil
	}
}

// refuse closes c, refused for reason, and counts and logs it.
func (l *Listener) refuse(c net.Conn, ip netip.Addr, reason string) {
	c.Close()
	l.refused(ip, reason)
}

func (l *Listener) refused(ip netip.Addr, reason string) {
	if l.o.Refused != nil {
		l.o.Refused.WithLabelValues(reason).Inc()
	}
	l.o.Log.Refused(reason, ip.String(), nil)
}

// limitedConn gives its slot back on Close, once.
type limitedConn struct {
	net.Conn
	l    *Listener
	ip   netip.Addr
	once sync.Once
	// overflow: admitted above the soft cap, or its handshake over the
	// admission rate (see Overflowed, MarkOverflow).
	overflow atomic.Bool
}

// NetConn returns the accepted connection, as tls.Conn's does: beneath
// the wrappers the socket can be watched for readiness (limits/park).
func (c *limitedConn) NetConn() net.Conn { return c.Conn }

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.ip) })
	return err
}

// admit checks the caps for c; when admitted, Close undoes the
// bookkeeping. It returns the refusal reason or "".
func (l *Listener) admit(c net.Conn) string {
	if !l.admitTotal() {
		return ReasonMaxConns
	}
	if reason := l.admitIP(remoteIP(c.RemoteAddr())); reason != "" {
		l.releaseTotal()
		return reason
	}
	return ""
}

// admitTotal takes a slot under MaxConns (0: no cap).
func (l *Listener) admitTotal() bool {
	if n := l.open.Add(1); l.o.MaxConns > 0 && n > int64(l.o.MaxConns) {
		l.open.Add(-1)
		return false
	}
	if l.o.Open != nil {
		l.o.Open.Inc()
	}
	return true
}

func (l *Listener) releaseTotal() {
	l.open.Add(-1)
	if l.o.Open != nil {
		l.o.Open.Dec()
	}
}

// admitIP applies the per-IP rate and cap to a connection from ip (0:
// off) and returns the refusal reason or "".
func (l *Listener) admitIP(ip netip.Addr) string {
	p := l.curPerIP()
	if p.Rate <= 0 && p.MaxConns <= 0 {
		return ""
	}
	st := l.state(ip)
	if p.Rate > 0 {
		l.mu.Lock()
		now := l.o.Now()
		if st.limiter == nil { // the rate was off when ip was first seen
			st.limiter = rate.NewLimiter(rate.Limit(p.Rate), p.Burst)
		}
		retune(st.limiter, p, now)
		ok := st.limiter.AllowN(now, 1)
		l.mu.Unlock()
		if !ok {
			return ReasonPerIPRate
		}
	}
	if n := st.open.Add(1); p.MaxConns > 0 && int(n) > p.MaxConns {
		st.open.Add(-1)
		return ReasonPerIPMaxConns
	}
	return ""
}

// Admit is the accept path without a socket, for tests and benchmarks of
// the per-IP state: it reports whether a connection from ip would be
// admitted and, if so, counts it as open until release is called.
func (l *Listener) Admit(ip netip.Addr) (release func(), ok bool) {
	c := &fakeAddrConn{addr: &net.TCPAddr{IP: ip.AsSlice()}}
	if l.admit(c) != "" {
		return nil, false
	}
	return func() { l.release(ip) }, true
}

// Tracked returns how many source IPs have state.
func (l *Listener) Tracked() int { return l.ips.Len() }

// Open returns the number of open admitted connections.
func (l *Listener) Open() int64 { return l.open.Load() }

func (l *Listener) state(ip netip.Addr) *ipState {
	l.mu.Lock()
	defer l.mu.Unlock()
	st, ok := l.ips.Get(ip)
	if !ok {
		st = &ipState{}
		if p := l.curPerIP(); p.Rate > 0 {
			st.limiter = rate.NewLimiter(rate.Limit(p.Rate), p.Burst)
		}
		l.ips.Add(ip, st)
	}
	return st
}

func (l *Listener) release(ip netip.Addr) {
	l.releaseTotal()
	l.releaseIP(ip)
}

func (l *Listener) releaseIP(ip netip.Addr) {
	l.mu.Lock()
	st, ok := l.ips.Peek(ip)
	l.mu.Unlock()
	if ok {
		st.open.Add(-1)
	}
}

func remoteIP(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// fakeAddrConn carries only a remote address (see Admit).
type fakeAddrConn struct {
	net.Conn
	addr net.Addr
}

func (f *fakeAddrConn) RemoteAddr() net.Addr { return f.addr }

// ErrAdmission is returned when a handshake was not admitted in time.
var ErrAdmission = errors.New("handshake not admitted")
