package limits

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgeshim/edgeshim/limits/proxyproto"
	"github.com/prometheus/client_golang/prometheus"
)

// ProxyProtocol makes a Listener read PROXY protocol (v1 and v2) headers:
// a connection from a Trusted peer (the load balancer) must start with
// one, and the address it carries is the client's for everything that
// follows (per-IP caps and rate, handshake admission, RemoteAddr, logs);
// a connection from any other peer must not start with one. A v2 LOCAL
// header (the balancer's health check) is accepted and the peer's own
// address used. Any other case closes the connection before TLS, counted
// by reason (the Proxy* constants) and logged, rate-limited.
//
// Order of admission: the total cap at accept; then, for a trusted peer,
// the header, read by whoever serves the connection first (Resolve, or
// its first RemoteAddr or Read) so that a slow header never holds up
// Accept; then the per-IP rate and cap of the carried address.
type ProxyProtocol struct {
	// Trusted are the balancers' addresses. Required.
	Trusted []netip.Prefix
	// Timeout bounds reading a trusted peer's header. Default: 5s.
	Timeout time.Duration
	// Refused counts refused headers by reason
	// (edgeshim_proxy_protocol_refused_total). Optional.
	Refused *prometheus.CounterVec
	// Log writes refused headers, rate-limited. Optional.
	Log *RefusalLog
}

// Reasons a PROXY header is refused: label values of
// edgeshim_proxy_protocol_refused_total.
const (
	ProxyUntrusted = "untrusted" // a header from a peer not trusted
	ProxyMissing   = "missing"   // no header from a trusted peer
	ProxyMalformed = "malformed"
	ProxyTruncated = "truncated" // the stream ended (or broke) inside the header
	ProxyOversized = "oversized"
	ProxyTimeout   = "timeout" // not complete within Timeout
	// ProxyEmpty: a trusted peer closed without sending a byte (a TCP
	// health check). Counted, not logged.
	ProxyEmpty = "empty"
)

// ProxyReasons lists every refusal reason, to initialise their counters.
var ProxyReasons = []string{ProxyUntrusted, ProxyMissing, ProxyMalformed, ProxyTruncated, ProxyOversized, ProxyTimeout, ProxyEmpty}

// ErrProxyProtocol is returned (wrapped, inside a *net.OpError "read")
// by the Read of a connection whose PROXY header was refused; ErrRefused
// by one whose carried address was over its per-IP caps.
var (
	ErrProxyProtocol = errors.New("PROXY protocol header refused")
	ErrRefused       = errors.New("connection refused by the per-IP limits")
)

func (p *ProxyProtocol) trusts(ip netip.Addr) bool {
	return slices.ContainsFunc(p.Trusted, func(t netip.Prefix) bool { return t.Contains(ip) })
}

// ppConn is a connection of a Listener with ProxyProtocol.
type ppConn struct {
	net.Conn
	l       *Listener
	trusted bool

	once    sync.Once // reads a trusted peer's header
	checked bool      // an untrusted peer's first bytes were checked
	err     error
	addr    net.Addr // carried by the header; nil: the peer's
	pre     []byte   // read past the header, replayed first

	mu     sync.Mutex
	closed bool
	ip     netip.Addr // whose per-IP slot is held, if perIP
	perIP  bool

	overflow atomic.Bool // admitted above the soft cap (see Overflowed, MarkOverflow)
}

var _ net.Conn = (*ppConn)(nil)

// NetConn returns the accepted connection (for limits/park).
func (c *ppConn) NetConn() net.Conn { return c.Conn }

// Resolve reads a trusted peer's PROXY header and admits the carried
// address under the per-IP limits, or closes the connection (counted and
// logged) and returns why. It returns nil at once for an untrusted peer:
// its first Read checks that it sends no header. Safe to call more than
// once.
func (c *ppConn) Resolve() error {
	if !c.trusted {
		return nil
	}
	c.once.Do(c.readHeader)
	return c.err
}

// RemoteAddr returns the client's address: the one carried by the PROXY
// header of a trusted peer (read first if need be), else the peer's.
func (c *ppConn) RemoteAddr() net.Addr {
	if c.Resolve(); c.addr != nil {
		return c.addr
	}
	return c.Conn.RemoteAddr()
}

