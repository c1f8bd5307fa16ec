package proxy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// TestHTTP2SyncBackendExchange: HTTP/2 requests to an http:// backend take
// the synchronous exchange over the fast path's backend pool (the
// connection is found idle there, not in http.Transport), reuse one
// backend connection for sequential requests, carry their bodies, and a backend
// that closes a pooled connection costs no request (replayed on a new
// one).
func TestHTTP2SyncBackendExchange(t *testing.T) {
	var conns atomic.Int64
	var mu sync.Mutex
	var seen []string
	be := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		seen = append(seen, fmt.Sprintf("%s %s ae=%q body=%q", r.Method, r.URL.Path, r.Header.Get("Accept-Encoding"), b))
		mu.Unlock()
		if r.URL.Path == "/close" {
			w.Header().Set("Connection", "close")
		}
		io.WriteString(w, "ok "+r.URL.Path)
	}))
	be.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	be.Start()
	t.Cleanup(be.Close)
	s, cl := startProxy(t, fmt.Sprintf(`routes: [{path: /, proxy: {backends: [%q]}}]`, be.URL))
	do := func(method, path, body string) {
		t.Helper()
		req, _ := http.NewRequest(method, s.url(path), strings.NewReader(body))
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 || resp.StatusCode != 200 || string(b) != "ok "+path {
			t.Fatalf("%s %s: HTTP/%d %d %q, want HTTP/2 200 %q", method, path, resp.ProtoMajor, resp.StatusCode, b, "ok "+path)
		}
	}
	for i := range 5 {
		do("GET", fmt.Sprintf("/a%d", i), "")
	}
	do("POST", "/post", "hello")
	if n := conns.Load(); n != 1 {
		t.Errorf("6 sequential requests used %d backend connections, want 1 (pooled)", n)
	}
	do("GET", "/close", "") // the backend closes after this one
	do("GET", "/after", "")
	if n := conns.Load(); n != 2 {
		t.Errorf("after a backend close: %d backend connections, want 2", n)
	}
	if idle := s.router.proxies[0].up.Pool.Backends()[0].Conns.NumIdle(); idle != 1 {
		t.Errorf("%d idle connections in the backend pool, want 1: the synchronous exchange did not serve HTTP/2", idle)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := `POST /post ae="gzip" body="hello"`; !strings.Contains(strings.Join(seen, "\n"), want) {
		t.Errorf("backend saw %q, want %q", seen, want)
	}
}
