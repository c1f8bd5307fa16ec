package proxy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/edgeshim/edgeshim/limits/proxyproto"
)

// BenchmarkProxyKeepAlive measures a GET through the proxy over TLS
// keep-alive connections (HTTP/1.1) to a loopback backend. Profile the
// hot path with -cpuprofile.
func BenchmarkProxyKeepAlive(b *testing.B) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n")
	}))
	defer backend.Close()
	s, cl := startProxy(b, fmt.Sprintf(`
limits: {per_ip: {max_conns: 10000, rate: 100000, burst: 100000}}
routes: [{path: /, proxy: {backends: ["%s"], max_idle_conns: 256}}]`, backend.URL))
	tr := cl.Transport.(*http.Transport).Clone()
	tr.ForceAttemptHTTP2 = false
	tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	tr.TLSClientConfig = tr.TLSClientConfig.Clone()
	tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
	tr.MaxIdleConnsPerHost = 64
	defer tr.CloseIdleConnections()
	benchGets(b, &http.Client{Transport: tr}, s.url("/x"), 1)
}

// benchGets runs GETs of url from 16 goroutines per CPU, each response
// read whole and served over HTTP/major.
func benchGets(b *testing.B, c *http.Client, url string, major int) {
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := c.Get(url)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.ProtoMajor != major {
				b.Errorf("served over %s", resp.Proto)
				return
			}
		}
	})
}

// BenchmarkProxyNewConnResumed measures a GET on a new TLS connection per
// request, resumed from a session ticket (a device reconnecting per poll).
func BenchmarkProxyNewConnResumed(b *testing.B) { benchNewConnResumed(b, false) }

// BenchmarkProxyNewConnResumedPROXYv2 is BenchmarkProxyNewConnResumed
// behind a balancer: each connection starts with a PROXY v2 header.
func BenchmarkProxyNewConnResumedPROXYv2(b *testing.B) { benchNewConnResumed(b, true) }

func benchNewConnResumed(b *testing.B, proxyV2 bool) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n")
	}))
	defer backend.Close()
	listen := ""
	if proxyV2 {
		listen = `listen: {proxy_protocol: {trusted: ["127.0.0.1"]}}`
	}
	s, cl := startProxy(b, fmt.Sprintf(`%s
limits: {per_ip: {max_conns: 10000, rate: 100000, burst: 100000}, handshake: {rate: 100000, burst: 100000}}
routes: [{path: /, proxy: {backends: ["%s"], max_idle_conns: 256}}]`, listen, backend.URL))
	cfg := cl.Transport.(*http.Transport).TLSClientConfig.Clone()
	cfg.NextProtos = []string{"http/1.1"}
	cfg.CurvePreferences = []tls.CurveID{tls.X25519}
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(64)
	addr := s.Addr("https").String()
	var devices atomic.Uint32
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		br := bufio.NewReader(nil)
		for pb.Next() {
			raw, err := net.Dial("tcp", addr)
			if err != nil {
				b.Error(err)
				return
			}
			if proxyV2 {
				i := devices.Add(1)
				dev := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 4000)
				raw.Write(proxyproto.AppendV2(nil, false, dev, netip.MustParseAddrPort(addr), nil))
			}
			c := tls.Client(raw, cfg)
			if err := c.Handshake(); err != nil {
				b.Error(err)
				return
			}
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
			br.Reset(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				b.Error(err)
				c.Close()
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			c.Close()
		}
	})
}