func (c *ppConn) Read(p []byte) (int, error) {
	if c.trusted {
		if c.once.Do(c.readHeader); c.err != nil {
			return 0, c.err
		}
	} else if !c.checked {
		if err := c.checkNoHeader(); err != nil {
			return 0, err
		}
	}
	if len(c.pre) > 0 {
		n := copy(p, c.pre)
		if c.pre = c.pre[n:]; len(c.pre) == 0 {
			c.pre = nil
		}
		return n, nil
	}
	return c.Conn.Read(p)
}

func (c *ppConn) Write(p []byte) (int, error) {
	if err := c.Resolve(); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

func (c *ppConn) Close() error {
	err := c.Conn.Close()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return err
	}
	c.closed = true
	ip, perIP := c.ip, c.perIP
	c.mu.Unlock()
	c.l.releaseTotal()
	if perIP {
		c.l.releaseIP(ip)
	}
	return err
}

// readHeader reads a trusted peer's header within the timeout, then
// admits the carried address. It sets and then clears the read deadline:
// whoever serves the connection calls it (Resolve, RemoteAddr) before
// setting a deadline of its own, as proxy's TLS listener and net/http do;
// a first Read reaches it only if neither was called.
func (c *ppConn) readHeader() {
	p := c.l.o.Proxy
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	c.Conn.SetReadDeadline(time.Now().Add(timeout))
	h, rest, err := proxyproto.Read(c.Conn)
	c.Conn.SetReadDeadline(time.Time{})
	peer := remoteIP(c.Conn.RemoteAddr())
	if err != nil {
		if c.isClosed() { // closed by its server (shutdown): not a refusal
			c.err = c.opErr(net.ErrClosed)
			return
		}
		c.refuseHeader(peer, proxyReason(err), err)
		return
	}
	c.pre = rest
	ip := peer
	if !h.Local {
		ip = h.Source.Addr()
		c.addr = net.TCPAddrFromAddrPort(h.Source)
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		c.err = c.opErr(net.ErrClosed)
		return
	}
	reason := c.l.admitIP(ip)
	if reason == "" {
		c.ip, c.perIP = ip, true
	}
	c.mu.Unlock()
	if reason != "" {
		c.Close()
		c.l.refused(ip, reason)
		c.err = c.opErr(fmt.Errorf("%w: %s", ErrRefused, reason))
	}
}

// checkNoHeader reads the first bytes of an untrusted peer (under the
// deadline its reader set) and refuses a PROXY header; what it read is
// replayed. Reads are not concurrent: no lock.
func (c *ppConn) checkNoHeader() error {
	buf := make([]byte, 16)
	n := 0
	for {
		m, err := c.Conn.Read(buf[n:])
		n += m
		header, more := proxyproto.HasPrefix(buf[:n])
		if header {
			c.checked = true
			c.refuseHeader(remoteIP(c.Conn.RemoteAddr()), ProxyUntrusted, errors.New("a PROXY header from a peer not in listen.proxy_protocol.trusted"))
			return c.err
		}
		if !more || err != nil {
			if n == 0 {
				return err // nothing read: not decided yet
			}
			c.checked, c.pre = true, buf[:n]
			return nil
		}
	}
}

func (c *ppConn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

func (c *ppConn) refuseHeader(peer netip.Addr, reason string, err error) {
	c.Close()
	if p := c.l.o.Proxy; p.Refused != nil {
		p.Refused.WithLabelValues(reason).Inc()
	}
	if reason != ProxyEmpty {
		c.l.o.Proxy.Log.Refused(reason, peer.String(), err)
	}
	c.err = c.opErr(fmt.Errorf("%w: %s: %w", ErrProxyProtocol, reason, err))
}

// opErr wraps err as a read error, which net/http drops silently.
func (c *ppConn) opErr(err error) error {
	return &net.OpError{Op: "read", Net: "tcp", Source: c.Conn.LocalAddr(), Addr: c.Conn.RemoteAddr(), Err: err}
}

// proxyReason maps a proxyproto.Read error to its refusal reason.
func proxyReason(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF):
		return ProxyEmpty
	case errors.Is(err, proxyproto.ErrNoHeader):
		return ProxyMissing
	case errors.Is(err, proxyproto.ErrMalformed):
		return ProxyMalformed
	case errors.Is(err, proxyproto.ErrOversized):
		return ProxyOversized
	case errors.As(err, &ne) && ne.Timeout():
		return ProxyTimeout
	}
	return ProxyTruncated
}
