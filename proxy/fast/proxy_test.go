package fast

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/edgeshim/edgeshim/proxy/internal/h1"
	"github.com/edgeshim/edgeshim/proxy/upstream"
)

// TestFastRequestLine: the fast path's request line joins the backend
// path and strips the prefix as upstream.OutPath does (TestOutPath).
func TestFastRequestLine(t *testing.T) {
	for _, tc := range []struct{ base, strip, path string }{
		{"", "", "/x"}, {"/base/", "/static/", "/static/x"}, {"/base", "/api", "/api"}, {"", "/api", "/apix/y"},
	} {
		req := request{path: []byte(tc.path), query: []byte("?q=1")}
		want := "GET " + upstream.OutPath(tc.base, tc.strip, tc.path) + "?q=1 HTTP/1.1\r\n"
		if got := string(appendRequestLine(nil, []byte("GET"), tc.base, tc.strip, &req)); got != want {
			t.Errorf("request line for %q %q %q: %q, want %q", tc.base, tc.strip, tc.path, got, want)
		}
	}
}

// prefixRouter is a Router of one proxy route at a path prefix.
type prefixRouter struct {
	prefix string
	r      *Route
}

func (p prefixRouter) Match(_, path []byte) Target {
	if bytes.HasPrefix(path, []byte(p.prefix)) {
		return Target{Proxy: p.r}
	}
	return Target{}
}

// BenchmarkFastRewrite is the fast path's per-request policy work on a
// typical head: parse, route, rewrite the head (forwarded headers), and
// the request line for a backend with a path (strip_prefix).
func BenchmarkFastRewrite(b *testing.B) {
	head := []byte("GET /api/updates?since=1 HTTP/1.1\r\nHost: edge.example.com\r\nUser-Agent: door/1.2\r\nAccept: */*\r\n" +
		"X-Forwarded-For: 203.0.113.9\r\nAuthorization: Bearer abc\r\n\r\n")
	rt := prefixRouter{"/api/", &Route{Name: "api", Trusted: upstream.NewTrustList([]string{"10.0.0.0/8"}), Strip: "/api/"}}
	fc := &Conn{peer: netip.MustParseAddr("192.0.2.7")}
	buf := make([]byte, 0, 4096)
	b.ReportAllocs()
	for b.Loop() {
		if _, v := parseHead(head, &fc.h, 100); v != h1.OK {
			b.Fatal(v)
		}
		fc.host = h1.HostForMatch(fc.host, fc.h.host)
		rp := rt.Match(fc.host, fc.h.path).Proxy
		if rp == nil {
			b.Fatal("no route")
		}
		out := fc.appendOutHead(buf[:0], rp, &fc.h)
		req := request{path: fc.h.path}
		fc.line = appendRequestLine(fc.line[:0], fc.h.method, "/base", rp.Strip, &req)
		if len(out) == 0 || len(fc.line) == 0 {
			b.Fatal("empty")
		}
	}
}
