package proxy

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

func TestCleanPath(t *testing.T) {
	for _, tc := range []struct{ raw, want string }{
		{"/", "/"},
		{"/a/b", "/a/b"},
		{"/a/b/", "/a/b/"},
		{"/a/../b", "/b"},
		{"/a/%2e%2e/b", "/b"},
		{"/a/%2E%2E/b", "/b"},
		{"/a/..//b", "/b"},
		{"/a//b", "/a/b"},
		{"//a", "/a"},
		{"/a/./b", "/a/b"},
		{"/a/.", "/a/"},
		{"/a/b/..", "/a/"},
		{"/a/..", "/"},
		{"/a/.../b", "/a/.../b"},
		{"/a/.b/c", "/a/.b/c"},
		{"/a/b..", "/a/b.."},
		{"/..", ""},
		{"/a/../..", ""},
		{"/../a", ""},
		{"/a/%2e%2e/%2e%2e/b", ""},
		{"/a%2Fb", ""},
		{"/a%2fb", ""},
		{"/a%5cb", ""},
		{"/a\\..\\b", ""},
		{"/a%00b", ""},
	} {
		u, err := url.ParseRequestURI(tc.raw)
		if err != nil {
			t.Fatalf("%s: %v", tc.raw, err)
		}
		got, err := cleanPath(u.Path, u.EscapedPath())
		if tc.want == "" {
			if err == nil {
				t.Errorf("cleanPath(%q) = %q, want errPathUnsafe", tc.raw, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("cleanPath(%q) = %q, %v; want %q", tc.raw, got, err, tc.want)
		}
	}
}

// FuzzCleanPath: a clean path is stable, absolute, and has no dot-segment
// or empty segment left for a backend to resolve differently.
func FuzzCleanPath(f *testing.F) {
	for _, s := range []string{"/", "/a/../b", "/a/%2e%2e/b", "//x/./y/", "/a/..//..", "/%2F"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := url.ParseRequestURI(raw)
		if err != nil {
			return
		}
		got, err := cleanPath(u.Path, u.EscapedPath())
		if err != nil {
			return
		}
		if !strings.HasPrefix(got, "/") || !isCleanPath(got) {
			t.Fatalf("cleanPath(%q) = %q: not clean", raw, got)
		}
		for _, seg := range strings.Split(got[1:], "/") {
			if seg == "." || seg == ".." {
				t.Fatalf("cleanPath(%q) = %q keeps a dot-segment", raw, got)
			}
		}
		if again, err := cleanPath(got, got); err != nil || again != got {
			t.Fatalf("cleanPath not stable: %q → %q → %q, %v", raw, got, again, err)
		}
	})
}

// TestPathNormalisedBeforeRouting: a path that climbs out of a route's
// prefix is routed (and forwarded) by where it really points, as nginx
// does, on HTTP/2 here and on both HTTP/1.1 paths through
// TestFastPathRunsProxyTests; one that cannot be normalised is 400 and
// reaches no backend.
func TestPathNormalisedBeforeRouting(t *testing.T) {
	api, other := echoBackend(t, "api"), echoBackend(t, "other")
	s, cl := startProxy(t, fmt.Sprintf(`
routes:
  - {path: /api/, proxy: {backends: [%q]}}
  - {path: /, proxy: {backends: [%q]}}
`, api.URL, other.URL))
	for _, tc := range []struct{ path, backend, gotPath string }{
		{"/api/x", "api", "/api/x"},
		{"/api//x", "api", "/api/x"},
		{"/api/./x", "api", "/api/x"},
		{"/api/../secret", "other", "/secret"},
		{"/api/%2e%2e/secret", "other", "/secret"},
		{"/api/%2E%2E/secret", "other", "/secret"},
		{"/api/..//secret", "other", "/secret"},
		{"/x/../api/y", "api", "/api/y"},
	} {
		req, _ := http.NewRequest("GET", s.url(tc.path), nil)
		code, e, _ := doJSON(t, cl, req)
		if code != 200 || e.Backend != tc.backend || e.Path != tc.gotPath {
			t.Errorf("%s → %d backend=%q path=%q, want %s %s", tc.path, code, e.Backend, e.Path, tc.backend, tc.gotPath)
		}
	}
	for _, p := range []string{"/api/../../etc/passwd", "/api/%2e%2e/%2e%2e/x", "/api/a%2Fb", "/api/a%5Cb"} {
		req, _ := http.NewRequest("GET", s.url(p), nil)
		code, e, _ := doJSON(t, cl, req)
		if code != http.StatusBadRequest || e.Backend != "" {
			t.Errorf("%s → %d backend=%q, want 400 from the edge", p, code, e.Backend)
		}
	}
}
