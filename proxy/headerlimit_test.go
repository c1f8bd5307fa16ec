package proxy

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/quic-go/quic-go/http3"
)

// TestHeaderLimitEveryProtocol: limits.max_header_bytes is the same figure
// on HTTP/1.1 (fast and net/http paths), HTTP/2 and HTTP/3: a head under
// it is served, one over it is 431 (not net/http's 4 KiB of slack on
// HTTP/1.1, not a COMPRESSION_ERROR GOAWAY on HTTP/2).
func TestHeaderLimitEveryProtocol(t *testing.T) {
	a := echoBackend(t, "a")
	s, cl := startProxy(t, fmt.Sprintf(`
listen: {http3: true}
limits: {max_header_bytes: 2KiB}
routes: [{path: /, proxy: {backends: [%q]}}]
`, a.URL))
	rootCAs := cl.Transport.(*http.Transport).TLSClientConfig
	h1 := &http.Client{Transport: &http.Transport{TLSClientConfig: rootCAs.Clone()}}
	h2 := &http.Client{Transport: &http.Transport{TLSClientConfig: rootCAs.Clone(), ForceAttemptHTTP2: true}}
	h3tr := &http3.Transport{TLSClientConfig: rootCAs.Clone()}
	t.Cleanup(func() { h3tr.Close() })
	h3 := &http.Client{Transport: h3tr}
	udp := "https://" + s.Addr("http3").String() + "/x"
	for _, tc := range []struct {
		name string
		cl   *http.Client
		url  string
	}{{"http/1.1", h1, s.url("/x")}, {"h2", h2, s.url("/x")}, {"h3", h3, udp}} {
		for _, c := range []struct {
			value int
			want  int
		}{{1500, 200}, {2100, 431}, {3500, 431}, {4500, 431}} {
			req, _ := http.NewRequest("GET", tc.url, nil)
			req.Header.Set("X-Big", strings.Repeat("v", c.value))
			resp, err := tc.cl.Do(req)
			if err != nil {
				t.Errorf("%s, a %d-byte field: %v; want %d", tc.name, c.value, err, c.want)
				continue
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.want {
				t.Errorf("%s, a %d-byte field: %d (%s), want %d", tc.name, c.value, resp.StatusCode, resp.Proto, c.want)
			}
		}
	}
}
