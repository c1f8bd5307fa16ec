package integration

import (
	"bytes"
	"compress/gzip"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// countingBackend counts the requests and body bytes that reach it and
// its peak concurrency.
type countingBackend struct {
	*httptest.Server
	bytes    sync.Map // path → *atomic.Int64
	cur, max atomic.Int32
	requests atomic.Int32
	release  chan struct{}
}

func newCountingBackend(t *testing.T, hold bool) *countingBackend {
	cb := &countingBackend{release: make(chan struct{})}
	cb.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cb.requests.Add(1)
		n := cb.cur.Add(1)
		defer cb.cur.Add(-1)
		for {
			m := cb.max.Load()
			if n <= m || cb.max.CompareAndSwap(m, n) {
				break
			}
		}
		v, _ := cb.bytes.LoadOrStore(r.URL.Path, new(atomic.Int64))
		c, _ := io.Copy(io.Discard, r.Body)
		v.(*atomic.Int64).Add(c)
		if hold && r.URL.Path == "/reset" {
			select {
			case <-cb.release:
			case <-r.Context().Done():
			}
		}
	}))
	t.Cleanup(func() { close(cb.release); cb.Close() })
	return cb
}

// TestBodyLimitsEndToEnd: over-limit bodies by Content-Length, by chunked
// encoding and by a gzip bomb are answered 413, and the backend never sees
// more than the limit.
func TestBodyLimitsEndToEnd(t *testing.T) {
	cb := newCountingBackend(t, false)
	e := startEdgeshim(t, fmt.Sprintf(`
listen: {https: "127.0.0.1:0", admin: "127.0.0.1:0"}
limits: {max_body: 64KiB, max_decompressed: 1MiB, max_ratio: 50}
routes:
  - {path: /plain/, proxy: {backends: [%q]}}
  - {path: /gz/, decompress: true, proxy: {backends: [%q]}}
`, cb.URL, cb.URL))
	c := e.Client()
	var bomb bytes.Buffer
	zw := gzip.NewWriter(&bomb)
	zw.Write(make([]byte, 50<<20))
	zw.Close()
	for _, tc := range []struct {
		name, path string
		body       io.Reader
		gzip       bool
		code       int
		max        int64
	}{
		{"Content-Length over", "/plain/cl", bytes.NewReader(make([]byte, 100<<10)), false, 413, 0},
		{"chunked over", "/plain/chunked", io.MultiReader(strings.NewReader(strings.Repeat("x", 100<<10))), false, 413, 64 << 10},
		{"gzip bomb", "/gz/bomb", bytes.NewReader(bomb.Bytes()), true, 413, 1 << 20},
		{"small gzip ok", "/gz/small", gzBody("hello"), true, 200, 5},
	} {
		req, _ := http.NewRequest("POST", e.URL(tc.path), tc.body)
		if tc.gzip {
			req.Header.Set("Content-Encoding", "gzip")
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code {
			t.Errorf("%s: %d, want %d", tc.name, resp.StatusCode, tc.code)
		}
		var got int64
		if v, ok := cb.bytes.Load(tc.path); ok {
			got = v.(*atomic.Int64).Load()
		}
		if got > tc.max {
			t.Errorf("%s: backend received %d bytes, limit %d", tc.name, got, tc.max)
		}
	}
}

func gzBody(s string) io.Reader {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	io.WriteString(zw, s)
	zw.Close()
	return &b
}

func h2Conn(t *testing.T, e *Edge) (*tls.Conn, *http2.Framer) {
	t.Helper()
	c, err := tls.Dial("tcp", e.Addr("https"), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, c)
	fr.WriteSettings()
	return c, fr
}

func headerBlock(path string) []byte {
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "localhost"}, {":path", path}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	return b.Bytes()
}

