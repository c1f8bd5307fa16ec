package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeshim/edgeshim/proxy/internal/h1"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// pathClient is one of the ways a request reaches the policy.
type pathClient struct {
	name string
	c    *http.Client
}

// everyPath returns a client per path a request can take through s: the
// HTTP/1.1 fast path, HTTP/2 (net/http's server, ReverseProxy, the
// synchronous exchange), and net/http's HTTP/1.1, the fallback: each of
// its connections starts with "OPTIONS *", which the fast path does not
// take, so that net/http serves the rest of the connection.
func everyPath(t *testing.T, base *http.Client) []pathClient {
	t.Helper()
	tlsConf := base.Transport.(*http.Transport).TLSClientConfig
	h1 := func() *http.Transport {
		tr := &http.Transport{TLSClientConfig: tlsConf.Clone(), TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}
		tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
		t.Cleanup(tr.CloseIdleConnections)
		return tr
	}
	fast := h1()
	h2 := &http.Transport{TLSClientConfig: tlsConf.Clone(), ForceAttemptHTTP2: true}
	t.Cleanup(h2.CloseIdleConnections)
	fallback := h1()
	fallback.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		d := &tls.Dialer{Config: fallback.TLSClientConfig}
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		br := bufio.NewReader(c)
		_, err = io.WriteString(c, "OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n")
		var resp *http.Response
		if err == nil {
			resp, err = http.ReadResponse(br, &http.Request{Method: http.MethodOptions})
		}
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		if err == nil && (resp.StatusCode != 200 || br.Buffered() != 0) {
			err = fmt.Errorf("OPTIONS *: %d, %d bytes more", resp.StatusCode, br.Buffered())
		}
		if err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	cl := func(tr *http.Transport) *http.Client { return &http.Client{Transport: tr, Timeout: 20 * time.Second} }
	return []pathClient{{"fast", cl(fast)}, {"h2", cl(h2)}, {"fallback", cl(fallback)}}
}

// onEveryPath sends the same requests on every path and checks that each
// path gives want and took the path it names.
func onEveryPath(t *testing.T, s *Server, base *http.Client, want []string, run func(t *testing.T, c *http.Client) []string) {
	t.Helper()
	for _, p := range everyPath(t, base) {
		served, fellBack, direct := s.fast.Stats().Served, s.fast.Stats().FellBack, s.directServed()
		got := run(t, p.c)
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("%s path:\n%s\nwant\n%s", p.name, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		dServed, dFellBack := s.fast.Stats().Served-served, s.fast.Stats().FellBack-fellBack
		switch {
		case p.name == "fast" && dServed == 0:
			t.Errorf("fast path: no request took it")
		case p.name != "fast" && dServed != 0:
			t.Errorf("%s path: %d requests took the fast path", p.name, dServed)
		case p.name == "h2" && s.directServed() == direct:
			t.Errorf("h2 path: no request took the direct exchange")
		case p.name == "fallback" && dFellBack == 0:
			t.Errorf("fallback path: no connection fell back to net/http")
		}
	}
}

// policyEcho answers with what a backend sees of the policy: the request
// line's target and the forwarded headers, each header's lines joined
// with " | ".
func policyEcho(name string, requests *atomic.Int32) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err == nil && requests != nil {
			requests.Add(1) // a request that reached it whole
		}
		j := func(h string) string { return strings.Join(r.Header.Values(h), " | ") }
		fmt.Fprintf(w, "%s %s %s xff=%s xfh=%s xfp=%s fwd=%s", name, r.Method, r.RequestURI,
			j("X-Forwarded-For"), j("X-Forwarded-Host"), j("X-Forwarded-Proto"), j("Forwarded"))
	})
}

func doPolicy(t *testing.T, c *http.Client, req *http.Request) string {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		return "error: " + err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	out := strings.TrimSpace(fmt.Sprintf("%d %s", resp.StatusCode, b))
	if ra := resp.Header.Get("Retry-After"); ra != "" {
		out += " Retry-After"
	}
	return out
}

