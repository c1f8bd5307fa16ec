package limits

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/edgeshim/edgeshim/limits/proxyproto"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

type ppHarness struct {
	t        *testing.T
	l        *Listener
	accepted chan net.Conn
	refused  *prometheus.CounterVec
	conns    *prometheus.CounterVec
	log      *logRecorder
}

// newPPListener listens on 127.0.0.1 with PROXY protocol from trusted and
// accepts in the background.
func newPPListener(t *testing.T, trusted string, o ListenerOptions) *ppHarness {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &ppHarness{t: t, accepted: make(chan net.Conn, 16), log: &logRecorder{},
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pp"}, []string{"reason"}),
		conns:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "c"}, []string{"reason"})}
	o.Tracked = 100
	o.Refused = h.conns
	o.Log = NewRefusalLog(slog.New(h.log), slog.LevelWarn, "connection refused")
	o.Proxy = &ProxyProtocol{Trusted: []netip.Prefix{netip.MustParsePrefix(trusted)}, Timeout: 2 * time.Second,
		Refused: h.refused, Log: NewRefusalLog(slog.New(h.log), slog.LevelWarn, "PROXY protocol header refused")}
	h.l = NewListener(ln, o)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := h.l.Accept()
			if err != nil {
				return
			}
			h.accepted <- c
		}
	}()
	t.Cleanup(func() {
		h.l.Close()
		<-done
		for len(h.accepted) > 0 {
			(<-h.accepted).Close()
		}
	})
	return h
}

// dial connects from 127.0.0.1 and writes b.
func (h *ppHarness) dial(b []byte) net.Conn {
	h.t.Helper()
	c, err := net.Dial("tcp", h.l.Addr().String())
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	if len(b) > 0 {
		if _, err := c.Write(b); err != nil {
			h.t.Fatal(err)
		}
	}
	return c
}

// next is the next accepted connection, its header resolved.
func (h *ppHarness) next() (net.Conn, error) {
	h.t.Helper()
	select {
	case c := <-h.accepted:
		h.t.Cleanup(func() { c.Close() })
		return c, c.(interface{ Resolve() error }).Resolve()
	case <-time.After(10 * time.Second):
		h.t.Fatal("nothing accepted")
		return nil, nil
	}
}

var (
	devA = netip.MustParseAddrPort("198.51.100.1:4000")
	devB = netip.MustParseAddrPort("198.51.100.2:4000")
	lb   = netip.MustParseAddrPort("127.0.0.1:8443")
)

