package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeshim/edgeshim/config"
	"github.com/edgeshim/edgeshim/tlsterm"
	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
)

// startProxy runs a Server for the YAML config (listen.https forced to
// 127.0.0.1:0) and returns it with a client that trusts its certificate.
// mods adjust the Options before New.
// testH1 makes startProxy's client speak HTTP/1.1 (TestFastPathRunsProxyTests);
// testFastServed adds up the requests the fast path served.
var (
	testH1         = os.Getenv("EDGESHIM_TEST_H1") != ""
	testFastServed atomic.Int64
	// testDirectServed adds up the HTTP/2 requests the direct exchange served.
	testDirectServed atomic.Int64
)

func startProxy(t testing.TB, yamlCfg string, mods ...func(*Options)) (*Server, *http.Client) {
	t.Helper()
	raw, err := config.Parse([]byte(yamlCfg), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	raw.Listen.HTTPS = "127.0.0.1:0"
	raw.Listen.Admin = "off"
	raw.DataDir = t.TempDir()
	cfg := raw.WithDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	reg := prometheus.NewRegistry()
	term, err := tlsterm.New(tlsterm.Options{TLS: cfg.TLS, DataDir: cfg.DataDir, Logger: log, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { term.Close() })
	opts := Options{Config: cfg, TLS: term.TLSConfig(), Logger: log, Registerer: reg}
	for _, m := range mods {
		m(&opts)
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	certPEM, _ := os.ReadFile(filepath.Join(cfg.DataDir, "selfsigned-cert.pem"))
	pool := x509Pool(certPEM)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}, ForceAttemptHTTP2: !testH1}
	t.Cleanup(func() {
		testFastServed.Add(s.fast.Stats().Served)
		for _, rp := range s.router.proxies {
			testDirectServed.Add(rp.direct.Load())
		}
	})
	t.Cleanup(tr.CloseIdleConnections)
	return s, &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

func (s *Server) url(path string) string { return "https://" + s.Addr("https").String() + path }

// echoBackend answers with JSON describing what it received.
func echoBackend(t *testing.T, name string) *httptest.Server {
	srv := httptest.NewServer(echoHandler(name))
	t.Cleanup(srv.Close)
	return srv
}

func echoHandler(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"backend": name, "path": r.URL.Path, "host": r.Host, "proto": r.ProtoMajor,
			"xff": r.Header.Get("X-Forwarded-For"), "xfproto": r.Header.Get("X-Forwarded-Proto"),
			"xfhost": r.Header.Get("X-Forwarded-Host"), "forwarded": r.Header.Get("Forwarded"),
			"xfoo": r.Header.Get("X-Foo"), "body": string(body),
		})
	})
}

type echo struct {
	Backend, Path, Host, Xff, Xfproto, Xfhost, Forwarded, Xfoo, Body string
	Proto                                                            int
}

func doJSON(t *testing.T, c *http.Client, req *http.Request) (int, echo, http.Header) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e echo
	b, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(b, &e)
	return resp.StatusCode, e, resp.Header
}

func TestRouting(t *testing.T) {
	a, b, c, d := echoBackend(t, "a"), echoBackend(t, "b"), echoBackend(t, "c"), echoBackend(t, "d")
	s, cl := startProxy(t, fmt.Sprintf(`
routes:
  - {host: api.example.com, path: /, proxy: {backends: [%q]}}
  - {host: "*.example.com", path: /, proxy: {backends: [%q]}}
  - {path: /static/, strip_prefix: true, proxy: {backends: [%q]}}
  - {path: /, proxy: {backends: [%q]}}
  - {path: /static/deeper/, proxy: {backends: [%q]}}
`, a.URL, b.URL, c.URL, d.URL, a.URL+"/base"))
	for _, tc := range []struct{ host, path, backend, gotPath string }{
		{"api.example.com", "/x", "a", "/x"},
		{"API.Example.com.", "/x", "a", "/x"},
		{"dash.example.com", "/y", "b", "/y"},
		{"example.com", "/y", "d", "/y"},
		{"other.org", "/static/app.js", "c", "/app.js"},
		{"other.org", "/static/deeper/z", "a", "/base/static/deeper/z"},
		{"other.org", "/staticx", "d", "/staticx"},
	} {
		req, _ := http.NewRequest("GET", s.url(tc.path), nil)
		req.Host = tc.host
		code, e, _ := doJSON(t, cl, req)
		if code != 200 || e.Backend != tc.backend || e.Path != tc.gotPath {
			t.Errorf("%s%s → %d backend=%q path=%q, want %s %s", tc.host, tc.path, code, e.Backend, e.Path, tc.backend, tc.gotPath)
		}
		if e.Host != tc.host {
			t.Errorf("backend saw Host %q, want the client's %q", e.Host, tc.host)
		}
	}
}

