package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestFastPathRunsProxyTests runs the proxy tests again with an HTTP/1.1
// client, so that their requests take the fast path (HTTP/2 clients never
// do), and checks that they did.
func TestFastPathRunsProxyTests(t *testing.T) {
	for name, test := range map[string]func(*testing.T){
		"Routing": TestRouting, "ForwardedHeaders": TestForwardedHeaders, "ErrorStatuses": TestErrorStatuses,
		"RetryOnlyIdempotentAfterDialFailure": TestRetryOnlyIdempotentAfterDialFailure,
		"ClientCancelPropagates":              TestClientCancelPropagates, "RouteTimeouts": TestRouteTimeouts,
		"BackendConnectionsGauge": TestBackendConnectionsGauge, "ActiveHealthCheck": TestActiveHealthCheck,
		"CloseEndsEveryConnection": TestCloseEndsEveryConnection, "PathNormalisedBeforeRouting": TestPathNormalisedBeforeRouting, "ClientFaultsNeverEjectABackend": TestClientFaultsNeverEjectABackend,
	} {
		testH1 = true
		before := testFastServed.Load()
		t.Run(name, test)
		testH1 = false
		if testFastServed.Load() == before {
			t.Errorf("%s: no request took the fast path", name)
		}
	}
}

// canned are the raw responses of the fast path tests' backend by path.
var canned = map[string]string{
	"/chunked":  "HTTP/1.1 200 OK\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n",
	"/close":    "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close",
	"/head":     "HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n",
	"/nc":       "HTTP/1.1 204 No Content\r\n\r\n",
	"/hop":      "HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\nContent-Length: 1\r\n\r\nh",
	"/early":    "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\ne",
	"/bad":      "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
	"/cl":       "HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n<html><b>x</b>",
	"/chunked2": "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n%PDF-1\r\n0\r\n\r\n",
	"/close2":   "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n%PDF-1",
	"/gzip":     "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\nab",
	"/typed":    "HTTP/1.1 200 OK\r\nContent-Type: text/x-a\r\nContent-Length: 2\r\n\r\nab",
}

// rawBackend is a countingBackend with canned responses by path.
func rawBackend(t *testing.T, responses map[string]string) (addr string, requests *atomic.Int32) {
	cb := newCountingBackend(t, responses)
	return cb.ln.Addr().String(), &cb.requests
}

// readResponses reads responses on br until the connection ends or n are read.
func readResponses(t *testing.T, br *bufio.Reader, n int, method string) (out []string) {
	t.Helper()
	for range n {
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			return append(out, "error: "+err.Error())
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return append(out, "body error: "+err.Error())
		}
		out = append(out, fmt.Sprintf("%s %v %q %q", resp.Status, resp.TransferEncoding, b, resp.Trailer.Get("X-Sum")))
	}
	return out
}

