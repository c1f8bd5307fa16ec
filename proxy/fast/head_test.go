package fast

import (
	"bufio"
	"bytes"
	"net/http"
	"testing"

	"github.com/edgeshim/edgeshim/proxy/internal/h1"
)

var fastHeadSeeds = []string{
	"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
	"GET /a/b?c=d&e HTTP/1.1\r\nHost: example.com:8443\r\nUser-Agent: t\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
	"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
	"GET / HTTP/1.0\r\nHost: x\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na",
	"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n",
	"GET / HTTP/1.1\nHost: x\n\n",
	"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
	"GET /%41 HTTP/1.1\r\nHost: x\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: [::1]:443\r\nTE: trailers\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: x\r\nX: \xff\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 007\r\n\r\n1234567",
}

// FuzzFastHead: a head the fast path takes is one net/http also accepts,
// and both see the same request: method, target, Host, body length,
// version, head length and header values. (What the fast path refuses
// goes to net/http, so the other direction needs no check.)
func FuzzFastHead(f *testing.F) {
	for _, s := range fastHeadSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var h reqHead
		n, v := parseHead(b, &h, 100)
		if v != h1.OK {
			return
		}
		r := bytes.NewReader(b)
		br := bufio.NewReaderSize(r, len(b)+16)
		req, err := http.ReadRequest(br)
		if err != nil {
			t.Fatalf("fast path took %q, net/http refuses it: %v", b[:n], err)
		}
		if consumed := len(b) - r.Len() - br.Buffered(); consumed != n {
			t.Fatalf("head length: fast %d, net/http %d in %q", n, consumed, b)
		}
		if req.Method != string(h.method) || req.RequestURI != string(h.target) || req.URL.Path != string(h.path) ||
			req.Host != string(h.host) || req.ContentLength != h.contentLength || (req.ProtoMinor == 0) != h.http10 {
			t.Fatalf("fast %q %q %q %q %d %v, net/http %q %q %q %q %d %d", h.method, h.target, h.path, h.host, h.contentLength, h.http10,
				req.Method, req.RequestURI, req.URL.Path, req.Host, req.ContentLength, req.ProtoMinor)
		}
		if req.Close != (h.conn.Close || h.http10 && !h.conn.KeepAlive) {
			t.Fatalf("close: fast %v/%v, net/http %v", h.conn.Close, h.conn.KeepAlive, req.Close)
		}
		for _, f := range h.fields {
			if f.Kind == h1.Hop {
				continue
			}
			found := false
			for _, v := range req.Header.Values(string(f.Name)) {
				found = found || v == string(f.Value)
			}
			if !found {
				t.Fatalf("field %q: %q; net/http has %q", f.Name, f.Value, req.Header.Values(string(f.Name)))
			}
		}
	})
}

func BenchmarkParseHead(b *testing.B) {
	head := []byte("GET /api/updates?since=1 HTTP/1.1\r\nHost: edge.example.com\r\nUser-Agent: door/1.2\r\nAccept: */*\r\nAuthorization: Bearer abc\r\n\r\n")
	var h reqHead
	b.ReportAllocs()
	for b.Loop() {
		if _, v := parseHead(head, &h, 100); v != h1.OK {
			b.Fatal(v)
		}
	}
}
