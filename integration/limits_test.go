package integration

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// okClient does one well-behaved request and returns its status.
func okClient(t *testing.T, e *Edge, src string) (int, time.Duration) {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	tr := &http.Transport{DialContext: d.DialContext, TLSClientConfig: e.TLSConfig(), DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	start := time.Now()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(e.URL("/ping"))
	if err != nil {
		return 0, time.Since(start)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, time.Since(start)
}

// TestSlowlorisClosedAtDeadline: 500 connections that stall (half in the
// TLS handshake, half in the HTTP headers) are closed by the server at its
// deadline, while a well-behaved client is served meanwhile.
func TestSlowlorisClosedAtDeadline(t *testing.T) {
	e := startEdgeshim(t, `
listen: {https: "127.0.0.1:0", admin: "127.0.0.1:0"}
limits:
  per_ip: {max_conns: 2000, rate: 100000, burst: 100000}
  timeouts: {read_header: 1s, handshake: 1s}
`)
	const n = 500
	var wg sync.WaitGroup
	var closed atomic.Int32
	start := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", e.Addr("https"), 5*time.Second)
			if err != nil {
				t.Errorf("dial: %v", err)
				return
			}
			defer c.Close()
			var r io.Reader = c
			if i%2 == 1 {
				tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
				if err := tc.Handshake(); err != nil {
					t.Errorf("handshake: %v", err)
					return
				}
				io.WriteString(tc, "GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ") // never finished
				r = tc
			}
			c.SetReadDeadline(time.Now().Add(15 * time.Second))
			io.Copy(io.Discard, r) // returns when the server closes
			closed.Add(1)
		}()
	}
	if code, _ := okClient(t, e, ""); code != 404 {
		t.Errorf("well-behaved client during slowloris: %d, want 404 (no route)", code)
	}
	wg.Wait()
	took := time.Since(start)
	t.Logf("%d/%d stalled connections closed after %s", closed.Load(), n, took.Round(time.Millisecond))
	if closed.Load() != n {
		t.Errorf("%d of %d stalled connections closed", closed.Load(), n)
	}
	if took > 12*time.Second {
		t.Errorf("stalled connections held %s with 1s deadlines", took)
	}
}

// TestConnectionFloodPerIP: a flood from 127.0.0.2 is refused beyond its
// per-IP rate while 127.0.0.3 keeps being served.
func TestConnectionFloodPerIP(t *testing.T) {
	e := startEdgeshim(t, `
listen: {https: "127.0.0.1:0", admin: "127.0.0.1:0"}
limits: {per_ip: {max_conns: 50, rate: 5, burst: 10}}
`)
	var refused, served atomic.Int32
	var wg sync.WaitGroup
	for range 300 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if code, _ := okClient(t, e, "127.0.0.2"); code == 404 {
				served.Add(1)
			} else {
				refused.Add(1)
			}
		}()
	}
	wg.Wait()
	t.Logf("flooder: %d served, %d refused", served.Load(), refused.Load())
	if served.Load() > 20 {
		t.Errorf("flooder got %d connections through a 5/s, burst 10 limit", served.Load())
	}
	for i := range 5 {
		if code, _ := okClient(t, e, "127.0.0.3"); code != 404 {
			t.Fatalf("well-behaved 127.0.0.3 request %d: %d", i, code)
		}
	}
	if got := e.Metric("edgeshim_conns_refused_total", `reason="per_ip_rate"`); got < float64(refused.Load()) {
		t.Errorf("refusals counted %v, want at least %d", got, refused.Load())
	}
}