func TestNoRoute404(t *testing.T) {
	a := echoBackend(t, "a")
	s, cl := startProxy(t, fmt.Sprintf(`routes: [{host: a.example, path: /, proxy: {backends: [%q]}}]`, a.URL))
	resp, err := cl.Get(s.url("/"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("status %d, want 404", resp.StatusCode)
	}
}

func TestForwardedHeaders(t *testing.T) {
	a := echoBackend(t, "a")
	for _, tc := range []struct {
		name, trusted, wantXFF, wantProto string
	}{
		{"untrusted client values replaced", "", "127.0.0.1", "https"},
		{"trusted proxy values kept", `trusted_proxies: ["127.0.0.0/8"]`, "203.0.113.9, 127.0.0.1", "http"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, cl := startProxy(t, fmt.Sprintf("%s\nroutes: [{path: /, proxy: {backends: [%q]}}]", tc.trusted, a.URL))
			req, _ := http.NewRequest("GET", s.url("/h"), nil)
			req.Header.Set("X-Forwarded-For", "203.0.113.9")
			req.Header.Set("X-Forwarded-Proto", "http")
			req.Header.Set("Connection", "X-Foo")
			req.Header.Set("X-Foo", "hop-by-hop")
			req.Host = "front.example"
			cl.Transport.(*http.Transport).ForceAttemptHTTP2 = false
			cl.Transport.(*http.Transport).TLSClientConfig.NextProtos = []string{"http/1.1"}
			_, e, _ := doJSON(t, cl, req)
			if e.Xff != tc.wantXFF {
				t.Errorf("X-Forwarded-For = %q, want %q", e.Xff, tc.wantXFF)
			}
			if e.Xfproto != tc.wantProto {
				t.Errorf("X-Forwarded-Proto = %q, want %q", e.Xfproto, tc.wantProto)
			}
			if e.Xfhost != "front.example" {
				t.Errorf("X-Forwarded-Host = %q", e.Xfhost)
			}
			if !strings.Contains(e.Forwarded, "for=127.0.0.1") || !strings.Contains(e.Forwarded, "proto=https") {
				t.Errorf("Forwarded = %q", e.Forwarded)
			}
			if e.Xfoo != "" {
				t.Errorf("hop-by-hop X-Foo reached the backend: %q", e.Xfoo)
			}
		})
	}
}

func TestHTTP2Backends(t *testing.T) {
	h2cSrv := httptest.NewUnstartedServer(echoHandler("h2c"))
	h2cSrv.Config.Protocols = new(http.Protocols)
	h2cSrv.Config.Protocols.SetUnencryptedHTTP2(true)
	h2cSrv.Start()
	t.Cleanup(h2cSrv.Close)
	tlsSrv := httptest.NewUnstartedServer(echoHandler("tls"))
	tlsSrv.EnableHTTP2 = true
	tlsSrv.StartTLS()
	t.Cleanup(tlsSrv.Close)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsSrv.Certificate().Raw}), 0o644)
	s, cl := startProxy(t, fmt.Sprintf(`
routes:
  - {path: /h2c/, proxy: {backends: [%q]}}
  - {path: /tls/, proxy: {backends: [%q], tls: {ca: %q, server_name: example.com}}}
`, strings.Replace(h2cSrv.URL, "http://", "h2c://", 1), tlsSrv.URL, caFile))
	for _, p := range []string{"/h2c/x", "/tls/x"} {
		req, _ := http.NewRequest("POST", s.url(p), strings.NewReader("ping"))
		code, e, _ := doJSON(t, cl, req)
		if code != 200 || e.Proto != 2 || e.Body != "ping" {
			t.Errorf("%s: code %d backend proto %d body %q, want 200 HTTP/2 ping", p, code, e.Proto, e.Body)
		}
	}
}

func TestWebSocketThroughProxyAndShutdown(t *testing.T) {
	up := websocket.Upgrader{}
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			mt, m, err := c.ReadMessage()
			if err != nil {
				return
			}
			c.WriteMessage(mt, m)
		}
	}))
	t.Cleanup(backend.Close)
	s, cl := startProxy(t, fmt.Sprintf(`routes: [{path: /ws, proxy: {backends: [%q]}}]`, backend.URL))
	d := websocket.Dialer{TLSClientConfig: cl.Transport.(*http.Transport).TLSClientConfig.Clone()}
	c, resp, err := d.Dial("wss://"+s.Addr("https").String()+"/ws", nil)
	if err != nil {
		t.Fatalf("dial: %v (%v)", err, resp)
	}
	defer c.Close()
	if err := c.WriteMessage(websocket.TextMessage, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	_, m, err := c.ReadMessage()
	if err != nil || string(m) != "hello" {
		t.Fatalf("echo = %q, %v", m, err)
	}
	done := make(chan error, 1)
	go func() { _, _, err := c.ReadMessage(); done <- err }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.Shutdown(ctx)
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("read succeeded after shutdown")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("upgraded connection still open after Shutdown")
	}
}

