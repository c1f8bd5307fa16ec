package proxy

import (
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestClientFaultsNeverEjectABackend: bodies over max_body sent without a
// Content-Length (chunked on HTTP/1.1, DATA frames on h2), gzip bombs on
// a decompress route and bodies cut by a client that went away are the
// client's fault: they are answered (413) but never count towards
// ejecting the backend, so no client can take a healthy backend out of
// rotation for everyone.
func TestClientFaultsNeverEjectABackend(t *testing.T) {
	a := echoBackend(t, "a")
	s, cl := startProxy(t, fmt.Sprintf(`
limits: {max_body: 4KiB, max_decompressed: 64KiB}
routes:
  - {path: /z/, decompress: true, proxy: {backends: [%q], passive: {max_fails: 2, eject_for: 1h}}}
  - {path: /, proxy: {backends: [%q], passive: {max_fails: 2, eject_for: 1h}}}
`, a.URL, a.URL))
	var bomb bytes.Buffer
	zw := gzip.NewWriter(&bomb)
	zw.Write(make([]byte, 2<<20)) // about 2 KiB compressed: under max_body
	zw.Close()
	if bomb.Len() > 4096 {
		t.Fatalf("the bomb is %d bytes compressed: over max_body, it would not test decompression", bomb.Len())
	}
	var zl bytes.Buffer
	zlw := zlib.NewWriter(&zl)
	zlw.Write([]byte("hello"))
	zlw.Close()
	post := func(path string, body io.Reader, enc string) int {
		t.Helper()
		req, _ := http.NewRequest("POST", s.url(path), body)
		if enc != "" {
			req.Header.Set("Content-Encoding", enc)
		}
		resp, err := cl.Do(req)
		if err != nil {
			return 0 // the edge may close the connection after a 413
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for i := 0; i < 4; i++ {
		// io.MultiReader hides the length: chunked (h1) or no content-length (h2).
		if code := post("/x", io.MultiReader(strings.NewReader(strings.Repeat("x", 8192))), ""); code != 413 && code != 0 {
			t.Errorf("streamed body over max_body: %d, want 413", code)
		}
		if code := post("/z/x", bytes.NewReader(bomb.Bytes()), "gzip"); code != 413 && code != 0 {
			t.Errorf("gzip bomb: %d, want 413", code)
		}
	}
	req, _ := http.NewRequest("POST", s.url("/z/x"), bytes.NewReader(zl.Bytes()))
	req.Header.Set("Content-Encoding", "deflate")
	code, e, _ := doJSON(t, cl, req)
	if code != 200 || e.Body != "hello" {
		t.Errorf("zlib deflate body: %d %q, want 200 with the decoded body", code, e.Body)
	}
	cl.CloseIdleConnections() // over HTTP/1.1: a new connection, which the fast path serves
	for _, p := range []string{"/x", "/z/x"} {
		req, _ := http.NewRequest("GET", s.url(p), nil)
		if code, e, _ := doJSON(t, cl, req); code != 200 || e.Backend != "a" {
			t.Errorf("GET %s after client faults: %d, want 200 (the backend was ejected by clients' mistakes)", p, code)
		}
	}
}