// TestPolicyForwardedOnEveryPath: the forwarded headers are the same on
// every path: a client that is not a trusted proxy cannot spoof
// X-Forwarded-For/-Host/-Proto or Forwarded (its values are replaced); a
// trusted proxy's are kept, the edge's hop added after them.
func TestPolicyForwardedOnEveryPath(t *testing.T) {
	be := httptest.NewServer(policyEcho("a", nil))
	t.Cleanup(be.Close)
	for _, tc := range []struct{ name, trusted, want string }{
		{"untrusted peer spoofing", `["10.0.0.0/8"]`,
			`200 a GET /f xff=127.0.0.1 xfh=front.example:8443 xfp=https fwd=for=127.0.0.1;host="front.example:8443";proto=https`},
		{"trusted proxy", `["10.0.0.0/8", "127.0.0.1"]`,
			`200 a GET /f xff=203.0.113.9, 198.51.100.1, 127.0.0.1 xfh=spoof.example xfp=http ` +
				`fwd=for=6.6.6.6;proto=http, for="[2001:db8::1]", for=127.0.0.1;host="front.example:8443";proto=https`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, cl := startProxy(t, fmt.Sprintf("trusted_proxies: %s\nroutes: [{path: /, proxy: {backends: [%q]}}]", tc.trusted, be.URL))
			onEveryPath(t, s, cl, []string{tc.want}, func(t *testing.T, c *http.Client) []string {
				req, _ := http.NewRequest("GET", s.url("/f"), nil)
				req.Host = "front.example:8443"
				req.Header.Add("X-Forwarded-For", "203.0.113.9")
				req.Header.Add("X-Forwarded-For", "198.51.100.1")
				req.Header.Set("X-Forwarded-Host", "spoof.example")
				req.Header.Set("X-Forwarded-Proto", "http")
				req.Header.Add("Forwarded", "for=6.6.6.6;proto=http")
				req.Header.Add("Forwarded", `for="[2001:db8::1]"`)
				return []string{doPolicy(t, c, req)}
			})
		})
	}
}

// TestPolicyPathsOnEveryPath: strip_prefix and the backend URL's path,
// with and without trailing slashes, give the same target on every path.
func TestPolicyPathsOnEveryPath(t *testing.T) {
	be := httptest.NewServer(policyEcho("a", nil))
	t.Cleanup(be.Close)
	s, cl := startProxy(t, fmt.Sprintf(`
routes:
  - {path: /s/, strip_prefix: true, proxy: {backends: ["%[1]s/base"]}}
  - {path: /n, strip_prefix: true, proxy: {backends: ["%[1]s/"]}}
  - {path: /k/, proxy: {backends: ["%[1]s/base/"]}}
  - {path: /, proxy: {backends: ["%[1]s"]}}
`, be.URL))
	targets := []string{"/s/x", "/s/", "/s/x/", "/n", "/nx/y", "/n/y/", "/k/a", "/k/", "/q?x=1", "/"}
	want := []string{"/base/x", "/base/", "/base/x/", "/", "/x/y", "/y/", "/base/k/a", "/base/k/", "/q?x=1", "/"}
	for i := range want {
		want[i] = "200 a GET " + want[i]
	}
	onEveryPath(t, s, cl, want, func(t *testing.T, c *http.Client) []string {
		var got []string
		for _, target := range targets {
			got = append(got, strings.SplitN(doPolicy(t, c, mustGet(t, s.url(target))), " xff=", 2)[0])
		}
		return got
	})
}