func deadURL(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

func TestErrorStatuses(t *testing.T) {
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}))
	t.Cleanup(slow.Close)
	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _, _ := http.NewResponseController(w).Hijack()
		c.Close()
	}))
	t.Cleanup(broken.Close)
	s, cl := startProxy(t, fmt.Sprintf(`
limits: {retry_after: {min: 5s, max: 9s}}
routes:
  - {path: /refused, proxy: {backends: [%q], retries: 0}}
  - {path: /broken, proxy: {backends: [%q]}}
  - {path: /slow, proxy: {backends: [%q], timeouts: {response_header: 200ms}}}
  - {path: /ejected, proxy: {backends: [%q], passive: {max_fails: 1, eject_for: 1h}, retries: 0}}
`, deadURL(t), broken.URL, slow.URL, deadURL(t)))
	get := func(p string) *http.Response {
		resp, err := cl.Get(s.url(p))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	for _, tc := range []struct {
		path string
		code int
	}{{"/refused", 502}, {"/broken", 502}, {"/slow", 504}, {"/ejected", 502}} {
		if r := get(tc.path); r.StatusCode != tc.code || r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s: %d %s, want %d JSON", tc.path, r.StatusCode, r.Header.Get("Content-Type"), tc.code)
		}
	}
	r := get("/ejected")
	ra, _ := strconv.Atoi(r.Header.Get("Retry-After"))
	if r.StatusCode != 503 || ra < 5 || ra > 9 {
		t.Errorf("all backends ejected: %d Retry-After %q, want 503 with 5-9", r.StatusCode, r.Header.Get("Retry-After"))
	}
}

func TestRetryOnlyIdempotentAfterDialFailure(t *testing.T) {
	var posts atomic.Int32
	live := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "POST" {
			posts.Add(1)
		}
		io.WriteString(w, "live")
	}))
	t.Cleanup(live.Close)
	s, cl := startProxy(t, fmt.Sprintf(`routes: [{path: /, proxy: {backends: [%q, %q], lb: first, passive: {max_fails: 100}}}]`, deadURL(t), live.URL))
	resp, err := cl.Get(s.url("/"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "live" {
		t.Errorf("GET with first backend dead: %d %q, want 200 from the live one", resp.StatusCode, b)
	}
	resp, err = cl.Post(s.url("/"), "text/plain", strings.NewReader("once"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 502 || posts.Load() != 0 {
		t.Errorf("POST with first backend dead: %d, posts at live backend %d; want 502 and no retry", resp.StatusCode, posts.Load())
	}
}

func TestClientCancelPropagates(t *testing.T) {
	got, cancelled := make(chan struct{}), make(chan struct{})
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(got)
		select {
		case <-r.Context().Done():
			close(cancelled)
		case <-time.After(10 * time.Second):
		}
	}))
	t.Cleanup(backend.Close)
	s, cl := startProxy(t, fmt.Sprintf(`routes: [{path: /, proxy: {backends: [%q]}}]`, backend.URL))
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", s.url("/wait"), nil)
	errc := make(chan error, 1)
	go func() { _, err := cl.Do(req); errc <- err }()
	<-got
	cancel()
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("backend request not cancelled after the client went away")
	}
	<-errc
}

// countingBackend is a raw TCP HTTP/1.1 server that counts what reaches it.
type countingBackend struct {
	ln       net.Listener
	requests atomic.Int32
	paths    chan string
}

// newCountingBackend answers 200 "ok", or responses[path] (a whole raw
// response; the connection ends after one with Connection: close).
func newCountingBackend(t *testing.T, responses ...map[string]string) *countingBackend {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cb := &countingBackend{ln: ln, paths: make(chan string, 100)}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					cb.requests.Add(1)
					select {
					case cb.paths <- req.URL.Path:
					default:
					}
					resp := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
					if len(responses) > 0 && responses[0][req.URL.Path] != "" {
						resp = responses[0][req.URL.Path]
					}
					io.WriteString(c, resp)
					if strings.Contains(resp, "Connection: close") {
						return
					}
				}
			}()
		}
	}()
	return cb
}

