package limits

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestRetryAfterSpread: values stay in the window, reach both ends and are
// spread, not clustered (checked by their spread, not their sum).
func TestRetryAfterSpread(t *testing.T) {
	ra := RetryAfter{Min: 5 * time.Second, Max: 60 * time.Second}
	seen := map[int]int{}
	for range 5000 {
		v := ra.Seconds()
		if v < 5 || v > 60 {
			t.Fatalf("Retry-After %d outside [5,60]", v)
		}
		seen[v]++
	}
	if len(seen) != 56 {
		t.Errorf("%d distinct values of 56 possible", len(seen))
	}
	for v, n := range seen {
		if n > 5000/56*2 {
			t.Errorf("value %d drawn %d times: not uniform", v, n)
		}
	}
	rec := httptest.NewRecorder()
	RetryAfter{Min: 7 * time.Second, Max: 7 * time.Second}.Reject(rec, 503, "overloaded")
	if rec.Code != 503 || rec.Header().Get("Retry-After") != "7" || !strings.Contains(rec.Body.String(), "overloaded") {
		t.Errorf("Reject wrote %d %q %q", rec.Code, rec.Header().Get("Retry-After"), rec.Body.String())
	}
}

// TestPerIPLimiterBoundedMemory: a million distinct source addresses leave
// at most Tracked entries and a bounded heap.
func TestPerIPLimiterBoundedMemory(t *testing.T) {
	l := NewListener(nil, ListenerOptions{MaxConns: 1 << 30, PerIPMaxConns: 10, PerIPRate: 1, PerIPBurst: 1, Tracked: 10000})
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range 1_000_000 {
		ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		release, ok := l.Admit(ip)
		if !ok {
			t.Fatalf("first connection from %s refused", ip)
		}
		release()
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	if n := l.Tracked(); n > 10000 {
		t.Errorf("tracked %d source IPs, cap 10000", n)
	}
	growth := int64(after.HeapInuse) - int64(before.HeapInuse)
	t.Logf("heap growth after 1e6 source IPs: %d KiB (10,000 tracked)", growth>>10)
	if growth > 32<<20 {
		t.Errorf("heap grew %d MiB for a 10,000-entry cache", growth>>20)
	}
	if l.Open() != 0 {
		t.Errorf("open = %d after releasing all", l.Open())
	}
}

func TestPerIPCapsAndRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := NewListener(nil, ListenerOptions{MaxConns: 3, PerIPMaxConns: 2, PerIPRate: 1, PerIPBurst: 5, Tracked: 10})
		a, b := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")
		r1, ok1 := l.Admit(a)
		_, ok2 := l.Admit(a)
		_, ok3 := l.Admit(a)
		if !ok1 || !ok2 || ok3 {
			t.Fatalf("per-IP cap 2: got %v %v %v", ok1, ok2, ok3)
		}
		if _, ok := l.Admit(b); !ok {
			t.Fatal("other IP refused under the total cap")
		}
		if _, ok := l.Admit(netip.MustParseAddr("127.0.0.4")); ok {
			t.Fatal("total cap 3 exceeded")
		}
		r1()
		// a has spent 3 of its burst of 5 (the attempt refused by the cap
		// spent one too); two more pass the rate, then it must wait a
		// second per connection.
		for i := range 2 {
			ra, ok := l.Admit(a)
			if !ok {
				t.Fatalf("attempt %d within the burst refused", 4+i)
			}
			ra()
		}
		if _, ok := l.Admit(a); ok {
			t.Fatal("rate: sixth connection within the burst window admitted")
		}
		time.Sleep(time.Second)
		if _, ok := l.Admit(a); !ok {
			t.Fatal("rate: refused after a token refilled")
		}
	})
}

func TestListenerRefusesBeforeHandshake(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := NewListener(ln, ListenerOptions{MaxConns: 1, PerIPMaxConns: 1, PerIPRate: 100, PerIPBurst: 100, Tracked: 10})
	defer l.Close()
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	c1, _ := net.Dial("tcp", ln.Addr().String())
	defer c1.Close()
	s1 := <-accepted
	c2, _ := net.Dial("tcp", ln.Addr().String())
	defer c2.Close()
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c2.Read(make([]byte, 1)); err != io.EOF && !isReset(err) {
		t.Fatalf("second connection over the cap: read err %v, want closed", err)
	}
	s1.Close()
	c3, _ := net.Dial("tcp", ln.Addr().String())
	defer c3.Close()
	s3 := <-accepted
	s3.Close()
	l.Close()
	for range accepted {
	}
}

