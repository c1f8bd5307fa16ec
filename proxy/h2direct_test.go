package proxy

import (
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/edgeshim/edgeshim/proxy/fast"
	"github.com/edgeshim/edgeshim/proxy/h2front"
	"github.com/edgeshim/edgeshim/proxy/upstream"
	"golang.org/x/net/http2/hpack"
)

// TestDirectHead: the backend head of an HTTP/2 request on the direct
// exchange: Host from :authority, a cookie split over fields joined into
// one line (RFC 9113 8.2.3), hop-by-hop and framing fields dropped, the
// forwarded fields of an untrusted peer replaced, Te: trailers kept,
// Content-Length for a POST.
func TestDirectHead(t *testing.T) {
	f := func(kv ...string) []hpack.HeaderField {
		var out []hpack.HeaderField
		for i := 0; i < len(kv); i += 2 {
			out = append(out, hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		method string
		cl     int64
		fields []hpack.HeaderField
		want   string
	}{
		{"cookies joined", "GET", 0, f("cookie", "a=1", "accept", "*/*", "cookie", "b=2", "cookie", "c=3"),
			"Host: front.example\r\ncookie: a=1; b=2; c=3\r\naccept: */*\r\n"},
		{"hop-by-hop dropped", "GET", 0, f("host", "other", "proxy-authorization", "x", "te", "trailers", "x-foo", "1"),
			"Host: front.example\r\nx-foo: 1\r\n"},
		{"forwarded replaced", "GET", 0, f("x-forwarded-for", "6.6.6.6", "forwarded", "for=6.6.6.6", "x-forwarded-host", "spoof"),
			"Host: front.example\r\n"},
		{"post length", "POST", 0, nil, "Host: front.example\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &h2front.Stream{Method: tc.method, Authority: "front.example", Path: "/x", Fields: tc.fields,
				ContentLength: tc.cl, Remote: "192.0.2.7:5555", TLS: &tls.ConnectionState{}}
			fr := &fast.Route{Trusted: upstream.NewTrustList(nil)}
			got := string((&h2Direct{}).appendHead(nil, s, fr, &h2Scratch{}))
			want := tc.want + "X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Host: front.example\r\nX-Forwarded-Proto: https\r\n" +
				`Forwarded: for=192.0.2.7;host="front.example";proto=https` + "\r\n"
			if tc.method == "POST" {
				want += "Content-Length: 0\r\n"
			}
			if strings.Contains(tc.name, "hop") {
				want += "Te: trailers\r\n"
			}
			if want += "\r\n"; got != want {
				t.Errorf("head\n%q\nwant\n%q", got, want)
			}
		})
	}
}

// TestDirectPath: only paths the fast path would forward as they came
// take the direct exchange.
func TestDirectPath(t *testing.T) {
	for p, want := range map[string]bool{"/a/b-c_d.e~f": true, "/a:b@c;d=e,f": true, "/a%2e": false, `/a\b`: false,
		"/a#b": false, "/a b": false, "/é": false} {
		if got := directPath(p); got != want {
			t.Errorf("directPath(%q) = %v, want %v", p, got, want)
		}
	}
}

// TestBackendRecoveryLogged: a route whose backend refused connections
// and answers again is logged as answering again, once, on the first
// answer (answered calls Recover only while something is down).
func TestBackendRecoveryLogged(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // refused until the backend starts below
	logs := &syncBuffer{}
	s, c := startProxy(t, fmt.Sprintf("routes: [{path: /, proxy: {backends: [\"http://%s\"], passive: {max_fails: 100}}}]", addr),
		func(o *Options) { o.Logger = slog.New(slog.NewTextHandler(logs, nil)) })
	get := func() int {
		resp, err := c.Get(s.url("/x"))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get(); code < 500 {
		t.Fatalf("backend down: %d, want an error answer", code)
	}
	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	be := &httptest.Server{Listener: ln, Config: &http.Server{Handler: echoHandler("a")}}
	be.Start()
	defer be.Close()
	for range 3 {
		if code := get(); code != http.StatusOK {
			t.Fatalf("backend up: %d, want 200", code)
		}
	}
	if n := strings.Count(logs.String(), "answering again"); n != 1 {
		t.Errorf("%d recovery lines, want 1:\n%s", n, logs.String())
	}
}