// rawTLS sends payload on a new HTTP/1.1 TLS connection and returns the
// status of the first response.
func rawTLS(t *testing.T, s *Server, payload string) string {
	t.Helper()
	c := dialRawTLS(t, s, payload)
	defer c.Close()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "error: " + err.Error()
	}
	resp.Body.Close()
	return resp.Status
}

// rawTLSAll sends payload on a new HTTP/1.1 TLS connection and reads
// responses until the server closes it or 5s pass; closed tells which.
func rawTLSAll(t *testing.T, s *Server, payload string) (statuses []string, closed bool) {
	t.Helper()
	c := dialRawTLS(t, s, payload)
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return statuses, errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		statuses = append(statuses, resp.Status)
	}
}

func dialRawTLS(t *testing.T, s *Server, payload string) *tls.Conn {
	t.Helper()
	c, err := tls.Dial("tcp", s.Addr("https").String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, payload)
	return c
}

// TestSmugglingRefused: requests an edge must not pass on are refused and
// none reaches the (counting, raw TCP) backend. A head with both
// Content-Length and Transfer-Encoding gets 400 and the connection is
// closed; net/http itself answers 501 when Transfer-Encoding is anything
// but one "chunked", before any handler.
func TestSmugglingRefused(t *testing.T) {
	cb := newCountingBackend(t)
	s, _ := startProxy(t, fmt.Sprintf(`routes: [{path: /, proxy: {backends: ["http://%s"]}}]`, cb.ln.Addr()))
	const tail = "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
	// Refused upgrades leave the connection open.
	for _, tc := range []struct{ name, payload string }{
		{"upgrade h2c", "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"},
		{"upgrade other", "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tls/1.3\r\n\r\n"},
	} {
		if got := rawTLS(t, s, tc.payload); !strings.HasPrefix(got, "400") {
			t.Errorf("%s: got %q, want 400", tc.name, got)
		}
	}
	for _, tc := range []struct{ name, payload, want string }{
		{"duplicate CL", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 30\r\n\r\nhello", "400"},
		{"bad CL", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello", "400"},
		{"TE not chunked", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nhello", "501"},
		{"CL+TE", "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n" + tail, "400"},
		{"TE+CL", "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n" + tail, "400"},
		{"CL+TE lower case", "POST /a HTTP/1.1\r\nHost: x\r\ncontent-length: 40\r\ntransfer-encoding: Chunked\r\n\r\n" + tail, "400"},
		{"CL+TE upper case", "POST /a HTTP/1.1\r\nHost: x\r\nCONTENT-LENGTH: 40\r\nTRANSFER-ENCODING: CHUNKED\r\n\r\n" + tail, "400"},
		{"CL+TE folded", "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding:\r\n chunked\r\n\r\n" + tail, "400"},
		{"CL+TE HTTP/1.0", "POST /a HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n" + tail, "400"},
		{"CL+TE HTTP/1.0 other codings", "POST /a HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 40\r\n\r\n" + tail, "400"},
		{"CL+TE gzip, chunked", "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" + tail, "501"},
		{"CL+TE two TE fields", "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n" + tail, "501"},
		{"CL+TE after OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\nPOST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n" + tail, "200 400"},
	} {
		statuses, closed := rawTLSAll(t, s, tc.payload)
		var codes []string
		for _, st := range statuses {
			codes = append(codes, st[:3])
		}
		if got := strings.Join(codes, " "); got != tc.want || !closed {
			t.Errorf("%s: got %q (connection closed: %v), want %s and closed", tc.name, got, closed, tc.want)
		}
	}
	if n := cb.requests.Load(); n != 0 {
		t.Errorf("%d smuggling attempts reached the backend, want 0", n)
	}
	// Pipelined behind requests that are served, the CL+TE one is still
	// the one refused, and nothing after it is read.
	statuses, closed := rawTLSAll(t, s, "GET /first HTTP/1.1\r\nHost: x\r\n\r\n"+
		"POST /second HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n"+
		"POST /third HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n"+tail)
	if len(statuses) != 3 || statuses[0][:3] != "200" || statuses[1][:3] != "200" || statuses[2][:3] != "400" || !closed {
		t.Errorf("pipelined: %q (closed %v), want 200 200 400 and closed", statuses, closed)
	}
	for _, want := range []string{"/first", "/second"} {
		if p := <-cb.paths; p != want {
			t.Errorf("backend saw %s, want %s", p, want)
		}
	}
	if n := cb.requests.Load(); n != 2 {
		t.Errorf("backend saw %d requests, want the 2 before the refused one", n)
	}
}