func isReset(err error) bool { return err != nil && strings.Contains(err.Error(), "reset") }

func TestAdmission(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := NewAdmission(AdmissionOptions{Rate: 10, Burst: 2, MaxQueue: 3, QueueTimeout: 500 * time.Millisecond})
		ctx := context.Background()
		for range 2 {
			if err := a.Wait(ctx); err != nil {
				t.Fatalf("within burst: %v", err)
			}
		}
		start := time.Now()
		if err := a.Wait(ctx); err != nil || time.Since(start) != 100*time.Millisecond {
			t.Fatalf("third handshake: %v after %v, want admitted after 100ms", err, time.Since(start))
		}
		// Reserve 4 more at once: they queue for 100..400ms; the queue
		// holds 3, so one is refused as queue_full.
		errs := make(chan error, 4)
		for range 4 {
			go func() { errs <- a.Wait(ctx) }()
		}
		var full int
		for range 4 {
			if err := <-errs; errors.Is(err, ErrAdmission) {
				full++
			}
		}
		if full != 1 {
			t.Errorf("%d refused, want 1 (queue of 3)", full)
		}
		// A wait longer than queue_timeout is refused at once.
		a2 := NewAdmission(AdmissionOptions{Rate: 1, Burst: 1, MaxQueue: 10, QueueTimeout: 500 * time.Millisecond})
		a2.Wait(ctx)
		start = time.Now()
		if err := a2.Wait(ctx); !errors.Is(err, ErrAdmission) || time.Since(start) != 0 {
			t.Errorf("wait of 1s with queue_timeout 500ms: %v after %v, want refused at once", err, time.Since(start))
		}
	})
}

func TestAdmissionHandsOverLiveConfig(t *testing.T) {
	live := &tls.Config{ServerName: "live"}
	a := NewAdmission(AdmissionOptions{Rate: 100, Burst: 10, MaxQueue: 1, QueueTimeout: time.Second})
	got, err := a.GetConfigForClient(func(*tls.ClientHelloInfo) (*tls.Config, error) { return live, nil })(&tls.ClientHelloInfo{})
	if err != nil || got != live {
		t.Errorf("got %p %v, want the live config itself", got, err)
	}
}

func TestFlappingBanThenAllowed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := NewFlapping(FlappingOptions{Max: 3, Window: time.Minute, Ban: 5 * time.Minute})
		for i := range 3 {
			if ok, _ := f.Allow("door-1"); !ok {
				t.Fatalf("event %d refused", i+1)
			}
		}
		ok, ra := f.Allow("door-1")
		if ok || ra != 5*time.Minute {
			t.Fatalf("fourth event in a minute: ok=%v retry=%v, want banned 5m", ok, ra)
		}
		if ok, _ := f.Allow("door-2"); !ok {
			t.Fatal("another device refused")
		}
		time.Sleep(4 * time.Minute)
		if ok, ra := f.Allow("door-1"); ok || ra != time.Minute {
			t.Fatalf("during ban: ok=%v retry=%v", ok, ra)
		}
		time.Sleep(time.Minute)
		if ok, _ := f.Allow("door-1"); !ok {
			t.Fatal("refused after the ban")
		}
		// Slow, steady events never ban.
		for range 10 {
			time.Sleep(30 * time.Second)
			if ok, _ := f.Allow("door-3"); !ok {
				t.Fatal("two events a minute banned with max 3")
			}
		}
	})
}

func TestHeaderCountAndBody(t *testing.T) {
	var got int64
	h := HeaderCount(20, Body(100, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		got += n
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			WriteError(w, 413, "body too large")
		}
	})))
	srv := httptest.NewServer(h)
	defer srv.Close()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr}
	do := func(req *http.Request) *http.Response {
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	req, _ := http.NewRequest("GET", srv.URL, nil)
	for i := range 30 {
		req.Header.Add("X-Many", strings.Repeat("a", i))
	}
	if resp := do(req); resp.StatusCode != 431 {
		t.Errorf("30 headers: %d, want 431", resp.StatusCode)
	}
	req, _ = http.NewRequest("POST", srv.URL, strings.NewReader(strings.Repeat("x", 101)))
	resp := do(req)
	if resp.StatusCode != 413 || got != 0 {
		t.Errorf("Content-Length 101: %d, handler read %d; want 413 before reading", resp.StatusCode, got)
	}
	req, _ = http.NewRequest("POST", srv.URL, io.MultiReader(strings.NewReader(strings.Repeat("x", 5000))))
	resp = do(req)
	if resp.StatusCode != 413 || got > 100 {
		t.Errorf("chunked 5000: %d, handler read %d; want 413 and at most 100", resp.StatusCode, got)
	}
}