func mustGet(t *testing.T, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// TestPolicyRetryOnEveryPath: with the first backend dead, a GET goes to
// the next one, a POST does not (it is not idempotent) and is answered
// 502, on every path.
func TestPolicyRetryOnEveryPath(t *testing.T) {
	var live atomic.Int32
	be := httptest.NewServer(policyEcho("live", &live))
	t.Cleanup(be.Close)
	s, cl := startProxy(t, fmt.Sprintf(`routes: [{path: /, proxy: {backends: [%q, %q], lb: first, passive: {max_fails: 100}}}]`, deadURL(t), be.URL))
	want := []string{"200 live GET /r", `502 {"error":"backend unavailable"}`, "posts at the live backend: 0"}
	onEveryPath(t, s, cl, want, func(t *testing.T, c *http.Client) []string {
		get := strings.SplitN(doPolicy(t, c, mustGet(t, s.url("/r"))), " xff=", 2)[0]
		before := live.Load()
		req, _ := http.NewRequest("POST", s.url("/r"), strings.NewReader("once"))
		post := doPolicy(t, c, req)
		return []string{get, post, fmt.Sprintf("posts at the live backend: %d", live.Load()-before)}
	})
}

// TestPolicyErrorsOnEveryPath: a backend timeout is 504, a refused
// connection 502, a client's body over max_body 413 (with or without a
// Content-Length) and not the backend's fault: the backend, ejected at
// the first failure, still serves afterwards. The same on every path.
func TestPolicyErrorsOnEveryPath(t *testing.T) {
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	}))
	t.Cleanup(slow.Close)
	var okRequests atomic.Int32
	ok := httptest.NewServer(policyEcho("ok", &okRequests))
	t.Cleanup(ok.Close)
	s, cl := startProxy(t, fmt.Sprintf(`
limits: {max_body: 1KiB, retry_after: {min: 1s, max: 2s}}
routes:
  - {path: /slow, proxy: {backends: [%q], timeouts: {response_header: 200ms}}}
  - {path: /refused, proxy: {backends: [%q], retries: 0, passive: {max_fails: 1000}}}
  - {path: /gone, proxy: {backends: [%q], retries: 0, passive: {max_fails: 1, eject_for: 1h}}}
  - {path: /ok, proxy: {backends: [%q], passive: {max_fails: 1, eject_for: 1h}}}
`, slow.URL, deadURL(t), deadURL(t), ok.URL))
	want := []string{
		`504 {"error":"backend timeout"}`,
		`502 {"error":"backend unavailable"}`,
		`413 {"error":"body too large"}`,
		`413 {"error":"body too large"}`,
		"200 ok GET /ok",
		"backend requests: 1",
	}
	onEveryPath(t, s, cl, want, func(t *testing.T, c *http.Client) []string {
		before := okRequests.Load()
		got := []string{doPolicy(t, c, mustGet(t, s.url("/slow"))), doPolicy(t, c, mustGet(t, s.url("/refused")))}
		big := strings.Repeat("x", 4096)
		req, _ := http.NewRequest("POST", s.url("/ok"), strings.NewReader(big))
		got = append(got, doPolicy(t, c, req))
		// io.MultiReader hides the length: chunked (HTTP/1.1), no
		// content-length (h2); the limit is found while streaming.
		req, _ = http.NewRequest("POST", s.url("/ok"), io.MultiReader(strings.NewReader(big)))
		got = append(got, doPolicy(t, c, req))
		got = append(got, strings.SplitN(doPolicy(t, c, mustGet(t, s.url("/ok"))), " xff=", 2)[0])
		return append(got, fmt.Sprintf("backend requests: %d", okRequests.Load()-before))
	})
	// A dead backend is ejected (max_fails 1): then 503 with Retry-After,
	// on every path.
	onEveryPath(t, s, cl, []string{`503 {"error":"no healthy backend"} Retry-After`}, func(t *testing.T, c *http.Client) []string {
		doPolicy(t, c, mustGet(t, s.url("/gone")))
		return []string{doPolicy(t, c, mustGet(t, s.url("/gone")))}
	})
}