// TestHTTP2RapidReset: a HEADERS+RST_STREAM loop does not run more backend
// requests at once than MaxConcurrentStreams, and a well-behaved client is
// served meanwhile.
func TestHTTP2RapidReset(t *testing.T) {
	cb := newCountingBackend(t, true)
	e := startEdgeshim(t, fmt.Sprintf(`
listen: {https: "127.0.0.1:0", admin: "127.0.0.1:0"}
routes: [{path: /, proxy: {backends: [%q]}}]
`, cb.URL))
	c, fr := h2Conn(t, e)
	block := headerBlock("/reset")
	var goaway atomic.Bool
	go func() {
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if _, ok := f.(*http2.GoAwayFrame); ok {
				goaway.Store(true)
			}
		}
	}()
	sent := 0
	for id := uint32(1); id < 20000; id += 2 {
		if fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndStream: true, EndHeaders: true}) != nil {
			break
		}
		if fr.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
			break
		}
		sent++
	}
	c.SetReadDeadline(time.Now().Add(time.Second))
	if code, _ := okClient(t, e, "127.0.0.3"); code != 200 {
		t.Errorf("well-behaved client during rapid reset: %d", code)
	}
	t.Logf("rapid reset: %d HEADERS+RST pairs sent, GOAWAY %v, backend peak concurrency %d", sent, goaway.Load(), cb.max.Load())
	if cb.max.Load() > 101 {
		t.Errorf("backend saw %d concurrent requests from one connection, limit 100 streams", cb.max.Load())
	}
}

// TestHTTP2TrickledContinuation: a header block trickled in CONTINUATION
// frames is cut off by the server's timeouts, not held forever.
func TestHTTP2TrickledContinuation(t *testing.T) {
	e := startEdgeshim(t, `
listen: {https: "127.0.0.1:0", admin: "127.0.0.1:0"}
limits: {timeouts: {read_header: 2s, read: 2s, idle: 3s}, websocket: {ping: 1s, pong_timeout: 1s}}
`)
	c, fr := h2Conn(t, e)
	block := headerBlock("/slow")
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndStream: true, EndHeaders: false})
	closed := make(chan time.Duration, 1)
	start := time.Now()
	go func() {
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		for {
			if _, err := fr.ReadFrame(); err != nil {
				closed <- time.Since(start)
				return
			}
		}
	}()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case d := <-closed:
			t.Logf("trickled CONTINUATION cut off after %s", d.Round(time.Millisecond))
			if d > 15*time.Second {
				t.Errorf("held for %s", d)
			}
			return
		case <-tick.C:
			// a few bytes of a never-ending header value
			fr.WriteContinuation(1, false, []byte{0x40, 0x01, 'x', 0x01, 'y'})
		}
	}
}

// TestFlappingDeviceBanned: a device polling more than limits.flapping.max
// times in the window is refused 429 with Retry-After, then allowed after
// the ban.
func TestFlappingDeviceBanned(t *testing.T) {
	m := startMosquitto(t, "")
	cfg := bridgeConfig(m.URL(), "", "")
	cfg = strings.Replace(cfg, "limits: {", "limits: {flapping: {max: 3, window: 1m, ban: 2s}, ", 1)
	e := startEdgeshim(t, cfg)
	c := e.Client()
	for i := range 3 {
		if r := poll(c, e.URL("/devices/f1/commands")); r.code != 204 {
			t.Fatalf("poll %d: %+v", i+1, r)
		}
	}
	r := poll(c, e.URL("/devices/f1/commands"))
	if r.code != 429 || r.retryAt != "2" {
		t.Fatalf("fourth poll in a minute: %+v, want 429 with Retry-After 2", r)
	}
	if r := poll(c, e.URL("/devices/f2/commands")); r.code != 204 {
		t.Errorf("another device: %+v", r)
	}
	time.Sleep(2100 * time.Millisecond) // the ban itself
	if r := poll(c, e.URL("/devices/f1/commands")); r.code != 204 {
		t.Errorf("after the ban: %+v", r)
	}
}

// TestWebSocketPingFlood: 10,000 pings from one client neither stop the
// relay nor other clients.
func TestWebSocketPingFlood(t *testing.T) {
	m := startMosquitto(t, "")
	e := startEdgeshim(t, mqttWSConfig("tcp://"+m.Addr(), ""))
	flood := dialMQTTWS(t, e)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // read pongs so the flood is not stopped by our own buffers
		defer wg.Done()
		flood.SetReadDeadline(time.Now().Add(20 * time.Second))
		for {
			if _, _, err := flood.ReadMessage(); err != nil {
				return
			}
		}
	}()
	for range 10000 {
		if err := flood.WriteControl(websocket.PingMessage, []byte("p"), time.Now().Add(5*time.Second)); err != nil {
			break
		}
	}
	other := dialMQTTWS(t, e)
	other.Close()
	flood.Close()
	wg.Wait()
}