func TestDecompressBombAndRatio(t *testing.T) {
	var got int64
	var gotErr error
	h := Decompress(1<<20, 100, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, gotErr = io.Copy(io.Discard, r.Body)
		if IsTooLarge(gotErr) {
			WriteError(w, 413, "too large")
			return
		}
		if r.Header.Get("Content-Encoding") != "" {
			t.Error("Content-Encoding passed on after decoding")
		}
	}))
	gz := func(n int) *bytes.Buffer {
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		zw.Write(make([]byte, n))
		zw.Close()
		return &b
	}
	for _, tc := range []struct {
		name string
		n    int
		code int
	}{{"small", 1000, 200}, {"bomb 100 MiB", 100 << 20, 413}} {
		body := gz(tc.n)
		req := httptest.NewRequest("POST", "/", body)
		req.Header.Set("Content-Encoding", "gzip")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != tc.code {
			t.Errorf("%s (%d compressed bytes): %d, want %d", tc.name, body.Len(), rec.Code, tc.code)
		}
		if got > 1<<20 {
			t.Errorf("%s: handler read %d decoded bytes past the 1 MiB cap", tc.name, got)
		}
	}
	// Under max_decompressed but over the ratio cap.
	rd := &boundedDecoder{dec: io.NopCloser(bytes.NewReader(make([]byte, 1<<20))), src: io.NopCloser(nil), in: &countingReader{n: 1000}, maxOut: 64 << 20, ratio: 10}
	if _, err := io.Copy(io.Discard, rd); !errors.Is(err, ErrDecompressedTooLarge) {
		t.Errorf("ratio 1000:1 over a cap of 10: err %v", err)
	}
	req := httptest.NewRequest("POST", "/", strings.NewReader("x"))
	req.Header.Set("Content-Encoding", "br")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != 415 {
		t.Errorf("unsupported encoding: %d, want 415", rec.Code)
	}
}

func TestHeapWatermark(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		heap := uint64(10)
		h := NewHeapWatermark(100, RetryAfter{Min: time.Second, Max: 2 * time.Second})
		h.Heap = func() uint64 { return heap }
		srv := h.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
		do := func() int {
			rec := httptest.NewRecorder()
			srv.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
			return rec.Code
		}
		if do() != 200 {
			t.Fatal("under the watermark: refused")
		}
		heap = 200
		if do() != 200 {
			t.Fatal("re-sampled before the interval")
		}
		time.Sleep(100 * time.Millisecond)
		if do() != 503 {
			t.Fatal("over the watermark: served")
		}
		heap = 50
		time.Sleep(100 * time.Millisecond)
		if do() != 200 {
			t.Fatal("back under: still refused")
		}
	})
}

// TestDecompressDeflateFormats: "deflate" is zlib (RFC 9110), and the raw
// DEFLATE stream some clients send under that name decodes too.
func TestDecompressDeflateFormats(t *testing.T) {
	want := strings.Repeat("telemetry ", 500)
	var got string
	h := Decompress(1<<20, 100, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			WriteError(w, 400, err.Error())
			return
		}
		got = string(b)
	}))
	var zl, raw bytes.Buffer
	zw := zlib.NewWriter(&zl)
	zw.Write([]byte(want))
	zw.Close()
	fw, _ := flate.NewWriter(&raw, flate.BestCompression)
	fw.Write([]byte(want))
	fw.Close()
	for name, body := range map[string][]byte{"zlib": zl.Bytes(), "raw deflate": raw.Bytes(), "corrupt zlib": append(zl.Bytes()[:2:2], 0xff, 0xff, 0xff)} {
		got = ""
		req := httptest.NewRequest("POST", "/", bytes.NewReader(body))
		req.Header.Set("Content-Encoding", "deflate")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if name == "corrupt zlib" {
			if rec.Code != 400 {
				t.Errorf("%s: %d, want the handler's 400 for a read error", name, rec.Code)
			}
			continue
		}
		if rec.Code != 200 || got != want {
			t.Errorf("%s: %d, decoded %d bytes; want 200 and %d", name, rec.Code, len(got), len(want))
		}
	}
}