func TestRouteFor(t *testing.T) {
	rt := &router{routes: []*route{ // newRouter's order
		{name: "api-exact", host: "api.example.com", prefix: "/api/"},
		{name: "api-wild", host: "*.example.com", prefix: "/api/"},
		{name: "api-any", prefix: "/api/"},
		{name: "root", prefix: "/"},
	}}
	for _, tc := range []struct{ host, path, want string }{
		{"API.example.com:8443", "/api/x", "api-exact"},
		{"b.example.com.", "/api/x", "api-wild"},
		{"example.com", "/api/x", "api-any"},
		{"b.example.com", "/apix", "root"},
		{"[::1]:443", "/", "root"},
	} {
		h := h1.HostForMatch(nil, []byte(tc.host))
		for _, r := range []*route{routeFor(rt, h, tc.path), routeFor(rt, h, []byte(tc.path))} {
			if r == nil || r.name != tc.want {
				t.Errorf("%s %s: %v, want %s", tc.host, tc.path, r, tc.want)
			}
		}
		req := &http.Request{Host: tc.host, URL: mustURL(t, tc.path)}
		if r := rt.match(req); r == nil || r.name != tc.want {
			t.Errorf("router.match %s %s: %v, want %s", tc.host, tc.path, r, tc.want)
		}
	}
}

func mustURL(t *testing.T, path string) *url.URL {
	t.Helper()
	u, err := url.Parse(path)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// cutBody is a request body that ends with an error after its first bytes:
// the client gives up mid-body (its connection or stream is aborted).
type cutBody struct{ sent bool }

func (b *cutBody) Read(p []byte) (int, error) {
	if !b.sent {
		b.sent = true
		return copy(p, "abc"), nil
	}
	return 0, errors.New("client gave up")
}

// TestPolicyBodyCutShortOnEveryPath: a client that goes away in the
// middle of its body is counted 499 and never against the backend: ejected
// at its first failure, the backend still serves afterwards. The same on
// every path.
func TestPolicyBodyCutShortOnEveryPath(t *testing.T) {
	var okRequests atomic.Int32
	ok := httptest.NewServer(policyEcho("ok", &okRequests))
	t.Cleanup(ok.Close)
	s, cl := startProxy(t, fmt.Sprintf(`routes: [{path: /, proxy: {backends: [%q], passive: {max_fails: 1, eject_for: 1h}}}]`, ok.URL))
	gone := s.m.requests.WithLabelValues("/", "499")
	onEveryPath(t, s, cl, []string{"client error", "499 counted: 1", "200 ok GET /after"}, func(t *testing.T, c *http.Client) []string {
		before := testutil.ToFloat64(gone)
		req, _ := http.NewRequest("POST", s.url("/cut"), &cutBody{})
		req.ContentLength = 100
		got := []string{doPolicy(t, c, req)}
		if strings.HasPrefix(got[0], "error: ") {
			got[0] = "client error"
		}
		deadline := time.Now().Add(10 * time.Second)
		for testutil.ToFloat64(gone) == before && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond) // the metric has no signal to await
		}
		got = append(got, fmt.Sprintf("499 counted: %v", testutil.ToFloat64(gone)-before))
		return append(got, strings.SplitN(doPolicy(t, c, mustGet(t, s.url("/after"))), " xff=", 2)[0])
	})
}

// TestPolicy1xxThenBrokenOnEveryPath: a backend that sends a 1xx and then
// a malformed response is a backend error, counted towards its ejection
// on every path (the fast path, having passed the 1xx on, can answer
// nothing more; the others answer 502).
func TestPolicy1xxThenBrokenOnEveryPath(t *testing.T) {
	cb := newCountingBackend(t, map[string]string{
		"/early-bad": "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
	})
	backend := "http://" + cb.ln.Addr().String()
	s, cl := startProxy(t, fmt.Sprintf(`routes: [{path: /, proxy: {backends: [%q], passive: {max_fails: 1000}}}]`, backend))
	errs := s.m.backendRequests.WithLabelValues("/", backend, "error")
	onEveryPath(t, s, cl, []string{"backend errors counted: 1"}, func(t *testing.T, c *http.Client) []string {
		before := testutil.ToFloat64(errs)
		doPolicy(t, c, mustGet(t, s.url("/early-bad")))
		deadline := time.Now().Add(10 * time.Second)
		for testutil.ToFloat64(errs) == before && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond) // the metric has no signal to await
		}
		return []string{fmt.Sprintf("backend errors counted: %v", testutil.ToFloat64(errs)-before)}
	})
}