func TestFastPipelinedAndFramings(t *testing.T) {
	addr, requests := rawBackend(t, canned)
	s, _ := startProxy(t, fmt.Sprintf(`routes: [{path: /, proxy: {backends: ["http://%s"]}}]`, addr))
	c := dialRawTLS(t, s, "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /chunked HTTP/1.1\r\nHost: x\r\n\r\n"+
		"GET /close HTTP/1.1\r\nHost: x\r\n\r\nGET /nc HTTP/1.1\r\nHost: x\r\n\r\nGET /hop HTTP/1.1\r\nHost: x\r\n\r\n"+
		"GET /early HTTP/1.1\r\nHost: x\r\n\r\nGET /bad HTTP/1.1\r\nHost: x\r\n\r\n"+
		"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
	defer c.Close()
	br := bufio.NewReader(c)
	got := readResponses(t, br, 9, "GET")
	want := []string{
		`200 OK [] "ok" ""`,
		`200 OK [chunked] "abcde" "5"`,
		`200 OK [chunked] "until close" ""`, // re-chunked: the client connection goes on
		`204 No Content [] "" ""`,
		`200 OK [] "h" ""`,
		`103 Early Hints [] "" ""`,
		`200 OK [] "e" ""`,
		`502 Bad Gateway [] "{\"error\":\"backend unavailable\"}\n" ""`,
		`200 OK [] "ok" ""`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("pipelined responses:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// HEAD keeps the Content-Length and has no body.
	io.WriteString(c, "HEAD /head HTTP/1.1\r\nHost: x\r\n\r\nGET /hop HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(br, &http.Request{Method: "HEAD"})
	if err != nil || resp.ContentLength != 42 {
		t.Fatalf("HEAD: %v %v", resp, err)
	}
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Header.Get("X-Secret") != "" || resp.Header.Get("Keep-Alive") != "" || resp.Header.Get("Date") == "" {
		t.Errorf("hop-by-hop response headers passed, or no Date: %v", resp.Header)
	}
	resp.Body.Close()
	if n := s.fast.Stats().FellBack; n != 0 || s.fast.Stats().Served != 10 {
		t.Errorf("fast path served %d, fell back %d; want 10, 0", s.fast.Stats().Served, n)
	}
	if n := requests.Load(); n != 10 {
		t.Errorf("backend saw %d requests, want 10", n)
	}
}

// TestFastFallbackMidConnection: a request the fast path does not serve
// (a bridge route, a chunked body) hands the connection to net/http with
// what was read; later requests on it are served there.
func TestFastFallbackMidConnection(t *testing.T) {
	addr, requests := rawBackend(t, nil)
	bridge := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "bridge %s %s", r.URL.Path, b)
	})
	s, _ := startProxy(t, fmt.Sprintf(`
bridges: {fleet: {upstream: {url: "mqtt://127.0.0.1:1"}, identity: {from: path, allow_unauthenticated: true}, poll: {path: "/devices/{device}"}, commands: {topic: "d/{device}/c"}}}
routes: [{path: /devices/, bridge: fleet}, {path: /, proxy: {backends: ["http://%s"]}}]`, addr),
		func(o *Options) { o.Bridges = map[string]http.Handler{"fleet": bridge} })
	for _, tc := range []struct{ name, second string }{
		{"bridge", "GET /devices/d1 HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"chunked body", "POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"},
		{"upgrade", "GET /x HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"},
	} {
		before, fb := requests.Load(), s.fast.Stats().FellBack
		c := dialRawTLS(t, s, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"+tc.second)
		br := bufio.NewReader(c)
		got := readResponses(t, br, 2, "GET")
		io.WriteString(c, "GET /c HTTP/1.1\r\nHost: x\r\n\r\nGET /devices/d2 HTTP/1.1\r\nHost: x\r\n\r\n")
		got = append(got, readResponses(t, br, 2, "GET")...)
		c.Close()
		if got[0] != `200 OK [] "ok" ""` || got[2] != `200 OK [] "ok" ""` || got[3] != `200 OK [chunked] "bridge /devices/d2 " ""` && got[3] != `200 OK [] "bridge /devices/d2 " ""` {
			t.Errorf("%s: %q", tc.name, got)
		}
		if s.fast.Stats().FellBack != fb+1 {
			t.Errorf("%s: no fallback", tc.name)
		}
		wantBackend := int32(2)
		if tc.name == "chunked body" {
			wantBackend = 3
		}
		if n := requests.Load() - before; n != wantBackend {
			t.Errorf("%s: backend saw %d requests, want %d", tc.name, n, wantBackend)
		}
	}
}

// TestFastLimitsAndRefusals: what the fast path does not take is refused
// by net/http exactly as before, and reaches no backend.
func TestFastLimitsAndRefusals(t *testing.T) {
	addr, requests := rawBackend(t, nil)
	s, _ := startProxy(t, fmt.Sprintf(`
limits: {max_body: 10, max_header_bytes: 1024, max_headers: 5}
routes: [{path: /, proxy: {backends: ["http://%s"]}}]`, addr))
	many := strings.Repeat("X-A: 1\r\n", 6)
	big := "X-Big: " + strings.Repeat("b", 8000) + "\r\n"
	for _, tc := range []struct{ name, payload, want string }{
		{"body over max_body", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n01234567890", "413"},
		{"too many headers", "GET / HTTP/1.1\r\nHost: x\r\n" + many + "\r\n", "431"},
		{"head too large", "GET / HTTP/1.1\r\nHost: x\r\n" + big + "\r\n", "431"},
		{"obs-fold (net/http joins it)", "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n", "200"},
		{"space before colon", "GET / HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n", "400"},
		{"two Hosts", "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", "400"},
		{"no Host", "GET / HTTP/1.1\r\n\r\n", "400"},
		{"control byte", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n", "400"},
		{"bad method", "G(T / HTTP/1.1\r\nHost: x\r\n\r\n", "400"},
		{"duplicate CL", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na", "200"},
	} {
		before := requests.Load()
		got := rawTLS(t, s, tc.payload)
		if !strings.HasPrefix(got, tc.want) {
			t.Errorf("%s: %q, want %s", tc.name, got, tc.want)
		}
		if n := requests.Load() - before; tc.want != "200" && n != 0 {
			t.Errorf("%s: %d requests reached the backend", tc.name, n)
		}
	}
	if s.fast.Stats().Served != 0 {
		t.Errorf("fast path served %d of these, want 0", s.fast.Stats().Served)
	}
}

// TestFastClientGoneCancelsBackend: a client that goes away while the
// backend is slow ends the backend request (its connection is closed),
// counted as 499.
func TestFastClientGoneCancelsBackend(t *testing.T) {
	arrived, gone := make(chan struct{}), make(chan struct{})
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		select {
		case <-r.Context().Done(): // its connection closed
			close(gone)
		case <-time.After(10 * time.Second):
		}
	}))
	t.Cleanup(backend.Close)
	s, _ := startProxy(t, fmt.Sprintf(`routes: [{path: /, proxy: {backends: [%q]}}]`, backend.URL))
	c := dialRawTLS(t, s, "GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
	<-arrived
	c.Close()
	select {
	case <-gone:
	case <-time.After(5 * time.Second):
		t.Fatal("backend request not cancelled after the client went away")
	}
	waitFor(t, func() bool {
		return testutil.ToFloat64(s.m.requests.WithLabelValues("/", "499")) == 1
	})
}

func waitFor(t *testing.T, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !ok(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestFastShutdown: Shutdown closes idle fast connections at once, lets
// the request in flight finish (its response says Connection: close),
// then the connection closes.
func TestFastShutdown(t *testing.T) {
	backend, arrived, release := heldBackend(t)
	s, _ := startProxy(t, fmt.Sprintf(`routes: [{path: /, proxy: {backends: [%q]}}]`, backend.URL))
	idle := dialRawTLS(t, s, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
	defer idle.Close()
	ibr := bufio.NewReader(idle)
	if got := readResponses(t, ibr, 1, "GET"); !strings.HasPrefix(got[0], "200") {
		t.Fatal(got)
	}
	busy := dialRawTLS(t, s, "GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
	defer busy.Close()
	<-arrived
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(context.Background()) }()
	if _, err := ibr.ReadByte(); err == nil {
		t.Error("idle connection got data, want it closed")
	}
	close(release)
	bbr := bufio.NewReader(busy)
	resp, err := http.ReadResponse(bbr, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if string(b) != "done" || !resp.Close {
		t.Errorf("in-flight request: %q close=%v, want done and Connection: close", b, resp.Close)
	}
	if _, err := bbr.ReadByte(); err == nil {
		t.Error("connection open after the in-flight request")
	}
	if err := <-done; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// TestFastHTTP10: HTTP/1.0 closes after the response unless it asked for
// keep-alive, which needs a known length; a body without one ends with
// the connection.
func TestFastHTTP10(t *testing.T) {
	addr, _ := rawBackend(t, map[string]string{
		"/chunked": "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
	})
	s, _ := startProxy(t, fmt.Sprintf(`routes: [{path: /, proxy: {backends: ["http://%s"]}}]`, addr))
	for _, tc := range []struct {
		name, payload string
		want          []string
		closed        bool
	}{
		{"close", "GET / HTTP/1.0\r\nHost: x\r\n\r\nGET / HTTP/1.0\r\nHost: x\r\n\r\n", []string{"200 OK"}, true},
		{"keep-alive", "GET / HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\nHost: x\r\n\r\n", []string{"200 OK", "200 OK"}, true},
		{"keep-alive, chunked from the backend", "GET /chunked HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\nHost: x\r\n\r\n", []string{"200 OK"}, true},
		{"HTTP/1.1 Connection: close", "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", []string{"200 OK"}, true},
	} {
		c := dialRawTLS(t, s, tc.payload)
		br := bufio.NewReader(c)
		var got []string
		for {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				break
			}
			b, _ := io.ReadAll(resp.Body)
			if tc.name == "keep-alive, chunked from the backend" && string(b) != "abc" {
				t.Errorf("%s: body %q", tc.name, b)
			}
			got = append(got, resp.Status)
		}
		c.Close()
		if strings.Join(got, ",") != strings.Join(tc.want, ",") {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestFastNewConnections: many short connections (one request each) end
// cleanly; nothing is left behind (goleak checks at the end).
func TestFastNewConnections(t *testing.T) {
	addr, requests := rawBackend(t, nil)
	s, _ := startProxy(t, fmt.Sprintf(`
limits: {per_ip: {max_conns: 1000, rate: 10000, burst: 10000}}
routes: [{path: /, proxy: {backends: ["http://%s"]}}]`, addr))
	cfg := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}, ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	for range 20 {
		c, err := tls.Dial("tcp", s.Addr("https").String(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		got := readResponses(t, bufio.NewReader(c), 1, "GET")
		c.Close()
		if got[0] != `200 OK [] "ok" ""` {
			t.Fatal(got)
		}
	}
	if requests.Load() != 20 || s.fast.Stats().Served != 20 {
		t.Errorf("backend %d, fast %d; want 20", requests.Load(), s.fast.Stats().Served)
	}
}

// TestFastSlowBody: a body that comes after the head, slowly, is relayed
// (the head's deadline does not apply to it).
func TestFastSlowBody(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "4")
		io.WriteString(w, "ab")
		http.NewResponseController(w).Flush()
		time.Sleep(30 * time.Millisecond) // 3 × the fast path's watchAfter
		io.WriteString(w, "cd")
	}))
	t.Cleanup(backend.Close)
	s, _ := startProxy(t, fmt.Sprintf(`routes: [{path: /, proxy: {backends: [%q]}}]`, backend.URL))
	c := dialRawTLS(t, s, "GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
	defer c.Close()
	got := readResponses(t, bufio.NewReader(c), 2, "GET")
	if want := `200 OK [] "abcd" ""`; got[0] != want || got[1] != want {
		t.Errorf("%q, want %s twice", got, want)
	}
}

// TestFastSniffsContentType: a response of known length without
// Content-Type gets the one net/http sniffs, on the fast path as on the
// slow one (listen.http is served by net/http only). A streamed one is
// not sniffed (on the slow path, that races with a flush timer).
func TestFastSniffsContentType(t *testing.T) {
	addr, _ := rawBackend(t, canned)
	s, _ := startProxy(t, fmt.Sprintf(`
listen: {http: "127.0.0.1:0"}
routes: [{path: /, allow_http: true, proxy: {backends: ["http://%s"]}}]`, addr))
	get := func(c net.Conn, p string) (string, string) {
		io.WriteString(c, "GET "+p+" HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		c.Close()
		return resp.Header.Get("Content-Type"), string(b)
	}
	for _, p := range []string{"/cl", "/chunked2", "/close2", "/gzip", "/typed"} {
		pc, err := net.Dial("tcp", s.Addr("http").String())
		if err != nil {
			t.Fatal(err)
		}
		slowCT, slow := get(pc, p)
		fastCT, fast := get(dialRawTLS(t, s, ""), p)
		if p == "/chunked2" || p == "/close2" {
			slowCT = ""
		}
		if slowCT != fastCT || slow != fast {
			t.Errorf("%s: net/http %q %q, fast path %q %q", p, slowCT, slow, fastCT, fast)
		}
	}
}

// TestFastLargeBodies: bodies larger than a buffer stream both ways.
func TestFastLargeBodies(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 20000) // 320 KB
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.Method == http.MethodPost {
			w.Header().Set("Content-Type", "text/plain")
			w.Write(b) // Content-Length unknown: chunked
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(big)))
		io.WriteString(w, big)
	}))
	t.Cleanup(backend.Close)
	s, _ := startProxy(t, fmt.Sprintf(`
limits: {max_body: 1MiB}
routes: [{path: /, proxy: {backends: [%q]}}]`, backend.URL))
	c := dialRawTLS(t, s, fmt.Sprintf("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%sGET / HTTP/1.1\r\nHost: x\r\n\r\n", len(big), big))
	defer c.Close()
	br := bufio.NewReader(c)
	for i, want := range []string{"[chunked]", "[]"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil || string(b) != big || fmt.Sprint(resp.TransferEncoding) != want {
			t.Errorf("response %d: %d bytes %v %v, want the %d sent", i, len(b), resp.TransferEncoding, err, len(big))
		}
	}
	if s.fast.Stats().Served != 2 {
		t.Errorf("fast path served %d, want 2", s.fast.Stats().Served)
	}
}

// directServed is how many requests the HTTP/2 direct exchange served on s's routes.
func (s *Server) directServed() int64 {
	n := int64(0)
	for _, rp := range s.router.proxies {
		n += rp.direct.Load()
	}
	return n
}

// TestDirectRunsProxyTests runs the proxy tests again with an HTTP/2
// client and checks that their requests took the direct exchange
// (h2direct.go) rather than ReverseProxy. (TestForwardedHeaders
// speaks HTTP/1.1; TestPolicyForwardedOnEveryPath covers HTTP/2.)
func TestDirectRunsProxyTests(t *testing.T) {
	for name, test := range map[string]func(*testing.T){
		"Routing": TestRouting, "ErrorStatuses": TestErrorStatuses,
		"RetryOnlyIdempotentAfterDialFailure": TestRetryOnlyIdempotentAfterDialFailure,
		"ClientCancelPropagates":              TestClientCancelPropagates, "RouteTimeouts": TestRouteTimeouts,
		"BackendConnectionsGauge": TestBackendConnectionsGauge, "CloseEndsEveryConnection": TestCloseEndsEveryConnection,
		"PathNormalisedBeforeRouting": TestPathNormalisedBeforeRouting, "ClientFaultsNeverEjectABackend": TestClientFaultsNeverEjectABackend,
	} {
		if testH1 {
			t.Skip("EDGESHIM_TEST_H1: the clients speak HTTP/1.1")
		}
		before := testDirectServed.Load()
		t.Run(name, test)
		if testDirectServed.Load() == before {
			t.Errorf("%s: no request took the direct exchange", name)
		}
	}
}

// TestDirectFramings: over HTTP/2, the direct exchange relays each
// response framing of the backend (chunked with trailers, until close,
// 204, 1xx then the answer, HEAD) without hop-by-hop fields, answers a
// bad response 502, and sends a request body.
func TestDirectFramings(t *testing.T) {
	responses := maps.Clone(canned)
	responses["/fields"] = "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-One: 1\r\nset-cookie: b=2\r\nContent-Type: text/x-a\r\nContent-Length: 1\r\n\r\nf"
	addr, requests := rawBackend(t, responses)
	s, cl := startProxy(t, fmt.Sprintf(`routes: [{path: /, proxy: {backends: ["http://%s"]}}]`, addr))
	if testH1 {
		t.Skip("EDGESHIM_TEST_H1: the clients speak HTTP/1.1")
	}
	do := func(method, path, body string) string {
		req, _ := http.NewRequest(method, s.url(path), strings.NewReader(body))
		if body == "" {
			req.Body = nil
		}
		resp, err := cl.Do(req)
		if err != nil {
			return "error: " + err.Error()
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return "body error: " + err.Error()
		}
		if resp.ProtoMajor != 2 {
			t.Errorf("%s: %s, want HTTP/2", path, resp.Proto)
		}
		return fmt.Sprintf("%s %d %q %q hop=%q", resp.Status, resp.ContentLength, b, resp.Trailer.Get("X-Sum"), resp.Header.Get("X-Secret")+resp.Header.Get("Keep-Alive"))
	}
	got := []string{do("GET", "/a", ""), do("GET", "/chunked", ""), do("GET", "/close", ""), do("GET", "/nc", ""),
		do("GET", "/hop", ""), do("GET", "/early", ""), do("GET", "/bad", ""), do("POST", "/body", "hello"),
		do("HEAD", "/head", ""), do("GET", "/a", "")}
	// Repeated and common fields, in order.
	req, _ := http.NewRequest("GET", s.url("/fields"), nil)
	if resp, err := cl.Do(req); err != nil {
		t.Error(err)
	} else {
		resp.Body.Close()
		if c, o, ct := resp.Header.Values("Set-Cookie"), resp.Header.Get("X-One"), resp.Header.Get("Content-Type"); strings.Join(c, ",") != "a=1,b=2" || o != "1" || ct != "text/x-a" {
			t.Errorf("fields: Set-Cookie %q, X-One %q, Content-Type %q", c, o, ct)
		}
	}
	want := []string{
		`200 OK 2 "ok" "" hop=""`,
		`200 OK -1 "abcde" "5" hop=""`,
		`200 OK -1 "until close" "" hop=""`,
		`204 No Content 0 "" "" hop=""`,
		`200 OK 1 "h" "" hop=""`,
		`200 OK 1 "e" "" hop=""`,
		`502 Bad Gateway 32 "{\"error\":\"backend unavailable\"}\n" "" hop=""`,
		`200 OK 2 "ok" "" hop=""`,
		`200 OK 42 "" "" hop=""`,
		`200 OK 2 "ok" "" hop=""`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("responses:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if n := s.directServed(); n != int64(len(want)+1) {
		t.Errorf("direct exchange served %d, want %d", n, len(want)+1)
	}
	if n := requests.Load(); n != int32(len(want)+1) {
		t.Errorf("backend saw %d requests, want %d", n, len(want)+1)
	}
}

func TestLowerName(t *testing.T) {
	for in, want := range map[string]string{"content-type": "content-type", "DATE": "date", "X-Trace-Id": "x-trace-id", "ETag": "etag", "Set-Cookie": "set-cookie"} {
		if got := lowerName([]byte(in)); got != want {
			t.Errorf("lowerName(%q) = %q, want %q", in, got, want)
		}
	}
}