// TestProxyProtocolCarriedAddress: behind one trusted balancer address,
// two devices (v1 and v2) are admitted under per-IP max 1 each and
// RemoteAddr is theirs; a second connection of device A is refused by its
// own per-IP cap; what follows the header is read intact; a LOCAL header
// uses the balancer's own address.
func TestProxyProtocolCarriedAddress(t *testing.T) {
	h := newPPListener(t, "127.0.0.1/32", ListenerOptions{PerIPMaxConns: 1})
	h.dial(append(proxyproto.AppendV1(nil, devA, lb), "hello A"...))
	a, err := h.next()
	if err != nil {
		t.Fatal(err)
	}
	h.dial(append(proxyproto.AppendV2(nil, false, devB, lb, nil), "hello B"...))
	b, err := h.next()
	if err != nil {
		t.Fatal(err)
	}
	for c, want := range map[net.Conn]string{a: "198.51.100.1:4000 hello A", b: "198.51.100.2:4000 hello B"} {
		buf := make([]byte, 7)
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		if got := c.RemoteAddr().String() + " " + string(buf); got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
	h.dial(proxyproto.AppendV1(nil, devA, lb))
	if _, err := h.next(); !errors.Is(err, ErrRefused) {
		t.Fatalf("device A's second connection: %v, want ErrRefused", err)
	}
	if n := testutil.ToFloat64(h.conns.WithLabelValues(ReasonPerIPMaxConns)); n != 1 {
		t.Errorf("per_ip_max_conns refusals %v, want 1", n)
	}
	if lines := h.log.take(); len(lines) != 1 || !strings.Contains(lines[0], "reason=per_ip_max_conns count=1 addr=198.51.100.1") {
		t.Errorf("log: %q", lines)
	}
	h.dial(proxyproto.AppendV2(nil, true, devA, lb, nil))
	local, err := h.next()
	if err != nil {
		t.Fatal(err)
	}
	if got := local.RemoteAddr().(*net.TCPAddr).IP.String(); got != "127.0.0.1" {
		t.Errorf("LOCAL: RemoteAddr %s, want the balancer's", got)
	}
	a.Close()
	h.dial(proxyproto.AppendV1(nil, devA, lb))
	if _, err := h.next(); err != nil {
		t.Fatalf("device A after its first connection closed: %v", err)
	}
}

// TestProxyProtocolRefusals: each bad case closes the connection, is
// counted under its reason and logged (except a silent TCP check).
func TestProxyProtocolRefusals(t *testing.T) {
	v2 := proxyproto.AppendV2(nil, false, devA, lb, nil)
	big := append([]byte(nil), v2...)
	big[14], big[15] = 0x10, 0 // 4096 bytes announced
	cases := []struct {
		name, trusted string
		send          []byte
		close         bool // the client closes after sending
		reason        string
	}{
		{"missing", "127.0.0.1/32", []byte("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00\x00\x00\x00\x00"), false, ProxyMissing},
		{"truncated v2", "127.0.0.1/32", v2[:20], true, ProxyTruncated},
		{"truncated v1", "127.0.0.1/32", []byte("PROXY TCP4 1.2."), true, ProxyTruncated},
		{"oversized v2", "127.0.0.1/32", big, false, ProxyOversized},
		{"oversized v1", "127.0.0.1/32", []byte("PROXY TCP4 " + strings.Repeat("9", 120)), false, ProxyOversized},
		{"malformed", "127.0.0.1/32", []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n"), false, ProxyMalformed},
		{"slow", "127.0.0.1/32", []byte("PROXY TCP4 1.2.3.4"), false, ProxyTimeout},
		{"untrusted", "127.0.0.2/32", proxyproto.AppendV1(nil, devA, lb), false, ProxyUntrusted},
		{"empty", "127.0.0.1/32", nil, true, ProxyEmpty},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newPPListener(t, c.trusted, ListenerOptions{})
			h.l.o.Proxy.Timeout = 300 * time.Millisecond
			cc := h.dial(c.send)
			if c.close {
				cc.(*net.TCPConn).CloseWrite()
			}
			sc, err := h.next()
			if err == nil { // untrusted: found on the first read
				_, err = sc.Read(make([]byte, 64))
			}
			if !errors.Is(err, ErrProxyProtocol) {
				t.Fatalf("err %v, want ErrProxyProtocol", err)
			}
			var oe *net.OpError
			if !errors.As(err, &oe) || oe.Op != "read" {
				t.Errorf("err %v is not a read *net.OpError (net/http would answer it)", err)
			}
			cc.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := cc.Read(make([]byte, 1)); n != 0 || (err != io.EOF && !isReset(err)) {
				t.Errorf("client read %d, %v: want the connection closed", n, err)
			}
			if n := testutil.ToFloat64(h.refused.WithLabelValues(c.reason)); n != 1 {
				t.Errorf("refused{%s} = %v, want 1", c.reason, n)
			}
			lines := h.log.take()
			if c.reason == ProxyEmpty {
				if len(lines) != 0 {
					t.Errorf("a silent TCP check was logged: %q", lines)
				}
			} else if len(lines) != 1 || !strings.Contains(lines[0], "PROXY protocol header refused reason="+c.reason+" count=1 addr=127.0.0.1") {
				t.Errorf("log: %q", lines)
			}
			if h.l.Open() != 0 {
				t.Errorf("%d connections still counted open", h.l.Open())
			}
		})
	}
}

// TestProxyProtocolUntrustedPlain: a peer that is not trusted and sends
// no header is served as before, its first bytes intact, and is limited
// by its own address.
func TestProxyProtocolUntrustedPlain(t *testing.T) {
	h := newPPListener(t, "10.9.9.9/32", ListenerOptions{PerIPMaxConns: 1})
	h.dial([]byte("PUT / HTTP/1.1\r\n"))
	sc, err := h.next()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	if _, err := io.ReadFull(sc, buf); err != nil || string(buf) != "PUT / HTTP/1.1\r\n" {
		t.Fatalf("read %q, %v", buf, err)
	}
	if got := sc.RemoteAddr().(*net.TCPAddr).IP.String(); got != "127.0.0.1" {
		t.Errorf("RemoteAddr %s", got)
	}
	c2 := h.dial(nil)
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c2.Read(make([]byte, 1)); err != io.EOF && !isReset(err) {
		t.Fatalf("second connection from the same untrusted peer: %v, want closed by per-IP max 1", err)
	}
}

// TestProxyProtocolSlowHeaderDoesNotBlockAccept: Accept hands over a
// trusted connection whose header has not come; the next one is accepted
// and resolved meanwhile.
func TestProxyProtocolSlowHeaderDoesNotBlockAccept(t *testing.T) {
	h := newPPListener(t, "127.0.0.1/32", ListenerOptions{})
	slow := h.dial([]byte("PROX"))
	first := <-h.accepted
	defer first.Close()
	h.dial(proxyproto.AppendV1(nil, devB, lb))
	if _, err := h.next(); err != nil {
		t.Fatalf("second connection while the first header is pending: %v", err)
	}
	slow.Write([]byte("Y TCP4 198.51.100.1 127.0.0.1 4000 8443\r\n"))
	if err := first.(interface{ Resolve() error }).Resolve(); err != nil || first.RemoteAddr().String() != devA.String() {
		t.Fatalf("slow header: %v, %v", err, first.RemoteAddr())
	}
}
