package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeshim/edgeshim/limits/proxyproto"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// viaBalancer is a client that connects from 127.0.0.1 (the "balancer")
// and sends a PROXY header carrying the device's address first (v2 when
// v2 is set), then speaks TLS as cl does.
func viaBalancer(cl *http.Client, device string, v2, h2 bool) *http.Client {
	tr := cl.Transport.(*http.Transport).Clone()
	tr.ForceAttemptHTTP2 = h2
	if !h2 {
		tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
	}
	src := netip.MustParseAddrPort(device)
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		dst := c.RemoteAddr().(*net.TCPAddr).AddrPort()
		hdr := proxyproto.AppendV1(nil, src, dst)
		if v2 {
			hdr = proxyproto.AppendV2(nil, false, src, dst, nil)
		}
		if _, err := c.Write(hdr); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

// TestProxyProtocolCarriedAddress: two devices behind one balancer
// address, per-IP max_conns 1: each holds its own keep-alive connection
// (limited by its own address, not the balancer's), and the backend sees
// each one's address in X-Forwarded-For and Forwarded, over HTTP/1.1 (the
// fast path), HTTP/2 and plain HTTP; a second connection of one device is
// refused by its own cap.
func TestProxyProtocolCarriedAddress(t *testing.T) {
	b := echoBackend(t, "b")
	s, cl := startProxy(t, fmt.Sprintf(`
listen: {http: "127.0.0.1:0", proxy_protocol: {trusted: ["127.0.0.1"], timeout: 2s}}
limits: {per_ip: {max_conns: 1}}
routes: [{path: /, allow_http: true, proxy: {backends: [%q]}}]`, b.URL))
	devices := []struct {
		addr   string
		v2, h2 bool
	}{
		{"198.51.100.1:40001", false, false},
		{"198.51.100.2:40002", true, false},
		{"[2001:db8::3]:40003", true, true},
	}
	for _, d := range devices {
		c := viaBalancer(cl, d.addr, d.v2, d.h2)
		defer c.CloseIdleConnections()
		for range 2 { // the second request reuses the held connection
			req, _ := http.NewRequest("GET", s.url("/x"), nil)
			code, e, _ := doJSON(t, c, req)
			ip := netip.MustParseAddrPort(d.addr).Addr().String()
			if code != 200 || e.Xff != ip || !strings.Contains(e.Forwarded, "for=") || !strings.Contains(e.Forwarded, ip) {
				t.Errorf("device %s (v2 %v, h2 %v): %d, X-Forwarded-For %q, Forwarded %q", d.addr, d.v2, d.h2, code, e.Xff, e.Forwarded)
			}
		}
	}
	again := viaBalancer(cl, devices[0].addr, false, false)
	defer again.CloseIdleConnections()
	if resp, err := again.Get(s.url("/x")); err == nil {
		resp.Body.Close()
		t.Errorf("device 1's second connection served (%d); per-IP max 1", resp.StatusCode)
	}
	// The refusal closes the connection before it is counted: await it.
	refused := func() float64 { return testutil.ToFloat64(s.m.connsRefused.WithLabelValues("per_ip_max_conns")) }
	waitFor(t, func() bool { return refused() >= 1 })
	if n := refused(); n != 1 {
		t.Errorf("per_ip_max_conns refusals %v, want 1", n)
	}

	raw, err := net.Dial("tcp", s.Addr("http").String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	src := netip.MustParseAddrPort("198.51.100.9:4000")
	raw.Write(proxyproto.AppendV2(nil, false, src, netip.MustParseAddrPort(raw.RemoteAddr().String()), nil))
	io.WriteString(raw, "GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(raw), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), `"xff":"198.51.100.9"`) {
		t.Errorf("plain HTTP: backend saw %s", body)
	}
}

// TestProxyProtocolRefusedBeforeTLS: a header from an untrusted peer, a
// missing, truncated, oversized or too slow header from a trusted one:
// the connection is closed, counted under its reason, and nothing
// reaches a handler, on the HTTPS and the plain HTTP listener.
func TestProxyProtocolRefusedBeforeTLS(t *testing.T) {
	var hits atomic.Int32
	b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	defer b.Close()
	v2 := proxyproto.AppendV2(nil, false, netip.MustParseAddrPort("198.51.100.1:1"), netip.MustParseAddrPort("127.0.0.1:2"), nil)
	oversized := append([]byte(nil), v2...)
	oversized[14], oversized[15] = 0xFF, 0xFF
	hello := "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" // the start of a ClientHello
	cases := []struct {
		name, trusted, listener string
		send                    string
		closeWrite              bool
		reason                  string
	}{
		{"untrusted https", "127.0.0.2", "https", string(proxyproto.AppendV1(nil, netip.MustParseAddrPort("198.51.100.1:1"), netip.MustParseAddrPort("127.0.0.1:2"))) + hello, false, "untrusted"},
		{"untrusted http", "127.0.0.2", "http", string(v2) + "GET / HTTP/1.1\r\nHost: x\r\n\r\n", false, "untrusted"},
		{"missing https", "127.0.0.1", "https", hello, false, "missing"},
		{"missing http", "127.0.0.1", "http", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", false, "missing"},
		{"truncated", "127.0.0.1", "https", string(v2[:20]), true, "truncated"},
		{"oversized", "127.0.0.1", "https", string(oversized), false, "oversized"},
		{"slow https", "127.0.0.1", "https", "PROXY TCP4 198.51.100.1", false, "timeout"},
		{"slow http", "127.0.0.1", "http", "PROXY TCP4 198.51.100.1", false, "timeout"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, _ := startProxy(t, fmt.Sprintf(`
listen: {http: "127.0.0.1:0", proxy_protocol: {trusted: [%q], timeout: 300ms}}
routes: [{path: /, allow_http: true, proxy: {backends: [%q]}}]`, c.trusted, b.URL))
			raw, err := net.Dial("tcp", s.Addr(c.listener).String())
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			raw.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(raw, c.send)
			if c.closeWrite {
				raw.(*net.TCPConn).CloseWrite()
			}
			got, err := io.ReadAll(raw)
			if len(got) != 0 || (err != nil && !strings.Contains(err.Error(), "reset")) {
				t.Errorf("client read %q, %v: want the connection closed without an answer", got, err)
			}
			waitFor(t, func() bool { return testutil.ToFloat64(s.m.proxyRefused.WithLabelValues(c.reason)) == 1 })
			if n := hits.Load(); n != 0 {
				t.Errorf("%d requests reached the handler", n)
			}
			if n := testutil.ToFloat64(s.m.connsOpen); n != 0 {
				t.Errorf("edgeshim_connections_open %v after the refusal", n)
			}
		})
	}
}