// TestHugeHeadersRefused: 10,000 header fields or a huge cookie get 431,
// and the server keeps serving.
func TestHugeHeadersRefused(t *testing.T) {
	e := startEdgeshim(t, `
listen: {https: "127.0.0.1:0", admin: "127.0.0.1:0"}
`)
	c := e.Client()
	for _, tc := range []struct {
		name string
		set  func(h http.Header)
	}{
		{"10,000 headers", func(h http.Header) {
			for i := range 10000 {
				h.Add(fmt.Sprintf("X-H%d", i), "v")
			}
		}},
		{"200 small headers", func(h http.Header) {
			for i := range 200 {
				h.Add(fmt.Sprintf("X-H%d", i), "v")
			}
		}},
		{"1 MiB cookie", func(h http.Header) { h.Set("Cookie", "a="+strings.Repeat("x", 1<<20)) }},
	} {
		for _, proto := range []string{"h1", "h2"} {
			req, _ := http.NewRequest("GET", e.URL("/x"), nil)
			tc.set(req.Header)
			cl := c
			if proto == "h1" {
				tr := &http.Transport{TLSClientConfig: e.TLSConfig()}
				defer tr.CloseIdleConnections()
				cl = &http.Client{Transport: tr}
			}
			resp, err := cl.Do(req)
			if err != nil {
				// HTTP/2 may reset the stream or the connection instead.
				t.Logf("%s over %s: %v", tc.name, proto, err)
				continue
			}
			resp.Body.Close()
			if resp.StatusCode != 431 {
				t.Errorf("%s over %s: %d, want 431", tc.name, proto, resp.StatusCode)
			}
		}
	}
	if code, _ := okClient(t, e, ""); code != 404 {
		t.Errorf("after the header attacks: %d", code)
	}
}

// TestHandshakeStorm: 2,000 clients connect at once through handshake
// admission; each is either served or refused and, retrying after a
// jittered pause, served in the end. Admitted handshakes' latency is
// reported (not asserted: this machine is shared).
func TestHandshakeStorm(t *testing.T) {
	for _, answer := range []bool{true, false} {
		t.Run(fmt.Sprintf("answer_refused=%v", answer), func(t *testing.T) { handshakeStorm(t, answer) })
	}
}

// handshakeStorm: 2,000 clients at once against admission of 400/s. With
// answer_refused (the default) a refused handshake is completed, up to
// the same rate again, and its request answered 503 with Retry-After: the
// refusals the clients see are HTTP answers; without it, or past that
// budget, they are closed connections. Every client is served in the end.
func handshakeStorm(t *testing.T, answer bool) {
	e := startEdgeshim(t, fmt.Sprintf(`
listen: {https: "127.0.0.1:0", admin: "127.0.0.1:0"}
limits:
  per_ip: {max_conns: 5000, rate: 100000, burst: 100000}
  handshake: {rate: 400, burst: 100, max_queue: 200, queue_timeout: 500ms, answer_refused: %v}
  retry_after: {min: 1s, max: 2s}
`, answer))
	const n = 2000
	var wg sync.WaitGroup
	var mu sync.Mutex
	var lat []time.Duration
	var firstRefused, answered503, failed atomic.Int32
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for attempt := 0; attempt < 40; attempt++ {
				start := time.Now()
				code, retryAfter, err := tlsRequest(e.Addr("https"))
				if err == nil && code != http.StatusServiceUnavailable {
					d := time.Since(start)
					mu.Lock()
					lat = append(lat, d)
					mu.Unlock()
					return
				}
				if attempt == 0 {
					firstRefused.Add(1)
				}
				if err == nil {
					if retryAfter == "" {
						t.Errorf("503 without Retry-After")
					}
					answered503.Add(1)
				}
				// The client's own jittered backoff, as a device would.
				time.Sleep(time.Duration(100+(i*37+attempt*53)%400) * time.Millisecond)
			}
			failed.Add(1)
		}()
	}
	wg.Wait()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("storm: %d served, %d refused at first (%d answers 503 + Retry-After), %d never served; served handshake+request p50 %s p99 %s",
		len(lat), firstRefused.Load(), answered503.Load(), failed.Load(), lat[len(lat)/2], lat[len(lat)*99/100])
	if len(lat) != n || failed.Load() != 0 {
		t.Errorf("%d of %d clients served", len(lat), n)
	}
	if firstRefused.Load() == 0 {
		t.Error("no handshake refused: admission did not engage")
	}
	if got := e.Metric("edgeshim_tls_handshakes_refused_total"); got < float64(firstRefused.Load()) {
		t.Errorf("refused handshakes counted %v, want at least %d", got, firstRefused.Load())
	}
	if answer && answered503.Load() == 0 {
		t.Error("answer_refused: no refused handshake was answered 503")
	}
	if !answer && answered503.Load() != 0 {
		t.Errorf("answer_refused false: %d refusals answered 503, want closed connections", answered503.Load())
	}
}

// tlsRequest makes one request on a new TLS connection: its status and
// Retry-After, or the error of a connection closed before an answer.
func tlsRequest(addr string) (int, string, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return 0, "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET /storm HTTP/1.1\r\nHost: storm\r\nConnection: close\r\n\r\n"); err != nil {
		return 0, "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, "", err
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Retry-After"), nil
}
