package upstream

import (
	"bufio"
	"bytes"
	"net/http"
	"slices"
	"testing"

	"github.com/edgeshim/edgeshim/proxy/internal/h1"
)

var respHeadSeeds = []string{
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
	"HTTP/1.1 204 No Content\r\nDate: x\r\n\r\n",
	"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Type: text/plain\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n2\r\nok\r\n0\r\n\r\n",
	"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
	"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
	"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
	"HTTP/1.1 200\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\n\r\n",
	"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
	"HTTP/1.1 2000 OK\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
	"HTTP/1.1 200 OK\r\nX: \xff\r\n\r\n",
}

// FuzzRespHead: a response head parseRespHead accepts is one
// http.ReadResponse accepts too, with the same status, version, framing
// (length or chunked) and header values.
func FuzzRespHead(f *testing.F) {
	for _, s := range respHeadSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var h RespHead
		n, v := parseRespHead(b, &h)
		if v != h1.OK {
			return
		}
		if n <= 0 || n > len(b) || !bytes.HasSuffix(b[:n], []byte("\r\n\r\n")) {
			t.Fatalf("head length %d of %q", n, b)
		}
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(b[:n])), nil)
		if err != nil {
			t.Fatalf("parseRespHead took %q, net/http refuses it: %v", b[:n], err)
		}
		if resp.StatusCode != h.Code || (resp.ProtoMinor == 0) != h.HTTP10 {
			t.Fatalf("%q: status %d HTTP/1.%d, parsed %d http10=%v", b[:n], resp.StatusCode, resp.ProtoMinor, h.Code, h.HTTP10)
		}
		// Known difference, left as it is: net/http ignores
		// Transfer-Encoding in an HTTP/1.0 response (reads to the close);
		// parseRespHead takes it as chunked. RFC 9112 §6.1 calls such
		// framing faulty.
		if chunked := slices.Contains(resp.TransferEncoding, "chunked"); chunked != h.Chunked && !h.HTTP10 {
			t.Fatalf("%q: chunked %v, parsed %v", b[:n], chunked, h.Chunked)
		}
		noBody := h.Code == http.StatusNoContent || h.Code == http.StatusNotModified || h.Code < 200
		if h.HasCL && !noBody && resp.ContentLength != h.CL {
			t.Fatalf("%q: Content-Length %d, parsed %d", b[:n], resp.ContentLength, h.CL)
		}
		for _, fl := range h.Fields {
			if fl.Kind != h1.Pass {
				continue
			}
			if got := resp.Header.Values(string(fl.Name)); !slices.Contains(got, string(fl.Value)) {
				t.Fatalf("%q: %s is %q to net/http, parsed %q", b[:n], fl.Name, got, fl.Value)
			}
		}
	})
}

func TestReadRespHeadTooLarge(t *testing.T) {
	big := "HTTP/1.1 200 OK\r\nX: " + string(bytes.Repeat([]byte("a"), maxRespHead)) + "\r\n\r\n"
	var h RespHead
	if _, err := ReadRespHead(bufio.NewReaderSize(bytes.NewReader([]byte(big)), maxRespHead), &h); err != ErrResponseHeadTooLarge {
		t.Fatalf("a head over %d bytes: %v, want ErrResponseHeadTooLarge", maxRespHead, err)
	}
}
