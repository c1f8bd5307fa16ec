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
	// MaxConns caps open connections in total.
	MaxConns int
	// SoftConns marks connections admitted above this many open ones as
	// overflowed (see Overflowed): they get an HTTP answer, 503, rather
	// than a closed socket. 0: none.
	SoftConns int
	// PerIPMaxConns caps open connections per source IP.
	PerIPMaxConns int
	// PerIPRate and PerIPBurst bound new connections per second per IP.
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
	limiter *rate.Limiter // guarded by Listener.mu
}

// Listener refuses connections over the caps right after accept, before
// any TLS work: a refused connection costs one accept and one close.
type Listener struct {
	net.Listener
	o    ListenerOptions
	open atomic.Int64
	mu   sync.Mutex
	ips  *lru.Cache[netip.Addr, *ipState]
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
	return &Listener{Listener: ln, o: o, ips: c}
}

// Accept returns the next connection within the caps; the others are
// closed at once and counted.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if l.o.AcceptErrors != nil && !errors.Is(err, net.ErrClosed) {
				l.o.AcceptErrors.WithLabelValues(acceptError(err)).Inc()
			}
			return nil, err
		}
		if reason := l.admit(c); reason != "" {
			c.Close()
			if l.o.Refused != nil {
				l.o.Refused.WithLabelValues(reason).Inc()
			}
			continue
		}
		lc := &limitedConn{Conn: c, l: l, ip: remoteIP(c.RemoteAddr())}
		if l.o.SoftConns > 0 && l.open.Load() > int64(l.o.SoftConns) {
			lc.overflow = true
		}
		return lc, nil
	}
}

// limitedConn gives its slot back on Close, once.
type limitedConn struct {
	net.Conn
	l    *Listener
	ip   netip.Addr
	once sync.Once
	// overflow: admitted above the soft cap (see Overflowed).
	overflow bool
}

// NetConn returns the accepted connection, as tls.Conn's does: beneath
// the wrappers the socket can be watched for readiness (limits/park).
func (c *limitedConn) NetConn() net.Conn { return c.Conn }

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.ip) })
	return err
}

// admit checks the caps for c and, when admitted, wraps bookkeeping that
// Close undoes. It returns the refusal reason or "".
func (l *Listener) admit(c net.Conn) string {
	ip := remoteIP(c.RemoteAddr())
	if n := l.open.Add(1); l.o.MaxConns > 0 && n > int64(l.o.MaxConns) {
		l.open.Add(-1)
		return ReasonMaxConns
	}
	st := l.state(ip)
	l.mu.Lock()
	ok := st.limiter.AllowN(l.o.Now(), 1)
	l.mu.Unlock()
	if !ok {
		l.open.Add(-1)
		return ReasonPerIPRate
	}
	if n := st.open.Add(1); l.o.PerIPMaxConns > 0 && int(n) > l.o.PerIPMaxConns {
		st.open.Add(-1)
		l.open.Add(-1)
		return ReasonPerIPMaxConns
	}
	if l.o.Open != nil {
		l.o.Open.Inc()
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
		st = &ipState{limiter: rate.NewLimiter(rate.Limit(l.o.PerIPRate), l.o.PerIPBurst)}
		l.ips.Add(ip, st)
	}
	return st
}

func (l *Listener) release(ip netip.Addr) {
	l.open.Add(-1)
	if l.o.Open != nil {
		l.o.Open.Dec()
	}
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
