package integration

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"
)

func echoServer(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.Path, b)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestHTTP3RoundTrip: with listen.http3, the same routes answer over QUIC,
// TCP responses advertise it with Alt-Svc, and QUIC handshakes are counted
// in the TLS metrics.
func TestHTTP3RoundTrip(t *testing.T) {
	backend := echoServer(t)
	e := startEdgeshim(t, fmt.Sprintf(`
listen: {https: "127.0.0.1:0", http3: true, admin: "127.0.0.1:0"}
routes: [{path: /, proxy: {backends: [%q]}}]
`, backend.URL), EdgeOptions{Listeners: []string{"https", "http3", "admin"}})
	resp, err := e.Client().Get(e.URL("/tcp"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	port := e.Addr("https")[strings.LastIndex(e.Addr("https"), ":"):]
	if alt := resp.Header.Get("Alt-Svc"); !strings.Contains(alt, `h3="`+port+`"`) {
		t.Errorf("Alt-Svc = %q, want h3=%q", alt, port)
	}
	before := e.Metric("edgeshim_tls_handshakes_total")
	tr := &http3.Transport{TLSClientConfig: &tls.Config{RootCAs: e.CertPool(), ServerName: "localhost"}}
	defer tr.Close()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	url := "https://" + e.Addr("http3")
	for _, tc := range []struct{ method, body, want string }{
		{"GET", "", "GET /h3 "},
		{"POST", "telemetry", "POST /h3 telemetry"},
	} {
		req, _ := http.NewRequest(tc.method, url+"/h3", bytes.NewBufferString(tc.body))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s over HTTP/3: %v", tc.method, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 3 || string(b) != tc.want {
			t.Errorf("%s: proto %s body %q, want HTTP/3 %q", tc.method, resp.Proto, b, tc.want)
		}
	}
	if after := e.Metric("edgeshim_tls_handshakes_total"); after < before+1 {
		t.Errorf("TLS handshake counter %v → %v: the QUIC handshake was not counted", before, after)
	}
}

// h2specAllowed are the h2spec cases allowed to fail: none with edgeshim's
// own HTTP/2 server (proxy/h2front, the default). Go's own
// (listen.http2_server: net/http) failed 4.2/3, 6.5.3/1, 8.1.2.2/1 and
// 8.1.2.2/2.
var h2specAllowed = map[string]bool{}

var (
	h2specSection = regexp.MustCompile(`^\s*(\d+(?:\.\d+)*)\. `)
	h2specFailure = regexp.MustCompile(`^\s*× (\d+): `)
)

// TestH2Spec runs h2spec against the real binary's HTTP/2 listener. Every
// failure not in h2specAllowed fails the test.
func TestH2Spec(t *testing.T) {
	bin := requireTool(t, "h2spec")
	backend := echoServer(t)
	e := startEdgeshim(t, fmt.Sprintf(`
listen: {https: "127.0.0.1:0", admin: "127.0.0.1:0"}
limits: {per_ip: {rate: 1000, burst: 1000}}   # h2spec opens a connection per case
routes: [{path: /, proxy: {backends: [%q]}}]
`, backend.URL))
	port := e.Addr("https")[strings.LastIndex(e.Addr("https"), ":")+1:]
	out, _ := exec.Command(bin, "-h", "127.0.0.1", "-p", port, "-t", "-k", "--timeout", "5").CombinedOutput()
	text := string(out)
	i := strings.Index(text, "Failures:")
	if !strings.Contains(text, "tests,") {
		t.Fatalf("h2spec did not run:\n%s", text)
	}
	var failed []string
	if i >= 0 {
		section := ""
		for _, line := range strings.Split(text[i:], "\n") {
			if m := h2specSection.FindStringSubmatch(line); m != nil {
				section = m[1]
			}
			if m := h2specFailure.FindStringSubmatch(line); m != nil {
				failed = append(failed, section+"/"+m[1])
			}
		}
	}
	sort.Strings(failed)
	var unexpected []string
	for _, f := range failed {
		if !h2specAllowed[f] {
			unexpected = append(unexpected, f)
		}
	}
	summary := strings.TrimSpace(text)
	summary = summary[strings.LastIndex(summary, "\n")+1:]
	t.Logf("h2spec: %s; failures %v", summary, failed)
	if len(unexpected) > 0 {
		t.Errorf("unexpected h2spec failures %v\n%s", unexpected, text[i:])
	}
}

// TestSmugglingRefused: against the real binary, a request head carrying
// both Content-Length and Transfer-Encoding, in either order, any case,
// folded, on HTTP/1.0 or pipelined behind a good request, is answered 400
// (JSON) and its connection closed; nothing of it, nor the request hidden
// behind it, reaches the backend. Transfer-Encoding with codings other
// than a single "chunked" is refused by net/http itself with 501.
func TestSmugglingRefused(t *testing.T) {
	cb := newCountingBackend(t, false)
	e := startEdgeshim(t, fmt.Sprintf(`
listen: {https: "127.0.0.1:0", admin: "127.0.0.1:0"}
routes: [{path: /, proxy: {backends: [%q]}}]
`, cb.URL))
	const hidden = "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
	post := func(headers ...string) string {
		return "POST /a HTTP/1.1\r\nHost: x\r\n" + strings.Join(headers, "\r\n") + "\r\n\r\n" + hidden
	}
	refused := 0
	for _, tc := range []struct{ name, payload, want string }{
		{"CL then TE", post("Content-Length: 40", "Transfer-Encoding: chunked"), "400"},
		{"TE then CL", post("Transfer-Encoding: chunked", "Content-Length: 40"), "400"},
		{"lower case", post("content-length: 40", "transfer-encoding: chunked"), "400"},
		{"upper case", post("CONTENT-LENGTH: 40", "TRANSFER-ENCODING: CHUNKED"), "400"},
		{"mixed case value", post("Content-length: 40", "Transfer-encoding: cHuNkEd"), "400"},
		{"spaces", post("Content-Length:   40  ", "Transfer-Encoding:\t chunked "), "400"},
		{"folded TE", post("Content-Length: 40", "Transfer-Encoding:", " chunked"), "400"},
		{"duplicate CL and TE", post("Content-Length: 40", "Content-Length: 40", "Transfer-Encoding: chunked"), "400"},
		{"HTTP/1.0", strings.Replace(post("Connection: keep-alive", "Transfer-Encoding: chunked", "Content-Length: 40"), "HTTP/1.1", "HTTP/1.0", 1), "400"},
		{"HTTP/1.0 gzip, chunked", strings.Replace(post("Connection: keep-alive", "Transfer-Encoding: gzip, chunked", "Content-Length: 40"), "HTTP/1.1", "HTTP/1.0", 1), "400"},
		{"pipelined behind OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n" + post("Content-Length: 40", "Transfer-Encoding: chunked"), "200 400"},
		{"gzip, chunked", post("Content-Length: 40", "Transfer-Encoding: gzip, chunked"), "501"},
		{"chunked, identity", post("Transfer-Encoding: chunked, identity", "Content-Length: 40"), "501"},
		{"two TE fields", post("Transfer-Encoding: gzip", "Content-Length: 40", "Transfer-Encoding: chunked"), "501"},
	} {
		codes, closed := rawHTTP1(t, e, tc.payload)
		if got := strings.Join(codes, " "); got != tc.want || !closed {
			t.Errorf("%s: got %q (closed %v), want %s and the connection closed", tc.name, got, closed, tc.want)
		}
		refused += strings.Count(tc.want, "400")
	}
	if n := cb.requests.Load(); n != 0 {
		t.Errorf("the backend saw %d requests, want 0", n)
	}
	if got := e.Metric("edgeshim_http_requests_total", `code="400"`); got != float64(refused) {
		t.Errorf("400s counted %v, want %d", got, refused)
	}
}

// rawHTTP1 writes payload on a new HTTP/1.1 TLS connection and returns
// the status codes of the responses read until the connection is closed
// (closed) or 10s pass.
func rawHTTP1(t *testing.T, e *Edge, payload string) (codes []string, closed bool) {
	t.Helper()
	c, err := tls.Dial("tcp", e.Addr("https"), &tls.Config{RootCAs: e.CertPool(), ServerName: "localhost", NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, payload)
	br := bufio.NewReader(c)
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return codes, errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 400 && resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("400 is %s %q, want JSON", resp.Header.Get("Content-Type"), body)
		}
		codes = append(codes, strconv.Itoa(resp.StatusCode))
	}
}

// TestBackendClientCertificate: toward a backend that requires a client
// certificate, edgeshim presents the one configured on the route (the
// backend sees its CN); with none configured, or one from another CA, the
// backend refuses the handshake and the client gets 502.
func TestBackendClientCertificate(t *testing.T) {
	ca, other := newTestCA(t), newTestCA(t)
	serverCert, serverKey := ca.serverFiles(t)
	pair, err := tls.LoadX509KeyPair(serverCert, serverKey)
	if err != nil {
		t.Fatal(err)
	}
	clients := x509.NewCertPool()
	clients.AddCert(ca.cert)
	backend := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.TLS.PeerCertificates[0].Subject.CommonName)
	}))
	backend.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clients}
	backend.StartTLS()
	t.Cleanup(backend.Close)
	goodCert, goodKey := ca.clientFiles(t, "edge-proxy")
	wrongCert, wrongKey := other.clientFiles(t, "edge-proxy")
	e := startEdgeshim(t, fmt.Sprintf(`
listen: {https: "127.0.0.1:0", admin: "127.0.0.1:0"}
routes:
  - {path: /good, proxy: {backends: [%[1]q], tls: {ca: %[2]q, server_name: localhost, cert: %[3]q, key: %[4]q}}}
  - {path: /none, proxy: {backends: [%[1]q], retries: 0, tls: {ca: %[2]q, server_name: localhost}}}
  - {path: /wrong, proxy: {backends: [%[1]q], retries: 0, tls: {ca: %[2]q, server_name: localhost, cert: %[5]q, key: %[6]q}}}
`, backend.URL, ca.File, goodCert, goodKey, wrongCert, wrongKey))
	c := e.Client()
	for _, tc := range []struct {
		path string
		code int
		body string
	}{{"/good", 200, "edge-proxy"}, {"/none", 502, ""}, {"/wrong", 502, ""}} {
		resp, err := c.Get(e.URL(tc.path))
		if err != nil {
			t.Fatalf("%s: %v", tc.path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || (tc.body != "" && string(b) != tc.body) {
			t.Errorf("%s: %d %q, want %d %q", tc.path, resp.StatusCode, b, tc.code, tc.body)
		}
	}
}
